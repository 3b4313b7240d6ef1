"""Resume for real: `dvc repro` whose train process is SIGKILLed mid-training, then run again."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import psutil
import pytest

from imgclf.training.checkpoint import STATE_FILE

from .helpers import Project

pytestmark = pytest.mark.slow

LONG = {"epochs": 12, "early_stopping": {"monitor": "loss"}}  # long enough to be killed halfway


def _state_files(p: Project) -> list:
    return sorted((p.root / ".imgclf" / "checkpoints").glob(f"train-*/{STATE_FILE}"))


def _kill_train_after(p: Project, epoch: int, timeout: float = 240) -> dict:
    """Start `dvc repro train`, SIGKILL its train process once a checkpoint of ``epoch`` or later
    is committed; return the committed state."""
    dvc = subprocess.Popen(
        ["dvc", "repro", "train"], cwd=p.root, env=p.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            states = _state_files(p)
            if states:
                try:
                    state = json.loads(states[0].read_text())
                except ValueError:
                    state = {"epoch": -1}
                if state["epoch"] >= epoch:
                    trains = [
                        c for c in psutil.Process(dvc.pid).children(recursive=True) if "stages.train" in c.cmdline()
                    ]
                    assert trains, "the train process ended before it could be killed"
                    trains[0].send_signal(signal.SIGKILL)
                    dvc.wait(timeout=60)
                    assert dvc.returncode != 0
                    return json.loads(states[0].read_text())
            assert dvc.poll() is None, dvc.stdout.read()[-3000:]
            time.sleep(0.01)
        pytest.fail("no checkpoint appeared in time")
    finally:
        dvc.kill()


def _uninterrupted(p: Project) -> list[np.ndarray]:
    import keras

    from imgclf.core.params import load
    from imgclf.core.prepared import load_prepared
    from imgclf.training.fit import train

    try:
        return train(load(p.root / "params.yaml"), load_prepared(p.root / "data" / "prepared")).model.get_weights()
    finally:
        keras.mixed_precision.set_global_policy("float32")  # as other tests in this process expect


def _weights(path) -> list[np.ndarray]:
    from imgclf.core.saved_model import load_model

    return load_model(path).get_weights()


def test_sigkill_mid_training_resumes_in_the_same_run_with_the_uninterrupted_weights(project: Project, tmp_path):
    p = project
    p.set_params(train=LONG)
    killed = _kill_train_after(p, epoch=3)
    (killed_run,) = [r for r in p.runs("train") if r.info.status == "RUNNING"]
    (state,) = _state_files(p)

    # A param changed before the rerun: a fresh start that says why, and the stale checkpoint goes.
    # (Its folder is put aside first and back after, to resume it below as if never touched.)
    aside = tmp_path / "aside"
    shutil.copytree(state.parent, aside)
    p.set_params(train={"epochs": 2, "learning_rate": 0.002})
    out = p.sh("dvc", "repro", "train")
    log = out.stdout + out.stderr
    assert "starting fresh" in log and "train.learning_rate 0.001 -> 0.002" in log and "train.epochs 12 -> 2" in log
    assert "resuming" not in log and not state.exists()
    # The discarded checkpoint's run will never be carried on: closed KILLED, saying why.
    closed = next(r for r in p.runs("train") if r.info.run_id == killed_run.info.run_id)
    assert (
        closed.info.status == "KILLED" and "train.learning_rate 0.001 -> 0.002" in closed.data.tags["imgclf.end_reason"]
    )
    assert not [r for r in p.runs() if r.info.status == "RUNNING"]
    assert "resumed_from_epoch" not in p.json("reports/train.json")  # an MLflow param, not a DVC metric
    shutil.copytree(aside, state.parent)
    p.set_params(train={**LONG, "learning_rate": 0.001})

    # An edit of code that does not shape the model (evaluation, tracking) keeps it resumable.
    for rel in ("imgclf/evaluation/scoring.py", "imgclf/tracking/recorder.py"):
        with open(p.root / rel, "a", encoding="utf-8") as fh:
            fh.write("\n# an edit between the kill and the rerun\n")

    p.env["IMGCLF_PROGRESS_SECONDS"] = "0"  # a plain progress line at every step
    out = p.sh("dvc", "repro", "train")
    log = out.stdout + out.stderr
    assert f"resuming from epoch {killed['epoch']}" in log
    assert "\r" not in log  # no bar redraws in a log file
    assert not re.search(r"^[IWE]\d{4} ", log, re.M), log  # no TensorFlow start-up chatter
    assert re.search(r"epoch \d+/12: step \d+/\d+ \(\d+%\), \d+ img/s, ETA \d\d:\d\d:\d\d", log), log[-3000:]
    assert not _state_files(p)  # removed once training completed

    (run,) = [r for r in p.runs("train") if r.info.run_id == killed_run.info.run_id]
    assert run.info.status == "FINISHED"
    from mlflow import MlflowClient

    steps = [m.step for m in MlflowClient(p.tracking_uri).get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 13))  # one value per epoch, none twice, none missing
    assert p.json("reports/train.json")["epochs_run"] == 12
    assert run.data.params["training.resumed_from_epoch"] == str(killed["epoch"])

    # The same training uninterrupted (deterministic; here, in this process) has the same weights.
    for a, b in zip(_weights(p.root / "models" / "model.h5"), _uninterrupted(p), strict=True):
        assert np.array_equal(a, b)
