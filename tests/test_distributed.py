"""train.strategy for real: MirroredStrategy on two logical CPUs, and MultiWorkerMirroredStrategy
with two worker processes on loopback (probe and train stage), reach the accuracy band of
single-device training."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgclf import tracking
from imgclf.core.fileio import md5_file

from .helpers import ROOT, Project, free_port

# On one xdist worker (its probe runs are module fixtures: built once; tests/helpers.py, order_for_workers).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]


def _results(proc: subprocess.CompletedProcess) -> dict:
    """The probe's JSON lines, by job (``default``, ``mirrored``, ``multi_worker:finetune``...)."""
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["job"]: r for r in lines}


def _cluster(workers: int) -> list[str]:
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]


def _run_workers(
    cmd: list[str], cwd: Path, env: dict, workers: int = 2, timeout: int = 300, cluster: list[str] | None = None
) -> tuple[list[subprocess.CompletedProcess], float]:
    """Start one process per worker of a loopback TF_CONFIG cluster; wait for all of them."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            cmd, cwd=cwd, env={**env, "TF_CONFIG": config}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for config in cluster or _cluster(workers)
    ]
    try:
        outs = [proc.communicate(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:  # one stuck worker must not outlive the test
            proc.kill()
    seconds = time.perf_counter() - start
    done = [subprocess.CompletedProcess(cmd, proc.returncode, out, err) for proc, (out, err) in zip(procs, outs)]
    for proc in done:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return done, seconds


@pytest.fixture(scope="module")
def local() -> dict:
    """One device and MirroredStrategy on two logical CPUs, one after the other in one process."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests._train_probe", "default", "mirrored", "mirrored:rows"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "IMGCLF_CPU_DEVICES": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _results(proc)


@pytest.fixture(scope="module")
def two_workers() -> list[dict]:
    """Two worker processes on loopback: the tiny CNN, then a backbone fine-tuned in two phases,
    in the same cluster. Each worker's results by job."""
    cmd = [sys.executable, "-m", "tests._train_probe", "multi_worker", "multi_worker:finetune"]
    procs, _ = _run_workers(cmd, ROOT, dict(os.environ))
    return [_results(proc) for proc in procs]


def test_mirrored_on_two_logical_cpus(local: dict):
    single, mirrored = local["default"], local["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert single["accuracy"] >= 0.9
    assert mirrored["accuracy"] >= single["accuracy"] - 0.1
    # Two replicas on one input pipeline: a resume after step 1 reads steps 2 and 3's rows.
    rows = local["mirrored:rows"]
    assert rows["resumed"] == rows["uninterrupted"] and len(rows["resumed"][0]) == 8


def test_multi_worker_on_two_local_processes(local: dict, two_workers: list[dict]):
    single = local["default"]
    results = [r["multi_worker"] for r in two_workers]
    assert [r["chief"] for r in results] == [True, False]
    assert all(r["replicas"] == 2 and r["epochs"] == single["epochs"] for r in results)
    # Synchronous training: both workers end with the very same weights and metrics.
    assert results[0]["weights_md5"] == results[1]["weights_md5"]
    assert results[0]["train_accuracy"] == results[1]["train_accuracy"]
    assert single["accuracy"] >= 0.9
    for r in results:
        assert r["accuracy"] >= single["accuracy"] - 0.1
    seconds = results[0]["seconds"], single["seconds"]
    print("\nmulti-worker (2 processes): {:.2f} s training; one device: {:.2f} s".format(*seconds))


def test_multi_worker_fine_tunes_a_backbone_in_two_phases(two_workers: list[dict]):
    results = [r["multi_worker:finetune"] for r in two_workers]
    assert results[0]["weights_md5"] == results[1]["weights_md5"]
    first, second = results[0]["rates"]
    assert second == pytest.approx(first / 10)
    moved = set(results[0]["moved"])
    assert {"probabilities/kernel", "probabilities/bias"} <= moved
    assert "conv_1/kernel" in moved  # the backbone's last convolution: unfrozen in the second phase
    assert "conv/kernel" not in moved  # its first: below the top 12 layers
    assert not [m for m in moved if "/moving_" in m or m.endswith(("/gamma", "/beta"))]  # BatchNorm stays


def test_train_stage_on_two_workers_stops_on_one_signal_resumes_and_writes_once(project: Project):
    """The same `python -m stages.train` on both workers. SIGTERM to the chief alone: both
    checkpoint at the same step and stop. Run again: both resume from it, the chief's MLflow run
    carries on to the end, the chief writes the model and the other worker only trains."""
    p = project
    p.set_params(
        train={"strategy": "multi_worker", "batch_size": 8, "epochs": 6, "early_stopping": {"monitor": "loss"}},
        mlflow={"register": False},
    )
    (p.root / "models" / "model.h5").unlink()  # as `dvc repro` removes a stage's outputs first
    old_runs = {r.info.run_id for r in p.runs("train")}
    p.env["IMGCLF_DEBUG"] = "1"  # an error that follows the signal shows its traceback
    state_file = p.root / ".imgclf" / "checkpoints"
    cmd = [sys.executable, "-m", "stages.train"]
    configs = _cluster(2)
    procs = [
        subprocess.Popen(
            cmd, cwd=p.root, env={**p.env, "TF_CONFIG": c}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c in configs
    ]
    try:
        deadline = time.monotonic() + 240
        while not list(state_file.glob("train-*/state.json")) and time.monotonic() < deadline:
            assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGTERM)
        outs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [proc.returncode for proc in procs] == [130, 130], outs[1][1][-3000:]
    stopped = [re.search(r"checkpoint written at (epoch \d+, step \d+|the end of epoch \d+)", err) for _, err in outs]
    assert all(stopped) and stopped[0].groups() == stopped[1].groups(), outs[0][1][-3000:]  # the same step
    (state,) = state_file.glob("train-*/state.json")
    epoch = json.loads(state.read_text())["epoch"]

    again, _ = _run_workers(cmd, p.root, p.env, cluster=_cluster(2))
    for proc in again:
        assert f"resuming from epoch {epoch}" in proc.stderr
    assert "the chief writes the model" in again[1].stderr
    (run,) = [r for r in p.runs("train") if r.info.run_id not in old_runs]  # one run, continued
    assert run.info.status == "FINISHED" and run.data.params["training.resumed_from_epoch"] == str(epoch)
    from mlflow import MlflowClient

    steps = [m.step for m in MlflowClient(p.tracking_uri).get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 7))
    assert run.data.tags[tracking.TAG_MODEL_MD5] == md5_file(p.root / "models" / "model.h5")
    assert run.data.params["train.strategy"] == "multi_worker" and run.data.params["model.replicas"] == "2"
    assert p.json("reports/train.json")["loss"] == run.data.metrics["best/loss"]
