"""TensorFlow's process-wide settings: the compute precision."""

from __future__ import annotations

from imgclf.training.runtime import resolve_precision


def test_precision_setting():
    assert resolve_precision("off") == "float32"
    assert resolve_precision("bfloat16") == "mixed_bfloat16"
    assert resolve_precision("auto") in ("float32", "mixed_bfloat16", "mixed_float16")
