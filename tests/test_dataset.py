"""Scanning class folders, splitting before augmenting, deterministic uint8 outputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from imgclf.core.errors import PipelineError
from imgclf.data import dataset

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
    assert [f.relative_to(root).as_posix() for f in src.files] == [
        "犬/サブ/二.jpg",
        "犬/一.png",
        "猫/サブ/二.jpg",
        "猫/一.png",
    ]
    assert src.y == [0, 0, 1, 1]


def test_symlinked_files_are_read(class_folders: Path, tmp_path: Path):
    outside = tmp_path / "outside.png"
    make_image((1, 2, 3), 9).save(outside)
    os.symlink(outside, class_folders / "red" / "link.png")
    src = dataset.scan(class_folders)
    assert any(f.name == "link.png" for f in src.files)


def test_symlinked_folders_are_read_once_without_loops(class_folders: Path, tmp_path: Path):
    batch = tmp_path / "elsewhere" / "batch2"
    batch.mkdir(parents=True)
    for k in range(3):
        make_image((200, 0, 0), 20 + k).save(batch / f"{k}.png")
    os.symlink(batch, class_folders / "red" / "batch2")
    os.symlink(class_folders / "red", class_folders / "red" / "batch2-again")  # a link back up
    red = [f.relative_to(class_folders).as_posix() for f, y in zip(*_scanned(class_folders)) if y == "red"]
    assert [f for f in red if "batch2" in f] == ["red/batch2/0.png", "red/batch2/1.png", "red/batch2/2.png"]
    assert len(red) == 8 + 3


def _scanned(folder: Path) -> tuple[list[Path], list[str]]:
    src = dataset.scan(folder)
    return src.files, [src.labels[y] for y in src.y]


def test_one_class_folder_is_an_error_that_names_the_folder_inside(tmp_path: Path):
    make_class_folders(tmp_path / "photos" / "creatures", 2)
    with pytest.raises(PipelineError, match="one class folder, 'creatures'.*set data.source to '.*photos/creatures'"):
        dataset.scan(tmp_path / "photos")


@pytest.mark.parametrize(
    "labels, fragment",
    [
        (["red", "green", "purple"], "no such folder"),
        (["red", "green"], "does not list"),
    ],
)
def test_labels_must_match_folders(class_folders: Path, labels, fragment):
    with pytest.raises(PipelineError, match=fragment):
        dataset.scan(class_folders, labels)


def test_labels_read_as_numbers_are_told_to_be_quoted(tmp_path: Path):
    for name in ("01", "02"):
        make_image((200, 0, 0), 1).save((tmp_path / name).mkdir() or tmp_path / name / "a.png")
    with pytest.raises(PipelineError, match=r"no such folder; folders found: \['01', '02'\] \(quote names"):
        dataset.scan(tmp_path, ["1", "2"])  # labels: [01, 02] in params.yaml


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


def test_more_images_scale(tmp_path: Path):
    root = make_class_folders(tmp_path / "jpgs", per_class=5, size=40, fmt="jpg")
    decoded = dataset.decode(dataset.scan(root), 16, tmp_path)
    assert decoded.originals(np.arange(15)).shape == (15, 16, 16, 3)


def test_uneven_classes_are_reported_and_warned_over_three_to_one(caplog):
    from imgclf.data.dataset import check_balance

    with caplog.at_level(logging.INFO, logger="imgclf.data.dataset"):
        assert not check_balance({"cat": 30, "dog": 10})  # 3x: said, not warned
        assert check_balance({"cat": 50, "dog": 10, "fish": 20})
    assert "images per class: cat 30, dog 10" in caplog.text
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith("uneven classes: cat has 50 images, 5.0x the 10 of dog") and "class_weight" in warning
