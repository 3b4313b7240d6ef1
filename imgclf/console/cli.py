"""The wrapper every stage entry point runs through: logging set-up, signals and exit codes.

A :class:`PipelineError` (bad params, bad data) ends the stage with one line on stderr and exit
code 2; Ctrl-C or SIGTERM with 130; anything else with a one-line summary and exit code 1. Set
``IMGCLF_DEBUG=1`` to get the full traceback instead.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from imgclf.console import interrupt
from imgclf.core import internals
from imgclf.core.errors import PipelineError


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib", "PIL", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # "Started monitoring system metrics." and the like, for every run.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # "Creating initial MLflow database tables..." when a stage makes the local store.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def pause_collector() -> None:
    """Pause Python's cyclic garbage collector while a stage process starts: ``stages/__init__.py``
    calls it first thing when a stage runs as a program, and :func:`run_stage` resumes it as the
    stage's body begins. The modules a stage imports (TensorFlow, MLflow, scikit-learn) make
    about half a million objects and free almost none, yet each full collection meanwhile scans
    them all: about a fifth of their import's CPU (timed with ``gc.callbacks`` while importing
    tensorflow, mlflow and sklearn: 1.3 s of 6.1 s)."""
    gc.disable()


def resume_collector() -> None:
    """Resume the collector :func:`pause_collector` paused (nothing if it runs). What start-up made
    lives as long as the process, so it is frozen first: later collections, a day-long training's
    included, never scan it again."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def run_stage(name: str, body: Callable[..., None], tensorflow: bool = False, params: Path | None = None) -> int:
    """Run one stage's body and turn its outcome into an exit code; ``params``: the params file
    to read first and hand to the body, so that a mistake there fails in a second; then
    ``tensorflow``: the stage uses it, so start it without its start-up chatter. The garbage
    collector, if :func:`pause_collector` paused it, runs again from the body's start."""
    setup_logging()
    interrupt.install()
    debug = os.environ.get("IMGCLF_DEBUG", "") not in ("", "0")
    try:
        if params is not None:
            from imgclf.core.params import load

            args = (load(params),)
        else:
            args = ()
        if tensorflow:
            start_tensorflow_quietly()
        resume_collector()
        body(*args)
        return 0
    except KeyboardInterrupt:
        pass
    except Exception as err:
        if debug and interrupt.requested():
            logging.getLogger(name).exception("error after the interruption")
        if not interrupt.requested():  # after Ctrl-C, any error is the interruption's doing
            if debug:
                raise
            code, message = _describe(err)
            if code == 1 and not isinstance(err, OSError):
                logging.getLogger(name).debug("failure", exc_info=True)
            print(f"error: {name}: {message}", file=sys.stderr)
            return code
    print(f"error: {name}: interrupted; no output was written", file=sys.stderr)
    return 130


def _describe(err: Exception) -> tuple[int, str]:
    """The exit code and one-line message for a stage's failure."""
    if isinstance(err, PipelineError):
        return 2, str(err)
    if isinstance(err, OSError):
        return 1, describe_os_error(err)
    # The last line must still say what happened.
    return 1, f"{type(err).__name__}: {err} (set IMGCLF_DEBUG=1 for the traceback)"


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, then rerun",
    errno.EDQUOT: "the disk quota is exceeded: free some space, then rerun",
    errno.EACCES: "permission denied: make the folder writable, then rerun",
    errno.EPERM: "operation not permitted: check the folder's permissions",
    errno.EROFS: "the file system is read-only: write the project somewhere writable",
}


def describe_os_error(err: OSError) -> str:
    """One line naming the file and what to do about an I/O failure."""
    where = f"{err.filename}: " if err.filename else ""
    hint = _OS_HINTS.get(err.errno or -1, err.strerror or str(err))
    return f"cannot write {where}{hint}" if err.errno in _OS_HINTS else f"{where}{hint}"


def main(name: str, body: Callable[..., None], tensorflow: bool = False, params: Path | None = None) -> None:
    """Run a stage as a program, then leave without Python's slow teardown.

    Python frees every object of every imported module one by one at exit, which takes a
    noticeable time once MLflow and TensorFlow are loaded; the OS reclaims a process's memory
    at once. Everything that matters still happens first: other threads are joined, the exit
    handlers run (so MLflow closes its runs and queues) and the standard streams are flushed.
    """
    code = run_stage(name, body, tensorflow, params)
    exit_fast(code)


def exit_fast(code: int) -> None:
    import atexit
    import threading

    # As the interpreter does at exit: first threading's own exit hooks (they tell thread pools,
    # e.g. MLflow's artifact downloads, to stop their idle workers), then join the other threads.
    if not internals.run_threading_exit_hooks():
        for thread in threading.enumerate():
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def start_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices with file descriptor 2 caught in a file; then pass
    on every line of it but the start-up chatter
    (:data:`~imgclf.core.internals.TF_STARTUP_CHATTER`), Keras's optional imports left out
    (:func:`~imgclf.core.internals.without_keras_extras`). Call it before any
    other TensorFlow work: listing physical devices leaves them, and a multi-worker strategy,
    still to be set up."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            with internals.without_keras_extras():
                import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line.strip() and not internals.TF_STARTUP_CHATTER.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
