"""Training input: streamed and in-memory batches agree, shuffle per seed, shard per worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from imgclf.training.streaming import NpyRows, epoch_order, make_dataset, shard_batches, training_batches  # noqa: E402

from .helpers import colour_arrays  # noqa: E402


def test_streamed_memmap_gives_the_same_batches_as_memory(tmp_path: Path):
    x, y = colour_arrays(n=42)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = NpyRows(mm)
    assert np.array_equal(rows.read(np.array([5, 0, 41])), x[[5, 0, 41]])
    rows.close()
    streamed = list(make_dataset(mm, y, 16).as_numpy_iterator())
    memory = list(make_dataset(x, y, 16).as_numpy_iterator())
    assert [len(b[0]) for b in streamed] == [16, 16, 10]
    for (xs, ys), (xm, ym) in zip(streamed, memory):
        assert np.array_equal(xs, xm) and np.array_equal(ys, ym)
    # Shuffled: every image exactly once per epoch, labels still matching, same order per seed.
    a = list(training_batches(mm, y, 16, seed=3, first_epoch=1, last_epoch=1).as_numpy_iterator())
    b = list(training_batches(mm, y, 16, seed=3, first_epoch=1, last_epoch=1).as_numpy_iterator())
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, b))
    seen = np.concatenate([batch[0] for batch in a])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, x))
    for images, labels in a:
        assert np.array_equal(images[:, 0, 0].argmax(axis=1), labels)


@pytest.mark.parametrize("streamed", [True, False])
def test_shards_split_each_epoch_between_workers_and_resume_at_any_step(tmp_path: Path, streamed: bool):
    x, y = colour_arrays(n=30)
    np.save(tmp_path / "x.npy", x)
    source = np.load(tmp_path / "x.npy", mmap_mode="r") if streamed else x
    epochs = []  # per worker: the rows of its first and second epoch (3 batches of 5 each)
    for index in range(2):
        stream = shard_batches(source, y, 5, seed=1, shard=(2, index))
        batches = [b for _, b in zip(range(6), stream.as_numpy_iterator())]
        epochs.append([sorted(map(bytes, np.concatenate([b[0] for b in part]))) for part in (batches[:3], batches[3:])])
        # Resuming after 4 steps reads what an uninterrupted worker reads from its 5th step.
        resumed = [b for _, b in zip(range(2), shard_batches(source, y, 5, 1, (2, index), skip=4).as_numpy_iterator())]
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(resumed, batches[4:]))
    for epoch in range(2):  # each epoch, the workers' shares are disjoint and cover every row
        assert sorted(epochs[0][epoch] + epochs[1][epoch]) == sorted(map(bytes, x))
    assert epochs[0][0] != epochs[0][1]  # and a worker's share changes from epoch to epoch


def test_each_epoch_has_its_own_order_that_a_resumed_run_reads_again():
    x, y = colour_arrays(n=30)
    a, b = epoch_order(30, seed=5, epoch=1), epoch_order(30, seed=5, epoch=2)
    assert sorted(a) == list(range(30)) and not np.array_equal(a, b)
    assert np.array_equal(a, epoch_order(30, seed=5, epoch=1)) and not np.array_equal(a, epoch_order(30, 6, 1))
    full = list(training_batches(x, y, 8, seed=5, first_epoch=1, last_epoch=3).as_numpy_iterator())
    assert [len(images) for images, _ in full] == [8, 8, 8, 6] * 3  # epochs end with their short batch
    epoch2 = np.concatenate([images for images, _ in full[4:8]])
    assert sorted(map(bytes, epoch2)) == sorted(map(bytes, x))
    # From epoch 2, step 3 on: the same batches as the uninterrupted run from that point.
    resumed = list(training_batches(x, y, 8, seed=5, first_epoch=2, last_epoch=3, skip=2).as_numpy_iterator())
    assert len(resumed) == len(full) - 6
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(resumed, full[6:]))
