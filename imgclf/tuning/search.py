"""Search the train params with Optuna: TPE proposes, a pruner stops poor trials, MLflow records
every trial under one study run, and the winner becomes a ``dvc exp run`` command.

A trial is exactly the train stage's training (:func:`imgclf.training.fit.train`) on the prepared
arrays, with the trial's params and ``tune.epochs`` epochs, judged by the stage's own monitor
(``train.early_stopping.monitor``) at its best epoch. A trial with other augment params than
params.yaml's trains on arrays prepared for them as the stage would (:func:`trial_data`). So the
winner's ``dvc exp run``, which prepares and trains the same way with the same seed, reproduces
the trial's figures.

The study lives in an Optuna storage: by default ``optuna.db`` beside the MLflow store at the
main repository (``DVC_ROOT``), or any SQLAlchemy URL (``postgresql://...`` for several
machines). ``--trials`` is the study's budget of finished (complete or pruned) trials, shared by
every process working on it. A process that dies leaves its trial running; once its heartbeat is
older than ``tune.stale_after`` seconds, the next trial started anywhere marks it failed and
queues its params again.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shlex
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.core.params import Params, SpaceEntry, check_space, searchable, with_values

log = logging.getLogger("tune")

REPORT_DIR = paths.REPORTS / "tune"
ATTR_RUN = "mlflow_run_id"
ATTR_WORKER = "worker"
ATTR_BASELINE = "baseline"
FINISHED = ("COMPLETE", "PRUNED")


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


# ---------------------------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    """A choice as Optuna can store it: scalars as they are, lists as their JSON text."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def _decode(value: Any, entry: SpaceEntry) -> Any:
    """A value as Optuna stored it, back as params.yaml spells it."""
    if entry.choices is None:
        return value
    return {_encode(c): c for c in entry.choices}.get(value, value)


def _is_int(p: Params, key: str) -> bool:
    value = searchable(p)[key]
    return isinstance(value, int) and not isinstance(value, bool)


def suggest(trial, p: Params) -> dict[str, Any]:
    """The trial's values for every param of ``tune.space``, as params.yaml spells them."""
    values = {}
    for key, e in p.tune.space.items():
        if e.choices is not None:
            raw = trial.suggest_categorical(key, [_encode(c) for c in e.choices])
        elif _is_int(p, key):
            raw = trial.suggest_int(key, int(e.low), int(e.high), step=int(e.step or 1), log=e.log)
        else:
            raw = trial.suggest_float(key, e.low, e.high, step=e.step, log=e.log)
        values[key] = _decode(raw, e)
    return values


def trial_params(p: Params, values: dict[str, Any]) -> Params:
    """``p`` with a trial's ``values`` and the study's epoch budget."""
    return with_values(p, {**values, "train.epochs": p.tune.epochs}, "tune")


def baseline(p: Params) -> dict[str, Any]:
    """params.yaml's own values for the searched params that lie in the space (Optuna's names,
    encoded): the study's first trial, so its best is measured against them."""
    current = searchable(p)
    out = {}
    for key, e in p.tune.space.items():
        value = current[key]
        if e.choices is not None:
            if value in e.choices:
                out[key] = _encode(value)
        elif e.low <= value <= e.high:
            out[key] = value
    return out


def parse_enqueue(text: str, p: Params) -> dict[str, Any]:
    """``--enqueue 'train.learning_rate=0.003,train.batch_size=64'`` as a trial to run first."""
    import yaml

    out = {}
    for part in filter(None, (s.strip() for s in _split_top(text))):
        key, sep, value = part.partition("=")
        if not sep or key not in p.tune.space:
            raise PipelineError(
                f"--enqueue {part!r}: give KEY=VALUE with KEY one of tune.space: {', '.join(p.tune.space)}"
            )
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads 5e-3 as text
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        out[key] = _encode(parsed)
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets (``train.conv_filters=[16,32]`` stays whole)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


# ---------------------------------------------------------------------------------------------
# Storage and study
# ---------------------------------------------------------------------------------------------


def storage_url(url: str | None) -> str:
    """The study's storage: ``optuna.db`` at the main repository unless ``url`` is given;
    ``postgresql://`` goes through psycopg 3, the driver installed here."""
    if not url:
        return f"sqlite:///{paths.store_root() / 'optuna.db'}"
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def shown(url: str) -> str:
    """``url`` fit to print and log: its password, if any, masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: the storage will say so
        return url


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_storage(url: str, stale_after: int):
    """An RDB storage with heartbeats: a trial whose process died is failed after ``stale_after``
    seconds and its params queued again."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from imgclf.tracking import study as tracked

    retry = RetryHeartbeatStaleTrialCallback(max_retry=1)

    def on_stale(study, trial) -> None:
        run_id = trial.user_attrs.get(ATTR_RUN)
        if run_id:
            tracked.end_trial(run_id, "FAIL", status="KILLED")
        log.warning("trial %d stopped sending heartbeats: marked failed, its params queued again", trial.number)
        retry(study, trial)

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(3):
        try:
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=max(1, stale_after // 4),
                grace_period=stale_after,
                heartbeat_stale_trial_callback=on_stale,
            )
        except Exception as err:  # a bad URL, a missing driver, no server: many types
            # Two processes creating a new storage's tables at once: the loser finds them made.
            if attempt < 2 and "already exists" in str(err):
                time.sleep(1 + attempt)
                continue
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise PipelineError(f"cannot open the study storage {shown(url)}: {first} (fix --storage)") from None


def _settings(p: Params) -> dict[str, Any]:
    """What a study is: changing any of it mid-study would mix incomparable trials."""
    return {
        "monitor": p.train.early_stopping.monitor,
        "epochs": p.tune.epochs,
        "space": {k: e.model_dump(exclude_none=True) for k, e in p.tune.space.items()},
    }


def open_study(p: Params, o: Options, storage, url: str):
    """Create the study in ``storage`` (at ``url``), or load it for ``--resume``; errors say
    which flag to use."""
    import optuna

    from imgclf.training.monitor import Monitor

    names = optuna.study.get_all_study_names(storage)
    where = shown(url)
    if o.study in names and not o.resume:
        raise PipelineError(f"study {o.study!r} exists in {where}: --resume continues it, --study NAME starts another")
    if o.study not in names and o.resume:
        raise PipelineError(f"no study {o.study!r} in {where} to resume: drop --resume to start it")
    settings = _settings(p)
    if o.study in names:
        study = optuna.load_study(study_name=o.study, storage=storage)
        if study.user_attrs.get("settings") != json.loads(json.dumps(settings)):
            raise PipelineError(
                f"study {o.study!r} was made with other tune settings (space, epochs or monitor) than "
                "params.yaml's: restore them, or start another with --study NAME"
            )
        return study
    direction = "minimize" if Monitor(p.train).lower_is_better else "maximize"
    study = optuna.create_study(study_name=o.study, storage=storage, direction=direction)
    study.set_user_attr("settings", settings)
    first = baseline(p)
    if first:
        study.enqueue_trial(first, user_attrs={ATTR_BASELINE: True})
    for text in o.enqueue:
        study.enqueue_trial(parse_enqueue(text, p))
    return study


def sampler_and_pruner(p: Params, o: Options, done: int):
    import optuna

    t = p.tune
    # One seed per process and per restart: a resumed or second process must not redraw the
    # first one's random start-up points.
    seed = (p.base.seed + 7919 * o.worker + 104729 * done) % 2**32
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=t.startup_trials)
    if t.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials, n_warmup_steps=0)
    elif t.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=t.epochs)
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {name.lower(): sum(s == TrialState[name] for s in states) for name in ("COMPLETE", "PRUNED", "FAIL")}


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------


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
    import optuna

    from imgclf.tracking import study as tracked
    from imgclf.training.fit import train

    monitor = p.train.early_stopping.monitor

    def objective(trial) -> float:
        import keras

        values = suggest(trial, p)
        tp = trial_params(p, values)
        run_id = tracked.start_trial(study_run_id, trial.number, values, worker)
        trial.set_user_attr(ATTR_RUN, run_id)
        trial.set_user_attr(ATTR_WORKER, worker)
        log.info("trial %d: %s", trial.number, " ".join(f"{k}={v}" for k, v in values.items()))

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            tracked.log_epoch(run_id, epoch, row)
            trial.report(row[monitor], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {monitor} {row[monitor]:.4g}")

        state, status, metrics = "FAIL", "FAILED", {}
        try:
            trained = train(tp, trial_data(p, tp, data), on_epoch=on_epoch)
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
            tracked.end_trial(run_id, state, metrics, status=status)
            keras.backend.clear_session()

    return objective


def study_figures(p: Params, study) -> tuple[dict[str, float], dict[str, str]]:
    """The study run's metrics and tags now: counts, best value, best params and the winner's
    command."""
    from imgclf.tracking.study import TAG_BEST_TRIAL, TAG_COMMAND

    c = counts(study)
    metrics = {f"trials_{k}": v for k, v in c.items()}
    tags: dict[str, str] = {}
    if c["complete"]:
        best = study.best_trial
        metrics["best_value"] = best.value
        base = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_BASELINE) and t.value is not None]
        if base:
            metrics["baseline_value"] = base[0].value
        tags = {f"best.{k}": str(v) for k, v in best.params.items()}
        tags[TAG_BEST_TRIAL] = str(best.number)
        tags[TAG_COMMAND] = shlex.join(winner_command(p, study))
    return metrics, tags


# ---------------------------------------------------------------------------------------------
# The winner
# ---------------------------------------------------------------------------------------------


def _format(value: Any) -> str:
    """A value as ``dvc exp run -S`` reads it back (YAML)."""
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def winner_command(p: Params, study) -> list[str]:
    """``dvc exp run`` of the best trial's params, named after the study and the trial."""
    best = study.best_trial
    values = {k: _decode(v, p.tune.space[k]) for k, v in best.params.items()}
    values["train.epochs"] = p.tune.epochs
    cmd = ["dvc", "exp", "run", "-n", f"{study.study_name}-trial-{best.number}"]
    for key, value in values.items():
        cmd += ["-S", f"{key}={_format(value)}"]
    return cmd


def write_reports(study, folder: Path = REPORT_DIR) -> list[Path]:
    """``trials.csv`` and, where there is enough to draw, the optimisation history and the
    param importances as PNGs; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    table = folder / "trials.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        keys = sorted({k for t in study.trials for k in t.params})
        w.writerow(["number", "state", "value", "epochs_reported", *keys])
        for t in study.trials:
            w.writerow([t.number, t.state.name, t.value, len(t.intermediate_values), *(t.params.get(k) for k in keys)])
    written.append(table)
    for name, draw in (
        ("optimization_history", ov.plot_optimization_history),
        ("param_importances", ov.plot_param_importances),
    ):
        try:
            ax = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few complete trials
            log.info(
                "no %s plot: %s", name.replace("_", " "), str(err).splitlines()[0] if str(err) else "too few trials"
            )
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=100)
        plt.close(fig)
        written.append(folder / f"{name}.png")
    return written


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def _spawn_workers(o: Options) -> list[subprocess.Popen]:
    procs = []
    for k in range(1, o.jobs):
        cmd = [
            sys.executable,
            "-m",
            "stages.tune",
            "--resume",
            "--study",
            o.study,
            "--trials",
            str(o.trials),
            "--worker",
            str(k),
        ]
        if o.storage:
            cmd += ["--storage", o.storage]
        if o.timeout:
            cmd += ["--timeout", str(o.timeout)]
        procs.append(subprocess.Popen(cmd, cwd=paths.ROOT))
    return procs


def run(p: Params, o: Options) -> None:
    """The whole ``tune`` command for one process (``o.worker`` 0 is the one the user started)."""
    import optuna

    from imgclf.console.cli import start_tensorflow_quietly
    from imgclf.core.prepared import load_prepared
    from imgclf.tracking import study as tracked

    if not p.tune.space:
        raise PipelineError(
            "settings.yaml: tune.space is empty: name the params to search (see the README's tune section)"
        )
    check_space(p)
    data = load_prepared(paths.PREPARED_DIR)
    _quiet_optuna()
    url = storage_url(o.storage)
    storage = open_storage(url, p.tune.stale_after)
    study = open_study(p, o, storage, url)
    run_id = study.user_attrs.get(ATTR_RUN)
    if o.worker == 0:
        settings = {f"tune.{k}": v for k, v in p.section("tune").items() if k != "space"}
        settings.update({f"tune.space.{k}": v for k, v in _settings(p)["space"].items()})
        fixed = {k: v for k, v in p.shaping("pipeline").items() if k not in p.tune.space and k != "train.epochs"}
        params = {**settings, "tune.monitor": p.train.early_stopping.monitor, "tune.storage": shown(url), **fixed}
        run_id = tracked.open_study_run(p.mlflow.experiment, o.study, params, run_id)
        study.set_user_attr(ATTR_RUN, run_id)
    elif not run_id:
        raise PipelineError(f"study {o.study!r} has no study run yet: start its first process without --worker")
    else:
        from imgclf.tracking import store

        store.setup(p.mlflow.experiment)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    finished = sum(counts(study)[k.lower()] for k in FINISHED)
    sampler, pruner = sampler_and_pruner(p, o, finished)
    study = optuna.load_study(study_name=o.study, storage=storage, sampler=sampler, pruner=pruner)

    def after_trial(study, trial) -> None:
        tracked.update_study(run_id, *study_figures(p, study), step=trial.number)

    # The other processes start before this one imports TensorFlow, so all of them import it
    # at once and start work together.
    procs = _spawn_workers(o) if o.worker == 0 and o.jobs > 1 else []
    start_tensorflow_quietly()
    status = "FAILED"
    try:
        if finished < o.trials:
            log.info(
                "study %s: %d of %d trials finished; storage %s; MLflow run %s",
                o.study,
                finished,
                o.trials,
                shown(url),
                run_id,
            )
            study.optimize(
                make_objective(p, data, run_id, worker),
                n_trials=o.trials,
                timeout=o.timeout,
                catch=(Exception,),
                callbacks=[
                    optuna.study.MaxTrialsCallback(
                        o.trials, states=tuple(optuna.trial.TrialState[s] for s in FINISHED)
                    ),
                    after_trial,
                ],
                gc_after_trial=True,
            )
        for proc in procs:
            proc.wait()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        if o.worker == 0:
            _conclude(p, o, study, run_id, status)
    if o.worker == 0 and o.apply:
        apply_winner(p, study)


def _conclude(p: Params, o: Options, study, run_id: str, status: str) -> None:
    from imgclf.tracking import study as tracked

    c = counts(study)  # the study reads its trials from the storage: other processes' too
    artifacts = write_reports(study) if c["complete"] else []
    metrics, tags = study_figures(p, study)
    tracked.update_study(run_id, metrics, tags, step=len(study.trials))
    tracked.finish_study(run_id, artifacts, status)
    print(f"study {o.study}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed (MLflow run {run_id})")
    if not c["complete"]:
        return
    best = study.best_trial
    monitor = p.train.early_stopping.monitor
    line = f"best: trial {best.number}, {monitor} {best.value:.4f}"
    if "baseline_value" in metrics:
        line += f" (params.yaml's values: {metrics['baseline_value']:.4f})"
    print(line)
    print("reproduce it as a DVC experiment:")
    print("  " + tags[tracked.TAG_COMMAND])


def apply_winner(p: Params, study) -> None:
    """Run the winner's ``dvc exp run``: the final model comes from the normal pipeline."""
    cmd = winner_command(p, study)
    log.info("running %s", shlex.join(cmd))
    done = subprocess.run(cmd, cwd=paths.ROOT, check=False)
    if done.returncode != 0:
        raise PipelineError(f"{shlex.join(cmd)} failed (exit {done.returncode}); the study is kept: rerun it by hand")
