"""The events as a Redis stream: how several workers (and replicas) hold one online store.

POST /v1/events checks a batch against the rules (`LiveFeatures.check`), adds the valid
events to the stream as one entry (XADD), and answers once its own worker has applied that
entry: every worker reads the whole stream in order (XREAD, not a consumer group: each needs
every event), from its first entry at each start, on the same snapshot, so each holds the
same store and the answer of one is the answer of all. A restart, or a kill -9, replays the
stream: nothing acknowledged is lost, and a re-sent id is still applied once.

Redis down: the server keeps serving what its store holds (each prediction's `stale` says
which sources have fallen behind), POST /v1/events answers 503 with Retry-After, and the
reader reconnects with backoff and catches up from the last entry it applied.

Realized quality is the whole service's the same way: each worker's prediction log adds what
the join reads of each table it writes (`serving.quality.joinable`) to a second stream,
`<key>:predictions`, which every worker reads whole beside the events (kept `KEEP_S`, the
longest window and a day, by entry time). So every worker joins every worker's predictions
with the same arrivals and exports the same figures, a restart included. With Redis down the
tables of the outage are in the log's files, not in the online figures (logged once).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from pipelines.online import Applied
from pipelines.redact import redact
from serving.live import LiveFeatures
from serving.quality import RealizedQuality, joinable

logger = logging.getLogger(__name__)

KEEP_S = 8 * 24 * 3600.0  # the predictions' stream: the longest window (7 days) and a day
READ_BLOCK_MS = 1000
READ_COUNT = 100  # entries per XREAD (each a batch of up to max_request_rows events)
FIRST_RETRY_S, MAX_RETRY_S = 0.5, 10.0
KEPT_REPORTS = 1024  # entries applied before their POST asked for the outcome


def as_entry(typed: list[dict[str, Any]], indices: list[int]) -> dict[str, str]:
    """A stream entry: a batch's typed events (the fields of `EVENT_FIELDS` each one's kind
    has; NaN for an optional one not sent, as Python's JSON writes it), so no reader checks
    them again, and their indices in the batch."""
    return {"events": json.dumps(typed), "indices": json.dumps(indices)}


def from_entry(fields: dict[bytes, bytes]) -> tuple[list[dict[str, Any]], list[int]]:
    return json.loads(fields[b"events"]), json.loads(fields[b"indices"])


def entry_id(text: str) -> tuple[int, int]:
    """A stream entry id ("<milliseconds>-<sequence>", Redis's clock) as numbers."""
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence or 0)


class StreamUnavailableError(Exception):
    """The stream cannot be written: the events were not accepted (a 503)."""


class EventStream:
    def __init__(
        self, url: str, key: str, live: LiveFeatures, quality: RealizedQuality | None = None
    ) -> None:
        import redis.asyncio as redis

        self.url, self.key, self.live = url, key, live
        self.redis = redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.last_id = "0"  # the last entry applied: a start reads the stream from its start
        self.problem: str | None = None
        # not ready before the entries there were at the start are applied: until then a
        # worker would answer from a store behind every other one's
        self.caught_up = False
        self._start_id: tuple[int, int] | None = None  # the newest entry at the start
        self._waiting: dict[str, asyncio.Future[Applied]] = {}
        self._reports: OrderedDict[str, Applied] = OrderedDict()
        self.quality = quality  # fed from `predictions_key`, every worker's
        self.predictions_key = f"{key}:predictions"
        self._predictions_id = "0"
        self._sharing: Any = None  # the prediction log thread's (synchronous) client
        self._share_problem: str | None = None

    def describe(self) -> str:
        return f"{redact(self.url)} {self.key}"

    async def publish(self, records: list[Any]) -> Applied:
        """Check, add, and wait for this worker to apply the entry: the batch's report, its
        indices those of the batch as sent."""
        from redis.exceptions import RedisError

        typed, indices, report = await asyncio.to_thread(self.live.check, records)
        if not typed:
            return report
        try:
            entry_id = (await self.redis.xadd(self.key, as_entry(typed, indices))).decode()
        except (RedisError, OSError) as error:
            raise StreamUnavailableError(f"the event stream {self.describe()}: {error}") from None
        applied = self._reports.pop(entry_id, None)
        if applied is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[entry_id] = future
            try:
                applied = await future
            finally:
                self._waiting.pop(entry_id, None)
        if applied.refused:
            await asyncio.to_thread(self.live.quarantine, records, applied.refused)  # fsync'd
        refused = sorted([*report.refused, *applied.refused])
        return Applied(applied.applied, applied.duplicates, refused)

    def share(self, table: dict[str, np.ndarray]) -> None:
        """(The prediction log's thread.) A table it writes, to every worker's join."""
        import redis
        from redis.exceptions import RedisError

        if self._sharing is None:
            self._sharing = redis.Redis.from_url(
                self.url, socket_timeout=5, socket_connect_timeout=5
            )
        oldest = int((time.time() - KEEP_S) * 1000)
        try:
            self._sharing.xadd(
                self.predictions_key,
                {"predictions": json.dumps(joinable(table))},
                minid=oldest,
                approximate=True,
            )
        except (RedisError, OSError) as error:
            if self._share_problem is None:
                logger.warning(
                    "predictions not shared through %s (the log has them): %s",
                    self.describe(),
                    error,
                )
            self._share_problem = str(error)
            return
        if self._share_problem is not None:
            logger.info("predictions shared through %s again", self.describe())
            self._share_problem = None

    async def follow(self) -> None:
        """Read and apply every entry, in order, for as long as the server runs."""
        from redis.exceptions import RedisError

        while not self.live.started:  # the store starts from the first model's lookups
            await asyncio.sleep(0.1)
        retry_s = FIRST_RETRY_S
        while True:
            try:
                if self._start_id is None:  # where "caught up" is: the newest entry now
                    newest = await self.redis.xrevrange(self.key, count=1)
                    self._start_id = entry_id(newest[0][0].decode()) if newest else (0, 0)
                    self._check_caught_up()
                streams = {self.key: self.last_id}
                if self.quality is not None:
                    streams[self.predictions_key] = self._predictions_id
                found = await self.redis.xread(streams, count=READ_COUNT, block=READ_BLOCK_MS)
            except (RedisError, OSError) as error:
                if self.problem is None:
                    logger.warning("event stream %s unreachable: %s", self.describe(), error)
                self.problem = f"the event stream {self.describe()} is unreachable: {error}"
                await asyncio.sleep(retry_s)
                retry_s = min(2 * retry_s, MAX_RETRY_S)
                continue
            if self.problem is not None:
                logger.info("event stream %s back; reading from %s", self.describe(), self.last_id)
                self.problem, retry_s = None, FIRST_RETRY_S
            for name, entries in found:
                if name.decode() == self.predictions_key:
                    await self._join(entries)
                    continue
                for raw_id, fields in entries:
                    await self._apply(raw_id.decode(), fields)

    async def _apply(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        records, indices = from_entry(fields)
        report = await asyncio.to_thread(self.live.apply_typed, records)
        # the entry's positions back to the batch's as sent
        report.refused = [(indices[i], name, reason) for i, name, reason in report.refused]
        self.last_id = entry_id
        self._check_caught_up()
        waiting = self._waiting.get(entry_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(report)
        else:  # applied before its POST asked (or another worker's POST): kept a while
            self._reports[entry_id] = report
            while len(self._reports) > KEPT_REPORTS:
                self._reports.popitem(last=False)

    async def _join(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        assert self.quality is not None
        tables = [json.loads(fields[b"predictions"]) for _, fields in entries]
        for table in tables:
            await asyncio.to_thread(self.quality.add, *table)
        self._predictions_id = entries[-1][0].decode()

    def _check_caught_up(self) -> None:
        if self.caught_up or self._start_id is None:
            return
        if entry_id(self.last_id) >= self._start_id:
            self.caught_up = True
            logger.info("event stream %s: caught up at %s", self.describe(), self.last_id)

    def progress(self) -> str:
        """Why this worker is not ready yet."""
        if self.problem is not None:
            return self.problem
        target = "?" if self._start_id is None else "-".join(map(str, self._start_id))
        return f"catching up with the event stream {self.describe()}: at {self.last_id} of {target}"

    async def close(self) -> None:
        await self.redis.aclose()
