"""TensorFlow's process-wide settings: the compute precision."""

from __future__ import annotations

from imgclf.runtime import resolve_precision


def test_precision_setting():
    assert resolve_precision("off") == "float32"
    assert resolve_precision("bfloat16") == "mixed_bfloat16"
    assert resolve_precision("auto") in ("float32", "mixed_bfloat16", "mixed_float16")


def test_tensorflow_starts_without_its_chatter_but_other_lines_pass(tmp_path):
    import subprocess
    import sys

    from .helpers import ROOT

    code = (
        "import os, sys\n"
        "from imgclf import runtime\n"
        "real = runtime._STARTUP_CHATTER\n"
        "runtime.start_tensorflow_quietly()\n"
        "print('stage line', file=sys.stderr)\n"
        "print(bool(real.match('E0000 00:00:1795.5   30259 cuda_platform.cc:52] failed call to cuInit')),\n"
        "      bool(real.match('E0000 00:00:1795.5   30259 some_op.cc:12] a real error')), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["stage line", "True False"], lines  # nothing of TensorFlow's start-up
