"""Training input: tf.data pipelines over the prepared arrays, streamed from disk.

A memory-mapped array is read batch by batch with ``pread`` (:class:`NpyRows`), so the process
never holds the data set and its memory stays flat as the data grows; an in-memory array is
sliced directly. Every pipeline here runs with tf.data's autotuning off (see :func:`_fixed`).
"""

from __future__ import annotations

import os

import numpy as np


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


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int):
    """A tf.data pipeline of (uint8 images, int32 labels) batches in row order.

    A memory-mapped array is streamed from disk batch by batch, so datasets larger than RAM
    work; an in-memory array is indexed directly. Training reads :func:`training_batches`.
    """
    import tensorflow as tf

    return _load_batches(tf.data.Dataset.range(len(y)).batch(batch_size), x, y)


def validation_batches(data, batch_size: int):
    """The validation split's batches in file order, or ``None`` when it is empty."""
    if not len(data.y["val"]):
        return None
    return make_dataset(data.x["val"], data.y["val"], batch_size)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of ``n`` training rows in ``epoch`` (from 1).

    A function of the seed and the epoch alone, so a run resumed at any epoch or step reads
    exactly the batches an uninterrupted run would.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


def training_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, first_epoch: int, last_epoch: int, skip: int = 0
):
    """Batches of epochs ``first_epoch`` to ``last_epoch``, each in :func:`epoch_order`, the
    last batch of each epoch possibly short; the first ``skip`` batches are left out."""
    import tensorflow as tf

    n = len(y)

    def one_epoch(epoch):
        order = tf.numpy_function(lambda e: epoch_order(n, seed, int(e)), [epoch], tf.int64, stateful=False)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    ds = tf.data.Dataset.range(first_epoch, last_epoch + 1).flat_map(one_epoch).skip(skip)
    return _load_batches(ds, x, y)


def shard_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, shard: tuple[int, int], skip: int = 0):
    """One worker's endless batches: its share (every ``count``-th row from ``index``, for
    ``shard=(count, index)``) of each epoch's :func:`epoch_order`, epoch after epoch, batches
    running across epoch ends; the first ``skip`` batches are left out."""
    import tensorflow as tf

    n = len(y)
    count, index = shard
    share = len(range(index, n, count))
    first_epoch, offset = divmod(skip * batch_size, share)

    def one_epoch(epoch):
        order = tf.numpy_function(
            lambda e: epoch_order(n, seed, int(e))[index::count], [epoch], tf.int64, stateful=False
        )
        return tf.data.Dataset.from_tensor_slices(order)

    ds = tf.data.Dataset.range(first_epoch + 1, 2**62).flat_map(one_epoch).skip(offset).batch(batch_size)
    return _load_batches(ds, x, y)


def _load_batches(index_batches, x: np.ndarray, y: np.ndarray):
    """Turn batches of row numbers into (images, labels) batches, read in a background thread."""
    import tensorflow as tf

    labels = np.asarray(y, dtype=np.int32)
    rows = NpyRows(x) if _streamable(x) else None
    array = None if rows else np.asarray(x)
    shape = (None,) + tuple(x.shape[1:])

    def load(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(idx)  # sequential reads; the order inside a batch does not matter
        return (rows.read(idx) if rows else array[idx]), labels[idx]

    def load_tf(idx):
        images, targets = tf.numpy_function(load, [idx], [tf.uint8, tf.int32], stateful=False)
        images.set_shape(shape)
        targets.set_shape((None,))
        return images, targets

    return _fixed(index_batches.map(load_tf, num_parallel_calls=2, deterministic=True).prefetch(4))


def _fixed(ds):
    """``ds`` without tf.data's autotuning: its buffers and parallelism here are set by hand, and
    its tuning thread made deleting an iterator (every epoch's end in ``model.fit``) wait for
    the rest of its sleep, up to a minute, with the CPU idle (TF 2.21)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)
