"""`python -m stages.tune` on the tiny project: trials nested in MLflow, a bad trial pruned, the
winner reproduced by `dvc exp run`, a killed study resumed, two processes on one study."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time

import numpy as np
import pytest
import yaml

from .helpers import Project

# Each test runs the real pipeline and a study on a copy of the project.
pytestmark = pytest.mark.slow

optuna = pytest.importorskip("optuna")

# Tiny: 2 epochs a trial; the bad learning rate below makes Adam diverge at once.
TUNE = {
    "epochs": 2,
    "pruner": "median",
    "startup_trials": 1,
    "stale_after": 3,
    "space": {
        "train.learning_rate": {"low": 0.0005, "high": 10.0, "log": True},
        "train.dropout_dense": {"low": 0.0, "high": 0.5},
    },
}
BAD = "train.learning_rate=8.0"


def _set_tune(p: Project, **extra) -> None:
    path = p.root / "settings.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["tune"] = {**TUNE, **extra}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def _study(p: Project, name: str = "tune"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{p.root / 'optuna.db'}")


def _children(p: Project, study_run) -> list:
    return [r for r in p.runs() if r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]


def test_trials_nest_in_mlflow_a_bad_one_is_pruned_and_the_winner_reproduces(project: Project):
    p = project
    _set_tune(p, space={**TUNE["space"], "augment.flip": {"choices": [True, False]}})
    out = p.sh(
        "python", "-m", "stages.tune", "--trials", "3", "--enqueue", BAD, "--enqueue", "augment.flip=false", "--apply"
    )
    study = _study(p)
    states = {t.number: t.state.name for t in study.trials}
    # Trial 0 is params.yaml's own values; trial 1 the enqueued bad one, pruned after its
    # first epoch for falling behind trial 0's val_loss.
    assert study.trials[0].params["train.learning_rate"] == 0.001
    assert study.trials[1].params["train.learning_rate"] == 8.0
    assert states[0] == "COMPLETE" and states[1] == "PRUNED"
    assert len(study.trials[1].intermediate_values) == 1
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 3
    # Trial 2 is unflipped: its arrays were prepared for it (half the copies), the stage's kept.
    assert study.trials[2].params["augment.flip"] is False
    (cached,) = (p.root / ".imgclf" / "tune").glob("prepared-*/y_train.npy")
    stage_rows = len(np.load(p.root / "data/prepared/y_train.npy"))
    assert len(np.load(cached)) * 2 == stage_rows

    # MLflow: one study run, every trial nested under it with its state.
    (study_run,) = p.runs("tune-tune")
    assert study_run.info.status == "FINISHED"
    children = {int(r.data.tags["imgclf.trial"]): r for r in _children(p, study_run)}
    assert sorted(children) == [0, 1, 2]
    assert children[1].data.tags["imgclf.trial_state"] == "PRUNED" and children[1].info.status == "KILLED"
    assert children[0].data.tags["imgclf.trial_state"] == "COMPLETE" and children[0].info.status == "FINISHED"
    assert children[0].data.params["train.learning_rate"] == "0.001"
    client = __import__("mlflow").MlflowClient(p.tracking_uri)
    assert [m.step for m in client.get_metric_history(children[0].info.run_id, "val_loss")] == [1, 2]
    best = study.best_trial
    assert study_run.data.metrics["best_value"] == pytest.approx(best.value)
    assert study_run.data.metrics["baseline_value"] == pytest.approx(study.trials[0].value)
    assert study_run.data.metrics["trials_pruned"] >= 1
    assert study_run.data.tags["imgclf.tune.best_trial"] == str(best.number)
    command = study_run.data.tags["imgclf.tune.command"]
    assert command.startswith(f"dvc exp run -n tune-trial-{best.number} -S train.learning_rate=")
    assert command in out.stdout
    for name in ("trials.csv", "optimization_history.png"):
        assert (p.root / "reports" / "tune" / name).stat().st_size > 0
    assert {a.path for a in client.list_artifacts(study_run.info.run_id, "tune")} >= {"tune/trials.csv"}

    # --apply ran the winner through the normal pipeline: same val_loss as its trial.
    train = p.json("reports/train.json")
    assert train["val_loss"] == pytest.approx(best.value, rel=1e-6)
    best_run = children[best.number]
    assert train["val_accuracy"] == pytest.approx(best_run.data.metrics["best/val_accuracy"], rel=1e-6)
    exps = p.sh("dvc", "exp", "show", "--json").stdout
    assert f"tune-trial-{best.number}" in exps
    # A second --apply of the same winner (a resume with the budget met) runs it under a new name.
    again = p.sh("python", "-m", "stages.tune", "--trials", "3", "--resume", "--apply")
    name = f"tune-trial-{best.number}"
    assert f"experiment {name} was run from this commit already: running the winner as {name}-2" in again.stderr
    assert f"{name}-2" in p.sh("dvc", "exp", "list", "--name-only").stdout.split()
    assert p.json("reports/train.json")["val_loss"] == pytest.approx(best.value, rel=1e-6)


def _wait_for(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def _rows(db, sql: str, *args) -> list[tuple] | None:
    """Rows of ``sql`` on the study's SQLite file, read straight (opening it as an Optuna storage
    would race the tune process creating its tables); None while it has no file or tables."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.Error:
        return None


def _start_tune(p: Project, *args: str) -> subprocess.Popen:
    """``python -m stages.tune ARGS`` in a session of its own (signals go to its whole group)."""
    return subprocess.Popen(
        ["python", "-m", "stages.tune", *args],
        cwd=p.root,
        env=p.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def test_a_killed_study_of_two_processes_resumes_and_finishes(project: Project):
    p = project
    _set_tune(p, pruner="none", epochs=1)
    db = p.root / "optuna.db"
    workers_sql = "SELECT value_json FROM trial_user_attributes WHERE key = 'worker'"

    def both_working() -> bool:
        """A trial is complete, each process has started one, and one is running now."""
        states, workers = _rows(db, "SELECT state FROM trials"), _rows(db, workers_sql)
        if states is None or workers is None:
            return False
        return ("COMPLETE",) in states and ("RUNNING",) in states and len(set(workers)) == 2

    proc = _start_tune(p, "--trials", "5", "--jobs", "2")
    try:
        _wait_for(lambda: both_working() or proc.poll() is not None, 240, "both processes at work")
        if proc.poll() is not None:
            pytest.fail(
                f"tune exited {proc.returncode} before both processes were at work:\n{proc.stderr.read()[-3000:]}"
            )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its second process, mid-trial
        proc.wait()
    before = _study(p).trials
    run_ids = [t.user_attrs["mlflow_run_id"] for t in before if "mlflow_run_id" in t.user_attrs]
    assert len(set(run_ids)) == len(run_ids)  # one MLflow run per trial
    (study_run,) = p.runs("tune-tune")
    workers = {r.data.tags["imgclf.worker"] for r in _children(p, study_run)}
    assert len(workers) == 2, "both processes ran trials of the one study"
    running = [t.number for t in before if t.state.name == "RUNNING"]
    assert running, "the kill left trials running"

    # Ctrl-C (SIGINT to the process group, as a terminal sends it) while both processes train
    # again: each closes its trial's run and stops, the command after its second process.
    def both_training_since(first: int) -> bool:
        rows = _rows(
            db,
            "SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
            "WHERE t.state = 'RUNNING' AND t.number >= ? AND a.key = 'worker'",
            first,
        )
        return rows is not None and len(set(rows)) == 2

    ctrl_c = _start_tune(p, "--trials", "5", "--resume", "--jobs", "2")
    try:
        _wait_for(lambda: both_training_since(len(before)) or ctrl_c.poll() is not None, 240, "both at work again")
        os.killpg(ctrl_c.pid, signal.SIGINT)
        assert ctrl_c.wait(timeout=150) == 130, ctrl_c.stderr.read()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ctrl_c.pid, signal.SIGKILL)
    with pytest.raises(ProcessLookupError):
        os.killpg(ctrl_c.pid, 0)  # the second process is gone too
    assert [t for t in _study(p).trials[len(before) :] if t.state.name == "FAIL"], "no trial was interrupted"
    assert not [r.info.run_name for r in _children(p, study_run) if r.info.status == "RUNNING"]

    again = p.sh("python", "-m", "stages.tune", "--trials", "5", "--resume")
    study = _study(p)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 5
    assert all(study.trials[n].state.name == "FAIL" for n in running)  # stale: failed, then retried
    assert "study tune: 5 complete" in again.stdout
    (resumed,) = p.runs("tune-tune")
    assert resumed.info.run_id == study_run.info.run_id and resumed.info.status == "FINISHED"
    # A killed trial's run is KILLED (a trial killed before its run was made has none).
    children = {r.info.run_id: r for r in _children(p, resumed)}
    for t in before:
        if t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs:
            assert children[t.user_attrs["mlflow_run_id"]].info.status == "KILLED"
    assert resumed.data.metrics["trials_complete"] == 5


def test_tune_refuses_a_resume_of_nothing(project: Project):
    p = project
    _set_tune(p)
    nothing = p.sh("python", "-m", "stages.tune", "--trials", "1", "--resume", ok=False)
    assert nothing.returncode == 2
    assert "no study 'tune'" in nothing.stderr and "drop --resume" in nothing.stderr
