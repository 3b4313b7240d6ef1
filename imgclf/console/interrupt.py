"""Ctrl-C, SIGTERM and SIGHUP: the stage stops, says so, and its MLflow run ends KILLED.

:func:`install` makes these signals remember that they came and raise :class:`KeyboardInterrupt`
in the main thread. Python can lose that exception: raised inside a finalizer or a weakref
callback it is printed as "Exception ignored in ..." and dropped, and code it passes through
(TensorFlow, a worker pool) may turn it into another error. So the signal is also remembered:
:func:`check` raises it again at a safe point (training instead checkpoints first, see below), and
:func:`requested` lets the stage wrapper and the run's closing treat an error that follows a
signal as the interruption it is.

Inside :func:`deferred` (training), the first signal only sets the flag: the training loop sees
it at the end of the step it is in, writes a checkpoint and then raises. A second signal raises
at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

# Ctrl-C, `kill` (and schedulers, preempted VMs), and a closed terminal.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received = threading.Event()
_deferring = False
_installed = False


def _handle(signum, frame):  # noqa: ARG001
    first = not _received.is_set()
    _received.set()
    if _deferring and first:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            os.write(2, b"\nstopping after this step, with a checkpoint (signal again to stop at once)\n")
        return
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """Handle :data:`SIGNALS` as described above (main thread only)."""
    global _installed
    clear()
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    _installed = True


def take_back() -> None:
    """Handle the signals again after native code replaced the handlers behind Python's back.

    TensorFlow's multi-worker runtime installs its own SIGTERM handler in C++ (a preemption
    notifier we do not use), so Python would never see a SIGTERM again.
    """
    if _installed:
        for signum in SIGNALS:
            signal.signal(signum, _handle)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, a first signal waits for the code to call :func:`check`."""
    global _deferring
    previous, _deferring = _deferring, True
    try:
        yield
    finally:
        _deferring = previous


def clear() -> None:
    """Forget a signal that has been dealt with."""
    _received.clear()


def request() -> None:
    """Act as if a signal had come (another worker of the cluster got one)."""
    _received.set()


def requested() -> bool:
    """True once one of :data:`SIGNALS` has arrived since :func:`install`."""
    return _received.is_set()


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if a signal arrived whose exception was lost."""
    if _received.is_set():
        raise KeyboardInterrupt("interrupted earlier")


def stop_when_closed(stream) -> None:
    """Stop as on a first Ctrl-C once ``stream`` (a pipe from a parent process) ends: the parent
    closed it to stop this process, or died. Nothing happens if a signal came already (the
    terminal's Ctrl-C reaches every process of its group): a second would stop at once."""

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):
            while stream.read(4096):
                pass
        if not _received.is_set():
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True, name="stop-when-closed").start()
