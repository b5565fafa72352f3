"""What every peer server calls, so that only the server differs from ours.

The peers (`benchmarks/peers/<peer>.py`, each run in an environment of its own: they pin
conflicting versions) load the model with ours' loader (every file checked against its sha256,
the parity check, the same onnxruntime settings: a pooled session for large batches and a
one-thread session for small ones), and score with ours' feature transform and encoding:

- *model only*: the encoded inputs (`categorical` int64, `numerical` float32) -> one
  onnxruntime call (`score_encoded`, `score_encoded_many` for a peer's batch);
- *predict*: the `/predict` body a user would send ours, `{"flights": [...]}`, validated by
  ours' validator, through the shared transform -> the same fields as ours' answer
  (`predict`, `predict_many`).

Imported with the repository on PYTHONPATH; needs numpy, pandas, onnxruntime, pydantic,
pyyaml and filelock in the peer's environment (`benchmarks/peers/requirements/`).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

from serving.bundle import read_bundle
from serving.protocols import validate_flights
from serving.runtime import LoadedModel, Scored

MAX_ROWS = 10_000  # flights per request, as ours (ServeConfig.max_request_rows)
MODEL_DIR = "PEER_MODEL_DIR"  # the model folder a peer loads at start, from the environment


def load(folder: str | Path | None = None) -> LoadedModel:
    """The model folder (`mlops export`, or a registry version's download), as ours loads it
    with one worker: onnxruntime's threads = the cores."""
    folder = folder or os.environ[MODEL_DIR]
    return LoadedModel.load(read_bundle(Path(folder)), threads=os.cpu_count() or 1)


# --- model only ---------------------------------------------------------------------------


def encoded(body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """`{"categorical": [[...]], "numerical": [[...]]}` -> the model's two input tensors."""
    return (
        np.asarray(body["categorical"], dtype=np.int64),
        np.asarray(body["numerical"], dtype=np.float32),
    )


def score_encoded(model: LoadedModel, categorical: np.ndarray, numerical: np.ndarray) -> list:
    return model.run(categorical, numerical).tolist()


def score_encoded_many(
    model: LoadedModel, inputs: list[tuple[np.ndarray, np.ndarray]]
) -> list[list[float]]:
    """Several requests' tensors in one onnxruntime call, the answers split back."""
    sizes = [len(c) for c, _ in inputs]
    probabilities = model.run(
        np.concatenate([c for c, _ in inputs]), np.concatenate([n for _, n in inputs])
    ).tolist()
    bounds = np.cumsum([0, *sizes]).tolist()
    return [probabilities[a:b] for a, b in itertools.pairwise(bounds)]


# --- the full /predict ----------------------------------------------------------------------


def flights_of(body: Any) -> list[dict]:
    """ours' /predict body -> validated flight rows (ValueError naming the field if bad)."""
    if not isinstance(body, dict) or not isinstance(body.get("flights"), list):
        raise ValueError('body: expected {"flights": [...]}')
    return validate_flights(body["flights"], "flights", MAX_ROWS)


def flights_of_columns(columns: dict[str, list]) -> list[dict]:
    """A V2 request's tensors (one 1-D column per raw field) -> flight records, which
    `flights_of` then validates."""
    sizes = {len(values) for values in columns.values()}
    if len(sizes) > 1:
        raise ValueError(f"inputs: the tensors differ in length ({sorted(sizes)})")
    rows = sizes.pop() if sizes else 0
    return [{name: values[i] for name, values in columns.items()} for i in range(rows)]


def predict(model: LoadedModel, body: Any) -> dict:
    """ours' /predict, minus ours' server: validate, transform, encode, score, answer."""
    rows = flights_of(body)
    return answers(model.score_rows(rows), [len(rows)])[0]


def predict_many(model: LoadedModel, bodies: list[Any]) -> list[dict]:
    """Several /predict bodies as one transform and one onnxruntime call (a peer's batch)."""
    requests = [flights_of(body) for body in bodies]
    rows = [row for request in requests for row in request]
    return answers(model.score_rows(rows), [len(request) for request in requests])


def answers(scored: Scored, sizes: list[int]) -> list[dict]:
    """One answer per request, each as ours' /predict returns it."""
    as_of = np.datetime_as_string(scored.as_of.astype("int64").astype("datetime64[m]")).tolist()
    predictions = [
        {
            "delay_probability": p,
            "delayed": d,
            "defaults_used": list(u),
            "as_of": a,
            "stale": list(s),
        }
        for p, d, u, a, s in zip(
            scored.probabilities.tolist(),
            scored.delayed.tolist(),
            scored.defaults_used,
            as_of,
            scored.stale,
            strict=True,
        )
    ]
    model = {"name": scored.model.name, "version": scored.model.version}
    bounds = np.cumsum([0, *sizes]).tolist()
    return [
        {"predictions": predictions[a:b], "model": model} for a, b in itertools.pairwise(bounds)
    ]
