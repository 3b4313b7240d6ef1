"""All MLflow plumbing: where the store is, how a stage's run opens and closes, how runs link up.

Each stage opens one run named after the stage. The evaluate stage, last in the pipeline, also
opens one *pipeline* run that carries every param that shaped the result plus its test metrics,
and hangs the augment and train runs that produced its inputs under it (found by the MD5 of the
arrays and of the model, which those runs carry as tags). A stage that DVC skipped as cached ran
no code; its earlier run is then linked by a small child run that copies its params and metrics,
so every pipeline run shows all three stages.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgclf import paths
from imgclf.errors import PipelineError
from imgclf.params import flatten

log = logging.getLogger(__name__)

TAG_STAGE = "imgclf.stage"
TAG_DATA_MD5 = "imgclf.data_md5"
TAG_MODEL_MD5 = "imgclf.model_md5"
TAG_LINKED_FROM = "imgclf.linked_from_run"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_PARENT = "mlflow.parentRunId"
PIPELINE = "pipeline"

# Fail fast on a dead tracking server instead of retrying for minutes (users may override).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def metric_key(text: str) -> str:
    """A label made safe for an MLflow metric name (letters, digits and ``_-. /``)."""
    return re.sub(r"[^\w\-. /]", "_", text) or "_"


_spent = [0.0]


@contextlib.contextmanager
def _timed() -> Iterator[None]:
    """Add the block's wall time to the tracking overhead this process reports."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _spent[0] += time.perf_counter() - start


def seconds_spent() -> float:
    """Wall time this process has spent in MLflow (imports, store, logging) so far."""
    return _spent[0]


_background_cpu = [0.0]


def background_cpu_seconds() -> float:
    """CPU time MLflow's set-up took in background threads so far (see :class:`DeferredRun`):
    not waited for, but taken from the stage's work on a busy machine."""
    return _background_cpu[0]


def _ensure_open() -> None:
    """Open the current deferred run (if any) before something is logged to it."""
    if _deferred:
        _deferred[-1].ready()


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    _ensure_open()
    with _timed():
        mlflow.log_metrics(metrics, step=step)


def log_param(key: str, value: Any) -> None:
    import mlflow

    _ensure_open()
    with _timed():
        mlflow.log_param(key, value)


def set_tag(key: str, value: str) -> None:
    import mlflow

    _ensure_open()
    with _timed():
        mlflow.set_tag(key, value)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    import mlflow

    _ensure_open()
    with _timed():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def default_store() -> Path:
    return paths.store_root() / "mlflow.db"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite file at the (main) project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_store()}"


def _is_default_store(uri: str) -> bool:
    return uri == f"sqlite:///{default_store()}"


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creating the local store and experiment: parallel workers race on the schema."""
    if not _is_default_store(uri):
        yield
        return
    lock = default_store().with_name(".mlflow.db.lock")
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def setup(experiment: str) -> str:
    """Point MLflow at the store and the experiment (creating them if needed); return its id."""
    with _timed():
        return _setup(experiment)


def _setup(experiment: str) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with _store_lock(uri):
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                # Anchor artifacts beside the store, not in the cwd (a DVC temp copy).
                location = (paths.store_root() / "mlartifacts").as_uri() if _is_default_store(uri) else None
                exp_id = client.create_experiment(experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
    except MlflowException as err:
        raise PipelineError(f"cannot use MLflow tracking store {uri}: {_reason(err)} (fix "
                            "MLFLOW_TRACKING_URI or start the server)") from None
    except Exception as err:  # connection errors come in many types
        raise PipelineError(f"cannot use MLflow tracking store {uri}: {_reason(err)} (fix "
                            "MLFLOW_TRACKING_URI or start the server)") from None
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _reason(err: Exception) -> str:
    """A short cause for a tracking failure, without the retry machinery's wall of text."""
    text = str(err)
    for needle, reason in (("Connection refused", "connection refused"),
                           ("unsupported URI", "unsupported URI scheme"),
                           ("Name or service not known", "unknown host"),
                           ("Failed to resolve", "unknown host"),
                           ("timed out", "timed out"), ("Read timed out", "timed out"),
                           ("Max retries exceeded", "no answer")):
        if needle in text:
            return reason
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= 200 else first[:200] + "..."


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def context_tags(stage: str) -> dict[str, str]:
    """Tags every run gets: the stage, the git commit and DVC's experiment context."""
    tags = {TAG_STAGE: stage}
    commit = _git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc.exp_name"), ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev"),
                     ("DVC_STAGE", "dvc.stage")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


@contextlib.contextmanager
def _outcome(status: list[str]) -> Iterator[None]:
    """Set ``status[0]`` to how the block ended: KILLED (Ctrl-C, SIGTERM), FAILED or as it was."""
    try:
        yield
    except KeyboardInterrupt:
        status[0] = "KILLED"
        raise
    except BaseException:
        status[0] = "FAILED"
        raise


_deferred: list["DeferredRun"] = []


class DeferredRun:
    """A stage's run whose store is opened in a background thread while the stage works.

    Importing MLflow and opening the store take a second or more; the stage's own work (worker
    processes decoding images, TensorFlow importing) hides it. The run is created on
    :meth:`ready` (or the first thing logged) with the stage's true start time.
    """

    def __init__(self, stage: str, experiment: str, params: dict[str, Any] | None,
                 tags: dict[str, str] | None, run_name: str | None, after: threading.Thread | None = None):
        self.stage, self.experiment, self.params = stage, experiment, params
        self.tags, self.run_name = tags or {}, run_name or stage
        self.started_ms = int(time.time() * 1000)
        self.active = None
        self._result: dict[str, Any] = {}
        self._after = after
        self._thread = threading.Thread(target=self._prepare, name="mlflow-setup", daemon=True)
        self._thread.start()

    def _prepare(self) -> None:
        if self._after is not None:
            self._after.join()
        with contextlib.suppress(AttributeError, OSError):
            # Lower this thread's priority (Linux: per thread): on a busy machine the stage's own
            # work goes first, and the set-up's cost shows where the stage waits for it.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        start = time.thread_time()
        try:
            self._result["experiment_id"] = _setup(self.experiment)
        except BaseException as err:  # handed to the main thread in ready()
            self._result["error"] = err
        finally:
            _background_cpu[0] += time.thread_time() - start

    def ready(self):
        """Wait for the store, open the run (once) and make it active; return it."""
        if self.active is not None:
            return self.active
        with _timed():
            self._thread.join()
            if "error" in self._result:
                raise self._result["error"]
            import mlflow  # _setup has pointed it at the store, for the whole process

            os.environ.pop("MLFLOW_RUN_ID", None)
            tags = {**context_tags(self.stage), **self.tags}
            created = mlflow.MlflowClient().create_run(self._result["experiment_id"], start_time=self.started_ms,
                                                       tags=tags, run_name=self.run_name)
            self.active = mlflow.start_run(run_id=created.info.run_id)
            if self.params:
                mlflow.log_params(flatten(self.params))
        return self.active

    @property
    def info(self):
        return self.ready().info


@contextlib.contextmanager
def run(stage: str, experiment: str, params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None, parent_run_id: str | None = None,
        run_name: str | None = None, defer: bool = False,
        after: threading.Thread | None = None) -> Iterator[Any]:
    """Open ``stage``'s run, log ``params`` (flattened), close it FINISHED, FAILED or KILLED.

    The run is named after the stage unless ``run_name`` says otherwise. With ``defer`` the
    store is opened in the background (see :class:`DeferredRun`): a dead tracking server then
    shows at the first thing logged or at the end, not at once. A deferred run's set-up starts
    only when the thread ``after`` ends: two imports in threads of one process take turns on
    the GIL, so the one the stage needs first goes first.
    """
    if defer:
        with _deferred_run(DeferredRun(stage, experiment, params, tags, run_name, after)) as handle:
            yield handle
        return
    with _timed():
        import mlflow

        setup(experiment)
        # A stray MLFLOW_RUN_ID would make start_run resume someone else's run.
        os.environ.pop("MLFLOW_RUN_ID", None)
        all_tags = {**context_tags(stage), **(tags or {})}
        active = mlflow.start_run(run_name=run_name or stage, tags=all_tags, parent_run_id=parent_run_id,
                                  nested=parent_run_id is not None)
        if params:
            mlflow.log_params(flatten(params))
    status = ["FINISHED"]
    try:
        with _outcome(status):
            yield active
    finally:
        with _timed():
            mlflow.end_run(status[0])


@contextlib.contextmanager
def _deferred_run(handle: DeferredRun) -> Iterator[DeferredRun]:
    _deferred.append(handle)
    status = ["FINISHED"]
    try:
        with _outcome(status):
            yield handle
    finally:
        _deferred.remove(handle)
        try:
            handle.ready()
        except BaseException as err:
            if status[0] == "FINISHED":
                raise
            # The stage's own failure is the news; don't let the tracking one mask it.
            log.warning("the %s run could not be recorded in MLflow: %s", handle.stage, err)
        else:
            import mlflow  # only now: an import here at the start would wait for the thread's

            with _timed():
                mlflow.end_run(status[0])


def find_stage_run(experiment_id: str, stage: str, tag: str, value: str):
    """The latest finished run of ``stage`` whose ``tag`` equals ``value``, or None."""
    import mlflow

    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_STAGE}` = '{stage}' and tags.`{tag}` = '{value}' "
                      "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def link_stage_run(pipeline_run_id: str, experiment: str, stage: str, source) -> str:
    """Hang ``source`` (a finished stage run) under the pipeline run; return the run now shown there.

    A run not yet under any pipeline is re-parented. One already under an earlier pipeline (DVC
    skipped the stage as cached) gets a linking child run here with its params and final metrics.
    """
    import mlflow

    client = mlflow.MlflowClient()
    if TAG_PARENT not in source.data.tags:
        client.set_tag(source.info.run_id, TAG_PARENT, pipeline_run_id)
        return source.info.run_id
    tags = {k: v for k, v in source.data.tags.items() if not k.startswith("mlflow.")}
    tags.update({TAG_LINKED_FROM: source.info.run_id,
                 "mlflow.note.content": f"Stage cached by DVC: results of run {source.info.run_id}."})
    with run(stage, experiment, tags=tags, parent_run_id=pipeline_run_id) as linked:
        mlflow.log_params(source.data.params)
        if source.data.metrics:
            mlflow.log_metrics(source.data.metrics)
    return linked.info.run_id


def link_inputs(pipeline_run_id: str, experiment: str, fingerprints: dict[str, str]) -> None:
    """Hang the augment and train runs that made this model under the (active) pipeline run.

    Their metrics are copied onto the pipeline run too, so its row shows how the data and the
    training went.
    """
    exp_id = setup(experiment)
    copied: dict[str, float] = {}
    for stage, tag in (("augment", TAG_DATA_MD5), ("train", TAG_MODEL_MD5)):
        with _timed():
            source = find_stage_run(exp_id, stage, tag, fingerprints[tag])
        if source is None:
            log.warning("no finished MLflow %s run has %s=%s (made with another store?); "
                        "the pipeline run will lack it", stage, tag, fingerprints[tag])
            continue
        with _timed():
            shown = link_stage_run(pipeline_run_id, experiment, stage, source)
        set_tag(f"imgclf.{stage}_run_id", shown)
        copied.update(source.data.metrics)
    log_metrics(copied)


def log_keras_model(model, labels: list[str], registered_name: str | None = None) -> str:
    """Log ``model`` as an MLflow Keras model (artifact ``keras_model``) with a signature.

    The signature takes raw uint8 RGB images and returns one probability per label; the labels
    ride along as metadata. With ``registered_name`` the model is also registered, one version
    per call. Returns the model URI. Pip requirements are given, not inferred: inference would
    load the model again in a subprocess.
    """
    from importlib.metadata import version

    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = model.input_shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(labels)), "probabilities")]))
    with _timed():
        info = mlflow.keras.log_model(
            model, name="keras_model", signature=signature, metadata={"labels": labels},
            pip_requirements=[f"tensorflow=={version('tensorflow')}", f"keras=={version('keras')}"],
            registered_model_name=registered_name)
    return info.model_uri
