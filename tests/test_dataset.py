"""Scanning class folders, splitting before augmenting, deterministic uint8 outputs."""
from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from imgclf import dataset
from imgclf.prepared import load_prepared
from imgclf.errors import PipelineError
from imgclf.fileio import md5_file, md5_tree

from .helpers import CLASS_COLOURS, make_class_folders, make_image


def test_scan_uses_sorted_folder_names_and_skips_hidden(class_folders: Path):
    (class_folders / ".ipynb_checkpoints").mkdir()
    (class_folders / "red" / ".DS_Store").write_bytes(b"\0\0")
    (class_folders / "README.txt").write_text("stray file at the top")
    (class_folders / "red" / "notes.txt").write_text("not an image")
    src = dataset.scan(class_folders)
    assert src.labels == sorted(CLASS_COLOURS)
    assert len(src.files) == 3 * 8
    assert [p.name for p in src.ignored] == ["notes.txt"]
    assert all(src.labels[y] == f.parent.name for f, y in zip(src.files, src.y))


def test_scan_follows_labels_order_nested_folders_and_unicode(tmp_path: Path):
    root = tmp_path / "写真"
    for label in ("猫", "犬"):
        (root / label / "サブ").mkdir(parents=True)
        make_image((200, 10, 10), 1).save(root / label / "一.png")
        make_image((10, 200, 10), 2).save(root / label / "サブ" / "二.jpg")
    src = dataset.scan(root, ["犬", "猫"])
    assert src.labels == ["犬", "猫"]
    # Ordered by path within each class: "サブ/..." sorts before "一.png" by code point.
    assert [f.relative_to(root).as_posix() for f in src.files] == ["犬/サブ/二.jpg", "犬/一.png", "猫/サブ/二.jpg", "猫/一.png"]
    assert src.y == [0, 0, 1, 1]


def test_symlinked_files_are_read(class_folders: Path, tmp_path: Path):
    outside = tmp_path / "outside.png"
    make_image((1, 2, 3), 9).save(outside)
    os.symlink(outside, class_folders / "red" / "link.png")
    src = dataset.scan(class_folders)
    assert any(f.name == "link.png" for f in src.files)


@pytest.mark.parametrize("labels, fragment", [
    (["red", "green", "purple"], "no such folder"),
    (["red", "green"], "does not list"),
])
def test_labels_must_match_folders(class_folders: Path, labels, fragment):
    with pytest.raises(PipelineError, match=fragment):
        dataset.scan(class_folders, labels)


def test_missing_or_empty_source(tmp_path: Path):
    with pytest.raises(PipelineError, match="is not a folder"):
        dataset.scan(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="no class folders"):
        dataset.scan(tmp_path / "empty")


def test_bad_images_are_skipped_or_fail(class_folders: Path, tmp_path: Path):
    (class_folders / "red" / "broken.jpg").write_text("<html>not found</html>")
    src = dataset.scan(class_folders)
    decoded = dataset.decode(src, 16, tmp_path, "skip")
    assert len(decoded.y) == 24
    assert [p.name for p, _ in decoded.skipped] == ["broken.jpg"]
    with pytest.raises(PipelineError, match="broken.jpg"):
        dataset.decode(src, 16, tmp_path, "fail")


def test_class_without_usable_image_is_an_error(class_folders: Path, tmp_path: Path):
    (class_folders / "purple").mkdir()
    (class_folders / "purple" / "x.png").write_bytes(b"")
    with pytest.raises(PipelineError, match="purple"):
        dataset.decode(dataset.scan(class_folders), 16, tmp_path, "skip")


def test_split_is_stratified_disjoint_and_seeded():
    y = np.repeat(np.arange(3), 10).astype(np.uint8)
    labels = ["a", "b", "c"]
    s1 = dataset.split_indices(y, 0.3, 0.2, seed=1, labels=labels)
    s2 = dataset.split_indices(y, 0.3, 0.2, seed=1, labels=labels)
    s3 = dataset.split_indices(y, 0.3, 0.2, seed=2, labels=labels)
    assert all(np.array_equal(s1[k], s2[k]) for k in s1)
    assert not np.array_equal(s1["test"], s3["test"])
    parts = [set(s1[k].tolist()) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(30))
    assert np.bincount(y[s1["test"]]).tolist() == [3, 3, 3]


def test_too_few_images_for_split():
    y = np.array([0, 0, 0, 1], dtype=np.uint8)
    with pytest.raises(PipelineError, match="too few images"):
        dataset.split_indices(y, 0.25, 0.0, seed=0, labels=["a", "b"])


def test_augment_one_rotates_and_flips():
    img = make_image((100, 100, 100), 3)
    arr = np.asarray(img)
    out = dataset.augment_one(arr, [0, 15], flip=True)
    assert len(out) == 4 == dataset.copies_per_image([0, 15], True)
    assert np.array_equal(out[0], arr)
    assert np.array_equal(out[1], arr[:, ::-1])
    assert not np.array_equal(out[2], arr)


def _prepare(src_dir: Path, out_dir: Path, seed: int = 0, workers: int = 1):
    src = dataset.scan(src_dir)
    scratch = out_dir.parent / f"scratch-{out_dir.name}-{seed}"
    scratch.mkdir(exist_ok=True)
    with dataset.worker_pool(workers) as imap:
        decoded = dataset.decode(src, 16, scratch, imap=imap)
        splits = dataset.split_indices(decoded.y, 0.25, 0.2, seed, src.labels)
        sizes = dataset.write_prepared(out_dir, decoded, splits, src.labels, [-10, 0, 10], True, imap=imap)
    manifest = json.loads((out_dir / "manifest.json").read_text())["files"]
    assert sorted(manifest) == sorted(p.name for p in out_dir.iterdir() if p.name != "manifest.json")
    assert manifest["y_train.npy"] == md5_file(out_dir / "y_train.npy")
    assert manifest["x_train.npy"] == _x_train_digest(out_dir / "x_train.npy", copies=6)
    return decoded, splits, sizes


def _x_train_digest(path: Path, copies: int) -> str:
    """What the manifest should hold for x_train, recomputed from the file as written."""
    x = np.load(path, mmap_mode="r")
    digest = hashlib.md5(path.read_bytes()[:x.offset])
    rows = dataset.CHUNK * copies
    for start in range(0, len(x), rows):
        digest.update(hashlib.sha1(np.ascontiguousarray(x[start:start + rows])).digest())
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

    monkeypatch.setattr(dataset, "augment_one", boom)
    with pytest.raises(OSError):
        _prepare(class_folders, out, seed=5)
    assert md5_tree(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_load_prepared_missing(tmp_path: Path):
    with pytest.raises(PipelineError, match="run the augment stage"):
        load_prepared(tmp_path)


def test_more_images_scale(tmp_path: Path):
    root = make_class_folders(tmp_path / "jpgs", per_class=5, size=40, fmt="jpg")
    decoded = dataset.decode(dataset.scan(root), 16, tmp_path)
    assert decoded.originals(np.arange(15)).shape == (15, 16, 16, 3)


def _square_or_fail(n: int) -> int:
    if n == 13:
        raise OSError(28, "No space left on device", "x_train.npy")
    if n == -1:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def test_worker_pool_keeps_order_and_raises_task_errors():
    with dataset.worker_pool(3) as imap:
        assert list(imap(_square_or_fail, range(14, 64))) == [n * n for n in range(14, 64)]
        assert list(imap(_square_or_fail, [3, 4])) == [9, 16]  # the pool serves map after map
        with pytest.raises(OSError) as err:
            list(imap(_square_or_fail, range(20)))
        assert err.value.errno == 28 and err.value.filename == "x_train.npy"
        with pytest.raises(RuntimeError, match="abandoned"):
            list(imap(_square_or_fail, [1]))


def test_worker_pool_raises_when_a_worker_dies():
    import time

    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="died"):
        with dataset.worker_pool(2) as imap:
            list(imap(_square_or_fail, [1, 2, 3, -1, 5, 6]))
    assert time.perf_counter() - start < 60  # and no hang
