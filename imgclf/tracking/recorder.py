"""The recorder: the one thing a stage uses to land in MLflow.

A stage entry point reads::

    p = load(paths.PARAMS)                        # bad params or inputs: an error, no run
    data = load_prepared(paths.PREPARED_DIR)
    with recorder("train", p) as rec:
        result = compute(p, data, on_epoch=rec.log_epoch)
        rec.record(result)

On entering, the recorder opens the store and the stage's run, so a dead tracking server or a
bad ``MLFLOW_TRACKING_URI`` stops the stage in seconds, before any work, not after hours of
training. It logs the params that shape the stage (:data:`~imgclf.params.STAGE_PARAMS`), then
what the stage reports as it goes (facts about the model, per-epoch metrics), then its
:class:`~imgclf.result.StageResult`: metrics, fingerprints as tags, artifacts and the
Keras model. It closes the run FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM), and logs
``mlflow_seconds``, the wall time the stage spent in MLflow. After the final stage it writes
the pipeline run (:func:`~imgclf.tracking.lineage.record_pipeline`).

The store is opened in the foreground, not overlapped with the stage's work: the overlap saved
about two seconds a stage and cost a second code path, a thread that decided whether worker
processes could be forked, and a race on Python's random state (importing MLflow draws from
it) with the seeding of training.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from imgclf.params import Params
from imgclf.result import DataInput, StageResult
from imgclf.tracking import datasets, lineage, runs, store
from imgclf.tracking.models import log_keras_model, promote

log = logging.getLogger(__name__)

FINAL_STAGE = "evaluate"
# The fingerprint each stage makes, and the tag its runs carry it under.
MAKES = {"augment": "data", "train": "model"}
FINGERPRINT_TAGS = {"data": runs.TAG_DATA_MD5, "model": runs.TAG_MODEL_MD5}
# Whether evaluate moved the champion alias to its model ("true"/"false"), and why.
TAG_PROMOTED = "imgclf.promoted"
TAG_PROMOTION = "imgclf.promotion"


class Recorder:
    """Logs one stage's progress and result to its active run; made by :func:`recorder`."""

    def __init__(self, p: Params, run_id: str):
        self.p = p
        self.run_id = run_id
        self.result: StageResult | None = None
        self.seconds = 0.0

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def log_params(self, params: dict[str, Any]) -> None:
        """Params the stage found out as it went (e.g. the model's size), logged at once."""
        import mlflow

        with self._timed():
            mlflow.log_params(params)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics, at step ``epoch`` (an ``epoch`` entry is the step, not logged)."""
        import mlflow

        with self._timed():
            mlflow.log_metrics(_metrics({k: v for k, v in metrics.items() if k != "epoch"}), step=epoch)

    def log_history(self, history: list[dict[str, float]]) -> None:
        """Log the epochs of a resumed run's ``history`` that its run is missing (an interruption
        can fall between an epoch's checkpoint and its logging)."""
        import mlflow

        if not history:
            return
        with self._timed():
            first = next(k for k in history[0] if k != "epoch")
            logged = mlflow.MlflowClient().get_metric_history(self.run_id, runs.metric_key(first))
            last = max((m.step for m in logged), default=0)
        for row in history:
            if row["epoch"] > last:
                self.log_epoch(row["epoch"], row)

    def record(self, result: StageResult) -> None:
        """Log the stage's result to its run."""
        import mlflow

        with self._timed():
            tags = {FINGERPRINT_TAGS[kind]: value for kind, value in result.fingerprints.items()}
            mlflow.set_tags(tags)
            if result.facts:
                mlflow.log_params(result.facts)
            if result.metrics:
                mlflow.log_metrics(_metrics(result.metrics))
            for path, folder in result.artifacts:
                mlflow.log_artifact(str(path), artifact_path=folder)
            if result.model is not None:
                name = self.p.mlflow.model_name if self.p.mlflow.register_model else None
                log_keras_model(result.model, result.labels, name)
        self.result = result


@contextlib.contextmanager
def recorder(
    stage: str, p: Params, continue_run: str | None = None, inputs: list[DataInput] | None = None
) -> Iterator[Recorder]:
    """Open ``stage``'s run for the block (or carry on the interrupted run ``continue_run``),
    with ``inputs``, the data it reads, as its dataset inputs; see the module docstring."""
    start = time.perf_counter()
    experiment_id = store.setup(p.mlflow.experiment)
    with runs.open_run(stage, experiment_id, p.shaping(stage), continue_run) as run:
        rec = Recorder(p, run.info.run_id)
        datasets.log(run.info.run_id, inputs or [])
        promotion: dict[str, str] = {}
        rec.seconds = time.perf_counter() - start
        yield rec
        with rec._timed():
            import mlflow

            if stage == FINAL_STAGE and rec.result is not None and p.mlflow.register_model:
                promotion = _promote(p, rec.result, experiment_id)
                mlflow.set_tags(promotion)
            mlflow.log_metric(lineage.STAGE_OVERHEAD, round(rec.seconds, 3))
    result = rec.result
    if stage == FINAL_STAGE and result is not None:
        made_by = {
            name: (FINGERPRINT_TAGS[kind], result.fingerprints[kind])
            for name, kind in MAKES.items()
            if kind in result.fingerprints
        }
        pipeline_id = lineage.record_pipeline(
            experiment_id, run.info.run_id, p.shaping("pipeline"), _metrics(result.metrics), made_by
        )
        if promotion:
            import mlflow

            for key, value in promotion.items():
                mlflow.MlflowClient().set_tag(pipeline_id, key, value)
        log.info("pipeline run %s", pipeline_id)
    if result is not None and result.summary:
        log.info("%s [run %s]", result.summary, run.info.run_id)


def _promote(p: Params, result: StageResult, experiment_id: str) -> dict[str, str]:
    """Apply the champion rule (``evaluate.promote``) to the evaluated model; return the tags
    that record the outcome on the run."""
    made = lineage.find_stage_run(experiment_id, "train", runs.TAG_MODEL_MD5, result.fingerprints["model"])
    figures = {k: v for k, v in result.metrics.items() if "/" not in k}
    with store.exclusive():
        promoted, why = promote(
            p.mlflow.model_name,
            p.evaluate.promote.metric,
            p.evaluate.promote.min,
            figures,
            made.info.run_id if made else None,
            experiment_id,
        )
    log.info("%s: %s", "promoted" if promoted else "not promoted", why)
    return {TAG_PROMOTED: str(promoted).lower(), TAG_PROMOTION: why}


def _metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {runs.metric_key(k): float(v) for k, v in metrics.items()}
