"""Where the served model comes from, and how a new one replaces it without a dropped request.

A reload resolves the source (the registry alias, or a local folder), and if it names a
version other than the one being served, downloads, verifies, loads and warms it on a thread
of its own, then swaps it into the slot in one assignment. What can go wrong falls in two:

- a defect of the version itself (a sha256 mismatch, a file the registry did not record,
  broken ONNX, a parity failure, a feature this server does not compute): the version is
  refused for good (`ModelRefusedError`), and the old model keeps serving;
- anything else (MLflow unreachable, a download cut, a full disk, a folder still being
  copied): the attempt failed, and it is tried again with backoff until it works.

Either way nothing raised while loading reaches the server: the outcome is logged, counted,
and `problem` says what is wrong in words a person can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from pipelines.errors import ModelRefusedError
from pipelines.redact import redact
from serving.bundle import Bundle, discard, download_version, read_bundle
from serving.live import LiveFeatures
from serving.metrics import ServingMetrics
from serving.runtime import LoadedModel
from serving.slot import ModelSlot

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# loaded: a new version is served; unchanged: already serving it; refused: a defect of the
# version; failed: a transient fault, tried again; unavailable: the source is unreachable or
# names no version; busy: another reload is running (only /admin/reload sees it).
Outcome = Literal["loaded", "unchanged", "refused", "failed", "unavailable", "busy"]
RETRIED: frozenset[Outcome] = frozenset({"failed", "unavailable"})
FIRST_RETRY_S, MAX_RETRY_S = 1.0, 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class ReloadResult:
    outcome: Outcome
    version: str | None
    detail: str


@dataclass(frozen=True)
class RegistrySource:
    """`models:/<name>@<alias>` in the MLflow store at `tracking_uri` (and `registry_uri`).

    The client, and MLflow with it (most of a second to import), is made by the first poll,
    on the reload thread: the server is live before MLflow is imported or asked anything."""

    name: str
    alias: str
    tracking_uri: str
    registry_uri: str
    cache: Path

    @functools.cached_property
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    def describe(self) -> str:
        return f"models:/{self.name}@{self.alias} at {redact(self.tracking_uri)}"

    def latest(self) -> str | None:
        """The version the alias points at, None when it points nowhere yet; raises when the
        registry cannot be asked."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model or alias (yet): a file store says the latter
            # MLflow's basic auth (3.17) answers 403 for the alias of a model that does not
            # exist yet (to a user who is not an admin); reading the model itself says 404
            if error.error_code == "PERMISSION_DENIED" and not self._registered():
                return None
            raise
        return str(found.version)

    def _registered(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise
        return True

    def fetch(self, version: str) -> Bundle:
        return download_version(self.client, self.name, version, self.cache)

    def discard(self, bundle: Bundle) -> None:
        discard(bundle)  # our cached copy: a forced reload downloads it again


@dataclass(frozen=True)
class FolderSource:
    """A local model folder (what `mlops export` writes)."""

    folder: Path

    def describe(self) -> str:
        return str(self.folder)

    def latest(self) -> str | None:
        """The folder's version and a fingerprint of its files (names, sizes, times): any
        change is a new key, so a folder refused while it was being copied is tried again
        once the copy has changed it."""
        if not (self.folder / "MLmodel").is_file():
            return None
        bundle = read_bundle(self.folder)
        files = sorted(p for p in self.folder.rglob("*") if p.is_file())
        stats = [(str(p.relative_to(self.folder)), p.stat()) for p in files]
        seen = repr([(name, s.st_size, s.st_mtime_ns) for name, s in stats]).encode()
        return f"{bundle.version}@{hashlib.sha256(seen).hexdigest()[:12]}"

    def fetch(self, version: str) -> Bundle:
        return read_bundle(self.folder, version=version.split("@")[0])

    def discard(self, bundle: Bundle) -> None:
        """The user's folder is theirs: nothing is removed."""


Source = RegistrySource | FolderSource


@dataclass
class _Problem:
    """What keeps the wanted version from being served, since when."""

    detail: str
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    attempts: int = 1

    def describe(self) -> str:
        tries = "" if self.attempts == 1 else f", {self.attempts} tries"
        return f"{self.detail} (since {self.since:%Y-%m-%d %H:%M:%S} UTC{tries})"


class ModelManager:
    def __init__(
        self,
        source: Source,
        slot: ModelSlot,
        metrics: ServingMetrics,
        threads: int,
        drift_window_rows: int = 10_000,
        poll_interval_s: float = 0.0,
        live: LiveFeatures | None = None,
    ) -> None:
        self.source = source
        self.live = live  # the online store: each model served brings its build's snapshot
        self.slot = slot
        self.metrics = metrics
        self.threads = threads
        self.drift_window_rows = drift_window_rows
        self.poll_interval_s = poll_interval_s  # 0: after the first load, /admin/reload only
        self.refused: dict[str, str] = {}  # key -> reason: a defective version is not retried
        self.served_key: str | None = None
        self.last_result: ReloadResult | None = None
        self.problem: _Problem | None = None
        self._lock = asyncio.Lock()
        self._due = 0.0  # loop time of the poller's next look: at once, then as scheduled
        self._wake = asyncio.Event()

    def status(self) -> str:
        """What is wrong now, in words, or else the last thing that happened."""
        if self.problem is not None:
            return self.problem.describe()
        if self.last_result is not None:
            return self.last_result.detail
        return f"loading from {self.source.describe()}"

    async def reload(self, force: bool = False) -> ReloadResult:
        """Check the source and load a new version, one reload at a time: a second caller is
        answered `busy` at once instead of waiting behind the first."""
        if self._lock.locked():
            return ReloadResult("busy", None, f"a reload is already running ({self.status()})")
        async with self._lock:
            result = await _off_loop(self._reload, force)
        self._record(result)
        self._schedule(result)
        return result

    async def poll(self) -> None:
        """Load the first model, then look again every interval (sooner while a transient
        fault lasts); runs until cancelled. Loads run on a thread: the loop keeps serving."""
        loop = asyncio.get_running_loop()
        while True:
            wait = self._due - loop.time()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(wait, 3600))
                continue
            if (await self.reload()).outcome == "busy":  # /admin/reload's: it reschedules
                async with self._lock:
                    pass

    def _record(self, result: ReloadResult) -> None:
        if result.outcome != "unchanged":  # what /model reports: the last thing that happened
            self.last_result = result
        self.metrics.reloads.labels(result.outcome).inc()
        if result.outcome in RETRIED:
            if self.problem is None:
                self.problem = _Problem(result.detail)
            else:  # the same fault, or the next one of one outage: since when it started
                self.problem.detail = result.detail
                self.problem.attempts += 1
            self.metrics.problem_since.set(self.problem.since.timestamp())
            logger.warning("no new model: %s", self.problem.describe())
            return
        self.problem = None
        self.metrics.problem_since.set(0)
        if result.outcome == "refused":
            self.metrics.last_refusal.set(time.time())
            logger.error("refused %s: %s", result.version, result.detail)
        elif result.outcome == "loaded":
            logger.info("serving %s", result.detail)

    def _schedule(self, result: ReloadResult) -> None:
        """The poller's next look: the interval, or sooner (1 s, doubling) while a transient
        fault lasts, so the server is ready soon after MLflow returns."""
        interval = self.poll_interval_s or float("inf")
        wait = interval
        if result.outcome in RETRIED and self.problem is not None:
            backoff = FIRST_RETRY_S * 2 ** min(self.problem.attempts - 1, 16)
            wait = min(backoff, MAX_RETRY_S, interval)
        self._due = asyncio.get_running_loop().time() + wait
        self._wake.set()

    def _reload(self, force: bool) -> ReloadResult:
        try:
            key = self.source.latest()
        except Exception as error:  # the registry is down: keep serving what we have
            return ReloadResult(
                "unavailable", None, f"{self.source.describe()} unreachable: {_short(error)}"
            )
        if key is None:
            return ReloadResult("unavailable", None, f"nothing at {self.source.describe()} yet")
        if key == self.served_key and not force:
            return ReloadResult("unchanged", key, "already serving it")
        if key in self.refused and not force:
            return ReloadResult("refused", key, self.refused[key])
        bundle = None
        try:
            bundle = self.source.fetch(key)
            model = LoadedModel.load(bundle, self.threads, drift_rows=self.drift_window_rows)
            if self.live is not None:
                self.live.attach(model)
        except ModelRefusedError as error:  # a defect of the version: no retry changes it
            self.refused[key] = str(error)
            if bundle is not None:
                self.source.discard(bundle)
            return ReloadResult("refused", key, str(error))
        except Exception as error:  # transient (network, disk, a copy in progress): retried
            if not isinstance(error, OSError):
                logger.warning("loading %s failed", key, exc_info=True)
            return ReloadResult("failed", key, f"loading {key} failed: {_short(error)}")
        # The lookups hold millions of small objects that never die: keep them out of the
        # cyclic GC's generations, or every full collection walks them (tens of ms of p99).
        gc.collect()
        gc.freeze()
        self.slot.swap(model)  # the model and its drift monitor, in one assignment
        self.served_key = key
        self.metrics.served(model.name, model.version, model.bundle.holdout)
        return ReloadResult("loaded", model.version, f"{model.name} v{model.version}")


def _short(error: BaseException) -> str:
    """An exception as a line a person can act on: the system error underneath, if any (MLflow
    wraps a refused connection or a full disk in its own exception, or only quotes it in its
    message), else its type and its message cut short."""
    message = " ".join(str(error).split())
    codes = []
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(getattr(cause, "errno", None), int):
            codes.append(cause.errno)
        cause = cause.__cause__ or cause.__context__
    codes += [int(code) for code in re.findall(r"\[Errno (\d+)\]", message)]
    for code in codes:
        if code in errno.errorcode:
            return f"{errno.errorcode[code]} ({os.strerror(code)}) in {type(error).__name__}"
    return f"{type(error).__name__}: {message[:200]}" if message else type(error).__name__


async def _off_loop(function: Callable[..., T], *args: object) -> T:
    """`function(*args)` on a daemon thread of its own. Not the loop's default executor: a
    call stuck in MLflow's retries would hold the process at exit (the executor's threads
    are joined); a daemon thread is left behind when the server stops."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if future.done():  # the awaiting coroutine was cancelled (the server is stopping)
            return
        if ok:
            future.set_result(value)  # type: ignore[arg-type]
        else:
            future.set_exception(value)  # type: ignore[arg-type]

    def work() -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: a thread's own niceness
            # the cores go to the threads answering requests first, loading when they idle
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            ok, value = True, function(*args)
        except BaseException as error:  # handed to the awaiting coroutine
            ok, value = False, error
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, ok, value)

    threading.Thread(target=work, name="model-reload", daemon=True).start()
    return await future
