"""Gradient-boosted trees (LightGBM, CatBoost) as candidates (`training.export.Candidate`).

The trees see exactly the network's inputs: the category codes and the raw numerical values
with the training defaults filled, so one feature table, one encoding and one ONNX signature
serve every framework. LightGBM splits the codes as categories (code 0 the out-of-vocabulary
bucket). CatBoost takes them as numbers: its ONNX export refuses models with categorical
features, and a model that cannot leave as ONNX cannot be served here; its ordered target
statistics, its best-known strength, are given up for that (benchmarks/RESULTS.md measures
what it costs). Boosting stops early on the validation months' log loss, and the model keeps
only the rounds up to the best. The ONNX file is the library's tree ensemble (onnxmltools' for
LightGBM, CatBoost's own export) wrapped on the contract: the codes cast to float and put
beside the numerical values in front of it, the positive class's probability taken out of it
behind. Each is its own extra: `lightgbm`, `catboost`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from pipelines.contract import INPUTS, OUTPUT
from pipelines.spec import FeatureSpec, Part
from training.config import CatBoostConfig, LightGBMConfig, TreesConfig

OnRound = Callable[[int, float], None]  # the round (from 0) and its validation log loss
ONNX_OPSET = 15  # the newest onnxmltools' LightGBM converter writes; the wrapper's too


@dataclass(frozen=True)
class Boosted:
    model: GradientBoosting | CatBoosting
    best_round: int  # from 0
    train_loss: list[float] = field(default_factory=list)  # per round, up to the stop
    valid_loss: list[float] = field(default_factory=list)


class GradientBoosting:
    """A fitted LightGBM booster, cut to its best round."""

    framework = "lightgbm"

    def __init__(self, booster, categorical: int) -> None:
        self.booster = booster
        self.categorical = categorical  # how many leading columns are category codes

    def predict(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
        return self.booster.predict(_matrix(categorical, numerical)).astype("float32")

    def export_onnx(self, categorical: np.ndarray, numerical: np.ndarray, path: Path) -> Path:
        from onnxmltools import convert_lightgbm
        from onnxmltools.convert.common.data_types import FloatTensorType

        columns = categorical.shape[1] + numerical.shape[1]
        trees = convert_lightgbm(
            self.booster,
            initial_types=[("features", FloatTensorType([None, columns]))],
            zipmap=False,
            target_opset=ONNX_OPSET,
        )
        return _save(_on_contract(trees, categorical.shape[1], numerical.shape[1]), path)


class CatBoosting:
    """A fitted CatBoost model, cut to its best round."""

    framework = "catboost"

    def __init__(self, model) -> None:
        self.model = model

    def predict(self, categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
        matrix = _matrix(categorical, numerical)
        return self.model.predict_proba(matrix)[:, 1].astype("float32")

    def export_onnx(self, categorical: np.ndarray, numerical: np.ndarray, path: Path) -> Path:
        with tempfile.TemporaryDirectory() as tmp:
            exported = Path(tmp) / "catboost.onnx"
            self.model.save_model(str(exported), format="onnx")
            trees = onnx.load(str(exported))
        return _save(_on_contract(trees, categorical.shape[1], numerical.shape[1]), path)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _matrix(categorical: np.ndarray, numerical: np.ndarray) -> np.ndarray:
    """What LightGBM fits on: the codes (exact in float32) then the numerical values."""
    return np.hstack([categorical.astype("float32"), numerical.astype("float32")])


def _on_contract(trees: onnx.ModelProto, categorical: int, numerical: int) -> onnx.ModelProto:
    """The library's graph (features [batch, columns] -> probabilities [batch, 2], or a ZipMap
    of them, which is dropped for the tensor it maps) behind a cast and a concat, and in front
    of the positive class's column."""
    features = trees.graph.input[0].name
    tree_nodes = [n for n in trees.graph.node if n.op_type != "ZipMap"]
    zipmaps = [n for n in trees.graph.node if n.op_type == "ZipMap"]
    probabilities = (
        zipmaps[0].input[0]
        if zipmaps
        else next(o.name for o in trees.graph.output if o.name != "label")
    )
    positive = helper.make_tensor("positive_class", TensorProto.INT64, [], [1])
    nodes = [
        helper.make_node("Cast", [INPUTS[0]], ["codes_as_float"], to=TensorProto.FLOAT),
        helper.make_node("Concat", ["codes_as_float", INPUTS[1]], [features], axis=1),
        *tree_nodes,
        helper.make_node("Gather", [probabilities, "positive_class"], [OUTPUT], axis=1),
    ]
    opsets = {o.domain: o.version for o in trees.opset_import}
    opsets[""] = max(opsets.get("", 0), ONNX_OPSET)  # CatBoost's names only ai.onnx.ml
    graph = helper.make_graph(
        nodes,
        "trees",
        [
            helper.make_tensor_value_info(INPUTS[0], TensorProto.INT64, ["batch", categorical]),
            helper.make_tensor_value_info(INPUTS[1], TensorProto.FLOAT, ["batch", numerical]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch"])],
        initializer=[*trees.graph.initializer, positive],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()]
    )
    model.ir_version = max(trees.ir_version, 8)  # opset 15's
    model.producer_name = trees.producer_name
    model.producer_version = trees.producer_version
    return model


def fit_trees(
    spec: FeatureSpec,
    train: Part,
    valid: Part,
    config: TreesConfig,
    on_round: OnRound | None = None,
) -> Boosted:
    """Boost on `train` (codes, numerical values, labels) with the framework `config` is for,
    until the validation log loss has not improved for `config.early_stopping` rounds; keep
    the rounds up to the best."""
    if isinstance(config, CatBoostConfig):
        return _fit_catboost(train, valid, config, on_round)
    return _fit_lightgbm(spec, train, valid, config, on_round)


def _fit_catboost(
    train: Part, valid: Part, config: CatBoostConfig, on_round: OnRound | None
) -> Boosted:
    from catboost import CatBoostClassifier

    class Reporting:  # CatBoost's callback protocol: after each round, True to go on
        raised: Exception | None = None

        def after_iteration(self, info) -> bool:
            if on_round is None:
                return True
            try:  # the round is 1-based here
                on_round(info.iteration - 1, info.metrics["validation"]["Logloss"][-1])
            except Exception as error:  # CatBoost would wrap it (a pruned trial) in its own
                self.raised = error
                return False
            return True

    model = CatBoostClassifier(**config.as_catboost())
    reporting = Reporting()
    model.fit(
        _matrix(train[0], train[1]),
        train[2],
        eval_set=(_matrix(valid[0], valid[1]), valid[2]),
        callbacks=[reporting],
    )
    if reporting.raised is not None:
        raise reporting.raised
    history = model.get_evals_result()
    return Boosted(
        CatBoosting(model),
        model.get_best_iteration(),
        history["learn"]["Logloss"],
        history["validation"]["Logloss"],
    )


def _fit_lightgbm(
    spec: FeatureSpec,
    train: Part,
    valid: Part,
    config: LightGBMConfig,
    on_round: OnRound | None = None,
) -> Boosted:
    """Boost on `train` (codes, numerical values, labels) until the validation log loss has
    not improved for `config.early_stopping` rounds; keep the rounds up to the best."""
    import lightgbm as lgb

    names = [f.name for f in spec.categorical] + [f.name for f in spec.numerical]
    categorical = list(range(len(spec.categorical)))

    def dataset(part: Part, reference=None):
        codes, values, labels = part
        return lgb.Dataset(
            _matrix(codes, values),
            label=labels,
            feature_name=names,
            categorical_feature=categorical,
            reference=reference,
            free_raw_data=False,
        )

    train_set = dataset(train)
    valid_set = dataset(valid, reference=train_set)
    history: dict[str, dict[str, list[float]]] = {}
    callbacks = [
        lgb.record_evaluation(history),
        lgb.early_stopping(config.early_stopping, first_metric_only=True, verbose=False),
    ]
    if on_round is not None:
        callbacks.append(lambda env: on_round(env.iteration, env.evaluation_result_list[-1][2]))
    booster = lgb.train(
        config.as_lightgbm(),
        train_set,
        num_boost_round=config.rounds,
        valid_sets=[train_set, valid_set],
        valid_names=["train", "valid"],
        callbacks=callbacks,
    )
    best = booster.best_iteration or booster.current_iteration()  # 1-based
    cut = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return Boosted(
        GradientBoosting(cut, len(categorical)),
        best - 1,
        history["train"]["binary_logloss"],
        history["valid"]["binary_logloss"],
    )
