"""Where the data pipeline keeps its state under `MLOPS_HOME` (DESIGN.md, "State").

    data/bronze/<table>/month=YYYY-MM/*.parquet   validated rows (one folder swapped per month)
    data/quarantine/<table>/*.parquet             rejected rows
    data/generations/<generation>/                one feature build, whole:
        features/{train,valid,test}/*.parquet       the feature table, split by time
        lookups/                                    the online lookup tables
        feature_spec.json                           the contract, with the lookups' sha256s
    data/current -> generations/<generation>      the published build (a relative symlink)

A feature build writes a new generation folder and publishes it by replacing the `current`
symlink, one rename: a reader going through `current` sees the whole old build or the whole
new one, never a spec whose sha256s belong to other lookups. Readers that read several parts
over time (training reads the splits, then logs the spec and lookups at its end) take
`pinned()` once, so a build published meanwhile cannot mix into their reads; the generation
before the current one is kept until the next build for them (`storage.prune_generations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataLayout:
    """Paths under `<home>/data`; nothing here creates folders, the writers do.

    `generation` None follows the `current` link at every access; a name pins that build."""

    home: Path
    generation: str | None = None

    @property
    def root(self) -> Path:
        return self.home / "data"

    def bronze(self, table: str) -> Path:
        return self.root / "bronze" / table

    def quarantine(self, table: str) -> Path:
        return self.root / "quarantine" / table

    @property
    def predictions(self) -> Path:
        """The prediction log (`serving.prediction_log`): one folder per serving day."""
        return self.root / "predictions"

    @property
    def outcomes(self) -> Path:
        """The arrivals the server applied (the labels of its predictions), as the log."""
        return self.root / "outcomes"

    @property
    def generations(self) -> Path:
        return self.root / "generations"

    @property
    def current(self) -> Path:
        """The symlink to the published feature build."""
        return self.root / "current"

    @property
    def build(self) -> Path:
        """The feature build this layout reads: the pinned generation, else `current`."""
        return self.generations / self.generation if self.generation else self.current

    def pinned(self) -> DataLayout:
        """This layout fixed on the build published now (itself when none is, or when
        `current` is a plain folder that someone wrote by hand)."""
        if self.generation or not self.current.is_symlink():
            return self
        return DataLayout(self.home, self.current.readlink().name)

    @property
    def features(self) -> Path:
        return self.build / "features"

    def split(self, name: str) -> Path:
        return self.features / name

    @property
    def spec(self) -> Path:
        return self.build / "feature_spec.json"

    @property
    def lookups(self) -> Path:
        return self.build / "lookups"

    def month_partition(self, table: str, month: str) -> Path:
        return self.bronze(table) / f"month={month}"

    def months(self, table: str) -> list[str]:
        """The months a time-partitioned bronze table holds, oldest first."""
        root = self.bronze(table)
        if not root.is_dir():
            return []
        return sorted(
            p.name.removeprefix("month=")
            for p in root.iterdir()
            if p.is_dir() and p.name.startswith("month=") and any(p.glob("*.parquet"))
        )
