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


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shuffle: bool,
    seed: int,
    shard: tuple[int, int] | None = None,
    repeat: bool = False,
):
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
