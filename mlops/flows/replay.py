"""`mlops replay`: months of bronze as the events that would have told a server about them, in
observed-time order, and a prediction for each flight at its scheduled departure on the
replay clock; at the end, the realized quality of those predictions (the arrivals are the
labels).

The server must take the events (`MLOPS_EVENTS__TOKEN`) and its store must take over before
the first month (`MLOPS_EVENTS__SINCE`, at the replay's start or earlier): a flight inside
the model's own data is answered from its lookups, which would not be a replay.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pandas as pd

from mlops.configs import layout_of
from mlops.flows.progress import Progress
from mlops.settings import Settings
from pipelines.errors import NoDataError, SourceError
from pipelines.event_validation import as_records
from pipelines.events import to_minutes
from pipelines.online import events_from_bronze
from pipelines.rules import DELAYED_MIN
from pipelines.storage import read_parquet_folder
from pipelines.transform import RAW_INPUTS

BATCH = 1000  # events or flights per request


@dataclass
class ReplayReport:
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: int = 0
    predicted: int = 0
    labelled: int = 0
    seconds: float = 0.0
    auc: float = float("nan")
    log_loss: float = float("nan")
    stale: dict[str, int] = field(default_factory=dict)  # predictions that listed each source


def replay(
    settings: Settings,
    progress: Progress,
    url: str,
    since: str,
    until: str,
    speed: float = 0.0,
) -> ReplayReport:
    """Replay the months `since`..`until` (YYYY-MM, inclusive) against the server at `url`;
    `speed`: replay minutes per second of wall time (0: as fast as the server answers)."""
    from training.metrics import log_loss, roc_auc

    events, flights = _bronze_as_events(settings, since, until)
    token = settings.events.token
    if not token:
        raise SourceError("MLOPS_EVENTS__TOKEN is not set: the server refuses events without it")
    report = ReplayReport(events=len(events))
    records = as_records(events)
    observed = events["observed"].to_numpy()
    departures = to_minutes(flights["scheduled_departure"])
    order = np.argsort(departures, kind="stable")
    probabilities = np.full(len(flights), np.nan)
    started = time.perf_counter()
    sent = 0
    headers = {"Authorization": f"Bearer {token}"}

    def _send(client: httpx.Client, records: list[dict], sent: int, upto: int) -> int:
        while sent < upto:
            batch = records[sent : min(upto, sent + BATCH)]
            answer = _post(client, "/v1/events", {"events": batch}, headers).json()
            report.accepted += answer["accepted"]
            report.duplicates += answer["duplicates"]
            report.refused += len(answer["refused"])
            sent += len(batch)
        return sent

    with (
        httpx.Client(base_url=url, timeout=60) as client,
        progress.stage(f"replaying {since}..{until} to {url}", total=len(flights)) as update,
    ):
        times, starts = np.unique(departures[order], return_index=True)
        bounds = [*starts[1:], len(order)]
        for when, lo, hi in zip(times, starts, bounds, strict=True):
            # every event observed by the departure (the offline table's point in time: the
            # hour's weather is known at the hour), then the flights leaving then
            sent = _send(client, records, sent, int(np.searchsorted(observed, when, "right")))
            if speed > 0:  # the replay clock against the wall clock
                due = started + (when - departures[order[0]]) / speed
                time.sleep(max(0.0, due - time.perf_counter()))
            rows = order[lo:hi]
            for i in range(0, len(rows), BATCH):
                chunk = rows[i : i + BATCH]
                body = {"flights": _as_requests(flights.iloc[chunk])}
                predictions = _post(client, "/predict", body).json()["predictions"]
                probabilities[chunk] = [p["delay_probability"] for p in predictions]
                for p in predictions:
                    for source in p.get("stale", []):
                        report.stale[source] = report.stale.get(source, 0) + 1
            report.predicted += len(rows)
            update(advance=len(rows))
        _send(client, records, sent, len(records))  # the last arrivals: the store complete
    report.seconds = time.perf_counter() - started
    labels = flights["arr_delay"].to_numpy("float64", na_value=np.nan)
    known = ~np.isnan(labels)
    report.labelled = int(known.sum())
    if report.labelled and len(np.unique(labels[known] > DELAYED_MIN)) == 2:
        y = (labels[known] > DELAYED_MIN).astype("float64")
        report.auc = roc_auc(y, probabilities[known])
        report.log_loss = log_loss(y, probabilities[known])
    return report


def _bronze_as_events(
    settings: Settings, since: str, until: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    layout = layout_of(settings)
    try:
        flights = read_parquet_folder(layout.bronze("flights"))
        weather = read_parquet_folder(layout.bronze("weather"))
        airports = read_parquet_folder(layout.bronze("airports"))
    except FileNotFoundError as error:
        raise NoDataError(f"no bronze to replay ({error}): run `mlops data ingest` first") from None
    start = pd.Timestamp(f"{since}-01")
    end = pd.Timestamp(f"{until}-01") + pd.offsets.MonthBegin(1)
    when = flights["scheduled_departure"]
    # a day before: the first flights' schedules are published a day ahead
    window = flights[(when >= start - pd.Timedelta(days=1)) & (when < end)].reset_index(drop=True)
    hours = weather["time_hour"]
    weather = weather[(hours > start) & (hours < end)].reset_index(drop=True)
    events = events_from_bronze(window, weather, airports)
    first = float(to_minutes(pd.Series([start]))[0])
    events = events[events["observed"] > first].reset_index(drop=True)
    inside = window["scheduled_departure"] >= start
    flights = window[inside].reset_index(drop=True)
    if flights.empty:
        raise NoDataError(f"bronze has no flights in {since}..{until}")
    return events, flights


def _as_requests(flights: pd.DataFrame) -> list[dict]:
    rows = flights[RAW_INPUTS].astype(object).where(flights[RAW_INPUTS].notna(), None)
    out = rows.to_dict("records")
    for row in out:
        row["scheduled_departure"] = row["scheduled_departure"].isoformat()
        row["flight"] = int(row["flight"])
    return out


def _post(
    client: httpx.Client, path: str, body: dict, headers: dict | None = None
) -> httpx.Response:
    """A POST, waited on while the server sheds load (503 + Retry-After)."""
    while True:
        answer = client.post(path, json=body, headers=headers)
        if answer.status_code != 503:
            answer.raise_for_status()
            return answer
        time.sleep(float(answer.headers.get("Retry-After", "1")))
