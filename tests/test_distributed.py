"""train.strategy for real: MirroredStrategy on two logical CPUs reaches the accuracy band of
single-device training. (MultiWorkerMirroredStrategy is refused: Keras 3's fit cannot run it.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow


def _run(strategy: str, env: dict | None = None, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests._train_probe", strategy], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single() -> dict:
    return _run("default")


def test_mirrored_on_two_logical_cpus(single: dict):
    result = _run("mirrored", {"IMGCLF_CPU_DEVICES": "2"})
    assert result["replicas"] == 2
    assert single["accuracy"] >= 0.9
    assert result["accuracy"] >= single["accuracy"] - 0.1
