"""A trial: exactly the train stage's training with the trial's params and ``tune.epochs`` epochs,
on arrays prepared for its augment params, reported to the pruner epoch by epoch and recorded as
an MLflow run under the study's run; and the sampler and pruner that choose and stop trials."""

from __future__ import annotations

import json
import logging
import math

from imgclf.console import interrupt
from imgclf.core import paths
from imgclf.core.params import Params
from imgclf.tuning.space import suggest, trial_params
from imgclf.tuning.storage import ATTR_RUN, ATTR_WORKER

log = logging.getLogger("tune")


def trial_seeded_tpe(seed: int, startup_trials: int):
    """TPE whose random draws for a trial come from ``seed`` and the trial's number, which is
    unique across every process of a study: no two processes, however they join (spawned,
    resumed after a kill, a second machine on PostgreSQL), draw the same start-up points, and a
    study of one process draws the same as the last time."""
    import optuna

    class TrialSeededTPE(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._number, self._tpe = None, None

        def _for(self, trial):
            if trial.number != self._number:  # TPE keeps no state between trials but its randomness
                self._number = trial.number
                self._tpe = optuna.samplers.TPESampler(
                    seed=(seed + 104729 * trial.number) % 2**32, n_startup_trials=startup_trials
                )
            return self._tpe

        def infer_relative_search_space(self, study, trial):
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self._for(trial).after_trial(study, trial, state, values)

    return TrialSeededTPE()


def sampler_and_pruner(p: Params):
    """TPE seeded per trial (:func:`trial_seeded_tpe`), and ``tune.pruner``."""
    import optuna

    t = p.tune
    sampler = trial_seeded_tpe(p.base.seed, t.startup_trials)
    if t.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=0)
    elif t.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=t.epochs)
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def trial_data(p: Params, tp: Params, data):
    """The prepared arrays for trial params ``tp``: ``data`` (the augment stage's) when its augment
    params are params.yaml's, else arrays prepared for them once and kept in a cache at the main
    repository (``.imgclf/tune/``), keyed by those params and the stage's data."""
    import hashlib

    from imgclf.core.prepared import MANIFEST_FILE, fingerprint, load_prepared
    from imgclf.data import dataset
    from imgclf.data.augmentation import prepare
    from imgclf.data.pool import default_workers, worker_pool

    if tp.section("augment") == p.section("augment"):
        return data
    key = {"augment": tp.shaping("augment"), "prepared": fingerprint(paths.PREPARED_DIR)}
    digest = hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = paths.store_root() / ".imgclf" / "tune" / f"prepared-{digest}"
    if not (folder / MANIFEST_FILE).is_file():
        log.info("preparing the data for augment params %s in %s", tp.section("augment"), folder)
        src = dataset.scan(paths.resolve(tp.data.source), tp.data.labels)
        with worker_pool(tp.augment.workers or default_workers()) as imap:
            prepare(tp, src, folder, imap=imap)
    return load_prepared(folder)


def make_objective(p: Params, data, study_run_id: str, worker: str):
    """The objective: train with the trial's params, report the monitor every epoch, prune."""
    import functools

    import optuna

    from imgclf.tracking import study as tracked
    from imgclf.tracking.models import fetch_model
    from imgclf.training.fit import train
    from imgclf.training.origin import resolve

    monitor = p.train.early_stopping.monitor
    fetch = functools.cache(fetch_model)  # a model URI in train.init is fetched once per study process

    def objective(trial) -> float:
        # First: a trial with its worker named is never taken for one a killed process left
        # before it began (storage.fail_unstarted), however long MLflow takes to answer below.
        trial.set_user_attr(ATTR_WORKER, worker)
        values = suggest(trial, p)
        tp = trial_params(p, values)
        run_id = tracked.start_trial(study_run_id, trial.number, values, worker)
        trial.set_user_attr(ATTR_RUN, run_id)
        log.info("trial %d: %s", trial.number, " ".join(f"{k}={v}" for k, v in values.items()))

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            tracked.log_epoch(run_id, epoch, row)
            trial.report(row[monitor], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {monitor} {row[monitor]:.4g}")

        state, status, metrics = "FAIL", "FAILED", {}
        try:
            origin = resolve(tp.train, fetch=fetch)
            trained = train(tp, trial_data(p, tp, data), on_epoch=on_epoch, origin=origin)
            value = float(trained.best[monitor])
            metrics = {f"best/{k}": v for k, v in trained.best.items() if k != "epoch"}
            metrics["best_epoch"] = trained.best_epoch
            if math.isfinite(value):
                state, status = "COMPLETE", "FINISHED"
            return value
        except optuna.TrialPruned as why:
            state, status = "PRUNED", "KILLED"
            log.info("trial %d pruned at %s", trial.number, why)
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            _close_trial(run_id, state, metrics, status)

    return objective


def _close_trial(run_id: str, state: str, metrics: dict[str, float], status: str) -> None:
    """Close a trial's run. A first signal arriving meanwhile (Ctrl-C reaches every process of
    the study at once) waits for it (the study stops after the trial); a second stops at once."""
    import keras

    from imgclf.tracking import study as tracked

    with interrupt.deferred():
        tracked.end_trial(run_id, state, metrics, status=status)
    keras.backend.clear_session()
