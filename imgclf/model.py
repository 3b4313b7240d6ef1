"""The CNN and its training loop (Keras 3 on TensorFlow).

The default architecture is the seed's: per block a 'same' conv, a 'valid' conv, 2x2 max-pool
and dropout (blocks of 32 and 64 filters), then Dense 512, dropout and softmax. Pixels are scaled
inside the model, so arrays stay uint8 on disk and the saved model takes raw 0..255 images.
"""
from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from imgclf.params import TrainParams

log = logging.getLogger(__name__)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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


def build_model(image_size: int, n_classes: int, p: TrainParams):
    """Build and compile the CNN for ``image_size`` x ``image_size`` RGB uint8 input."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    k = p.kernel_size
    for b, filters in enumerate(p.conv_filters, start=1):
        x = layers.Conv2D(filters, k, padding="same", activation="relu", name=f"block{b}_conv1")(x)
        x = layers.Conv2D(filters, k, activation="relu", name=f"block{b}_conv2")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        x = layers.Dropout(p.dropout_conv, name=f"block{b}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(p.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(p.dropout_dense, name="dense_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="cnn")
    model.compile(optimizer=make_optimizer(p.optimizer, p.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def make_optimizer(name: str, learning_rate: float):
    import keras

    classes = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
               "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    return classes[name](learning_rate=learning_rate)


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    """A tf.data pipeline over (possibly memory-mapped) uint8 arrays, reshuffled every epoch."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype(np.int32)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def fit(model, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        p: TrainParams, seed: int, on_epoch: Callable[[int, dict[str, float]], None] | None = None
        ) -> list[dict[str, Any]]:
    """Train ``model``; return one dict of metrics per epoch (``epoch`` counts from 1)."""
    import keras

    history: list[dict[str, Any]] = []

    class _Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
            history.append(row)
            log.info("epoch %d/%d: %s", epoch + 1, p.epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
            if on_epoch:
                on_epoch(epoch + 1, row)

    train_ds = make_dataset(x_train, y_train, p.batch_size, shuffle=True, seed=seed)
    val_ds = make_dataset(x_val, y_val, p.batch_size, shuffle=False, seed=seed) if len(x_val) else None
    # The dataset shuffles itself (seeded); Keras' own shuffle does not apply to tf.data.
    model.fit(train_ds, validation_data=val_ds, epochs=p.epochs, verbose=0, shuffle=False,
              callbacks=[_Record()])
    return history
