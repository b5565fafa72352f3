"""The study's storage and its MLflow parent run, made to outlive processes and outages.

Two things break a shared study that a single process never sees:

- The process that creates the study can die before it records the study's MLflow parent run.
  So no process waits for "the creator": whichever finds the run missing makes it, and the
  record is a compare-and-set (an INSERT that the attribute table's unique key on (study, key)
  refuses to a second writer), so racing workers agree on one parent and delete their spares.
  A parent made by a process that died before recording it is adopted, not duplicated: it is
  found in MLflow by the study's id tag.
- The database restarts. `pool_pre_ping` makes every pooled connection prove itself before
  use, so the first call after a restart reconnects instead of failing; heartbeats missed
  during the outage are logged, not fatal (Optuna's heartbeat thread dies on its first error,
  and a trial without heartbeats is later failed as stale while it is still training); and a
  trial cut by the outage is failed and queued again with its parameters once the database
  answers (`recover_trial`).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError

from training.config import TuneConfig

logger = logging.getLogger(__name__)

PARENT_RUN_ATTR = "mlflow_parent_run_id"
STUDY_ID_TAG = "optuna_study_id"  # on the parent run only: trials' runs carry `optuna_trial`
OUTAGE_ERRORS = (OperationalError, InterfaceError)  # the database is gone, not the query wrong
# Optuna's attribute table, by its schema's names (a public contract: its migrations keep it)
_USER_ATTRS = sqlalchemy.table(
    "study_user_attributes",
    sqlalchemy.column("study_id"),
    sqlalchemy.column("key"),
    sqlalchemy.column("value_json"),
)


class OutageTolerantStorage(RDBStorage):
    """An RDBStorage whose heartbeats survive a database outage."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as error:  # Optuna wraps the driver's error in StorageInternalError
            if not is_outage(error):
                raise
            logger.warning(
                "heartbeat of trial %s missed (database unreachable): %s", trial_id, error
            )


def open_storage(config: TuneConfig, home: Path) -> RDBStorage:
    url = config.storage_url(home)
    if url.startswith("sqlite"):
        engine_kwargs: dict[str, object] = {"connect_args": {"timeout": 60}}
    else:  # a server: its restart must cost one reconnect, not the next call of every worker
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return OutageTolerantStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=config.heartbeat_interval,
            grace_period=config.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
        )


def is_outage(error: BaseException) -> bool:
    """Whether `error` comes from the database being unreachable. Optuna can mask the cause
    (a failed `tell` leaves a variable unset in its `finally`), so the whole chain is read."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OUTAGE_ERRORS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def wait_for_storage(storage: RDBStorage, patience_s: float) -> None:
    """Until the database answers again; re-raises the outage after `patience_s`."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with storage.engine.connect() as connection:
                connection.execute(sqlalchemy.text("select 1"))
            return
        except OUTAGE_ERRORS:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def recover_trial(study: optuna.Study, storage: RDBStorage, number: int) -> None:
    """The trial an outage cut: failed (if still running) and queued again with its params.

    If another worker already failed it as stale (then its callback queued the retry) or the
    retry exists, nothing is added: the set-to-FAIL is Optuna's own compare-and-set.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    trial = storage.get_trial(trial_id)
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return
    if trial.state == TrialState.RUNNING:
        try:
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another worker failed it as stale, and queued its retry
    retried = any(
        number in t.system_attrs.get("retry_history", [])
        for t in storage.get_all_trials(study_id, deepcopy=False)
    )
    if not retried:
        RetryHeartbeatStaleTrialCallback()(study, storage.get_trial(trial_id))
        logger.info("trial %s, cut by a database outage, is queued again", number)


def parent_run(
    client: MlflowClient, storage: RDBStorage, study: optuna.Study, experiment: str
) -> str:
    """The study's MLflow parent run: recorded, adopted or made here, the same for every
    process whatever the interleaving."""
    study_id = storage.get_study_id_from_name(study.study_name)
    recorded = storage.get_study_user_attrs(study_id).get(PARENT_RUN_ATTR)
    if recorded:
        return str(recorded)
    candidates = _candidates(client, experiment, study.study_name, study_id)
    if candidates:  # made by a process that died (or is about to record it): adopt it
        mine = candidates[0]
    else:
        mine = client.create_run(
            experiment,
            run_name=f"tune-{study.study_name}",
            tags={"optuna_study": study.study_name, STUDY_ID_TAG: str(study_id)},
        ).info.run_id
    winner = _record_once(storage, study_id, PARENT_RUN_ATTR, mine)
    # Once recorded, the attribute never changes: every other candidate is a spare, and a
    # process still about to record its own will find the winner instead.
    for spare in _candidates(client, experiment, study.study_name, study_id):
        if spare != winner:
            _delete_quietly(client, spare)
    return winner


def _candidates(client: MlflowClient, experiment: str, study: str, study_id: int) -> list[str]:
    """Active parent runs of this study (this id: a deleted study's name may come back)."""
    runs = client.search_runs(
        [experiment],
        f"tags.optuna_study = '{study}' and tags.{STUDY_ID_TAG} = '{study_id}'",
    )
    runs = sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))  # the same everywhere
    return [r.info.run_id for r in runs]


def _record_once(storage: RDBStorage, study_id: int, key: str, value: str) -> str:
    """Compare-and-set: `value` if the attribute was absent, else what is there."""
    try:
        with storage.engine.begin() as connection:
            connection.execute(
                sqlalchemy.insert(_USER_ATTRS).values(
                    study_id=study_id, key=key, value_json=json.dumps(value)
                )
            )
    except IntegrityError:
        pass  # another process recorded first: its value stands
    return str(storage.get_study_user_attrs(study_id)[key])


def _delete_quietly(client: MlflowClient, run_id: str) -> None:
    try:
        client.delete_run(run_id)
    except MlflowException as error:  # already deleted by another process
        logger.debug("spare parent run %s: %s", run_id, error)
