"""The pinned libraries' internals (imgclf/core/internals.py): still there, at the versions they
were written for. An upgrade fails here first; then check each use in that file."""

from __future__ import annotations

import logging

import pytest

from imgclf.core import internals


@pytest.mark.parametrize("library", sorted(internals.WRITTEN_FOR))
def test_installed_versions_are_the_ones_the_internals_were_written_for(library: str):
    assert internals.installed(library) == internals.WRITTEN_FOR[library], (
        f"{library} changed: check its uses in imgclf/core/internals.py, then update WRITTEN_FOR"
    )


def test_keras_adam_keeps_its_moments_where_the_fused_update_reads_them():
    import keras
    import numpy as np

    optimizer = keras.optimizers.Adam()
    variable = keras.Variable(np.zeros((3,), "float32"))
    optimizer.build([variable])
    momentum, velocity = internals.adam_slots(optimizer, variable)
    assert tuple(momentum.shape) == tuple(velocity.shape) == (3,) and momentum is not velocity


def test_threading_has_its_exit_hooks():
    import threading

    assert callable(threading._shutdown)


def test_another_version_takes_the_public_way_after_one_warning(monkeypatch, caplog):
    import keras

    monkeypatch.setitem(internals.WRITTEN_FOR, "keras", "0.0.1")
    internals.matches.cache_clear()
    try:
        from imgclf.training.model import fuse_adam

        optimizer = keras.optimizers.Adam()
        keras_update = optimizer.update_step
        with caplog.at_level(logging.WARNING, logger=internals.__name__):
            fuse_adam(optimizer)
            fuse_adam(keras.optimizers.Adam())
        assert optimizer.update_step == keras_update  # Keras's own update, untouched
        warned = [r.getMessage() for r in caplog.records if r.name == internals.__name__]
        assert len([w for w in warned if w.startswith("keras ")]) == 1, warned
    finally:
        internals.matches.cache_clear()


@pytest.mark.slow  # a fresh process that imports TensorFlow
def test_tensorflow_starts_without_keras_extras_and_they_import_afterwards():
    import subprocess
    import sys

    from .helpers import ROOT

    code = (
        "import sys\n"
        "from imgclf.core import internals\n"
        "with internals.without_keras_extras():\n"
        "    import tensorflow\n"  # as the stages do: TensorFlow imports Keras, quietly on failure
        "print(sorted(name for name in internals.KERAS_EXTRAS if name in sys.modules))\n"
        "import keras\n"
        "assert 'keras.src.optimizers' in sys.modules, 'TensorFlow left Keras half-loaded'\n"
        "import matplotlib.pyplot, pandas, sklearn.metrics\n"  # importable again, as evaluate needs
        "from keras.src.wrappers import fixes\n"
        "print(fixes.sklearn is None, keras.Sequential.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["[]", "True Sequential"], proc.stdout
