"""Where a study lives: its Optuna storage (SQLite at the main repository, or a database URL),
heartbeats that fail a dead process's trial and queue its params again, and the study itself,
created or resumed with the settings it was made with."""

from __future__ import annotations

import json
import logging
import time
import warnings
from typing import Any

from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.core.params import Params
from imgclf.tuning.space import baseline, parse_enqueue

log = logging.getLogger("tune")

# A study's and its trials' user attributes: the MLflow run, the process, the first trial.
ATTR_RUN = "mlflow_run_id"
ATTR_WORKER = "worker"
ATTR_BASELINE = "baseline"
FINISHED = ("COMPLETE", "PRUNED")


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


def quiet_optuna() -> None:
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
        log.warning("trial %d's process is gone: marked failed, its params queued again", trial.number)
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


def fail_unstarted(study, storage) -> int:
    """Fail the trials a killed process left RUNNING before their first heartbeat; how many.

    Optuna's stale check passes over a trial that never sent a heartbeat, so a process killed
    between creating a trial and its heartbeat thread's first beat would leave it RUNNING for
    good. A trial that began longer ago than the storage's grace period (``tune.stale_after``,
    :func:`open_storage`) and never reached the objective (which names its worker first thing)
    is as dead: it gets what a stale trial gets (the storage's stale-trial callback: marked
    failed, its params queued again).
    """
    from datetime import datetime, timedelta

    from optuna.trial import TrialState

    cutoff = datetime.now() - timedelta(seconds=storage.grace_period)  # Optuna's start times: local, naive
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if ATTR_WORKER in trial.user_attrs or trial.datetime_start is None or trial.datetime_start > cutoff:
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        storage.get_heartbeat_stale_trial_callback()(study, trial)
        failed += 1
    return failed


# Params a study's processes may hold differently: the epochs the study sets itself, and what
# describes a machine (where it keeps the images, its devices).
PER_MACHINE = ("train.epochs", "data.source", "train.strategy")


def settings(p: Params) -> dict[str, Any]:
    """What a study is: changing any of it mid-study would mix incomparable trials. ``fixed``
    holds the params that shape every trial and that it does not search (params.yaml's)."""
    shaping = {**p.shaping("augment"), **p.shaping("train")}
    return {
        "monitor": p.train.early_stopping.monitor,
        "epochs": p.tune.epochs,
        "space": {k: e.model_dump(exclude_none=True) for k, e in p.tune.space.items()},
        "fixed": {k: v for k, v in shaping.items() if k not in p.tune.space and k not in PER_MACHINE},
    }


def _check_same(name: str, made: dict[str, Any], wanted: dict[str, Any]) -> None:
    """Refuse to resume study ``name``, ``made`` with other settings than ``wanted``, in one line
    naming what differs. A study made before ``fixed`` was recorded is not checked on it."""
    wanted = json.loads(json.dumps(wanted))
    if {k: made.get(k) for k in ("monitor", "epochs", "space")} != {
        k: wanted[k] for k in ("monitor", "epochs", "space")
    }:
        raise PipelineError(
            f"study {name!r} was made with other tune settings (space, epochs or monitor) than "
            "settings.yaml's: restore them, or start another with --study NAME"
        )
    was, now = made.get("fixed", wanted["fixed"]), wanted["fixed"]
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key):
            raise PipelineError(
                f"study {name!r} was made with {key} {was.get(key)!r}, params.yaml has {now.get(key)!r}: "
                "its trials would not compare; restore it, or start another with --study NAME"
            )


def open_study(p: Params, name: str, resume: bool, enqueue: tuple[str, ...], storage, url: str):
    """Create the study ``name`` in ``storage`` (at ``url``) with the trials of ``enqueue`` first,
    or load it with ``resume``; errors say which flag to use."""
    import optuna

    from imgclf.training.monitor import Monitor

    names = optuna.study.get_all_study_names(storage)
    where = shown(url)
    if name in names and not resume:
        raise PipelineError(f"study {name!r} exists in {where}: --resume continues it, --study NAME starts another")
    if name not in names and resume:
        raise PipelineError(f"no study {name!r} in {where} to resume: drop --resume to start it")
    wanted = settings(p)
    if name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        _check_same(name, study.user_attrs.get("settings") or {}, wanted)
    else:
        direction = "minimize" if Monitor(p.train).lower_is_better else "maximize"
        study = optuna.create_study(study_name=name, storage=storage, direction=direction)
        study.set_user_attr("settings", wanted)
        first = baseline(p)
        if first:
            study.enqueue_trial(first, user_attrs={ATTR_BASELINE: True})
    for text in enqueue:  # on a resume too: the trials run next (once, however often asked)
        study.enqueue_trial(parse_enqueue(text, p), skip_if_exists=True)
    return study


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {name.lower(): sum(s == TrialState[name] for s in states) for name in ("COMPLETE", "PRUNED", "FAIL")}
