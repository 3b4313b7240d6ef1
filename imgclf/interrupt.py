"""Ctrl-C and SIGTERM: the stage stops, says so, and its MLflow run ends KILLED.

:func:`install` makes both signals remember that they came and raise :class:`KeyboardInterrupt`
in the main thread. Python can lose that exception: raised inside a finalizer or a weakref
callback it is printed as "Exception ignored in ..." and dropped, and code it passes through
(TensorFlow, a worker pool) may turn it into another error. So the signal is also remembered:
:func:`check` raises it again at a safe point (training calls it at each epoch's end), and
:func:`requested` lets the stage wrapper and the run's closing treat an error that follows a
signal as the interruption it is.
"""

from __future__ import annotations

import signal
import threading

_received = threading.Event()


def _handle(signum, frame):  # noqa: ARG001
    _received.set()
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """Handle SIGINT and SIGTERM as described above (main thread only)."""
    _received.clear()
    signal.signal(signal.SIGINT, _handle)
    signal.signal(signal.SIGTERM, _handle)


def requested() -> bool:
    """True once SIGINT or SIGTERM has arrived since :func:`install`."""
    return _received.is_set()


def check() -> None:
    """Raise :class:`KeyboardInterrupt` if a signal arrived whose exception was lost."""
    if _received.is_set():
        raise KeyboardInterrupt("interrupted earlier")
