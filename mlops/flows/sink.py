"""`mlops sink`: the events the server accepted, from its Redis stream (MLOPS_EVENTS__STREAM_URL)
or its local log (`MLOPS_HOME/events/log.jsonl`), into bronze (`pipelines.sink`), batch by
batch under the data lock; then the stream is trimmed behind what is safe.

An entry of the stream may go once the sink has committed it and nothing in it can matter
to a server that starts again from the stream: every event in it is older than the online
store's horizon, and a schedule's flight has had the time to leave and land since. The local
log is the server's to replay, and is not trimmed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from mlops.configs import events_of, layout_of
from mlops.locks import FileWriterLock, writer_lock
from mlops.settings import Settings
from pipelines.errors import SourceError, WriterBusyError
from pipelines.event_validation import validate_events
from pipelines.online import EVENT_FIELDS, RETENTION_MIN
from pipelines.redact import redact
from pipelines.rules import MAX_DELAY_MIN
from pipelines.sink import EventSink, Read, SinkCounts
from serving.live import LOG
from serving.stream import entry_id, from_entry

if TYPE_CHECKING:
    from prometheus_client import Metric

logger = logging.getLogger(__name__)

BATCH_EVENTS = 20_000  # at most, per batch (by default)
IDLE_S = 1.0  # a following sink's wait when there is nothing new
MAX_RETRY_S = 30.0  # its longest wait for a source that is down
# a scheduled flight can matter this long after its departure: a day late, a day in the air
FLIGHT_LIFETIME_MIN = 2 * MAX_DELAY_MIN


def needed_until(events: pd.DataFrame) -> float:
    """The last moment the events can matter to a store replaying them (New York minutes)."""
    if events.empty:
        return float("-inf")
    flights = events["kind"] == "scheduled"
    lifetime = events["scheduled"].where(flights) + FLIGHT_LIFETIME_MIN
    return float(pd.concat([events["observed"], lifetime]).max())


class Source(Protocol):
    def describe(self) -> str: ...

    def read(self, position: str, wait: bool) -> Read: ...

    def trim(self, entries: list[tuple[str, float]], clock: float) -> int:
        """Trim the committed `entries` that no longer matter; returns how many went."""
        ...

    def lag_s(self, position: str) -> float | None:
        """Seconds of the source after `position` (None: not known)."""
        ...


class LogSource:
    """The local log: JSON lines, as the server wrote them (a line cut by a crash is not one)."""

    def __init__(
        self, path: Path, airports: frozenset[str], carriers: frozenset[str], batch: int
    ) -> None:
        self.path, self.airports, self.carriers, self.batch = path, airports, carriers, batch

    def describe(self) -> str:
        return str(self.path)

    def read(self, position: str, wait: bool) -> Read:
        offset = int(position or 0)
        records, bad = [], []
        if self.path.exists():
            with self.path.open("rb") as log:
                log.seek(offset)
                for line in log:
                    if not line.endswith(b"\n") or len(records) >= self.batch:
                        break
                    offset += len(line)
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        bad.append(({"line": line.decode(errors="replace")}, f"not JSON: {error}"))
        checked = validate_events(records, self.airports, self.carriers)
        bad += [(records[index], f"{name}: {reason}") for index, name, reason in checked.refused]
        if not records and wait:
            time.sleep(IDLE_S)
        return Read(checked.events, str(offset), unreadable=bad)

    def lag_s(self, position: str) -> float | None:
        return None  # a byte offset says nothing of time

    def trim(self, entries: list[tuple[str, float]], clock: float) -> int:
        return 0


class StreamSource:
    """The server's Redis stream: entries of typed events, read in order (XREAD)."""

    def __init__(self, url: str, key: str, batch: int) -> None:
        import redis

        self.url, self.key, self.batch = url, key, batch
        self.redis = redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)

    def describe(self) -> str:
        return f"{redact(self.url)} {self.key}"

    def read(self, position: str, wait: bool) -> Read:
        from redis.exceptions import RedisError

        frames, entries = [], []
        count = 0
        try:
            found = self.redis.xread(
                {self.key: position or "0"}, count=100, block=int(IDLE_S * 1000) if wait else None
            )
        except RedisError as error:
            raise ConnectionError(str(error)) from None
        for _, read in found or []:
            for raw_id, fields in read:
                events = pd.DataFrame(from_entry(fields)[0], columns=EVENT_FIELDS)
                position = raw_id.decode()
                frames.append(events)
                entries.append((position, needed_until(events)))
                count += len(events)
                if count >= self.batch:
                    break
        events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return Read(events.reindex(columns=EVENT_FIELDS), position, entries)

    def trim(self, entries: list[tuple[str, float]], clock: float) -> int:
        old = 0
        while old < len(entries) and entries[old][1] < clock - RETENTION_MIN:
            old += 1
        if old:
            from redis.exceptions import RedisError

            millis, sequence = entry_id(entries[old - 1][0])
            try:
                self.redis.xtrim(self.key, minid=f"{millis}-{sequence + 1}", approximate=False)
            except RedisError as error:  # trimmed at the next batch
                logger.warning("could not trim %s: %s", self.describe(), error)
                return 0
        return old

    def lag_s(self, position: str) -> float | None:
        """From the entry ids, which are the milliseconds Redis added them at."""
        from redis.exceptions import RedisError

        try:
            newest = self.redis.xinfo_stream(self.key)["last-generated-id"]
        except RedisError:  # no stream yet, or Redis down: the source's own gauge says which
            return None
        newest_ms, _ = entry_id(newest.decode())
        at_ms, _ = entry_id(position or "0")
        return max(newest_ms - at_ms, 0) / 1000


class SinkMetrics:
    """The following sink's /metrics (`MLOPS_SINK__PORT`), read from its committed state at
    each scrape: Prometheus sees what it wrote, what it quarantined, and how far behind its
    source it is (the stack's MLOpsSinkBehind alert)."""

    def __init__(self, store: EventSink, source: Source) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.store, self.source = store, source
        self.registry = CollectorRegistry()
        self.source_up = Gauge(
            "mlops_sink_source_up",
            "1 when the last read of the source worked",
            registry=self.registry,
        )
        self.last_commit = Gauge(
            "mlops_sink_last_commit_timestamp_seconds",
            "wall clock of the last committed batch",
            registry=self.registry,
        )
        self.registry.register(self)

    def describe(self) -> list[Metric]:
        return []  # no read of the source at registration: only when scraped

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        totals = self.store.state.totals
        for name, value, what in (
            ("events", totals.events, "events read"),
            ("duplicates", totals.duplicates, "events read that bronze already held"),
            ("quarantined", totals.quarantined, "rows refused and events that could not be placed"),
        ):
            yield CounterMetricFamily(f"mlops_sink_{name}", what, value)
        rows = CounterMetricFamily("mlops_sink_rows", "bronze rows written", labels=["table"])
        rows.add_metric(["flights"], totals.flights)
        rows.add_metric(["weather"], totals.weather)
        yield rows
        yield GaugeMetricFamily(
            "mlops_sink_waiting_flights", "flights scheduled, outcome not in", totals.waiting
        )
        lag = self.source.lag_s(self.store.state.position)
        if lag is not None:
            yield GaugeMetricFamily(
                "mlops_sink_lag_seconds", "the source's newest entry less the committed one", lag
            )

    def serve(self, host: str, port: int) -> Callable[[], None]:
        """Serve /metrics on a thread; returns what stops it."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        logger.info("sink metrics on http://%s:%d/metrics", host, port)
        return server.shutdown


@contextmanager
def _only_sink(folder: Path) -> Iterator[None]:
    """One sink per MLOPS_HOME (a second would write the same batches)."""
    lock = FileWriterLock("mlops sink", folder, "sink.lock")
    if not lock.try_acquire():
        holder = lock.held_by_other() or {}
        raise WriterBusyError(
            f"another `mlops sink` (pid {holder.get('pid', '?')}) runs on {folder}"
        )
    try:
        yield
    finally:
        lock.release()


def sink(
    settings: Settings,
    follow: bool = False,
    batch: int = BATCH_EVENTS,
    on_batch: Callable[[SinkCounts, SinkCounts], None] | None = None,
) -> SinkCounts:
    """Write what the source holds after the committed position to bronze; `follow`: keep
    doing it until stopped. Returns what this run did."""
    layout = layout_of(settings)
    done = SinkCounts()
    with _only_sink(layout.root / "sink"):
        with writer_lock(settings, "mlops sink"):
            store = EventSink(layout)  # removes an uncommitted batch's parts
        config = events_of(settings)
        source: Source
        if config.stream_url:
            source = StreamSource(config.stream_url, config.stream_key, batch)
        else:
            assert config.folder is not None
            source = LogSource(config.folder / LOG, store.airports, store.carriers, batch)
        logger.info("sink from %s at %r", source.describe(), store.state.position)
        metrics = SinkMetrics(store, source)
        with contextlib.ExitStack() as stack:
            if follow and settings.sink.port:
                stack.callback(metrics.serve(settings.sink.host, settings.sink.port))
            _follow(settings, store, source, follow, metrics, done, on_batch)
        return done


def _follow(
    settings: Settings,
    store: EventSink,
    source: Source,
    follow: bool,
    metrics: SinkMetrics,
    done: SinkCounts,
    on_batch: Callable[[SinkCounts, SinkCounts], None] | None,
) -> None:
    retry_s = IDLE_S
    while True:
        try:
            read = source.read(store.state.position, follow)
        except OSError as error:
            metrics.source_up.set(0)
            problem = f"the event source {source.describe()}: {error}"
            if not follow:
                raise SourceError(problem) from None
            logger.warning("%s; trying again in %.0f s", problem, retry_s)
            time.sleep(retry_s)
            retry_s = min(2 * retry_s, MAX_RETRY_S)
            continue
        metrics.source_up.set(1)
        retry_s = IDLE_S
        if read.position != store.state.position:
            try:
                with writer_lock(settings, "mlops sink", wait_s=0 if follow else None):
                    counts = store.write(read)
            except WriterBusyError as busy:
                if not follow:
                    raise
                logger.info("%s; trying again", busy)
                time.sleep(IDLE_S)
                continue
            metrics.last_commit.set_to_current_time()
            done.add(counts)
            trimmed = source.trim(store.state.entries, store.state.clock)
            if trimmed:
                store.trimmed(trimmed)
            if on_batch is not None:
                on_batch(counts, store.state.totals)
        elif not follow:
            return
