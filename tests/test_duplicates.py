"""Copies of one photo (resized, re-encoded, mirrored, cropped) are found, grouped and kept in one split."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.core.params import Params
from imgclf.data import dataset, duplicates
from imgclf.data.augmentation import prepare

from .helpers import make_class_folders, make_photo

PHOTO = 256  # side of the planted photos, in pixels
# How each planted copy is made from its photo, and the JPEG quality it is saved at.
COPIES = {
    "resized": (lambda img: img.resize((160, 160), Image.Resampling.BICUBIC), 90),
    "reencoded": (lambda img: img, 40),
    "mirrored": (lambda img: img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90),
    "cropped": (lambda img: img.crop((1, 1, PHOTO - 1, PHOTO - 1)), 90),  # a pixel off each side (0.4%)
}


def photo_folders(root: Path, per_class: int = 8, copies: bool = True) -> dict[str, set[str]]:
    """``root/{a,b}/<n>.jpg``: distinct photos; with ``copies``, photos 0-3 of ``a`` each get one
    planted copy of a kind of :data:`COPIES` and photo 0 of ``b`` a resized one. Returns the
    planted groups: {original: {original, its copy}} (paths relative to ``root``; a copy's name
    sorts after its original's, so the original is the group's first image)."""
    groups: dict[str, set[str]] = {}
    for c, label in enumerate("ab"):
        (root / label).mkdir(parents=True)
        for n in range(per_class):
            make_photo(seed=100 * c + n, width=PHOTO).save(root / label / f"{n:02d}.jpg", quality=90)
    if copies:
        for n, kind in enumerate(COPIES):
            _plant(root, f"a/{n:02d}.jpg", f"a/copy-{n:02d}-{kind}.jpg", kind, groups)
        _plant(root, "b/00.jpg", "b/copy-00-resized.jpg", "resized", groups)
    return groups


def _plant(root: Path, original: str, copy: str, kind: str, groups: dict[str, set[str]]) -> None:
    make, quality = COPIES[kind]
    with Image.open(root / original) as img:
        make(img.convert("RGB")).save(root / copy, quality=quality)
    groups[original] = {original, copy}


def params(mode: str = "group", **data) -> Params:
    return Params.model_validate(
        {
            "data": {"image_size": 32, "test_size": 0.25, "val_size": 0.2, "duplicates": mode, **data},
            "augment": {"angles": [0], "flip": False},
        }
    )


def read_report(text: str) -> dict[int, list[dict[str, str]]]:
    groups: dict[int, list[dict[str, str]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        groups.setdefault(int(row["group"]), []).append(row)
    return groups


def decoded_groups(root: Path, tmp_path: Path) -> tuple[dataset.Decoded, duplicates.Groups]:
    decoded = dataset.decode(dataset.scan(root), 32, tmp_path)
    return decoded, duplicates.find(decoded)


def test_planted_copies_form_one_group_each_and_stay_in_one_split(tmp_path: Path):
    planted = photo_folders(tmp_path / "photos")
    result = prepare(params(), dataset.scan(tmp_path / "photos"), tmp_path / "prepared")
    report = read_report(result.duplicates_csv)
    assert {frozenset(r["file"] for r in rows) for rows in report.values()} == set(map(frozenset, planted.values()))
    for rows in report.values():
        assert len({r["split"] for r in rows}) == 1, rows
        assert rows[0]["file"] in planted and rows[0]["distance"] == "0"
        assert all(int(r["distance"]) <= duplicates.THRESHOLD for r in rows)
    mirrored = {r["file"] for rows in report.values() for r in rows if r["mirrored"] == "true"}
    assert mirrored == {"a/copy-02-mirrored.jpg"}
    assert (len(result.groups.groups), result.groups.images, result.groups.copies) == (5, 10, 5)
    assert sum(result.sizes.values()) == 16 + 5 == len(result.y)


def test_unrelated_photos_and_noise_images_are_not_grouped(tmp_path: Path):
    photo_folders(tmp_path / "photos", per_class=20, copies=False)
    make_class_folders(tmp_path / "noise", per_class=10)
    for root in ("photos", "noise"):
        (tmp_path / f"scratch-{root}").mkdir()
        _, groups = decoded_groups(tmp_path / root, tmp_path / f"scratch-{root}")
        assert groups.groups == [] and np.array_equal(groups.group, np.arange(len(groups.group)))


def test_without_copies_every_mode_gives_the_plain_split(tmp_path: Path):
    photo_folders(tmp_path / "photos", copies=False)
    decoded, groups = decoded_groups(tmp_path / "photos", tmp_path)
    plain = dataset.split_indices(decoded.y, 0.25, 0.2, 7, ["a", "b"])
    for mode in duplicates.MODES:
        splits = duplicates.split(decoded.y, groups, mode, 0.25, 0.2, 7, ["a", "b"])
        assert all(np.array_equal(splits[k], plain[k]) for k in plain)
    y = np.random.default_rng(0).integers(0, 4, 200).astype(np.uint8)
    for seed in range(5):
        plain = dataset.split_indices(y, 0.2, 0.2, seed, list("abcd"))
        grouped = dataset.split_indices(y, 0.2, 0.2, seed, list("abcd"), group=np.arange(200))
        assert all(np.array_equal(plain[k], grouped[k]) for k in plain)


def test_keep_splits_as_if_unrelated_and_still_reports(tmp_path: Path):
    planted = photo_folders(tmp_path / "photos")
    result = prepare(params("keep", test_size=0.5), dataset.scan(tmp_path / "photos"), tmp_path / "prepared")
    decoded, groups = decoded_groups(tmp_path / "photos", tmp_path)
    plain = dataset.split_indices(decoded.y, 0.5, 0.2, 42, ["a", "b"])
    kept = duplicates.split(decoded.y, groups, "keep", 0.5, 0.2, 42, ["a", "b"])
    assert all(np.array_equal(kept[k], plain[k]) for k in plain)
    assert {k: len(v) for k, v in plain.items()} == result.sizes
    report = read_report(result.duplicates_csv)
    assert len(report) == len(planted)
    assert any(len({r["split"] for r in rows}) > 1 for rows in report.values())  # a group split apart


def test_drop_keeps_the_first_image_of_each_group(tmp_path: Path):
    planted = photo_folders(tmp_path / "photos")
    grouped = prepare(params("group"), dataset.scan(tmp_path / "photos"), tmp_path / "grouped")
    dropped = prepare(params("drop"), dataset.scan(tmp_path / "photos"), tmp_path / "dropped")
    assert sum(dropped.sizes.values()) == 16 == len(dropped.y)
    rows = [r for g in read_report(dropped.duplicates_csv).values() for r in g]
    copies = {file for group in planted.values() for file in group} - set(planted)
    assert {r["file"] for r in rows if r["split"] == "dropped"} == copies
    # The first images land where `group` put them.
    first = {r["file"]: r["split"] for g in read_report(grouped.duplicates_csv).values() for r in g[:1]}
    assert {r["file"]: r["split"] for r in rows if r["file"] in planted} == first


def test_one_photo_in_two_class_folders_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "photos"
    photo_folders(root, copies=False)
    with Image.open(root / "a" / "03.jpg") as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "b" / "stray.jpg", quality=85)
    with caplog.at_level(logging.INFO, logger="imgclf.data"):
        result = prepare(params(), dataset.scan(root), tmp_path / "prepared")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "a/03.jpg (a) = b/stray.jpg (b)" in warning and "1 such group" in warning
    assert "duplicates: 1 groups holding 2 images (1 copies); each group kept in one split" in caplog.text
    assert [r["class"] for r in read_report(result.duplicates_csv)[1]] == ["a", "b"]


def test_close_pairs_matches_a_pair_by_pair_check_in_any_block_size():
    rng = np.random.default_rng(3)
    plain = rng.integers(0, 2**63, (120, duplicates.WORDS), dtype=np.uint64)
    mirror = rng.integers(0, 2**63, (120, duplicates.WORDS), dtype=np.uint64)
    for k in range(0, 120, 10):  # near copies: a few bits flipped, some of a mirror image
        noise = np.uint64(1) << rng.integers(0, 64, duplicates.WORDS).astype(np.uint64)
        (mirror if k % 20 else plain)[k + 1] = plain[k] ^ noise
    d = np.minimum(
        duplicates.distances(plain[:, None], plain[None]), duplicates.distances(plain[:, None], mirror[None])
    )
    expected = {(i, j) for i in range(120) for j in range(i + 1, 120) if d[i, j] <= duplicates.THRESHOLD}
    assert len(expected) >= 12
    for block in (1, 1000, 10**6):
        i, j = duplicates.close_pairs(plain, mirror, pairs_per_block=block)
        assert set(zip(i.tolist(), j.tolist())) == expected


def test_a_chain_of_near_copies_is_one_group_led_by_its_first_image():
    rng = np.random.default_rng(5)
    plain = rng.integers(0, 2**63, (6, duplicates.WORDS), dtype=np.uint64)
    mirror = rng.integers(0, 2**63, (6, duplicates.WORDS), dtype=np.uint64)
    step = np.array([2**16 - 1, 0, 0, 0], dtype=np.uint64)  # 16 bits of the first word
    plain[3] = plain[1] ^ step  # 1 ~ 3 ~ 5: 16 bits a step, 32 from end to end
    plain[5] = plain[3] ^ (step << np.uint64(16))
    groups = duplicates.group_hashes(plain, mirror)
    assert groups.group.tolist() == [0, 1, 2, 1, 4, 1]
    (group,) = groups.groups
    assert group.positions.tolist() == [1, 3, 5] and group.distance.tolist() == [0, 16, 32]
    assert (groups.images, groups.copies) == (3, 2)


def test_report_without_copies_is_its_header():
    none = np.zeros((0, duplicates.WORDS), np.uint64)
    groups = duplicates.group_hashes(none, none)
    assert duplicates.report_csv(groups, [], np.zeros(0, np.uint8), ["a"], {}) == (
        "group,file,class,split,distance,mirrored\n"
    )
    assert duplicates.summary(groups, "group") == "duplicates: none found (data.duplicates: group)"
