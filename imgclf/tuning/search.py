"""Search the train params with Optuna: TPE proposes, a pruner stops poor trials, MLflow records
every trial under one study run, and the winner becomes a ``dvc exp run`` command.

A trial is exactly the train stage's training (:func:`imgclf.training.fit.train`) on the prepared
arrays, with the trial's params and ``tune.epochs`` epochs, judged by the stage's own monitor
(``train.early_stopping.monitor``) at its best epoch. A trial with other augment params than
params.yaml's trains on arrays prepared for them as the stage would
(:func:`~imgclf.tuning.objective.trial_data`). So the winner's ``dvc exp run``, which prepares
and trains the same way with the same seed, reproduces the trial's figures.

The study lives in an Optuna storage (:mod:`imgclf.tuning.storage`): by default ``optuna.db``
beside the MLflow store at the main repository (``DVC_ROOT``), or any SQLAlchemy URL
(``postgresql://...`` for several machines). ``--trials`` is the study's budget of finished
(complete or pruned) trials, shared by every process working on it. A process that dies leaves
its trial running; once its heartbeat is older than ``tune.stale_after`` seconds, the next trial
started anywhere marks it failed and queues its params again (one that died before its first
heartbeat: :func:`~imgclf.tuning.storage.fail_unstarted`, as a process opens the study or ends a
trial).

One process's part, in the order ``stages/tune.py`` calls it: :func:`open_search` (check, load,
open the storage, the study and its MLflow run), :func:`optimize` (trials until the budget),
:func:`conclude` (the reports and the study run's last figures). The command line, the other
processes, the printing and the winner's ``dvc exp run`` are the stage's.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from imgclf.console import interrupt
from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.core.params import Params, check_space
from imgclf.tuning import storage as stored
from imgclf.tuning.objective import make_objective, sampler_and_pruner
from imgclf.tuning.winner import study_figures, write_reports

log = logging.getLogger("tune")


@dataclass(frozen=True)
class Options:
    """The command line of ``python -m stages.tune``."""

    trials: int
    timeout: float | None = None
    jobs: int = 1
    resume: bool = False
    storage: str | None = None
    study: str = "tune"
    apply: bool = False
    enqueue: tuple[str, ...] = ()
    worker: int = 0


@dataclass
class Search:
    """One process's share of a study, opened by :func:`open_search`."""

    p: Params
    o: Options
    data: Any  # the prepared arrays
    study: Any  # the Optuna study, with this process's sampler and pruner
    url: str  # the storage's URL
    run_id: str  # the study's MLflow run
    finished: int  # trials finished when this process joined
    storage: Any  # the Optuna storage, with its heartbeats


@dataclass(frozen=True)
class Outcome:
    """What a study came to, for the command to print."""

    counts: dict[str, int]
    run_id: str
    best: Any  # the best trial, or None with no complete trial
    monitor: str
    baseline_value: float | None
    command: str | None  # the winner's `dvc exp run`


def open_search(p: Params, o: Options) -> Search:
    """Check the space, load the data, open the storage and the study (or join it with
    ``--resume``) and its MLflow run: every error before any trial, in one line."""
    import optuna

    from imgclf.core.prepared import load_prepared

    if not p.tune.space:
        raise PipelineError("settings.yaml: tune.space is empty: name the params to search (see docs/tuning.md)")
    check_space(p)
    data = load_prepared(paths.PREPARED_DIR)
    stored.quiet_optuna()
    url = stored.storage_url(o.storage)
    storage = stored.open_storage(url, p.tune.stale_after)
    study = stored.open_study(p, o.study, o.resume, o.enqueue, storage, url)
    stored.fail_unstarted(study, storage)
    run_id = _study_run(p, o, study, url)
    finished = sum(stored.counts(study)[k.lower()] for k in stored.FINISHED)
    sampler, pruner = sampler_and_pruner(p)
    study = optuna.load_study(study_name=o.study, storage=storage, sampler=sampler, pruner=pruner)
    return Search(p, o, data, study, url, run_id, finished, storage)


def _study_run(p: Params, o: Options, study, url: str) -> str:
    """The study's MLflow run: made (or carried on) by the first process, found by the others."""
    from imgclf.tracking import study as tracked

    run_id = study.user_attrs.get(stored.ATTR_RUN)
    if o.worker == 0:
        settings = {f"tune.{k}": v for k, v in p.section("tune").items() if k != "space"}
        settings.update({f"tune.space.{k}": v for k, v in stored.settings(p)["space"].items()})
        fixed = {k: v for k, v in p.shaping("pipeline").items() if k not in p.tune.space and k != "train.epochs"}
        params = {
            **settings,
            "tune.monitor": p.train.early_stopping.monitor,
            "tune.storage": stored.shown(url),
            **fixed,
        }
        run_id = tracked.open_study_run(p.mlflow.experiment, o.study, params, run_id)
        study.set_user_attr(stored.ATTR_RUN, run_id)
        return run_id
    if not run_id:
        raise PipelineError(f"study {o.study!r} has no study run yet: start its first process without --worker")
    from imgclf.tracking import store

    store.setup(p.mlflow.experiment)
    return run_id


def optimize(s: Search) -> None:
    """Run trials until the study's budget of finished trials (or ``--timeout``)."""
    import optuna

    from imgclf.console.cli import start_tensorflow_quietly
    from imgclf.tracking import study as tracked

    start_tensorflow_quietly()
    if s.finished >= s.o.trials:
        return
    log.info(
        "study %s: %d of %d trials finished; storage %s; MLflow run %s",
        s.o.study,
        s.finished,
        s.o.trials,
        stored.shown(s.url),
        s.run_id,
    )

    def after_trial(study, trial) -> None:
        tracked.update_study(s.run_id, *study_figures(s.p, study), step=trial.number)
        stored.fail_unstarted(study, s.storage)  # one too young when the study opened
        interrupt.check()  # a signal that came as the trial closed: stop before the next one

    budget = optuna.study.MaxTrialsCallback(
        s.o.trials, states=tuple(optuna.trial.TrialState[state] for state in stored.FINISHED)
    )
    worker = f"{socket.gethostname()}:{os.getpid()}"
    s.study.optimize(
        make_objective(s.p, s.data, s.run_id, worker),
        n_trials=s.o.trials,
        timeout=s.o.timeout,
        catch=(Exception,),
        callbacks=[budget, after_trial],
        gc_after_trial=True,
    )


def conclude(s: Search, status: str) -> Outcome:
    """Write ``reports/tune/`` and the study run's last figures; end the run with ``status``."""
    from imgclf.tracking import study as tracked

    c = stored.counts(s.study)  # the study reads its trials from the storage: other processes' too
    artifacts = write_reports(s.study) if c["complete"] else []
    metrics, tags = study_figures(s.p, s.study)
    tracked.update_study(s.run_id, metrics, tags, step=len(s.study.trials))
    tracked.finish_study(s.run_id, artifacts, status)
    return Outcome(
        counts=c,
        run_id=s.run_id,
        best=s.study.best_trial if c["complete"] else None,
        monitor=s.p.train.early_stopping.monitor,
        baseline_value=metrics.get("baseline_value"),
        command=tags.get(tracked.TAG_COMMAND),
    )
