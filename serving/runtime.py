"""A loaded model: an onnxruntime session, its feature spec and lookups, checked and warm.

`LoadedModel.load` is the only way in: it verifies the bundle's sha256s, opens the session,
checks its inputs and output against the spec, reproduces the parity sample recorded at
training time, and runs a warm-up. A model that fails any step raises `ModelRejectedError` and is
never served.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import onnxruntime as ort
import pandas as pd

from pipelines.contract import INPUTS, OUTPUT, PARITY_ATOL, session_options
from pipelines.lookups import Lookups, load_lookups
from pipelines.spec import Encoded, FeatureSpec, encode
from pipelines.transform import AS_OF, RAW_INPUTS, feature_arrays, known_until
from serving.bundle import Bundle, ModelRejectedError, verify
from serving.drift import DriftMonitor
from serving.live import ModelView

logger = logging.getLogger(__name__)

NAME_PATTERNS = 4096  # distinct defaults_used patterns remembered per model
# Batches up to this many rows run on a single-threaded session: waking a pool costs more than
# it saves below a few thousand rows (benchmarks/RESULTS.md), and the request path's batches
# are scored on the event loop's thread, which must not wait on other threads.
POOLED_ROWS = 1024


@dataclass(frozen=True)
class Scored:
    """One batch's predictions, and the model that made them."""

    probabilities: np.ndarray  # float32 [rows]
    delayed: np.ndarray  # bool [rows]
    defaults_used: list[tuple[str, ...]]  # per row, the features that fell back to a default
    numerical: np.ndarray  # the encoded numerical inputs, for drift monitoring
    missing: np.ndarray  # bool, where `numerical` holds a default instead of a value
    model: LoadedModel
    as_of: np.ndarray  # float64 minutes (New York): what each prediction knew up to
    stale: list[tuple[str, ...]]  # per row, the event sources older than their maximum age
    columns: dict[str, np.ndarray]  # the flights as scored, one array per raw field


def providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA through onnxruntime-gpu when it is installed and sees a GPU, else the CPU."""
    available = ort.get_available_providers()
    chosen = (
        ["CUDAExecutionProvider"] if prefer_gpu and "CUDAExecutionProvider" in available else []
    )
    return [*chosen, "CPUExecutionProvider"]


class LoadedModel:
    def __init__(
        self,
        bundle: Bundle,
        session: ort.InferenceSession,
        spec: FeatureSpec,
        lookups: Lookups,
        single: ort.InferenceSession | None = None,
        drift_rows: int = 10_000,
    ) -> None:
        self.bundle = bundle
        self.session = session  # the configured threads: large batches
        self.single = single or session  # one thread: small batches
        self.spec = spec
        self.lookups = lookups
        self.threshold = bundle.decision_threshold
        self.numerical_names = np.array([f.name for f in spec.numerical], dtype=object)
        self._names_by_pattern: dict[bytes, tuple[str, ...]] = {}
        self.loaded_at = datetime.now(UTC)
        # the served inputs against this model's training distribution: swapped with it, so a
        # batch scored by one model never updates the monitor of another (of another width)
        self.drift = DriftMonitor(spec, drift_rows, bundle.metadata.get("output_psi"))
        self.live: ModelView | None = None  # its view of the online store, if the server has one

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> str:
        return self.bundle.version

    @classmethod
    def load(
        cls, bundle: Bundle, threads: int = 1, warmup_rows: int = 256, drift_rows: int = 10_000
    ) -> LoadedModel:
        started = time.perf_counter()
        verify(bundle)
        spec = FeatureSpec.load(bundle.spec)
        session = _session(bundle, threads)
        single = _session(bundle, 1) if threads > 1 else None
        _check_schema(session, spec, bundle)
        model = cls(bundle, session, spec, _lookups(bundle, spec), single, drift_rows)
        model._check_features()
        model._check_parity()
        model._warm_up(warmup_rows)
        logger.info(
            "loaded %s v%s in %.1f s (%s)",
            bundle.name,
            bundle.version,
            time.perf_counter() - started,
            session.get_providers()[0],
        )
        return model

    def run(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
        session = self.single if len(categorical) <= POOLED_ROWS else self.session
        return _infer(session, categorical, numerical)

    def encode(self, columns: Mapping[str, np.ndarray], rows: int) -> Encoded:
        """Raw flight columns -> the model's inputs: the shared transform and the spec."""
        if self.live is not None:
            return encode(self.live.features(columns, rows, self.lookups), self.spec)
        return encode(feature_arrays(columns, self.lookups, rows), self.spec)

    def vocabulary(self, name: str) -> list[str]:
        """The values of a categorical feature the model was trained with."""
        return next(f.vocabulary for f in self.spec.categorical if f.name == name)

    def score_frame(self, flights: pd.DataFrame) -> Scored:
        """A table of raw flights (RAW_INPUTS columns) -> probabilities."""
        return self.score_columns(table_columns(flights), len(flights))

    def score_rows(self, rows: list[dict]) -> Scored:
        """Validated request rows (dicts of RAW_INPUTS) -> probabilities: the request path."""
        return self.score_columns(rows_to_columns(rows), len(rows))

    def score_columns(self, columns: dict[str, np.ndarray], rows: int) -> Scored:
        """The shared transform, the spec's encoding and one onnxruntime call."""
        encoded = self.encode(columns, rows)
        probabilities = self.run(encoded.categorical, encoded.numerical)
        defaults = [self._default_names(row) for row in encoded.defaults_used]
        if self.live is None:
            as_of, stale = known_until(columns), [()] * rows
        else:
            as_of, stale = self.live.context(columns, rows)
        return Scored(
            probabilities,
            probabilities >= self.threshold,
            defaults,
            encoded.numerical,
            encoded.defaults_used,
            self,
            as_of,
            stale,
            columns,
        )

    def _default_names(self, row: np.ndarray) -> tuple[str, ...]:
        """The names of the features that fell back to a default, from a cache by pattern
        (few patterns repeat: the same weather gaps, the same empty windows)."""
        key = row.tobytes()
        names = self._names_by_pattern.get(key)
        if names is None:
            names = tuple(self.numerical_names[row])
            if len(self._names_by_pattern) < NAME_PATTERNS:
                self._names_by_pattern[key] = names
        return names

    def _check_features(self) -> None:
        """Every feature the spec names is one this server's transform computes."""
        flights = example_flights(self.spec, 1)
        computed = feature_arrays(table_columns(flights), self.lookups, 1)
        names = [f.name for f in (*self.spec.categorical, *self.spec.numerical)]
        unknown = [name for name in names if name not in computed]
        if unknown:
            raise ModelRejectedError(
                f"{self.name} v{self.version}: its spec names features this server does not "
                f"compute: {', '.join(unknown)} (a newer transform than this image's)"
            )

    def _check_parity(self) -> None:
        sample = json.loads(self.bundle.parity_sample.read_text())
        categorical = np.asarray(sample["categorical"], dtype="int64")
        numerical = np.asarray(sample["numerical"], dtype="float32")
        expected = np.asarray(sample[OUTPUT], dtype="float32")
        worst = 0.0
        for session in self.sessions:
            got = _infer(session, categorical, numerical)
            if len(got):
                worst = max(worst, float(np.max(np.abs(got - expected))))
        if not worst <= PARITY_ATOL:
            raise ModelRejectedError(
                f"{self.name} v{self.version}: the parity sample differs from training's "
                f"probabilities by {worst:.2e} (tolerance {PARITY_ATOL})"
            )

    @property
    def sessions(self) -> list[ort.InferenceSession]:
        return [self.session] if self.single is self.session else [self.session, self.single]

    def _warm_up(self, rows: int) -> None:
        """The first calls allocate; make them here, off the request path, in both sessions."""
        flights = example_flights(self.spec, rows)
        encoded = self.encode(table_columns(flights), rows)
        for session in self.sessions:
            for size in (1, rows):
                _infer(session, encoded.categorical[:size], encoded.numerical[:size])
        for size in (1, rows):  # and the whole request path
            self.score_frame(flights.head(size))


# Lookups by the sha256s of their files: versions trained on one feature table (the trials of a
# study, the challengers of a retrain, a rollback) share one build, about 1.5 s of CPU and the
# GIL a swap no longer takes from the requests. Weak: a build lives as long as a model uses it.
_BUILT: weakref.WeakValueDictionary[tuple[tuple[str, str], ...], Lookups] = (
    weakref.WeakValueDictionary()
)


def _lookups(bundle: Bundle, spec: FeatureSpec) -> Lookups:
    """The bundle's lookups (their files already checked against the spec's sha256s)."""
    key = tuple(sorted((name, entry.sha256) for name, entry in spec.lookups.items()))
    built = _BUILT.get(key) if key else None
    if built is None:
        built = load_lookups(bundle.lookups)
        if key:
            _BUILT[key] = built
    return built


def _infer(
    session: ort.InferenceSession, categorical: np.ndarray, numerical: np.ndarray
) -> np.ndarray:
    return session.run([OUTPUT], {"categorical": categorical, "numerical": numerical})[0]


def _session(bundle: Bundle, threads: int) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            str(bundle.onnx), session_options(threads), providers=providers()
        )
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelRejectedError(
            f"{bundle.name} v{bundle.version}: not a valid ONNX model: {error}"
        ) from error


def table_columns(flights: pd.DataFrame) -> dict[str, np.ndarray]:
    """A table of raw flights -> one array per raw field it has."""
    return {name: flights[name].to_numpy() for name in RAW_INPUTS if name in flights}


def rows_to_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Row dicts -> one array per raw field (no DataFrame on the request path)."""
    columns = {}
    for name in RAW_INPUTS:
        values = [row.get(name) for row in rows]
        if name == "scheduled_departure":
            columns[name] = _to_datetime64(values)
        elif name in ("distance", "flight"):
            columns[name] = np.array([np.nan if v is None else v for v in values], dtype="float64")
        else:
            columns[name] = np.array(values, dtype=object)
    if any(AS_OF in row for row in rows):
        columns[AS_OF] = _to_datetime64([row.get(AS_OF) for row in rows])
    return columns


EPOCH = datetime(1970, 1, 1)
MINUTE = timedelta(minutes=1)


def _to_datetime64(values: list) -> np.ndarray:
    """Naive datetimes -> datetime64, floored to the minute as the transform uses them: integer
    arithmetic per value, several times faster than numpy's conversion of datetime objects,
    which the rest (None, tz-aware values) still go through."""
    try:
        minutes = [(value - EPOCH) // MINUTE for value in values]
    except TypeError:
        return np.array(values, dtype="datetime64[ns]")
    return np.array(minutes, dtype="int64").astype("datetime64[m]")


def _check_schema(session: ort.InferenceSession, spec: FeatureSpec, bundle: Bundle) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    widths = {"categorical": len(spec.categorical), "numerical": len(spec.numerical)}
    types = {"categorical": "tensor(int64)", "numerical": "tensor(float)"}
    for name in INPUTS:
        found = inputs.get(name)
        if found is None or found.type != types[name] or found.shape[-1] != widths[name]:
            raise ModelRejectedError(
                f"{bundle.name} v{bundle.version}: input {name!r} should be {types[name]} "
                f"[batch, {widths[name]}] as the feature spec says, the model has "
                f"{None if found is None else (found.type, found.shape)}"
            )
    if [o.name for o in session.get_outputs()] != [OUTPUT]:
        raise ModelRejectedError(
            f"{bundle.name} v{bundle.version}: the model's output is not {OUTPUT!r}"
        )


def example_flights(spec: FeatureSpec, rows: int) -> pd.DataFrame:
    """Plausible raw flights from the spec's vocabularies, for warm-up and examples."""
    vocab = {f.name: f.vocabulary or ["UNK"] for f in spec.categorical}
    index = np.arange(rows)
    frame = pd.DataFrame(
        {
            "carrier": [vocab["carrier"][i % len(vocab["carrier"])] for i in index],
            "flight": (index % 2000 + 1).astype("int64"),
            "tailnum": [None] * rows,
            "origin": [vocab["origin"][i % len(vocab["origin"])] for i in index],
            "dest": [vocab["dest"][i % len(vocab["dest"])] for i in index],
            "scheduled_departure": pd.Timestamp("2013-12-01 06:00")
            + pd.to_timedelta(index * 7, unit="min"),
            "distance": np.full(rows, np.nan),
        }
    )
    return frame[RAW_INPUTS]
