"""`mlops replay`: months of bronze as the events that would have told a server about them, in
observed-time order, and a prediction for each flight at its scheduled departure on the
replay clock; at the end, the realized quality of those predictions (the arrivals are the
labels).

The server must take the events (`MLOPS_EVENTS__TOKEN`) and its store must take over before
the first month (`MLOPS_EVENTS__SINCE`, at the replay's start or earlier): a flight inside
the model's own data is answered from its lookups, which would not be a replay.

Where the store starts (its clock, from `GET /model`) decides what is sent first. A store that
takes over at the replay's start already holds, from its build, the flights scheduled around
it: the events observed from the start are sent. A store behind the start (the stack's, from
a build months older) knows nothing of them: every event of the last days before the start
that the offline features at the start can read is sent too (the flights scheduled from the
start less the retention horizon, a day of delay and a day of schedules ahead), so each
flight's departure follows its schedule and the first predictions see what the offline
table's do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
from pipelines.online import HOUR, RETENTION_MIN, SCHEDULE_AHEAD_H, events_from_bronze
from pipelines.rules import DELAYED_MIN, MAX_DELAY_MIN
from pipelines.storage import read_parquet_folder
from pipelines.transform import RAW_INPUTS

BATCH = 1000  # events or flights per request
# a store behind the replay's start is sent this much before it (minutes): what the features
# at the start read (the retention horizon, events up to a day late) and the schedules of
# those flights, published a day ahead
LEAD_MIN = RETENTION_MIN + MAX_DELAY_MIN + SCHEDULE_AHEAD_H * HOUR


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
    late_by: float = 0.0,
) -> ReplayReport:
    """Replay the months `since`..`until` (YYYY-MM, inclusive) against the server at `url`;
    `speed`: replay minutes per second of wall time (0: as fast as the server answers);
    `late_by`: minutes every flight of those months arrives later than it did (a degraded
    replay, for the monitoring's alerts)."""
    from pipelines.metrics import log_loss, roc_auc

    token = settings.events.token
    if not token:
        raise SourceError("MLOPS_EVENTS__TOKEN is not set: the server refuses events without it")
    with httpx.Client(base_url=url, timeout=60) as client:
        clock = _store_clock(client)
    events, flights = _bronze_as_events(settings, since, until, clock, late_by)
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


def _store_clock(client: httpx.Client) -> float | None:
    """The server's store's clock (New York minutes), or None where it says none."""
    info = _get(client, "/model").json().get("events") or {}
    clock = info.get("clock")
    return None if clock is None else _minute(pd.Timestamp(clock))


def _bronze_as_events(
    settings: Settings,
    since: str,
    until: str,
    clock: float | None = None,
    late_by: float = 0.0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The events to send, in observed order, and the flights to predict (those scheduled in
    `since`..`until`, arriving `late_by` minutes later than they did); `clock`: the store's
    (None: it takes over at the start)."""
    layout = layout_of(settings)
    try:
        flights = read_parquet_folder(layout.bronze("flights"))
        weather = read_parquet_folder(layout.bronze("weather"))
        airports = read_parquet_folder(layout.bronze("airports"))
    except FileNotFoundError as error:
        raise NoDataError(f"no bronze to replay ({error}): run `mlops data ingest` first") from None
    start = pd.Timestamp(f"{since}-01")
    end = pd.Timestamp(f"{until}-01") + pd.offsets.MonthBegin(1)
    begins, ends = _minute(start), _minute(end)
    ahead = SCHEDULE_AHEAD_H * HOUR
    # the first moment sent: the start, or where a store behind it stands (at most what the
    # features at the start can read: a retention horizon, a day's delay and a day's schedules)
    first = begins if clock is None else min(begins, max(clock, begins - LEAD_MIN))
    # its build holds the flights scheduled around `first` (a day late, one departs after it);
    # or none of them: only flights whose every event is observed after `first` are sent
    held = clock is None or clock >= first
    scheduled_from = first - MAX_DELAY_MIN if held else first + ahead
    when = to_minutes(flights["scheduled_departure"])
    inside = (when >= scheduled_from) & (when < ends)
    window = flights[inside].reset_index(drop=True)
    if late_by:  # the months replayed, not the days before them a store behind is sent
        delayed = window["scheduled_departure"] >= start
        arrivals = window["arr_delay"].where(~delayed, window["arr_delay"] + late_by)
        window = window.assign(arr_delay=arrivals.clip(upper=MAX_DELAY_MIN))
    hours = to_minutes(weather["time_hour"])
    weather = weather[(hours > first) & (hours < ends)]
    events = events_from_bronze(window, weather.reset_index(drop=True), airports)
    events = events[events["observed"] > first].reset_index(drop=True)
    inside = window["scheduled_departure"] >= start
    flights = window[inside].reset_index(drop=True)
    if flights.empty:
        raise NoDataError(f"bronze has no flights in {since}..{until}")
    return events, flights


def _minute(moment: pd.Timestamp) -> float:
    """A naive New York time -> minutes since the epoch on that clock."""
    return float(to_minutes(pd.Series([moment]))[0])


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
    return _answered(lambda: client.post(path, json=body, headers=headers))


def _get(client: httpx.Client, path: str) -> httpx.Response:
    return _answered(lambda: client.get(path))


def _answered(send: Callable[[], httpx.Response]) -> httpx.Response:
    while True:
        answer = send()
        if answer.status_code != 503:
            answer.raise_for_status()
            return answer
        time.sleep(float(answer.headers.get("Retry-After", "1")))
