"""train.strategy for real: MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy with two
worker processes on loopback; both must reach the accuracy band of single-device training."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def _run(strategy: str, env: dict | None = None, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests._train_probe", strategy], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def single() -> dict:
    return _run("default")


def test_mirrored_on_two_logical_cpus(single: dict):
    result = _run("mirrored", {"IMGCLF_CPU_DEVICES": "2"})
    assert result["replicas"] == 2
    assert single["accuracy"] >= 0.9
    assert result["accuracy"] >= single["accuracy"] - 0.1


def test_multi_worker_with_two_processes_on_loopback(single: dict, capsys):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    start = time.perf_counter()
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests._train_probe", "multi_worker"], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - start
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["chief"] for r in results] == [True, False]
    for r in results:
        assert r["accuracy"] >= single["accuracy"] - 0.1
    with capsys.disabled():
        print(f"\nmulti-worker (2 processes): {wall:.1f} s wall, training {results[0]['seconds']:.1f} s; "
              f"single device: training {single['seconds']:.1f} s")
