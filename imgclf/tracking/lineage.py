"""The top level of the runs table: one pipeline run per result, and one row that holds the
stage runs no result has taken (yet).

Every stage run starts under the experiment's :func:`pending_row` ("runs without a result"): a
training in progress, interrupted or stopped for good, an augment run on its own. When the
closing stage finishes, :func:`record_pipeline` writes a *pipeline* run carrying every param that
shaped the result and the final metrics, and moves the runs of the stages that made it under it.
Those are found by the fingerprint each stage made (the MD5 of the arrays for augment, of the
model for train), which their runs carry as tags. A stage that DVC skipped as cached ran no code;
its earlier run, already under an earlier pipeline run, is then linked by a small child run that
copies its params and metrics, so every pipeline run shows every stage. The pipeline run starts
when the first of the stage runs it took started, so its Duration is how long the result took.

Unless the store is a tracking server, the row of runs without a result shows only while it
holds one: emptied, it is deleted (MLflow's soft delete), and the next stage run restores it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from imgclf.tracking import datasets, outage
from imgclf.tracking.runs import TAG_LINKED_FROM, TAG_PARENT, TAG_STAGE, context_tags, write_run

log = logging.getLogger(__name__)

PIPELINE = "pipeline"
# The row that holds stage runs without a result: its stage tag and its name.
PENDING = "pending"
PENDING_NAME = "runs without a result"
PENDING_NOTE = (
    "Stage runs that no result has taken (yet): a training in progress, interrupted or stopped for "
    "good, an augment run on its own (`dvc exp run augment`). Each moves under its pipeline run "
    "when evaluate closes a result made with it."
)
# A stage run's own cost, not a fact about the result: not copied onto the pipeline run.
STAGE_OVERHEAD = "timing/mlflow_seconds"
# Machine figures (imgclf.tracking.system) belong to the stage run that was measured.
SYSTEM_PREFIX = "system/"


def find_stage_run(experiment_id: str, stage: str, tag: str, value: str):
    """The latest finished run of ``stage`` whose ``tag`` equals ``value``, or None."""

    runs = outage.client().search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STAGE}` = '{stage}' and tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def _find_pending(client, experiment_id: str, view: int):
    """The experiment's oldest "runs without a result" row in MLflow's ``view``, or None."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STAGE}` = '{PENDING}'",
        run_view_type=view,
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def pending_row(experiment_id: str) -> str:
    """The id of the experiment's "runs without a result" row: the shown one, else (not on a
    tracking server) the one :func:`retire_pending_row` deleted, restored, else a new one."""
    from mlflow.entities import ViewType

    from imgclf.tracking import store

    client = outage.client()
    with store.exclusive():  # two stages starting at once make one row (on the local store)
        if found := _find_pending(client, experiment_id, ViewType.ACTIVE_ONLY):
            return found
        if not store.is_server() and (found := _find_pending(client, experiment_id, ViewType.DELETED_ONLY)):
            client.restore_run(found)
            return found
        tags = {TAG_STAGE: PENDING, "mlflow.note.content": PENDING_NOTE}
        return write_run(experiment_id, PENDING_NAME, tags, {}, {})


def _holds_runs(client, experiment_id: str, pending_id: str) -> bool:
    return bool(client.search_runs([experiment_id], f"tags.`{TAG_PARENT}` = '{pending_id}'", max_results=1))


def keep_pending_row(pending_id: str) -> None:
    """Restore the row of runs without a result if a result closed elsewhere deleted it while a
    stage run started under it (called once that run exists; see :func:`retire_pending_row`)."""
    from mlflow.exceptions import MlflowException

    from imgclf.tracking import store

    if store.is_server():
        return
    client = outage.client()
    try:
        deleted = client.get_run(pending_id).info.lifecycle_stage == "deleted"
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return  # purged by `mlflow gc`: the next stage run makes a new row
        raise
    if deleted:
        client.restore_run(pending_id)


def retire_pending_row(experiment_id: str, pending_id: str) -> bool:
    """Delete the row of runs without a result if no run is left under it, so the top level of
    a clean project shows its results alone; return whether it stays deleted.

    Only on a store this process writes itself (SQLite, a database): on a tracking server,
    deleting and restoring a run takes the MANAGE permission, which a team server does not give
    every user, so the row stays there.
    A stage run starting meanwhile is never left under a deleted row, with no lock needed: it
    exists before :func:`keep_pending_row` looks at the row, and the row is deleted before this
    looks again for runs under it, so one of the two sees the other and restores the row."""
    from imgclf.tracking import store

    if store.is_server():
        return False
    client = outage.client()
    if _holds_runs(client, experiment_id, pending_id):
        return False
    client.delete_run(pending_id)
    if _holds_runs(client, experiment_id, pending_id):
        client.restore_run(pending_id)
        return False
    return True


def _unclaimed(run, pending_id: str | None) -> bool:
    """Whether ``run`` is under no pipeline run yet."""
    return run.data.tags.get(TAG_PARENT) in (None, pending_id)


def link_stage_run(pipeline_run_id: str, stage: str, source, pending_id: str | None = None) -> str:
    """Hang ``source`` (a finished stage run) under the pipeline run; return the run shown there.

    A run under no pipeline yet (under the ``pending_id`` row, or none) is moved there. One
    already under an earlier pipeline (DVC skipped the stage as cached) gets a linking child run
    here with its params and metrics.
    """

    if _unclaimed(source, pending_id):
        outage.client().set_tag(source.info.run_id, TAG_PARENT, pipeline_run_id)
        return source.info.run_id
    tags = {k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.")}
    tags.update(
        {
            TAG_PARENT: pipeline_run_id,
            TAG_LINKED_FROM: source.info.run_id,
            "mlflow.note.content": f"Stage cached by DVC: results of run {source.info.run_id}.",
        }
    )
    return write_run(source.info.experiment_id, stage, tags, source.data.params, source.data.metrics)


def _result_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A stage run's metrics that describe the result (not the stage's own cost in MLflow, not
    the machine it ran on)."""
    return {k: v for k, v in metrics.items() if k != STAGE_OVERHEAD and not k.startswith(SYSTEM_PREFIX)}


def _curves(client, run) -> list[Any]:
    """Every per-epoch metric of ``run`` (logged at steps 1, 2, ...) with its whole history."""
    out = []
    for key in _result_metrics(run.data.metrics):
        history = client.get_metric_history(run.info.run_id, key)
        if any(m.step > 0 for m in history):
            out.extend(history)
    return out


def _sources(experiment_id: str, made_by: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """The finished run of each stage in ``made_by`` that made what its (tag, value) names."""
    sources = {}
    for stage, (tag, value) in made_by.items():
        source = find_stage_run(experiment_id, stage, tag, value)
        if source is None:
            log.warning(
                "no finished MLflow %s run has %s=%s (made with another store?); the pipeline run will lack it",
                stage,
                tag,
                value,
            )
        else:
            sources[stage] = source
    return sources


def record_pipeline(
    experiment_id: str,
    final_run_id: str,
    params: dict[str, Any],
    metrics: dict[str, float],
    made_by: dict[str, tuple[str, str]],
) -> str:
    """Write the pipeline run for a result and hang the stage runs under it; return its id.

    ``final_run_id`` is the final stage's run, ``params`` every param that shaped the result,
    ``metrics`` the final stage's. ``made_by`` maps each earlier stage to the (tag, value) that
    its run carries for what it made. The params (with the facts the stages logged as params),
    metrics (see :func:`_result_metrics`; the per-epoch ones with their history, so the chart
    view draws each result's learning curves) and dataset inputs of all those runs are copied
    onto the pipeline run, so its row shows the data, the training and the result.
    It is named after the DVC experiment, or ``pipeline``.
    """

    client = outage.client()
    sources = _sources(experiment_id, made_by)
    final = client.get_run(final_run_id)
    pending_id = pending_row(experiment_id)
    fresh = [source for source in sources.values() if _unclaimed(source, pending_id)]
    started = min(run.info.start_time for run in [*fresh, final])
    copied: dict[str, float] = {}
    facts: dict[str, Any] = {}
    for source in [*sources.values(), final]:
        copied.update(_result_metrics(source.data.metrics))
        facts.update(source.data.params)
    tags = {**context_tags(PIPELINE), **{tag: value for tag, value in made_by.values()}}
    curves = [m for source in sources.values() for m in _curves(client, source)]
    stepped = {m.key for m in curves}
    pipeline_id = write_run(
        experiment_id,
        os.environ.get("DVC_EXP_NAME") or PIPELINE,
        tags,
        {**facts, **params},
        {k: v for k, v in {**copied, **metrics}.items() if k not in stepped},
        curves,
        start_time=started,
    )
    datasets.copy(pipeline_id, [*sources.values(), final])
    client.set_tag(final_run_id, TAG_PARENT, pipeline_id)
    for stage, source in sources.items():
        client.set_tag(pipeline_id, f"imgclf.{stage}_run_id", link_stage_run(pipeline_id, stage, source, pending_id))
    retire_pending_row(experiment_id, pending_id)
    return pipeline_id
