"""Where the data pipeline keeps its state under `MLOPS_HOME` (DESIGN.md, "State")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataLayout:
    """Paths under `<home>/data`; nothing here creates folders, the writers do."""

    home: Path

    @property
    def root(self) -> Path:
        return self.home / "data"

    def bronze(self, table: str) -> Path:
        return self.root / "bronze" / table

    def quarantine(self, table: str) -> Path:
        return self.root / "quarantine" / table

    @property
    def features(self) -> Path:
        return self.root / "features"

    def split(self, name: str) -> Path:
        return self.features / name

    @property
    def spec(self) -> Path:
        return self.root / "feature_spec.json"

    @property
    def lookups(self) -> Path:
        return self.root / "lookups"

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
