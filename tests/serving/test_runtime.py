"""The loaded model's two onnxruntime sessions: one thread for the request path's batches, the
configured pool for large ones; the same probabilities from either."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from pipelines.contract import session_options
from serving.bundle import Bundle
from serving.runtime import OUTPUT, POOLED_ROWS, LoadedModel, example_flights, table_columns


@pytest.fixture(scope="module")
def pooled(model_folder: Bundle) -> LoadedModel:
    return LoadedModel.load(model_folder, threads=2)


def _threads(session) -> int:
    return session.get_session_options().intra_op_num_threads


def test_small_batches_run_single_threaded_and_large_ones_on_the_pool(
    pooled: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _threads(pooled.single) == 1
    assert _threads(pooled.session) == 2
    flights = example_flights(pooled.spec, POOLED_ROWS + 1)
    encoded = pooled.encode(table_columns(flights), len(flights))

    used = []
    for name in ("single", "session"):
        session = getattr(pooled, name)
        monkeypatch.setattr(
            pooled, name, _Recording(session, lambda rows, name=name: used.append((name, rows)))
        )
    small = pooled.run(encoded.categorical[:POOLED_ROWS], encoded.numerical[:POOLED_ROWS])
    large = pooled.run(encoded.categorical, encoded.numerical)
    assert used == [("single", POOLED_ROWS), ("session", POOLED_ROWS + 1)]
    # the same model either way: the pooled session agrees with the single-threaded one
    np.testing.assert_allclose(large[:POOLED_ROWS], small, atol=1e-6)


def test_one_thread_configured_means_one_session(model_folder: Bundle) -> None:
    model = LoadedModel.load(model_folder, threads=1)
    assert model.single is model.session
    assert model.sessions == [model.session]


def _settings(options: ort.SessionOptions) -> tuple:
    spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    return (
        options.intra_op_num_threads,
        options.inter_op_num_threads,
        options.graph_optimization_level,
        spinning,
    )


def test_both_sessions_are_configured_by_the_contract(pooled: LoadedModel) -> None:
    """The same settings as the gate's session (training.export.session) at each size."""
    assert _settings(pooled.session.get_session_options()) == _settings(session_options(2))
    assert _settings(pooled.single.get_session_options()) == _settings(session_options(1))


class _Recording:
    """A session that reports the rows of each call, then runs it."""

    def __init__(self, session, record) -> None:
        self.session = session
        self.record = record

    def run(self, outputs: list[str], feed: dict) -> list[np.ndarray]:
        assert outputs == [OUTPUT]
        self.record(len(feed["categorical"]))
        return self.session.run(outputs, feed)
