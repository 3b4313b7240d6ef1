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
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.params import TrainParams

log = logging.getLogger(__name__)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def split_cpu(devices: int) -> None:
    """Present the CPU as ``devices`` logical devices (before TensorFlow starts), so multi-device
    code paths can run on a laptop; set by ``IMGCLF_CPU_DEVICES``."""
    import tensorflow as tf

    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``train.strategy``.

    ``default``: one device. ``mirrored``: every local GPU, or the logical CPUs when there is no
    GPU (see :func:`split_cpu`). ``train.batch_size`` is the *global* batch, split evenly over
    the replicas.
    """
    import tensorflow as tf

    cpus = int(os.environ.get("IMGCLF_CPU_DEVICES", "1") or 1)
    if cpus > 1:
        try:
            split_cpu(cpus)
        except RuntimeError:  # TensorFlow already started: keep the devices it has
            log.warning("IMGCLF_CPU_DEVICES=%d ignored: TensorFlow's devices are already set up", cpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    raise ValueError(f"unknown strategy {name!r}")


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
    # float32 probabilities (and loss) whatever the compute precision.
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="cnn")
    model.compile(optimizer=make_optimizer(p.optimizer, p.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def make_optimizer(name: str, learning_rate: float):
    import keras

    classes = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
               "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    return classes[name](learning_rate=learning_rate)


class NpyRows:
    """Reads rows of a memory-mapped ``.npy`` file with ``pread``.

    Indexing the memory map itself would leave every page it touched resident in this process;
    reading through the page cache keeps the process small however large the file is.
    """

    def __init__(self, x: np.memmap):
        self.path, self.offset = x.filename, x.offset
        self.shape, self.dtype = x.shape[1:], x.dtype
        self.row_bytes = int(np.prod(self.shape)) * x.dtype.itemsize
        self.fd = os.open(self.path, os.O_RDONLY)

    def read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows),) + self.shape, dtype=self.dtype)
        flat = out.reshape(len(rows), -1).view(np.uint8)
        for j, row in enumerate(rows):
            got = os.preadv(self.fd, [flat[j]], self.offset + int(row) * self.row_bytes)
            if got != self.row_bytes:
                raise OSError(f"{self.path}: short read at row {row}")
        return out

    def close(self) -> None:
        os.close(self.fd)


def _streamable(x: np.ndarray) -> bool:
    return isinstance(x, np.memmap) and bool(x.filename) and x.flags.c_contiguous and len(x) > 0


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int):
    """A tf.data pipeline of (uint8 images, int32 labels) batches, reshuffled every epoch (seeded).

    A memory-mapped array is streamed from disk batch by batch, so datasets larger than RAM
    train; an in-memory array is sliced directly.
    """
    import tensorflow as tf

    labels = np.asarray(y, dtype=np.int32)
    if not _streamable(x):
        ds = tf.data.Dataset.from_tensor_slices((np.asarray(x), labels))
        if shuffle:
            ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    rows = NpyRows(x)
    shape = (None,) + tuple(x.shape[1:])

    def load(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)  # sequential reads; batch order inside a batch does not matter
        return rows.read(idx), labels[idx]

    def load_tf(idx):
        images, targets = tf.numpy_function(load, [idx], [tf.uint8, tf.int32], stateful=False)
        images.set_shape(shape)
        targets.set_shape((None,))
        return images, targets

    ds = tf.data.Dataset.range(len(labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(load_tf, num_parallel_calls=2, deterministic=True)
    return ds.prefetch(4)


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
