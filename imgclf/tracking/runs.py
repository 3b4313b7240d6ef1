"""A run's life cycle: the tags every run carries, opening and closing a stage's run, and
writing a finished run in one go (the pipeline run and the links to cached stages)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

from imgclf.console import interrupt
from imgclf.core import paths
from imgclf.tracking import outage, system

log = logging.getLogger(__name__)

TAG_STAGE = "imgclf.stage"
TAG_DATA_MD5 = "imgclf.data_md5"
TAG_MODEL_MD5 = "imgclf.model_md5"
TAG_LINKED_FROM = "imgclf.linked_from_run"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
# The process a stage run lives in (host:pid:start time), and why a run was closed for it.
TAG_PROCESS = "imgclf.process"
TAG_END_REASON = "imgclf.end_reason"

# MLflow takes at most this many params (and metrics, tags) in one batch call.
_BATCH = 100


def metric_key(text: str) -> str:
    """A name made safe for MLflow (letters, digits and ``_-. /``; anything else becomes ``_``)."""
    return re.sub(r"[^\w\-. /]", "_", text) or "_"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def context_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: the stage, the git commit and DVC's experiment context."""
    tags = {TAG_STAGE: stage}
    commit = _git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev"),
        ("DVC_STAGE", "dvc.stage"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def _continue_run(run_id: str, experiment_id: str, stage: str):
    """The active run ``run_id`` again, or ``None`` if the store no longer has it as ``stage``'s."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = outage.client()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        run = None
    if (
        run is None
        or run.info.experiment_id != experiment_id
        or run.info.lifecycle_stage != "active"
        or run.data.tags.get(TAG_STAGE) != stage
    ):
        log.warning("the interrupted run %s is not in this store any more: starting a new run", run_id)
        return None
    active = outage.patiently("reopening the run", mlflow.start_run, run_id=run_id, log_system_metrics=False)
    outage.patiently("tagging the run", mlflow.set_tags, {**context_tags(stage), TAG_PROCESS: _this_process()})
    if TAG_END_REASON in run.data.tags:  # closed while its process was gone; carried on now
        client.delete_tag(run_id, TAG_END_REASON)
    return active


def _this_process() -> str:
    import psutil

    return f"{socket.gethostname()}:{os.getpid()}:{int(psutil.Process().create_time())}"


def _ended(process: str | None) -> str | None:
    """Why a run of ``process`` (a :data:`TAG_PROCESS` value) can never end by itself: its
    process on this host is gone. None while it lives, or when it ran on another host."""
    import psutil

    try:
        host, pid, started = process.rsplit(":", 2)
        pid, started = int(pid), int(started)
    except (AttributeError, ValueError):
        return None
    if host != socket.gethostname():
        return None
    with contextlib.suppress(psutil.Error):
        if int(psutil.Process(pid).create_time()) == started:
            return None
    return f"its process (pid {pid} on {host}) ended without closing it: killed, or the machine stopped"


def close_abandoned(experiment_id: str, keep: str | None = None, reasons: dict[str, str] | None = None) -> None:
    """Close KILLED every RUNNING run that can never end by itself, with the reason as a tag: the
    runs of ``reasons`` (a discarded checkpoint's, which no training will carry on) and the stage
    runs of this host whose process has ended. ``keep`` is the run a resumed training carries on."""
    client = outage.client()
    running = client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000)
    for run in running:
        run_id = run.info.run_id
        why = None if run_id == keep else (reasons or {}).get(run_id) or _ended(run.data.tags.get(TAG_PROCESS))
        if why:
            client.set_tag(run_id, TAG_END_REASON, why)
            client.set_terminated(run_id, "KILLED")
            log.info("run %s closed KILLED: %s", run_id, why)


@contextlib.contextmanager
def open_run(
    stage: str,
    experiment_id: str,
    params: dict[str, Any],
    continue_run: str | None = None,
    parent: str | None = None,
) -> Iterator[Any]:
    """The active run of ``stage`` (named after it) with ``params``, its machine figures
    sampled meanwhile (:mod:`~imgclf.tracking.system`); on leaving, once what the run logged is
    sent (:mod:`~imgclf.tracking.outage`), it ends FINISHED, KILLED (Ctrl-C, SIGTERM: see
    :mod:`imgclf.console.interrupt`) or FAILED (any other exception).

    ``continue_run`` is the id of an interrupted run of the same stage to carry on (a resumed
    training), if the store still has it; a new run starts under the run ``parent``, if given.
    """
    import mlflow

    # A stray MLFLOW_RUN_ID would make start_run resume someone else's run.
    os.environ.pop("MLFLOW_RUN_ID", None)
    active = _continue_run(continue_run, experiment_id, stage) if continue_run else None
    first_step = 0
    if active is None:
        tags = {**context_tags(stage), TAG_PROCESS: _this_process(), **({TAG_PARENT: parent} if parent else {})}
        active = outage.patiently(
            "opening the run",
            mlflow.start_run,
            experiment_id=experiment_id,
            run_name=stage,
            tags=tags,
            log_system_metrics=False,
        )
    else:
        first_step = system.next_step(outage.client(), active.info.run_id)
    if params:
        outage.patiently("logging the params", mlflow.log_params, params)
    monitor = system.start(active.info.run_id, first_step)
    status = "FINISHED"
    try:
        yield active
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "KILLED" if interrupt.requested() else "FAILED"
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        _close(stage, active.info.run_id, status)


def _close(stage: str, run_id: str, status: str) -> None:
    """:func:`_end_run`; after the stage's own error (``status`` not FINISHED), which goes on up,
    an error closing its run is a warning, not a replacement (a full disk fails the checkpoint
    and the SQLite store alike)."""
    if status == "FINISHED":
        _end_run(run_id, status)
        return
    try:
        _end_run(run_id, status)
    except Exception as err:
        log.warning("could not close %s run %s as %s: %s", stage, run_id, status, err)


def _end_run(run_id: str, status: str) -> None:
    """Send what the run logged, then close it as ``status``. A run that failed while the
    server is unreachable is not waited for: it closes if the server answers at once, else the
    next stage closes it (:func:`close_abandoned`) or a rerun carries it on."""
    import mlflow

    def on_stack() -> bool:
        active = mlflow.active_run()
        return active is not None and active.info.run_id == run_id

    def close() -> None:
        # MLflow's end_run takes the run off its stack before it asks the server to close it, so
        # a try again after a failed request closes it directly.
        if on_stack():
            mlflow.end_run(status)
        else:
            mlflow.MlflowClient().set_terminated(run_id, status)

    box = outage.outbox()
    last_try = status
    try:
        if status != "FINISHED" and outage.health.is_down:
            return  # one try below
        # On failure what is kept is lost with this process; a rerun logs a training's missing
        # epochs again from its checkpoint (Recorder.log_history).
        box.drain("the last records of the run")
        outage.patiently("closing the run", close)
    except BaseException:
        last_try = "FAILED" if status == "FINISHED" else status  # its last records were not sent
        raise
    finally:
        # Off MLflow's stack whatever happened, so that its exit hook cannot close it FINISHED.
        if on_stack():
            with contextlib.suppress(Exception):
                mlflow.end_run(last_try)


def write_run(
    experiment_id: str,
    name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    metrics: dict[str, float],
    history: list[Any] = (),
    start_time: int | None = None,
) -> str:
    """Create a run that records finished facts in one go; return its id. ``history`` holds
    MLflow ``Metric`` entries logged as they are (with their steps), e.g. learning curves;
    ``start_time`` (ms since the epoch; default now) is when what it records began.

    It ends FINISHED, or FAILED if writing it fails halfway (the error is raised).
    """
    import time

    import mlflow
    from mlflow.entities import Metric, Param

    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=name)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        entries = [Param(k, str(v)) for k, v in params.items()]
        entries += [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        entries += [Metric(m.key, m.value, m.timestamp, m.step) for m in history]
        for start in range(0, len(entries), _BATCH):
            chunk = entries[start : start + _BATCH]
            client.log_batch(
                run_id,
                params=[e for e in chunk if isinstance(e, Param)],
                metrics=[e for e in chunk if isinstance(e, Metric)],
            )
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id
