"""The CNN and its training: the seed's shapes, raw uint8 input, .h5 round trip, repeatable fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imgclf.core.params import TrainParams

keras = pytest.importorskip("keras")

from imgclf.core.errors import PipelineError  # noqa: E402
from imgclf.core.saved_model import load_model  # noqa: E402
from imgclf.training.fit import fit  # noqa: E402
from imgclf.training.model import build_model  # noqa: E402
from imgclf.training.runtime import seed_everything  # noqa: E402

from .helpers import as_prepared, colour_arrays  # noqa: E402


def test_default_architecture_matches_the_seed():
    model = build_model(100, 6, TrainParams())
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 32, 64, 64]
    assert [c.padding for c in convs] == ["same", "valid", "same", "valid"]
    assert model.get_layer("dense").units == 512
    assert model.input_shape == (None, 100, 100, 3)
    assert model.inputs[0].dtype == "uint8"
    assert model.output_shape == (None, 6)
    # 100 -> 98 -> 49 -> 47 -> 23: the seed's flatten size.
    assert model.get_layer("flatten").output.shape[-1] == 23 * 23 * 64
    # Weights and biases of the seed's layers at 100x100 RGB with 6 classes, counted by hand.
    convs_weights = (27 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64)
    assert model.count_params() == convs_weights + (23 * 23 * 64 * 512 + 512) + (512 * 6 + 6)


def test_params_shape_the_model():
    p = TrainParams(conv_filters=[8, 16, 24], kernel_size=5, dense_units=20)
    model = build_model(64, 4, p)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [8, 8, 16, 16, 24, 24]
    assert convs[0].kernel_size == (5, 5)
    assert model.get_layer("dense").units == 20


TINY = TrainParams(conv_filters=[4], dense_units=8, epochs=2, batch_size=8)


def _train(seed: int):
    seed_everything(seed, deterministic=True)
    x, y = colour_arrays()
    model = build_model(12, 3, TINY)
    trained = fit(model, as_prepared(x, y, x[:6], y[:6]), TINY, seed)
    return model, trained.history


def test_training_is_repeatable_with_one_seed():
    m1, h1 = _train(7)
    m2, h2 = _train(7)
    assert h1 == h2
    assert all(np.array_equal(a, b) for a, b in zip(m1.get_weights(), m2.get_weights()))
    assert [row["epoch"] for row in h1] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(h1[0])


def test_saved_h5_takes_raw_images_and_predicts_the_same(tmp_path: Path):
    model, _ = _train(3)
    path = tmp_path / "m.h5"
    model.save(path)
    loaded = load_model(path)
    x, _ = colour_arrays()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("content, fragment", [(None, "model not found"), (b"not hdf5", "not a Keras model file")])
def test_load_model_names_the_file_and_the_problem(tmp_path: Path, content, fragment):
    path = tmp_path / "model.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PipelineError, match=fragment) as err:
        load_model(path)
    assert str(path) in str(err.value)


def test_tf_config_is_checked_and_names_the_chief(monkeypatch: pytest.MonkeyPatch):
    from imgclf.training.distribute import is_chief, make_strategy, tf_config

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief()
    with pytest.raises(PipelineError, match="TF_CONFIG is not set"):
        make_strategy("multi_worker")
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    for task, chief in [({"type": "worker", "index": 0}, True), ({"type": "worker", "index": 1}, False)]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert is_chief() is chief
        assert tf_config()["task"] == task
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({"cluster": {**cluster, "chief": ["127.0.0.1:3"]}, "task": {"type": "worker", "index": 0}}),
    )
    assert not is_chief()
    for bad, fragment in [
        ("{not json", "TF_CONFIG is not valid"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "TF_CONFIG is not valid"),
        (json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}}), "is not in its cluster"),
    ]:
        monkeypatch.setenv("TF_CONFIG", bad)
        with pytest.raises(PipelineError, match=fragment):
            tf_config()


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_makes_keras_own_updates(name: str):
    import tensorflow as tf

    from imgclf.training.model import make_optimizer

    rng = np.random.default_rng(3)
    start = [rng.normal(size=(40, 7)).astype("float32"), rng.normal(size=(7,)).astype("float32")]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in start] for _ in range(6)]

    def run(optimizer):
        weights = [keras.Variable(w) for w in start]
        apply = tf.function(lambda g: optimizer.apply(g, weights))
        for g in grads:
            apply([tf.constant(x) for x in g])
        return [w.numpy() for w in weights], [v.numpy() for v in optimizer.variables[2:]]

    plain = getattr(keras.optimizers, {"adam": "Adam", "adamw": "AdamW"}[name])(learning_rate=0.01)
    fused = make_optimizer(name, 0.01)
    assert type(fused) is type(plain)  # saved models name Keras's own class
    config = {k: v for k, v in fused.get_config().items() if k != "name"}
    assert config == {k: v for k, v in plain.get_config().items() if k != "name"}
    (w_fused, slots_fused), (w_plain, slots_plain) = run(fused), run(plain)
    for got, want, first in zip(w_fused, w_plain, start, strict=True):
        assert np.abs(want - first).max() > 0.01  # the updates moved the weights
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # 1e-4 of one step: rounding only
    for got, want in zip(slots_fused, slots_plain, strict=True):  # first and second moments
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # 1e-4 of one step: rounding only
