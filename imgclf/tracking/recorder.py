"""The recorder: the one thing a stage uses to land in MLflow, and the two calls that work
across stages.

A stage entry point reads::

    p = load(paths.PARAMS)                        # bad params or inputs: an error, no run
    data = load_prepared(paths.PREPARED_DIR)
    with recorder("train", p) as rec:
        result = compute(p, data, on_epoch=rec.log_epoch)
        rec.record(result)

On entering, the recorder opens the store and the stage's run, so a dead tracking server or a
bad ``MLFLOW_TRACKING_URI`` stops the stage in seconds, before any work, not after hours of
training. The run starts under the experiment's "runs without a result" row
(:func:`~imgclf.tracking.lineage.pending_row`) and moves under its pipeline run when a result
takes it. The recorder logs the params that shape the stage (:mod:`imgclf.pipeline`), then what
the stage reports as it goes (facts about the model, per-epoch metrics), then its
:class:`~imgclf.tracking.result.StageResult`: metrics, fingerprints as tags, artifacts and the
Keras model. It closes the run FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM), and logs
``mlflow_seconds``, the wall time the stage spent in MLflow.

The stage that closes a result (evaluate) then calls, after its run ended:

- :func:`close_result`: the pipeline run, one row per result, with the stage runs under it;
- :func:`promote_champion`: the champion rule, with ``mlflow.register`` on.

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

from imgclf import pipeline
from imgclf.core.params import Params
from imgclf.tracking import datasets, lineage, outage, runs, store
from imgclf.tracking.models import log_keras_model, promote
from imgclf.tracking.result import DataInput, StageResult

log = logging.getLogger(__name__)

# The tag a stage's runs carry its fingerprint under (what it makes: imgclf.pipeline).
FINGERPRINT_TAGS = {"data": runs.TAG_DATA_MD5, "model": runs.TAG_MODEL_MD5}
# Whether evaluate moved the champion alias to its model ("true"/"false"), and why.
TAG_PROMOTED = "imgclf.promoted"
TAG_PROMOTION = "imgclf.promotion"


class Recorder:
    """Logs one stage's progress and result to its active run; made by :func:`recorder`."""

    def __init__(self, stage: str, p: Params, experiment_id: str, run_id: str):
        self.stage = stage
        self.p = p
        self.experiment_id = experiment_id
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

    def _send(self, metrics: dict[str, float] | None = None, step: int = 0, params=None, tags=None) -> None:
        """Queue records of this run in the outbox (sent in order; kept through an outage)."""
        outage.outbox().log(self.run_id, _metrics(metrics or {}), step, params, tags)

    def log_params(self, params: dict[str, Any]) -> None:
        """Params the stage found out as it went (e.g. the model's size)."""
        with self._timed():
            self._send(params=params)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics, at step ``epoch`` (an ``epoch`` entry is the step, not logged)."""
        with self._timed():
            self._send({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)

    def log_history(self, history: list[dict[str, float]]) -> None:
        """Log the epochs of a resumed run's ``history`` that its run is missing (an interruption
        can fall between an epoch's checkpoint and its logging, or an outage outlast the stage)."""
        if not history:
            return
        with self._timed():
            first = next(k for k in history[0] if k != "epoch")
            logged = outage.client().get_metric_history(self.run_id, runs.metric_key(first))
            last = max((m.step for m in logged), default=0)
        for row in history:
            if row["epoch"] > last:
                self.log_epoch(row["epoch"], row)

    def record(self, result: StageResult) -> None:
        """Log the stage's result to its run: its figures and tags through the outbox, then its
        artifacts and model, which wait for an unreachable server (up to the limit)."""
        import mlflow

        with self._timed():
            tags = {FINGERPRINT_TAGS[kind]: value for kind, value in result.fingerprints.items()}
            self._send(result.metrics, params=result.facts, tags=tags)
            for path, folder in result.artifacts:
                outage.patiently(f"logging {path.name}", mlflow.log_artifact, str(path), artifact_path=folder)
            if result.model is not None:
                name = self.p.mlflow.model_name if self.p.mlflow.register_model else None
                outage.patiently("logging the model", log_keras_model, result.model, result.labels, name)
        self.result = result


@contextlib.contextmanager
def recorder(
    stage: str,
    p: Params,
    continue_run: str | None = None,
    inputs: list[DataInput] | None = None,
    discarded: list[tuple[str, str]] | None = None,
) -> Iterator[Recorder]:
    """Open ``stage``'s run for the block (or carry on the interrupted run ``continue_run``),
    with ``inputs``, the data it reads, as its dataset inputs; see the module docstring.

    First it closes KILLED the runs that can never end by themselves: those of ``discarded``
    (run, why: a training checkpoint removed) and those whose process has ended on this host
    (:func:`~imgclf.tracking.runs.close_abandoned`), so no run stays RUNNING for good."""
    start = time.perf_counter()
    experiment_id = store.setup(p.mlflow.experiment)
    runs.close_abandoned(experiment_id, continue_run, dict(discarded or []))
    parent = lineage.pending_row(experiment_id)
    with runs.open_run(stage, experiment_id, p.shaping(stage), continue_run, parent) as run:
        lineage.keep_pending_row(parent)  # a result closed meanwhile may have deleted it
        rec = Recorder(stage, p, experiment_id, run.info.run_id)
        datasets.log(run.info.run_id, inputs or [])
        rec.seconds = time.perf_counter() - start
        yield rec
        rec._send({lineage.STAGE_OVERHEAD: round(rec.seconds, 3)})
    if rec.result is not None and rec.result.summary:
        log.info("%s [run %s]", rec.result.summary, run.info.run_id)


def close_result(p: Params, rec: Recorder) -> str:
    """Write the pipeline run of the result that ``rec`` recorded (its stage closes a result, see
    :mod:`imgclf.pipeline`; its run has ended): every param that shaped the result, its metrics
    and datasets, and the runs of the stages that made it hung under it. Returns its id."""
    result = rec.result
    if result is None or not pipeline.stage(rec.stage).closes_result:
        raise ValueError(f"{rec.stage} recorded no result that closes a pipeline")
    made_by = {
        name: (FINGERPRINT_TAGS[kind], result.fingerprints[kind])
        for name, kind in pipeline.makers().items()
        if kind in result.fingerprints
    }
    pipeline_id = lineage.record_pipeline(
        rec.experiment_id, rec.run_id, p.shaping(pipeline.RESULT), _metrics(result.metrics), made_by
    )
    link = store.ui_link(rec.experiment_id, pipeline_id)
    if link is None:
        log.info("pipeline run %s", pipeline_id)
    elif store.is_server():
        log.info("pipeline run %s: %s", pipeline_id, link)
    else:
        log.info("pipeline run %s: %s (after `mlflow ui`)", pipeline_id, link)
    return pipeline_id


def promote_champion(p: Params, rec: Recorder, pipeline_id: str, labels: list[str]) -> bool:
    """Apply the champion rule (``evaluate.promote``) to the model ``rec`` evaluated (its classes
    ``labels``, in its outputs' order); tag the outcome (promoted or not, and why) on its run and
    on the pipeline run. Returns whether the alias moved."""

    result = rec.result
    made = lineage.find_stage_run(
        rec.experiment_id, pipeline.maker("model"), runs.TAG_MODEL_MD5, result.fingerprints["model"]
    )
    figures = {k: v for k, v in result.metrics.items() if "/" not in k}
    with store.exclusive():
        promoted, why = promote(
            p.mlflow.model_name,
            p.evaluate.promote.metric,
            p.evaluate.promote.min,
            figures,
            made.info.run_id if made else None,
            rec.experiment_id,
            labels,
        )
    log.info("%s: %s", "promoted" if promoted else "not promoted", why)
    client = outage.client()
    for run_id in (rec.run_id, pipeline_id):
        client.set_tag(run_id, TAG_PROMOTED, str(promoted).lower())
        client.set_tag(run_id, TAG_PROMOTION, why)
    return promoted


def _metrics(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` under names MLflow takes; names that become the same (the classes ``a+b`` and
    ``a&b`` both as ``a_b``) each get a suffix from the name they had, so none overwrites another."""
    import collections
    import hashlib

    keys = {k: runs.metric_key(k) for k in metrics}
    shared = {key for key, n in collections.Counter(keys.values()).items() if n > 1}
    return {
        (f"{keys[k]}-{hashlib.md5(k.encode()).hexdigest()[:6]}" if keys[k] in shared else keys[k]): float(v)
        for k, v in metrics.items()
    }
