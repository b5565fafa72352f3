"""The served model handle: the one piece of global mutable state the server has.

Requests read `current` without a lock; a reload builds, checks and warms the new model fully
(`serving.manager`), then replaces the single reference, so no request ever sees a half-loaded
model, and a batch reads it once (`serving.batcher`), so it is scored by one model whole.
"""

from __future__ import annotations

from serving.runtime import LoadedModel


class ModelSlot:
    def __init__(self) -> None:
        self.current: LoadedModel | None = None

    def swap(self, model: LoadedModel) -> None:
        self.current = model  # one reference assignment
