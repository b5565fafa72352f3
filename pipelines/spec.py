"""The feature spec: the contract between the feature table, training and serving.

It records the columns, their vocabularies (index 0 is the out-of-vocabulary bucket), the
training-month statistics used for normalization, defaults and drift (PSI bins), the split
windows, and the sha256 of every lookup file. Statistics come from mergeable per-partition
summaries, so the Dask graph and the single-process reference produce the same spec.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel

from pipelines.lookups import Codebook
from pipelines.storage import write_bytes_atomic
from pipelines.transform import CATEGORICAL, NUMERICAL, RAW_INPUTS

LABEL = "delayed"
SAMPLE_ROWS = 50_000  # per partition, for quantiles, unless the caller budgets otherwise
QUANTILES = [round(q, 2) for q in np.linspace(0, 1, 21)]


class CategoricalFeature(BaseModel):
    name: str
    vocabulary: list[str]  # code i + 1 for vocabulary[i]; code 0 is out-of-vocabulary
    oov_index: int = 0

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + 1

    def encode(self, values: np.ndarray) -> np.ndarray:
        """1 + the position in the vocabulary; 0 (out of vocabulary) for anything else."""
        return self.codebook.encode(values) + 1

    @cached_property  # built on first use, then a plain attribute of the instance
    def codebook(self) -> Codebook:
        return Codebook(self.vocabulary)


class NumericalFeature(BaseModel):
    name: str
    mean: float
    std: float
    min: float
    max: float
    default: float  # the training median: what a missing value becomes
    missing_rate: float
    quantiles: list[float]  # at QUANTILES
    psi_edges: list[float]  # inner bin edges; the outer bins are open
    psi_fractions: list[float]  # training share of each bin


class SplitSummary(BaseModel):
    months: list[str]
    rows: int
    positive_rate: float
    unlabelled: int  # cancelled or diverted: no arrival, so no label


class LookupFile(BaseModel):
    path: str  # relative to the feature build (the spec's folder): lookups/<file>
    sha256: str
    bytes: int


class FeatureSpec(BaseModel):
    version: int = 1
    label: str = LABEL
    label_definition: str = "arr_delay > 15 minutes (the DOT's on-time definition)"
    prediction_time: str = "scheduled_departure, naive local New York time"
    raw_inputs: list[str] = RAW_INPUTS
    categorical: list[CategoricalFeature]
    numerical: list[NumericalFeature]
    splits: dict[str, SplitSummary]
    lookups: dict[str, LookupFile] = {}
    created_at: datetime

    @cached_property
    def defaults(self) -> np.ndarray:
        """The numerical features' defaults (training medians), in spec order."""
        return np.array([f.default for f in self.numerical], dtype="float64")

    def save(self, path: Path) -> None:
        write_bytes_atomic(self.model_dump_json(indent=2).encode(), path)

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        return cls.model_validate_json(path.read_text())


@dataclass
class PartSummary:
    """Mergeable statistics of one partition of the feature table."""

    name: str  # the partition
    split: str
    rows: int = 0
    positives: int = 0
    unlabelled: int = 0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    sums: dict[str, tuple[float, float, float, float, float]] = field(default_factory=dict)
    sample: pd.DataFrame | None = None


def summarize(
    table: pd.DataFrame, name: str, split: str, unlabelled: int, sample_rows: int = SAMPLE_ROWS
) -> PartSummary:
    summary = PartSummary(name, split, len(table), int(table[LABEL].sum()), unlabelled)
    for name in CATEGORICAL:
        summary.counts[name] = table[name].value_counts().to_dict()
    for name in NUMERICAL:
        values = table[name].to_numpy("float64")
        present = values[~np.isnan(values)]
        summary.sums[name] = (
            float(len(present)),
            float(present.sum()),
            float((present**2).sum()),
            float(present.min()) if len(present) else np.inf,
            float(present.max()) if len(present) else -np.inf,
        )
    rows = table[NUMERICAL].astype("float32")
    seed = zlib.crc32(name.encode())  # the same rows whichever process summarizes
    summary.sample = rows.sample(min(len(rows), sample_rows), random_state=seed)
    return summary


def _numerical(name: str, parts: list[PartSummary], sample: pd.Series, rows: int):
    n = sum(p.sums[name][0] for p in parts)
    total = sum(p.sums[name][1] for p in parts)
    squares = sum(p.sums[name][2] for p in parts)
    mean = total / n if n else 0.0
    std = float(np.sqrt(max(squares / n - mean**2, 0.0))) if n else 1.0
    present = sample.dropna().to_numpy("float64")
    quantiles = np.quantile(present, QUANTILES) if len(present) else np.zeros(len(QUANTILES))
    edges, fractions = psi_bins(present, quantiles)
    return NumericalFeature(
        name=name,
        mean=mean,
        std=std if std > 0 else 1.0,
        min=min(p.sums[name][3] for p in parts) if n else 0.0,
        max=max(p.sums[name][4] for p in parts) if n else 0.0,
        default=float(np.median(present)) if len(present) else 0.0,
        missing_rate=1 - n / rows if rows else 0.0,
        quantiles=[float(q) for q in quantiles],
        psi_edges=edges,
        psi_fractions=fractions,
    )


def psi_bins(
    values: np.ndarray, quantiles: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """The PSI's reference: inner bin edges at the inner `QUANTILES` of `values` (equal ones
    merged; the outer bins are open) and the share of `values` in each bin."""
    if quantiles is None:
        quantiles = np.quantile(values, QUANTILES) if len(values) else np.zeros(len(QUANTILES))
    edges = np.unique(np.asarray(quantiles)[1:-1].round(6))
    bins = np.searchsorted(edges, values, side="right")
    fractions = np.bincount(bins, minlength=len(edges) + 1) / max(len(values), 1)
    return [float(e) for e in edges], [float(f) for f in fractions]


# Categories seen fewer times than this in the training months share the out-of-vocabulary code.
MIN_CATEGORY_COUNT = 10


def build_spec(parts: list[PartSummary], min_category_count: int) -> FeatureSpec:
    """The spec from per-partition summaries; statistics from the training months only."""
    train = sorted((p for p in parts if p.split == "train"), key=lambda p: p.name)
    if not train:
        raise ValueError("no training months: the spec's statistics need at least one")
    rows = sum(p.rows for p in train)
    categorical = []
    for name in CATEGORICAL:
        counts: dict[str, int] = {}
        for part in train:
            for value, count in part.counts[name].items():
                counts[value] = counts.get(value, 0) + count
        kept = sorted(v for v, c in counts.items() if c >= min_category_count)
        categorical.append(CategoricalFeature(name=name, vocabulary=kept))
    sample = pd.concat([p.sample for p in train if p.sample is not None], ignore_index=True)
    numerical = [_numerical(name, train, sample[name], rows) for name in NUMERICAL]
    splits = {}
    for split in ("train", "valid", "test"):
        chosen = [p for p in parts if p.split == split]
        n = sum(p.rows for p in chosen)
        splits[split] = SplitSummary(
            months=sorted({p.name[:7] for p in chosen}),
            rows=n,
            positive_rate=sum(p.positives for p in chosen) / n if n else 0.0,
            unlabelled=sum(p.unlabelled for p in chosen),
        )
    return FeatureSpec(
        categorical=categorical, numerical=numerical, splits=splits, created_at=datetime.now(UTC)
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Encoded:
    """Model inputs: category codes, numerical values with defaults filled, and where."""

    categorical: np.ndarray  # int64 [rows, len(spec.categorical)]
    numerical: np.ndarray  # float32 [rows, len(spec.numerical)]
    defaults_used: np.ndarray  # bool [rows, len(spec.numerical)]


def encode(features: pd.DataFrame | Mapping[str, np.ndarray], spec: FeatureSpec) -> Encoded:
    """Features (a table, or the arrays of `feature_arrays`) -> the model's two inputs."""
    rows = len(features[spec.categorical[0].name]) if spec.categorical else len(features)
    codes = np.zeros((rows, len(spec.categorical)), dtype="int64")
    for j, feature in enumerate(spec.categorical):
        codes[:, j] = feature.encode(np.asarray(features[feature.name], dtype=object))
    if spec.numerical:  # one [features, rows] conversion: several times faster than a stack
        values = np.array([features[f.name] for f in spec.numerical], dtype="float64").T
    else:
        values = np.empty((rows, 0))
    missing = np.ascontiguousarray(np.isnan(values))
    values = np.ascontiguousarray(np.where(missing, spec.defaults, values), dtype="float32")
    return Encoded(codes, values, missing)


# a labelled split as the arrays frameworks fit on: category codes, numerical values, labels
Part = tuple[np.ndarray, np.ndarray, np.ndarray]


def part_of(table: pd.DataFrame, spec: FeatureSpec, encoded: Encoded | None = None) -> Part:
    """A split encoded exactly as serving encodes (or as `encoded` already is), and its labels."""
    encoded = encoded or encode(table, spec)
    return encoded.categorical, encoded.numerical, table[LABEL].to_numpy()
