"""Training across interruptions: a resumed run ends as an uninterrupted one; early stopping keeps
the best epoch's weights; the learning rate follows its schedule."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("keras")

from imgclf.core.params import parse  # noqa: E402
from imgclf.training import checkpoint  # noqa: E402
from imgclf.training.checkpoint import open_checkpoints  # noqa: E402
from imgclf.training.fit import train  # noqa: E402

from .helpers import as_prepared, colour_arrays, train_until_signal  # noqa: E402

TINY = {"conv_filters": [4], "dense_units": 8, "batch_size": 8, "mixed_precision": "off"}


def _data():
    x, y = colour_arrays(n=48)
    return as_prepared(x[:36], y[:36], x[36:], y[36:])


def _params(**train) -> object:
    return parse({"data": {"image_size": 12}, "train": {**TINY, **train}})


# A signal after epoch 2's 3rd of 5 steps stops there; one after its last step stops once the
# epoch is validated and saved whole (its checkpoint then resumes at epoch 3).
@pytest.mark.parametrize("step, saved", [(3, (1, 3)), (5, (2, 0))])
def test_resumed_mid_epoch_ends_with_the_weights_and_history_of_an_uninterrupted_run(
    step, saved, monkeypatch, tmp_path
):
    monkeypatch.setenv(checkpoint.ENV_DIR, str(tmp_path))
    p, data = _params(epochs=3, early_stopping={"monitor": "loss"}), _data()
    full = train(p, data)

    train_until_signal(monkeypatch, p, data, at=(2, step))

    store = open_checkpoints(p, "data")
    assert (store.state["epoch"], store.state["step"]) == saved
    resumed = train(p, data, store)
    assert resumed.resumed_from_epoch == saved[0]
    assert resumed.history == full.history  # epoch 2's figures cover the whole epoch
    assert resumed.best_epoch == full.best_epoch == 3
    for a, b in zip(resumed.model.get_weights(), full.model.get_weights(), strict=True):
        assert np.array_equal(a, b)


def test_early_stopping_keeps_the_best_epochs_weights():
    # No epoch can beat the first by 10: training stops after `patience` more.
    p, data = _params(epochs=8, early_stopping={"patience": 2, "monitor": "val_loss", "min_delta": 10}), _data()
    trained = train(p, data)
    assert len(trained.history) == 3 and trained.best_epoch == 1
    predicted = trained.model.predict(data.x["val"], verbose=0).argmax(axis=1)
    assert np.mean(predicted == data.y["val"]) == pytest.approx(trained.best["val_accuracy"], abs=1e-6)
    assert trained.best is trained.history[0]


def test_the_rate_of_each_epoch_is_in_its_history():
    p = _params(epochs=3, learning_rate=0.01, lr_schedule="cosine")
    rates = [row["learning_rate"] for row in train(p, _data()).history]
    assert rates == pytest.approx([0.01, 0.0075, 0.0025])


def test_balanced_class_weights_make_every_class_weigh_the_same():
    from imgclf.training.fit import class_weights

    y = np.array([0] * 30 + [1] * 10, dtype=np.uint8)  # class 2 has no training image
    weights = class_weights(_params(class_weight="balanced").train, y, 3)
    assert weights == pytest.approx({0: 40 / (2 * 30), 1: 40 / (2 * 10), 2: 1.0})
    assert weights[0] * 30 == pytest.approx(weights[1] * 10)
    assert class_weights(_params().train, y, 3) is None


def test_balanced_training_on_uneven_classes_weighs_the_small_class_up():
    x, y = colour_arrays(n=48)
    keep = np.concatenate([np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:4], np.flatnonzero(y == 2)[:4]])
    data = as_prepared(x[keep], y[keep], x[36:], y[36:])
    plain = train(_params(epochs=1), data).history[0]["loss"]
    balanced = train(_params(epochs=1, class_weight="balanced"), data).history[0]["loss"]
    assert balanced != pytest.approx(plain, rel=1e-3)  # the loss is the weighted one


def test_the_multi_worker_step_weighs_each_example_by_its_class():
    import tensorflow as tf

    from imgclf.training.fit import prepare_model
    from imgclf.training.multi_worker import _step_functions

    x, y = colour_arrays(n=48)
    p = _params(dropout_conv=0.0, dropout_dense=0.0)  # the same forward pass twice
    strategy, _, model = prepare_model(p, as_prepared(x, y, x, y))
    start = model.get_weights()
    batch = tf.data.Dataset.from_tensors((x[:8], y[:8])).repeat()
    flag = tf.constant([0.0])
    sums = {}
    for name, weights in (("plain", None), ("double", {0: 2.0, 1: 2.0, 2: 2.0})):
        model.set_weights(start)
        train_step, _, _ = _step_functions(model, strategy, 8, weights)
        sums[name] = float(train_step(iter(batch), flag).numpy()[0])
    assert sums["double"] == pytest.approx(2 * sums["plain"], rel=1e-5)
