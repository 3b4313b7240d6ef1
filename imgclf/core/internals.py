"""Every private internal of a pinned library that the project reaches into, in one place.

Each use saves time or output that the library's public API does not offer, and each could
break silently on an upgrade. So each sits behind a check of the version it was written for
(:data:`WRITTEN_FOR`): on another version the public way runs instead, after one warning, and
``tests/test_internals.py`` fails, so an upgrade breaks loudly here and nowhere else.

=========== ===================================================== ==================================
library     internal, and what it is for                           on another version
=========== ===================================================== ==================================
keras       Adam's ``_momentums``, ``_velocities``,                Keras's own update (a dozen
            ``_get_variable_index``: the fused Adam update          element-wise ops a variable)
            (:func:`imgclf.training.model.fuse_adam`)
keras       which modules it imports only for optional features,    it imports them (about 1.5 s
            each in ``try``/``except ImportError``: left out while  of CPU at a train stage's
            TensorFlow starts (:func:`without_keras_extras`)        start)
python      ``threading._shutdown``: threading's exit hooks before  joining the other threads only
            a fast exit (:func:`imgclf.console.cli.exit_fast`)
tensorflow  the shape of its C++ start-up lines                     unknown lines are passed on
            (:data:`TF_STARTUP_CHATTER`, used by the quiet start)
=========== ===================================================== ==================================
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import re
import sys
from collections.abc import Iterator
from importlib import metadata

log = logging.getLogger(__name__)

# The versions each use below was written and tested against ("python": major.minor).
WRITTEN_FOR = {"keras": "3.15.1", "tensorflow": "2.21.0", "python": "3.11"}


def installed(library: str) -> str:
    """The installed version of ``library`` (``python``: major.minor of this interpreter)."""
    if library == "python":
        return ".".join(platform.python_version_tuple()[:2])
    return metadata.version(library)


@functools.cache
def matches(library: str) -> bool:
    """Whether the installed ``library`` is the version its internals were written for; says so
    once when it is not."""
    if installed(library) == WRITTEN_FOR[library]:
        return True
    log.warning(
        "%s %s is installed, but imgclf/core/internals.py was written for %s %s: using the public "
        "way instead (slower or less complete); see that file",
        library,
        installed(library),
        library,
        WRITTEN_FOR[library],
    )
    return False


def adam_slots(optimizer, variable) -> tuple:
    """Adam's first and second moment variables for ``variable`` (call only when
    ``matches("keras")``)."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


# What Keras imports as TensorFlow starts only to offer features the pipeline does not use, each
# in a ``try``/``except ImportError`` that turns the feature off: scikit-learn for its wrappers
# (``keras.wrappers``), pandas for DataFrame inputs to ``fit``, pyplot for ``keras.visualization``.
# About 2 s of CPU of TensorFlow's 7 s import on a 2-core machine (``python -X importtime -c
# "import tensorflow"``); about 1.5 s of a train stage (MLflow imports pandas anyway). The
# evaluate stage and the study processes import scikit-learn before TensorFlow: no saving there.
KERAS_EXTRAS = ("sklearn", "pandas", "matplotlib.pyplot")


@contextlib.contextmanager
def without_keras_extras() -> Iterator[None]:
    """Within the block, Keras's optional imports (:data:`KERAS_EXTRAS`) fail, so importing
    TensorFlow (and Keras with it) skips them; afterwards each is importable again as usual (the
    evaluate stage uses scikit-learn and pyplot itself). Only the Keras features named there stay
    off in this process. The block holds for the whole process: enter it before any other thread
    starts. On another Keras version it changes nothing."""
    blocked = [name for name in KERAS_EXTRAS if name not in sys.modules] if matches("keras") else []
    for name in blocked:
        sys.modules[name] = None  # the import system's mark for "import fails"
    try:
        yield
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def run_threading_exit_hooks() -> bool:
    """Run what the interpreter runs first at exit: threading's exit hooks (thread pools stop
    their idle workers), then join the non-daemon threads. False on another Python version: the
    caller joins the threads itself."""
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None or not matches("python"):
        return False
    shutdown()
    return True


# TensorFlow's start-up lines, written by its C++ runtime to file descriptor 2 before absl's
# logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hold them back: absl's info and warning
# lines, its notice about them, the CPU-instruction notice, and on a machine without a GPU the
# failed CUDA initialisation (an E line that users read as a failure). Lines of any other shape
# pass, so another TensorFlow version can only make the console noisier, never hide an error.
TF_STARTUP_CHATTER = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
    r"|E\d{4} [\d:.]+ +\d+ cuda_\S+:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .*)$"
)
