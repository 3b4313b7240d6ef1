"""TensorFlow's process-wide settings for training: seeds, determinism and compute precision."""

from __future__ import annotations

import random
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


def resolve_precision(setting: str, gpu: bool | None = None, bf16: bool | None = None) -> str:
    """The Keras dtype policy for ``train.mixed_precision``.

    ``auto`` picks ``mixed_float16`` on a GPU, ``mixed_bfloat16`` on a CPU with native bfloat16
    (about twice the float32 speed there) and plain ``float32`` elsewhere. Weights and the
    softmax stay float32 in every case. ``gpu`` and ``bf16`` say what this machine has (default:
    look).
    """
    if setting == "off":
        return "float32"
    if setting in ("bfloat16", "float16"):
        return f"mixed_{setting}"
    if gpu is None:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        return "mixed_float16"
    return "mixed_bfloat16" if (bf16_cpu() if bf16 is None else bf16) else "float32"


def set_precision(setting: str) -> str:
    """Apply ``train.mixed_precision`` globally (before building the model); return the policy."""
    import keras

    policy = resolve_precision(setting)
    keras.mixed_precision.set_global_policy(policy)
    return policy
