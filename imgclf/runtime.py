"""TensorFlow's process-wide settings: a quiet start, seeds, determinism and compute precision."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow from one number; optionally force deterministic ops.

    Determinism costs some speed on GPUs (``train.deterministic: false`` trades it back).
    """
    import keras
    import tensorflow as tf

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def bf16_cpu() -> bool:
    """True when this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(setting: str) -> str:
    """The Keras dtype policy for ``train.mixed_precision``.

    ``auto`` picks ``mixed_float16`` on a GPU, ``mixed_bfloat16`` on a CPU with native bfloat16
    (about twice the float32 speed there) and plain ``float32`` elsewhere. Weights and the
    softmax stay float32 in every case.
    """
    if setting == "off":
        return "float32"
    if setting in ("bfloat16", "float16"):
        return f"mixed_{setting}"
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if bf16_cpu() else "float32"


def set_precision(setting: str) -> str:
    """Apply ``train.mixed_precision`` globally (before building the model); return the policy."""
    import keras

    policy = resolve_precision(setting)
    keras.mixed_precision.set_global_policy(policy)
    return policy


# TensorFlow's start-up lines, written by its C++ runtime to file descriptor 2 before absl's
# logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hold them back: absl's info and warning
# lines, its notice about them, the CPU-instruction notice, and on a machine without a GPU the
# failed CUDA initialisation (an E line that users read as a failure).
_STARTUP_CHATTER = re.compile(
    r"^(?:[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] .*"
    r"|E\d{4} [\d:.]+ +\d+ cuda_\S+:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .*)$"
)


def start_tensorflow_quietly() -> None:
    """Import TensorFlow and find its devices with file descriptor 2 caught in a file; then pass
    on every line of it but the start-up chatter (:data:`_STARTUP_CHATTER`). Call it before any
    other TensorFlow work: listing physical devices leaves them, and a multi-worker strategy,
    still to be set up."""
    import sys
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line.strip() and not _STARTUP_CHATTER.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
