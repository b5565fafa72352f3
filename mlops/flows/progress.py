"""How a flow reports progress without knowing about a terminal."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

logger = logging.getLogger(__name__)

# update(completed=..., advance=..., total=..., description=...), as rich's Progress.update
Update = Callable[..., None]


class Progress(Protocol):
    def stage(self, description: str, total: float | None = None) -> AbstractContextManager[Update]:
        """A unit of work with a bar; the update callback moves it."""
        ...

    def note(self, message: str) -> None:
        """A line for the user between stages (a wait for another writer's lock)."""
        ...


class NoProgress:
    """For callers with nothing to show (the scheduler, tests)."""

    @contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[Update]:
        del description, total
        yield lambda **_: None

    def note(self, message: str) -> None:
        logger.info("%s", message)
