"""The CNN and its training loop (Keras 3 on TensorFlow).

The default architecture is the seed's: per block a 'same' conv, a 'valid' conv, 2x2 max-pool
and dropout (blocks of 32 and 64 filters), then Dense 512, dropout and softmax. Pixels are scaled
inside the model, so arrays stay uint8 on disk and the saved model takes raw 0..255 images.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import PipelineError
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


def tf_config() -> dict[str, Any]:
    """The cluster and this process's task from ``TF_CONFIG`` (for ``multi_worker``)."""
    raw = os.environ.get("TF_CONFIG", "")
    hint = ('set it on every worker, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}')
    if not raw:
        raise PipelineError(f"train.strategy is multi_worker but TF_CONFIG is not set: {hint}")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"TF_CONFIG is not valid ({type(err).__name__}: {err}): {hint}") from None
    if not isinstance(workers, list) or not workers or kind not in config["cluster"] \
            or not 0 <= index < len(config["cluster"][kind]):
        raise PipelineError(f"TF_CONFIG's task {task} is not in its cluster {config['cluster']}: {hint}")
    return config


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a ``TF_CONFIG`` cluster.

    The chief is the task of type ``chief``, or worker 0 when the cluster has none; only it
    writes outputs and logs to MLflow.
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return True
    config = tf_config()
    kind, index = config["task"]["type"], int(config["task"]["index"])
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config["cluster"])


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``train.strategy``.

    ``default``: one device. ``mirrored``: every local GPU, or the logical CPUs when there is no
    GPU (see :func:`split_cpu`). ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the
    processes ``TF_CONFIG`` lists, each using its local devices as ``mirrored`` would. In every
    case ``train.batch_size`` is the *global* batch, split evenly over all replicas.

    Call it before any other TensorFlow work: a multi-worker strategy sets up the runtime.
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
    if name == "multi_worker":
        tf_config()  # a clear error before TensorFlow waits for a cluster that is not there
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")


def is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


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


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                 shard: tuple[int, int] | None = None, repeat: bool = False):
    """A tf.data pipeline of (uint8 images, int32 labels) batches, reshuffled every epoch (seeded).

    A memory-mapped array is streamed from disk batch by batch, so datasets larger than RAM
    train; an in-memory array is sliced directly. ``shard=(count, index)`` keeps every
    ``count``-th row from ``index`` on (one worker's share); ``repeat`` makes it endless, with
    a new order each pass.
    """
    import tensorflow as tf

    labels = np.asarray(y, dtype=np.int32)
    if not _streamable(x):
        ds = tf.data.Dataset.from_tensor_slices((np.asarray(x), labels))
        ds = _order(ds, len(labels), shard, shuffle, seed, repeat)
        return _fixed(ds.batch(batch_size).prefetch(2))

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

    ds = _order(tf.data.Dataset.range(len(labels)), len(labels), shard, shuffle, seed, repeat)
    ds = ds.batch(batch_size).map(load_tf, num_parallel_calls=2, deterministic=True)
    return _fixed(ds.prefetch(4))


def _order(ds, n: int, shard: tuple[int, int] | None, shuffle: bool, seed: int, repeat: bool):
    """Which of ``ds``'s ``n`` elements, in what order: this worker's share, shuffled, endless."""
    if shard:
        ds = ds.shard(*shard)
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.repeat() if repeat else ds


def _fixed(ds):
    """``ds`` without tf.data's autotuning: its buffers and parallelism here are set by hand, and
    its tuning thread made deleting an iterator (every epoch's end in ``model.fit``) wait for
    the rest of its sleep, up to a minute, with the CPU idle (TF 2.21)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def fit(model, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
        p: TrainParams, seed: int, on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        strategy=None) -> list[dict[str, Any]]:
    """Train ``model``; return one dict of metrics per epoch (``epoch`` counts from 1).

    ``model.fit`` does the work, except under a multi-worker strategy, which it cannot run in
    Keras 3 (keras-team/keras#20585): :func:`fit_multi_worker` does it there.
    """
    import keras

    history: list[dict[str, Any]] = []

    def record(epoch: int, logs: dict) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        history.append(row)
        log.info("epoch %d/%d: %s", epoch, p.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
        if on_epoch:
            on_epoch(epoch, row)

    if strategy is not None and is_multi_worker(strategy):
        fit_multi_worker(model, strategy, x_train, y_train, x_val, y_val, p, seed, record)
        return history

    class _Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            record(epoch + 1, logs or {})

    train_ds = make_dataset(x_train, y_train, p.batch_size, shuffle=True, seed=seed)
    val_ds = make_dataset(x_val, y_val, p.batch_size, shuffle=False, seed=seed) if len(x_val) else None
    # The dataset shuffles itself (seeded); Keras' own shuffle does not apply to tf.data.
    model.fit(train_ds, validation_data=val_ds, epochs=p.epochs, verbose=0, shuffle=False,
              callbacks=[_Record()])
    return history


def fit_multi_worker(model, strategy, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
                     y_val: np.ndarray, p: TrainParams, seed: int,
                     record: Callable[[int, dict[str, float]], None]) -> None:
    """Synchronous data-parallel training over the workers of ``strategy``, step by step.

    Each worker reads its own shard of the rows (every n-th, reshuffled each pass) in batches
    of ``batch_size / replicas``; the optimizer sums the gradients of all replicas, and the
    loss is averaged over the global batch, so one step equals one ``batch_size`` step on one
    device. Every worker runs the same number of steps per epoch (the collective ops would
    hang otherwise). Validation runs on each worker's own copy of the weights, which are the
    same everywhere. ``record(epoch, logs)`` gets the same keys as ``model.fit`` gives.
    """
    import keras
    import tensorflow as tf

    global_batch = p.batch_size
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise PipelineError(f"train.batch_size {global_batch} cannot be split evenly over {replicas} "
                            f"replicas: make it a multiple of {replicas}")
    steps = max(1, math.ceil(len(y_train) / global_batch))

    def train_input(context):
        return make_dataset(x_train, y_train, context.get_per_replica_batch_size(global_batch), shuffle=True,
                            seed=seed, shard=(context.num_input_pipelines, context.input_pipeline_id),
                            repeat=True)

    batches = iter(strategy.distribute_datasets_from_function(train_input))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    optimizer = model.optimizer
    variables = model.trainable_variables
    with strategy.scope():
        optimizer.build(variables)

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = loss_fn(labels, probs)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return _sums(labels, probs, per_example)

    @tf.function
    def train_step(iterator):
        totals = strategy.run(replica_step, args=next(iterator))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)

    @tf.function
    def val_step(images, labels):
        probs = model(images, training=False)
        return _sums(labels, probs, loss_fn(labels, probs))

    val_ds = make_dataset(x_val, y_val, global_batch, shuffle=False, seed=seed) if len(x_val) else None
    for epoch in range(1, p.epochs + 1):
        totals = sum(train_step(batches).numpy() for _ in range(steps))
        logs = {"accuracy": totals[1] / totals[2], "loss": totals[0] / totals[2]}
        if val_ds is not None:
            totals = sum(val_step(images, labels).numpy() for images, labels in val_ds)
            logs.update({"val_accuracy": totals[1] / totals[2], "val_loss": totals[0] / totals[2]})
        record(epoch, logs)


def _sums(labels, probs, per_example):
    """[sum of losses, correct predictions, examples] of one batch, as float32."""
    import tensorflow as tf

    labels = tf.cast(labels, tf.int32)
    hits = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels), tf.float32)
    return tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float32)), tf.reduce_sum(hits),
                     tf.cast(tf.shape(labels)[0], tf.float32)])
