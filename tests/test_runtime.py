"""TensorFlow's process-wide settings: the compute precision."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.training.runtime import bf16_cpu, resolve_precision


@pytest.mark.parametrize("setting", ["off", "bfloat16", "float16"])
def test_an_explicit_precision_is_taken_as_it_is_on_any_machine(setting: str):
    expected = {"off": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[setting]
    for gpu in (False, True):
        for bf16 in (False, True):
            assert resolve_precision(setting, gpu=gpu, bf16=bf16) == expected


@pytest.mark.parametrize(
    "gpu, bf16, expected",
    [
        (True, False, "mixed_float16"),
        (True, True, "mixed_float16"),
        (False, True, "mixed_bfloat16"),
        (False, False, "float32"),
    ],
)
def test_auto_picks_float16_on_a_gpu_bfloat16_on_a_cpu_that_has_it_else_float32(gpu, bf16, expected):
    assert resolve_precision("auto", gpu=gpu, bf16=bf16) == expected


def test_auto_on_this_machine_follows_its_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    assert bf16_cpu() == ("avx512_bf16" in flags or "amx_bf16" in flags)
    import tensorflow as tf

    gpu = bool(tf.config.list_physical_devices("GPU"))
    assert resolve_precision("auto") == resolve_precision("auto", gpu=gpu, bf16=bf16_cpu())
