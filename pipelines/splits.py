"""The time split: train on the past, validate on the next month, test on the months after."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SplitPlan:
    """Months before `valid_start` train, months before `test_start` validate, the rest test.

    A random split would leak late-season congestion into training; a time split is what the
    model faces in production.
    """

    valid_start: str = "2013-10"
    test_start: str = "2013-11"

    def __post_init__(self) -> None:
        if not self.valid_start < self.test_start:
            raise ValueError(
                f"valid_start {self.valid_start} must precede test_start {self.test_start}"
            )

    def split_of(self, month: str) -> str:
        if month < self.valid_start:
            return "train"
        return "valid" if month < self.test_start else "test"


def next_month(month: str) -> str:
    year, number = (int(part) for part in month.split("-"))
    return f"{year + number // 12}-{number % 12 + 1:02d}"


def previous_month(month: str) -> str:
    year, number = (int(part) for part in month.split("-"))
    return f"{year - (number == 1)}-{(number - 2) % 12 + 1:02d}"


def latest_plan(newest: str) -> SplitPlan:
    """Test on the newest month, validate on the one before, train on all earlier months:
    the split a retrain uses as data arrives month by month."""
    return SplitPlan(valid_start=previous_month(newest), test_start=newest)
