"""How a flow reports progress without knowing about a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

# update(completed=..., advance=..., total=..., description=...), as rich's Progress.update
Update = Callable[..., None]


class Progress(Protocol):
    def stage(self, description: str, total: float | None = None) -> AbstractContextManager[Update]:
        """A unit of work with a bar; the update callback moves it."""
        ...


class NoProgress:
    """For callers with nothing to show (the scheduler, tests)."""

    @contextmanager
    def stage(self, description: str, total: float | None = None) -> Iterator[Update]:
        del description, total
        yield lambda **_: None
