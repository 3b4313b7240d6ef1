"""A tracking server that goes away during a real `dvc repro` (imgclf/tracking/outage.py).

A real `mlflow server` on loopback is stopped while training runs and started again on the
same port and store, as a team server restarts. Training goes on; its epochs reach the run
once the server is back; a server still gone at the end fails the stage with one line, and the
rerun records the finished training without training again.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import time

import pytest

from imgclf.training.checkpoint import STATE_FILE

from .helpers import MlflowServer, Project
from .test_tune import _set_tune

pytestmark = pytest.mark.slow

EPOCHS = 8
TRIAL_EPOCHS = 3
EPOCH_LINE = re.compile(r"epoch \d+/\d+:")


@pytest.fixture
def server(project: Project, tmp_path, new_store):
    srv = MlflowServer(new_store(tmp_path / "server.db"), tmp_path, project.env)
    srv.start()
    project.env["MLFLOW_TRACKING_URI"] = srv.url
    # No retries inside MLflow's client: each failed call returns at once (the outbox and the
    # patient calls do the retrying), so the test spends its time on the outage, not on backoff.
    project.env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    yield srv
    srv.stop()


def _repro_stopping_the_server(p: Project, server: MlflowServer, after_epoch: int = 1) -> subprocess.Popen:
    """Start `dvc repro`; stop the server once training has checkpointed ``after_epoch``."""
    dvc = subprocess.Popen(
        ["dvc", "repro"], cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = sorted((p.root / ".imgclf" / "checkpoints").glob(f"train-*/{STATE_FILE}"))
        try:
            epoch = json.loads(states[0].read_text())["epoch"] if states else -1
        except ValueError:
            epoch = -1
        if epoch >= after_epoch:
            server.stop()
            return dvc
        assert dvc.poll() is None, dvc.stdout.read()[-3000:]
        time.sleep(0.02)
    dvc.kill()
    pytest.fail("training did not reach its first checkpoint in time")


def _train_run(url: str):
    import mlflow

    client = mlflow.MlflowClient(url)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`imgclf.stage` = 'train'", max_results=10
    )
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def _assert_every_epoch_once(p: Project, url: str) -> None:
    client, run = _train_run(url)
    assert run.info.status == "FINISHED"
    epochs = p.json("reports/train.json")["epochs_run"]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, epochs + 1)), steps
    assert client.get_metric_history(run.info.run_id, "system/process_cpu_percentage")
    names = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/model.h5" in names


def test_training_rides_out_a_server_restart_and_its_run_is_whole(project: Project, server: MlflowServer):
    p = project
    p.set_params(train={"epochs": EPOCHS})
    dvc = _repro_stopping_the_server(p, server)
    time.sleep(2)  # the remaining epochs run while it is gone
    server.start()
    out, _ = dvc.communicate(timeout=300)
    assert dvc.returncode == 0, out[-4000:]
    gone = [line for line in out.splitlines() if "unreachable" in line]
    back = [line for line in out.splitlines() if "is back after" in line]
    assert len(gone) == 1 and len(back) == 1, out[-4000:]
    assert "Traceback" not in out and "Failed to" not in out, out[-4000:]
    # Training went on while the server was gone (stopped after epoch 1): every epoch ran, and
    # the later epochs' metrics were kept for the server.
    assert len([line for line in out.splitlines() if EPOCH_LINE.search(line)]) == EPOCHS, out[-4000:]
    lines = out.splitlines()
    assert lines.index(gone[0]) < lines.index(back[0])
    kept = re.search(r"sending the (\d+) records kept", back[0])
    assert kept and int(kept.group(1)) >= 10, back[0]
    _assert_every_epoch_once(p, server.url)
    assert p.json("reports/metrics.json")["test_accuracy"] >= 0


def test_a_server_gone_at_the_end_fails_in_one_line_and_the_rerun_trains_nothing(project: Project, server):
    p = project
    p.env["IMGCLF_TRACKING_WAIT"] = "3"
    p.set_params(train={"epochs": EPOCHS})
    dvc = _repro_stopping_the_server(p, server)
    out, _ = dvc.communicate(timeout=300)
    assert dvc.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("error: train:")]
    assert len(errors) == 1 and "unreachable for 3 s" in errors[0], out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    assert (p.root / "models" / "model.h5").exists()

    server.start()
    again = p.sh("dvc", "repro")
    out = again.stdout + again.stderr
    assert not [line for line in out.splitlines() if EPOCH_LINE.search(line)], out[-4000:]
    assert "resuming" in out.lower(), out[-4000:]
    _assert_every_epoch_once(p, server.url)
    assert p.sh("dvc", "status", "--json").stdout.strip() == "{}"


def _trial_states(p: Project) -> list[str]:
    """The study's trial states, read straight from Optuna's SQLite file (no tables yet: [])."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{p.root / 'optuna.db'}?mode=ro", uri=True, timeout=5)) as con:
            return [row[0] for row in con.execute("SELECT state FROM trials")]
    except sqlite3.Error:
        return []


def test_an_outage_during_a_study_fails_no_trial_and_loses_no_trial_run(project: Project, server: MlflowServer):
    p = project
    _set_tune(p, pruner="none", epochs=TRIAL_EPOCHS)
    tune = subprocess.Popen(
        ["python", "-m", "stages.tune", "--trials", "3"],
        cwd=p.root,
        env=p.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while "RUNNING" not in _trial_states(p):  # the first trial's run is open: stop the server now
        assert tune.poll() is None and time.monotonic() < deadline, tune.stdout.read()[-3000:]
        time.sleep(0.02)
    server.stop()
    time.sleep(2)
    server.start()
    out, _ = tune.communicate(timeout=300)
    assert tune.returncode == 0, out[-4000:]
    assert _trial_states(p) == ["COMPLETE"] * 3, out[-4000:]
    assert "unreachable" in out and "is back after" in out, out[-4000:]

    import mlflow

    client = mlflow.MlflowClient(server.url)
    exp = client.get_experiment_by_name("image-classification")
    (study_run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'tune-tune'")
    trials = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{study_run.info.run_id}'")
    assert study_run.info.status == "FINISHED" and len(trials) == 3
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["imgclf.trial_state"] == "COMPLETE"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
        assert steps == list(range(1, TRIAL_EPOCHS + 1)), (run.info.run_name, steps)
