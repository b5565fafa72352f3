"""The registry and the promotion gate.

A challenger takes the `champion` alias only if it beats the champion on the same, newest
holdout (the test months of the current feature table), each model scored through its own ONNX
file and its own feature spec, exactly as it would be served. Both figures and the decision
are logged to the challenger's run and written into its model version.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.metrics import log_loss, roc_auc
from pipelines.spec import LABEL, FeatureSpec, encode
from training.bundle import FRAMEWORK_TAG, MODEL_ID_TAG
from training.config import GateConfig
from training.export import predict_onnx, session
from training.model_card import model_card, registered_model_description

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    version: str
    challenger_auc: float
    challenger_log_loss: float
    champion_version: str | None
    champion_auc: float | None
    reason: str
    challenger_framework: str = "torch"
    champion_framework: str | None = None


def download_model(client: MlflowClient, run_id: str, dst: Path) -> Path:
    """A run's logged ONNX model into `dst` (MLflow 3 keeps it apart from the run's artifacts)."""
    model_id = logged_model_id(client, run_id)
    location = client.get_logged_model(model_id).artifact_location
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=str(dst), tracking_uri=client.tracking_uri
        )
    )


def logged_model_id(client: MlflowClient, run_id: str) -> str:
    run = client.get_run(run_id)
    model_id = run.data.tags.get(MODEL_ID_TAG)
    if model_id:
        return model_id
    found = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1
    )
    if not found:
        raise MlflowException(f"run {run_id} logged no model")
    return found[0].model_id


def holdout_metrics(
    client: MlflowClient, run_id: str, holdout: pd.DataFrame
) -> tuple[float, float]:
    """ROC-AUC and log loss of a run's ONNX model on `holdout`, encoded with its own spec."""
    with tempfile.TemporaryDirectory() as tmp:
        # the spec alone: the contract's lookup tables are not needed to score a table
        spec = FeatureSpec.load(
            Path(client.download_artifacts(run_id, "contract/feature_spec.json", tmp))
        )
        model_dir = download_model(client, run_id, Path(tmp) / "model")
        runtime = session(model_dir / "model.onnx", threads=2)
    encoded = encode(holdout, spec)
    probabilities = predict_onnx(runtime, encoded.categorical, encoded.numerical)
    labels = holdout[LABEL].to_numpy()
    return roc_auc(labels, probabilities), log_loss(labels, probabilities)


# What MLflow answers when there is no champion: no such model (a first run), or a model
# without the alias. Anything else (MLflow unreachable, a server error) is not "no champion":
# read as one, it would let any challenger take the alias as "the first model".
NO_CHAMPION = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def champion_of(client: MlflowClient, gate: GateConfig):
    try:
        return client.get_model_version_by_alias(gate.model_name, gate.alias)
    except MlflowException as error:
        if error.error_code in NO_CHAMPION:
            return None
        # MLflow's basic auth (3.17) answers a user who is not an admin 403 for the alias of
        # a model that does not exist yet, where reading the model itself says 404
        if error.error_code == "PERMISSION_DENIED" and not _registered(client, gate.model_name):
            return None
        raise


def _registered(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _model_card(run, decision: Decision, holdout: pd.DataFrame) -> str:
    """The run's card, then the gate's holdout figures and verdict."""
    months = holdout["scheduled_departure"].dt.strftime("%Y-%m")
    return "\n".join(
        [
            model_card(run.data.params, run.data.metrics),
            f"- Gate holdout ({months.min()}..{months.max()}, {len(holdout):,} flights): "
            f"ROC-AUC {decision.challenger_auc:.4f}, log loss {decision.challenger_log_loss:.4f}",
            f"- Gate: {decision.reason}",
            f"- Run: `runs:/{run.info.run_id}`",
        ]
    )


def register(client: MlflowClient, run_id: str, gate: GateConfig) -> str:
    """A new version of the registered model (created on first use) from the run's ONNX model."""
    try:
        client.create_registered_model(gate.model_name)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = logged_model_id(client, run_id)
    # The artifact location, not `models:/<id>`: MLflow's SQL registry resolves that through
    # the process-global tracking URI (a TODO in its sqlalchemy_store), not this client's.
    location = client.get_logged_model(model_id).artifact_location
    created = client.create_model_version(
        gate.model_name, source=location, run_id=run_id, model_id=model_id
    )
    if not client.get_registered_model(gate.model_name).description:  # new, or never described
        client.update_registered_model(gate.model_name, registered_model_description(gate.alias))
    return str(created.version)


def promote(
    client: MlflowClient,
    run_id: str,
    holdout: pd.DataFrame,
    gate: GateConfig,
    attempts: int = 5,
    settle_s: float = 300,
) -> Decision:
    """Register the run's model and move the alias to it only if it beats the champion.

    Compare-and-set: right before the move the alias is read again, and if another promotion
    moved it since this gate read it, the challenger is gated again against the new champion
    (at most `attempts` times, then it is kept out). MLflow has no conditional alias update,
    so one window is left: another promoter's move that lands between this re-read and this
    move (one request's round trip) is overwritten without being compared. A lock shared by
    every promoter would close it; this gate only narrows it to that round trip.

    The version's `gate_decision` tag says "promoted" if and only if the alias is on it: the
    tag is written before the move, and if anything fails after that (MLflow or its database
    gone past its client's retries), the tag is made to agree with where the alias actually
    is once MLflow answers again (`settle_s` at most), before the error is raised. Only an
    outage longer than that, or this process killed between the tag and the move, can leave
    them apart; the next gate of the month (retrain retries it) then decides again.
    """
    run = client.get_run(run_id)
    framework = framework_of(run)
    version = register(client, run_id, gate)
    auc, loss = holdout_metrics(client, run_id, holdout)
    champion = champion_of(client, gate)
    champion_aucs: dict[str, float] = {}  # by version: a champion scored once per gate
    try:
        for _ in range(attempts):
            decision = _judge(
                client, version, auc, loss, champion, holdout, gate, champion_aucs, framework
            )
            if not decision.promoted:
                break
            client.set_model_version_tag(gate.model_name, version, "gate_decision", "promoted")
            current = champion_of(client, gate)
            if _version_of(current) != _version_of(champion):
                logger.info("champion now v%s: judging again", _version_of(current))
                champion = current
                continue
            client.set_registered_model_alias(gate.model_name, gate.alias, version)
            break
        else:
            decision = replace(
                decision, promoted=False, reason=f"{decision.reason}; the champion kept moving"
            )
        _record(client, run, version, decision, holdout, gate)
    except Exception:
        _settle(client, gate, version, settle_s)
        raise
    logger.info("gate for %s v%s: %s", gate.model_name, version, decision.reason)
    return decision


def _settle(client: MlflowClient, gate: GateConfig, version: str, patience_s: float) -> None:
    """After a failed gate: the version's tag made to say whether the alias is on it."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            holds = _version_of(champion_of(client, gate)) == version
            verdict = "promoted" if holds else "failed"
            client.set_model_version_tag(gate.model_name, version, "gate_decision", verdict)
            logger.warning(
                "gate of %s v%s failed; its tag says %s", gate.model_name, version, verdict
            )
            return
        except MlflowException as error:
            if time.monotonic() > deadline:
                logger.error("gate of v%s: tag and alias may disagree: %s", version, error)
                return
            time.sleep(2)


def _version_of(champion) -> str | None:
    return None if champion is None else str(champion.version)


def _judge(
    client: MlflowClient,
    version: str,
    auc: float,
    loss: float,
    champion,
    holdout: pd.DataFrame,
    gate: GateConfig,
    champion_aucs: dict[str, float],
    framework: str,
) -> Decision:
    """The challenger (made by `framework`) against `champion` (None: the first model), each
    scored through its own ONNX file whatever framework made it."""
    if champion is None:
        reason = f"first model ({framework}): no champion yet"
        return Decision(True, version, auc, loss, None, None, reason, framework)
    key = str(champion.version)
    if key not in champion_aucs:
        champion_aucs[key], _ = holdout_metrics(client, champion.run_id, holdout)
    champion_auc = champion_aucs[key]
    champion_framework = framework_of(client.get_run(champion.run_id))
    better = auc > champion_auc + gate.min_auc_gain
    reason = (
        f"challenger ({framework}) ROC-AUC {auc:.4f} vs champion v{champion.version} "
        f"({champion_framework}) {champion_auc:.4f} (needs a gain above {gate.min_auc_gain})"
    )
    return Decision(
        better, version, auc, loss, key, champion_auc, reason, framework, champion_framework
    )


def framework_of(run) -> str:
    """What made a run's model; runs from before frameworks were recorded are the network's."""
    return run.data.tags.get(FRAMEWORK_TAG, "torch")


def _record(
    client: MlflowClient, run, version: str, decision: Decision, holdout: pd.DataFrame, gate
) -> None:
    """Both figures and the verdict on the run, the verdict and the card on the version."""
    verdict = "promoted" if decision.promoted else "rejected"
    client.log_metric(run.info.run_id, "gate_challenger_auc", decision.challenger_auc)
    if decision.champion_auc is not None:
        client.log_metric(run.info.run_id, "gate_champion_auc", decision.champion_auc)
    client.set_tag(run.info.run_id, "gate_decision", verdict)
    client.set_tag(run.info.run_id, "gate_challenger_framework", decision.challenger_framework)
    if decision.champion_framework is not None:
        client.set_tag(run.info.run_id, "gate_champion_framework", decision.champion_framework)
    client.set_tag(run.info.run_id, "gate_reason", decision.reason)
    if decision.champion_version is not None:
        client.set_tag(run.info.run_id, "gate_champion_version", decision.champion_version)
    client.set_model_version_tag(gate.model_name, version, "gate_decision", verdict)
    client.set_model_version_tag(
        gate.model_name, version, FRAMEWORK_TAG, decision.challenger_framework
    )
    client.update_model_version(gate.model_name, version, _model_card(run, decision, holdout))
