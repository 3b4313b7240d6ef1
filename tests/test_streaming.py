"""Training input: streamed and in-memory batches agree, shuffle per seed, shard per worker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from imgclf.streaming import NpyRows, make_dataset  # noqa: E402

from .helpers import colour_arrays  # noqa: E402


def test_streamed_memmap_gives_the_same_batches_as_memory(tmp_path: Path):
    x, y = colour_arrays(n=42)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    rows = NpyRows(mm)
    assert np.array_equal(rows.read(np.array([5, 0, 41])), x[[5, 0, 41]])
    rows.close()
    streamed = list(make_dataset(mm, y, 16, shuffle=False, seed=0).as_numpy_iterator())
    memory = list(make_dataset(x, y, 16, shuffle=False, seed=0).as_numpy_iterator())
    assert [len(b[0]) for b in streamed] == [16, 16, 10]
    for (xs, ys), (xm, ym) in zip(streamed, memory):
        assert np.array_equal(xs, xm) and np.array_equal(ys, ym)
    # Shuffled: every image exactly once per epoch, labels still matching, same order per seed.
    a = list(make_dataset(mm, y, 16, shuffle=True, seed=3).as_numpy_iterator())
    b = list(make_dataset(mm, y, 16, shuffle=True, seed=3).as_numpy_iterator())
    assert all(np.array_equal(p[0], q[0]) for p, q in zip(a, b))
    seen = np.concatenate([batch[0] for batch in a])
    assert sorted(map(bytes, seen)) == sorted(map(bytes, x))
    for images, labels in a:
        assert np.array_equal(images[:, 0, 0].argmax(axis=1), labels)


@pytest.mark.parametrize("streamed", [True, False])
def test_shards_split_the_rows_between_workers_and_repeat_reshuffled(tmp_path: Path, streamed: bool):
    x, y = colour_arrays(n=30)
    np.save(tmp_path / "x.npy", x)
    source = np.load(tmp_path / "x.npy", mmap_mode="r") if streamed else x
    shares = []
    for index in range(2):
        ds = make_dataset(source, y, 5, shuffle=True, seed=1, shard=(2, index), repeat=True)
        batches = [b for _, b in zip(range(6), ds.as_numpy_iterator())]  # two passes of 15 rows
        first, second = np.concatenate([b[0] for b in batches[:3]]), np.concatenate([b[0] for b in batches[3:]])
        assert sorted(map(bytes, first)) == sorted(map(bytes, second))  # the same rows each pass
        assert not np.array_equal(first, second)  # in a new order
        shares.append(sorted(map(bytes, first)))
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(map(bytes, x))
