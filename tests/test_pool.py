"""The worker pool: order kept, task errors raised here, a dead worker raises instead of hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from imgclf.data.pool import worker_pool

from .helpers import ROOT


def _square_or_fail(n: int) -> int:
    if n == 13:
        raise OSError(28, "No space left on device", "x_train.npy")
    if n == -1:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def test_worker_pool_keeps_order_and_raises_task_errors():
    with worker_pool(3) as imap:
        assert list(imap(_square_or_fail, range(14, 64))) == [n * n for n in range(14, 64)]
        assert list(imap(_square_or_fail, [3, 4])) == [9, 16]  # the pool serves map after map
        with pytest.raises(OSError) as err:
            list(imap(_square_or_fail, range(20)))
        assert err.value.errno == 28 and err.value.filename == "x_train.npy"
        with pytest.raises(RuntimeError, match="abandoned"):
            list(imap(_square_or_fail, [1]))


# Run in a process of its own, so that a hang fails the test (after 60 s) instead of hanging it.
_DEAD_WORKER = """
import os, signal
from imgclf.data.pool import worker_pool

def square_or_die(n):
    if n == -1:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n

try:
    with worker_pool(2) as imap:
        list(imap(square_or_die, [1, 2, 3, -1, 5, 6]))
except RuntimeError as err:
    print("raised:", err)
"""


def test_worker_pool_raises_when_a_worker_dies_instead_of_hanging():
    proc = subprocess.run([sys.executable, "-c", _DEAD_WORKER], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("raised:") and "died" in proc.stdout, proc.stdout
