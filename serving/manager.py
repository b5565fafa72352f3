"""Where the served model comes from, and how a new one replaces it without a dropped request.

A reload resolves the source (the registry alias, or a local folder), and if it names a
version other than the one being served, downloads, verifies, loads and warms it on a worker
thread, then swaps it into the slot in one assignment. A version that fails any check is
refused and remembered, the old model keeps serving, and the outcome is logged and counted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from serving.batcher import ModelSlot
from serving.bundle import Bundle, ModelRejectedError, download_version, read_bundle
from serving.drift import DriftMonitor
from serving.metrics import ServingMetrics
from serving.runtime import LoadedModel

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

Outcome = Literal["loaded", "unchanged", "refused", "unavailable"]


@dataclass(frozen=True)
class ReloadResult:
    outcome: Outcome
    version: str | None
    detail: str


@dataclass(frozen=True)
class RegistrySource:
    """`models:/<name>@<alias>` in the MLflow registry `client` is bound to."""

    name: str
    alias: str
    client: MlflowClient
    cache: Path

    def describe(self) -> str:
        return f"models:/{self.name}@{self.alias}"

    def latest(self) -> str | None:
        """The version the alias points at, or None when it points nowhere yet."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException:
            return None
        return str(found.version)

    def fetch(self, version: str) -> Bundle:
        return download_version(self.client, self.name, version, self.cache)


@dataclass(frozen=True)
class FolderSource:
    """A local model folder (what `mlops export` writes)."""

    folder: Path

    def describe(self) -> str:
        return str(self.folder)

    def latest(self) -> str | None:
        if not (self.folder / "MLmodel").is_file():
            return None
        bundle = read_bundle(self.folder)
        # the onnx sha names a folder's version, so a changed file is a new version
        return f"{bundle.version}@{bundle.metadata.get('onnx_sha256', '')[:12]}"

    def fetch(self, version: str) -> Bundle:
        return read_bundle(self.folder, version=version.split("@")[0])


Source = RegistrySource | FolderSource


class ModelManager:
    def __init__(
        self,
        source: Source,
        slot: ModelSlot,
        metrics: ServingMetrics,
        threads: int,
        drift_window_rows: int = 10_000,
    ) -> None:
        self.source = source
        self.drift_window_rows = drift_window_rows
        self.slot = slot
        self.metrics = metrics
        self.threads = threads
        self.refused: dict[str, str] = {}  # version -> reason, so a bad one is not retried
        self.served_key: str | None = None
        self.last_result: ReloadResult | None = None
        self._lock = asyncio.Lock()

    async def reload(self, force: bool = False) -> ReloadResult:
        async with self._lock:
            result = await asyncio.to_thread(self._reload, force)
        if result.outcome != "unchanged":  # what /model reports: the last thing that happened
            self.last_result = result
        self.metrics.reloads.labels(result.outcome).inc()
        if result.outcome == "refused":
            self.metrics.last_refusal.set(time.time())
            logger.error("refused %s: %s", result.version, result.detail)
        elif result.outcome == "loaded":
            logger.info("serving %s", result.detail)
        return result

    def _reload(self, force: bool) -> ReloadResult:
        try:
            key = self.source.latest()
        except Exception as error:  # the registry is down: keep serving what we have
            return ReloadResult("unavailable", None, f"{self.source.describe()}: {error}")
        if key is None:
            return ReloadResult("unavailable", None, f"nothing at {self.source.describe()} yet")
        if key == self.served_key and not force:
            return ReloadResult("unchanged", key, "already serving it")
        if key in self.refused and not force:
            return ReloadResult("refused", key, self.refused[key])
        try:
            bundle = self.source.fetch(key)
            model = LoadedModel.load(bundle, threads=self.threads)
        except (ModelRejectedError, OSError, ValueError) as error:
            self.refused[key] = str(error)
            return ReloadResult("refused", key, str(error))
        # The lookups hold millions of small objects that never die: keep them out of the
        # cyclic GC's generations, or every full collection walks them (tens of ms of p99).
        gc.collect()
        gc.freeze()
        self.slot.swap(model)
        self.served_key = key
        self.metrics.served(model.name, model.version)
        self.metrics.drift = DriftMonitor(model.spec, self.drift_window_rows)
        return ReloadResult("loaded", model.version, f"{model.name} v{model.version}")

    async def poll(self, interval_s: float) -> None:
        """Reload whenever the source points at a new version; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.reload()
            except Exception:  # a poller that dies silently would freeze the served model
                logger.exception("model poll failed")
