"""Augmentation and the prepared folder: split before augmenting, same bytes for any worker count."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from imgclf.core.fileio import md5_file, md5_tree
from imgclf.core.prepared import load_prepared
from imgclf.data import augmentation, dataset
from imgclf.data.pool import worker_pool

from .helpers import make_class_folders, make_image


def test_augment_one_rotates_and_flips():
    img = make_image((100, 100, 100), 3)
    arr = np.asarray(img)
    out = augmentation.augment_one(arr, [0, 15], flip=True)
    assert len(out) == 4 == augmentation.copies_per_image([0, 15], True)
    assert np.array_equal(out[0], arr)
    assert np.array_equal(out[1], arr[:, ::-1])
    assert not np.array_equal(out[2], arr)


def _prepare(src_dir: Path, out_dir: Path, seed: int = 0, workers: int = 1):
    src = dataset.scan(src_dir)
    scratch = out_dir.parent / f"scratch-{out_dir.name}-{seed}"
    scratch.mkdir(exist_ok=True)
    with worker_pool(workers) as imap:
        decoded = dataset.decode(src, 16, scratch, imap=imap)
        splits = dataset.split_indices(decoded.y, 0.25, 0.2, seed, src.labels)
        sizes = augmentation.write_prepared(out_dir, decoded, splits, src.labels, [-10, 0, 10], True, imap=imap)
    manifest = json.loads((out_dir / "manifest.json").read_text())["files"]
    assert sorted(manifest) == sorted(p.name for p in out_dir.iterdir() if p.name != "manifest.json")
    assert manifest["y_train.npy"] == md5_file(out_dir / "y_train.npy")
    assert manifest["x_train.npy"] == _x_train_digest(out_dir / "x_train.npy", copies=6)
    return decoded, splits, sizes


def _x_train_digest(path: Path, copies: int) -> str:
    """What the manifest should hold for x_train, recomputed from the file as written."""
    x = np.load(path, mmap_mode="r")
    digest = hashlib.md5(path.read_bytes()[: x.offset])
    rows = dataset.CHUNK * copies
    for start in range(0, len(x), rows):
        digest.update(hashlib.sha1(np.ascontiguousarray(x[start : start + rows])).digest())
    return digest.hexdigest()


def test_split_happens_before_augmentation(class_folders: Path, tmp_path: Path):
    decoded, splits, sizes = _prepare(class_folders, tmp_path / "prepared")
    prepared = load_prepared(tmp_path / "prepared")
    assert sizes["train"] == len(splits["train"]) * 6
    x_train = prepared.x["train"]
    # Every training array is a copy of a training original; no test or val original is in there.
    train_hashes = {hashlib.md5(a.tobytes()).hexdigest() for a in x_train}
    for name in ("test", "val"):
        for i in splits[name]:
            original = decoded.x[decoded.rows[i]]
            assert hashlib.md5(original.tobytes()).hexdigest() not in train_hashes
            assert not any(np.array_equal(original[:, ::-1], a) for a in x_train)
    assert np.array_equal(prepared.y["train"], np.repeat(decoded.y[splits["train"]], 6))


def test_outputs_are_uint8_unpicklable_and_byte_identical(class_folders: Path, tmp_path: Path):
    _prepare(class_folders, tmp_path / "a")
    _prepare(class_folders, tmp_path / "b")
    assert md5_tree(tmp_path / "a") == md5_tree(tmp_path / "b")
    for split in ("train", "val", "test"):
        x = np.load(tmp_path / "a" / f"x_{split}.npy", allow_pickle=False)
        y = np.load(tmp_path / "a" / f"y_{split}.npy", allow_pickle=False)
        assert x.dtype == np.uint8 and x.shape[1:] == (16, 16, 3)
        assert y.dtype == np.uint8 and len(y) == len(x)
    assert load_prepared(tmp_path / "a").labels == ["blue", "green", "red"]


def test_worker_processes_give_the_same_bytes(tmp_path: Path):
    root = make_class_folders(tmp_path / "many", per_class=30)  # several chunks per worker
    (root / "red" / "bad.png").write_text("not a png")
    _prepare(root, tmp_path / "one", workers=1)
    decoded, _, _ = _prepare(root, tmp_path / "two", workers=2)
    assert [p.name for p, _ in decoded.skipped] == ["bad.png"]
    assert md5_tree(tmp_path / "one") == md5_tree(tmp_path / "two")


def test_failed_write_leaves_previous_output_untouched(class_folders: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "prepared"
    _prepare(class_folders, out)
    before = md5_tree(out)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(augmentation, "augment_one", boom)
    with pytest.raises(OSError):
        _prepare(class_folders, out, seed=5)
    assert md5_tree(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
