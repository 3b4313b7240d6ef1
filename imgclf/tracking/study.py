"""A study in MLflow: one study run, and each trial a run nested under it.

The study run (named ``tune-<study>``, tag ``imgclf.stage=tune``) carries the search space and
settings as params, and, as the study goes, its best value, the best trial's params (as
``best.<param>`` tags), the trial counts and the ``dvc exp run`` command that reproduces the
winner. Each trial is a run named ``trial-<n>`` whose parent is the study run: its params, its
per-epoch metrics, ``best/<metric>`` for its best epoch, and its Optuna state as the tag
``imgclf.trial_state`` (COMPLETE, PRUNED or FAIL). A complete trial ends FINISHED, a pruned or
killed one KILLED and a failed one FAILED.

Runs are written with :class:`mlflow.MlflowClient` by id, so several trials (threads or
processes) can write at once without MLflow's active-run state. A tracking outage fails no trial:
epochs and the study's figures go through the outbox, every other call waits for the server
(:mod:`~imgclf.tracking.outage`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from imgclf.tracking import outage, runs, store

STAGE = "tune"
TAG_STATE = "imgclf.trial_state"
TAG_STUDY = "imgclf.study"
TAG_COMMAND = "imgclf.tune.command"
TAG_BEST_TRIAL = "imgclf.tune.best_trial"
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _client():
    return outage.client()  # waits out a tracking outage (up to its limit): no trial fails for one


def open_study_run(experiment: str, study: str, params: dict[str, Any], run_id: str | None = None) -> str:
    """The study's run: ``run_id`` reopened (a resumed study), or a new one with ``params``."""
    experiment_id = store.setup(experiment)
    client = _client()
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception:  # deleted, or another store
            run = None
        if run is not None and run.info.lifecycle_stage == "active":
            client.update_run(run_id, status="RUNNING")
            return run_id
    tags = {**runs.context_tags(STAGE), TAG_STUDY: study}
    run = client.create_run(experiment_id, tags=tags, run_name=f"tune-{study}")
    log_params(run.info.run_id, params)
    return run.info.run_id


def log_params(run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    entries = [Param(k, v if isinstance(v, str) else json.dumps(v)) for k, v in params.items()]
    for start in range(0, len(entries), runs._BATCH):
        _client().log_batch(run_id, params=entries[start : start + runs._BATCH])


def start_trial(study_run_id: str, number: int, params: dict[str, Any], worker: str) -> str:
    """A new run for trial ``number``, nested under the study run."""
    client = _client()
    parent = client.get_run(study_run_id)
    tags = {
        **runs.context_tags(STAGE),
        runs.TAG_PARENT: study_run_id,
        TAG_STUDY: parent.data.tags.get(TAG_STUDY, ""),
        "imgclf.trial": str(number),
        "imgclf.worker": worker,
    }
    run = client.create_run(parent.info.experiment_id, tags=tags, run_name=f"trial-{number}")
    log_params(run.info.run_id, {"trial": number, **params})
    return run.info.run_id


def log_epoch(run_id: str, epoch: int, row: dict[str, float]) -> None:
    """A trial's epoch, queued in the outbox: the trial trains on through an outage."""
    outage.outbox().log(run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)


def end_trial(run_id: str, state: str, metrics: dict[str, float] | None = None, status: str | None = None) -> None:
    """Close a trial's run with its Optuna ``state`` (COMPLETE, PRUNED or FAIL), as ``status``
    (by default the state's: FINISHED, KILLED or FAILED)."""
    from mlflow.entities import Metric

    client = _client()
    outage.outbox().drain(f"the epochs of trial run {run_id}")
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
    client.set_tag(run_id, TAG_STATE, state)
    client.set_terminated(run_id, status or RUN_STATUS.get(state, "FAILED"))


def update_study(run_id: str, metrics: dict[str, float], tags: dict[str, str], step: int) -> None:
    """The study run's running figures (logged at ``step``, the number of finished trials)."""
    outage.outbox().log(run_id, metrics, step, tags=tags)


def finish_study(run_id: str, artifacts: list[Path], status: str = "FINISHED") -> None:
    client = _client()
    outage.outbox().drain("the study's figures")
    for path in artifacts:
        client.log_artifact(run_id, str(path), "tune")
    client.set_terminated(run_id, status)
