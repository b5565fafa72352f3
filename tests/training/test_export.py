"""The network's ONNX export: one file, a dynamic batch axis, parity with torch at batch sizes
1, 7, 4096 (`training.export.check_parity`, which every framework's export goes through)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from pipelines.contract import session_options
from pipelines.spec import FeatureSpec
from training.export import INPUTS, OUTPUT, ParityError, check_parity, session
from training.model import ModelConfig, TabularNet
from training.network import Network, export_onnx
from training.tensors import Tensors, to_tensors


def parity(model: TabularNet, path: Path, data: Tensors):
    return check_parity(Network(model), path, data.categorical.numpy(), data.numerical.numpy())


@pytest.mark.parametrize(
    ("numeric", "members", "clip"),
    [("none", 1, False), ("ple", 1, False), ("periodic", 1, False), ("periodic", 4, True)],
)
def test_export_matches_torch_at_every_batch_size(
    spec: FeatureSpec, tables, tmp_path: Path, numeric: str, members: int, clip: bool
) -> None:
    data = to_tensors(tables["train"].head(5_000), spec, "cpu")
    torch.manual_seed(0)
    config = ModelConfig(
        numeric_embedding=numeric, width=32, members=members, clip_to_training=clip
    )
    model = TabularNet(spec, config).eval()
    path = export_onnx(model, data, tmp_path / "model.onnx")
    report = parity(model, path, data)
    assert report.rows == {1: 4_096, 7: 5_000, 4096: 5_000}  # batch 1: at most 4,096 calls
    assert set(report.max_abs_diff) == {1, 7, 4096}
    assert max(report.max_abs_diff.values()) <= 1e-5


def test_the_file_is_self_contained_with_a_dynamic_batch_axis(
    spec: FeatureSpec, tables, tmp_path: Path
) -> None:
    data = to_tensors(tables["train"].head(100), spec, "cpu")
    path = export_onnx(TabularNet(spec, ModelConfig(width=16)).eval(), data, tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no external data files
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(INPUTS)
    assert [o.name for o in graph.output] == [OUTPUT]
    for tensor in graph.input:
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value")


def test_the_gate_scores_through_a_session_configured_as_the_servers(
    spec: FeatureSpec, tables, tmp_path: Path
) -> None:
    data = to_tensors(tables["train"].head(100), spec, "cpu")
    path = export_onnx(TabularNet(spec, ModelConfig(width=16)).eval(), data, tmp_path / "m.onnx")
    for threads in (1, 2):
        options = session(path, threads).get_session_options()
        expected = session_options(threads)  # what serving.runtime opens its sessions with
        assert options.intra_op_num_threads == expected.intra_op_num_threads == threads
        assert options.inter_op_num_threads == expected.inter_op_num_threads
        assert options.graph_optimization_level == expected.graph_optimization_level
        spinning = "session.intra_op.allow_spinning"
        assert options.get_session_config_entry(spinning) == "0"


def test_a_model_that_drifted_from_its_export_fails_parity(
    spec: FeatureSpec, tables, tmp_path: Path
) -> None:
    data = to_tensors(tables["train"].head(500), spec, "cpu")
    model = TabularNet(spec, ModelConfig(width=16, members=1)).eval()
    path = export_onnx(model, data, tmp_path / "m.onnx")
    with torch.no_grad():
        model.head.bias.add_(0.01)
    with pytest.raises(ParityError, match="more than 1e-05"):
        parity(model, path, data)
