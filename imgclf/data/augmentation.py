"""The original script's augmentation (rotations, optional mirror images) and writing the prepared folder.

:func:`write_prepared` fills ``x_train.npy`` with the augmented copies of the training originals
in worker processes, each writing its own byte range, so the output does not depend on their
number; validation and test images are written as decoded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from imgclf.core.fileio import atomic_dir, pwrite_all
from imgclf.core.prepared import LABELS_FILE, SPLITS, write_labels, write_manifest
from imgclf.data import dataset, duplicates
from imgclf.data.dataset import CHUNK, Decoded

log = logging.getLogger(__name__)

ROTATE_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def copies_per_image(angles: list[float], flip: bool) -> int:
    return len(angles) * (2 if flip else 1)


def augment_one(
    image: np.ndarray, angles: list[float], flip: bool, resample: str = "nearest", out: np.ndarray | None = None
) -> np.ndarray:
    """Each angle's rotation of ``image``, and its mirror image when ``flip``, stacked.

    Written into ``out`` when given. Corners that rotate in are black. ``nearest`` is the original script's
    resampling; ``bilinear`` gives smoother edges at several times the cost.
    """
    if out is None:
        out = np.empty((copies_per_image(angles, flip),) + image.shape, dtype=np.uint8)
    img = Image.fromarray(image)
    k = 0
    for angle in angles:
        rotated = img if angle == 0 else img.rotate(angle, resample=ROTATE_RESAMPLE[resample], fillcolor=(0, 0, 0))
        out[k] = rotated
        k += 1
        if flip:
            out[k] = rotated.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            k += 1
    return out


class AugmentTask(NamedTuple):
    """One worker task: augment originals ``rows`` (training positions ``first...``)."""

    originals: str  # the decoded originals (.npy)
    target: str  # x_train.npy, already sized
    offset: int  # where its data starts (after the .npy header)
    first: int  # position of rows[0] among the training originals
    rows: list[int]
    angles: list[float]
    flip: bool
    resample: str


def _augment_chunk(task: AugmentTask) -> tuple[int, str]:
    """Worker: write the copies of ``task.rows`` into their slots of x_train, as one contiguous
    byte range; return how many originals it did and the SHA-1 of the bytes it wrote."""
    originals = np.load(task.originals, mmap_mode="r")
    copies = copies_per_image(task.angles, task.flip)
    block = np.empty((len(task.rows) * copies,) + originals.shape[1:], dtype=np.uint8)
    for n, row in enumerate(task.rows):
        augment_one(originals[row], task.angles, task.flip, task.resample, out=block[n * copies : (n + 1) * copies])
    fd = os.open(task.target, os.O_WRONLY)
    try:
        pwrite_all(fd, block, task.offset + task.first * copies * block[0].nbytes)
    finally:
        os.close(fd)
    return len(task.rows), hashlib.sha1(block).hexdigest()


def _copy_rows(target: Path, source: np.ndarray, rows: np.ndarray, chunk: int = 1024) -> None:
    """Copy ``source[rows]`` into a new .npy file without holding it all in memory."""
    out = np.lib.format.open_memmap(target, mode="w+", dtype=source.dtype, shape=(len(rows),) + source.shape[1:])
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = source[rows[start : start + chunk]]
    out.flush()


def _augment_train(
    train_path: Path,
    decoded: Decoded,
    rows: list[int],
    angles: list[float],
    flip: bool,
    resample: str,
    imap: Callable,
    progress: bool,
) -> tuple[int, Any]:
    """Fill ``train_path`` with every copy of the decoded ``rows``, chunk by chunk over ``imap``;
    return the number of images and the file's digest (an MD5 of its header and the chunks' SHA-1s)."""
    from tqdm import tqdm

    shape = (len(rows) * copies_per_image(angles, flip),) + decoded.x.shape[1:]
    header = np.lib.format.open_memmap(train_path, mode="w+", dtype=np.uint8, shape=shape)
    offset = header.offset
    header.flush()
    del header
    tasks = [
        AugmentTask(str(decoded.path), str(train_path), offset, i, rows[i : i + CHUNK], angles, flip, resample)
        for i in range(0, len(rows), CHUNK)
    ]
    with open(train_path, "rb") as fh:
        digest = hashlib.md5(fh.read(offset))
    with tqdm(total=len(rows), desc="augment", unit="img", disable=not progress) as bar:
        for done, chunk_sha1 in imap(_augment_chunk, tasks):
            digest.update(bytes.fromhex(chunk_sha1))
            bar.update(done)
    return shape[0], digest


def write_prepared(
    out_dir: Path,
    decoded: Decoded,
    splits: dict[str, np.ndarray],
    labels: list[str],
    angles: list[float],
    flip: bool,
    imap: Callable = map,
    progress: bool = False,
    resample: str = "nearest",
) -> dict[str, int]:
    """Write x/y arrays per split (train augmented, val/test as decoded), labels and manifest.

    Everything lands in a temporary folder that replaces ``out_dir`` only when complete. Arrays
    are filled through files, so none needs to fit in RAM; ``imap`` (see
    :func:`imgclf.data.pool.worker_pool`) spreads the augmentation over processes.

    The manifest's digest of ``x_train.npy`` is the MD5 of its header and of the SHA-1s the
    workers computed of the chunks they wrote, so the largest file is never read back to hash
    it. Returns the number of images per split.
    """
    sizes: dict[str, int] = {}
    copies = copies_per_image(angles, flip)
    with atomic_dir(out_dir) as tmp:
        train_path = tmp / "x_train.npy"
        train_rows = decoded.rows[splits["train"]].tolist()
        sizes["train"], train_digest = _augment_train(
            train_path, decoded, train_rows, list(angles), flip, resample, imap, progress
        )
        np.save(tmp / "y_train.npy", np.repeat(decoded.y[splits["train"]], copies))
        for name in SPLITS[1:]:
            _copy_rows(tmp / f"x_{name}.npy", decoded.x, decoded.rows[splits[name]])
            np.save(tmp / f"y_{name}.npy", decoded.y[splits[name]])
            sizes[name] = len(splits[name])
        write_labels(tmp / LABELS_FILE, labels)
        write_manifest(
            tmp,
            {"x_train.npy": train_digest.hexdigest()},
            {"x_train.npy": f"md5 of its header and of the sha1 of each {CHUNK}-image chunk"},
        )
    return sizes


class PrepareResult(NamedTuple):
    """What :func:`prepare` made: images per split, the labels of the originals it split (the
    copies that ``data.duplicates: drop`` removed left out), the skipped files, the groups of
    copies and their report (CSV text)."""

    sizes: dict[str, int]
    y: np.ndarray
    skipped: list[tuple[Path, str]]
    groups: duplicates.Groups
    duplicates_csv: str


def prepare(p, src: dataset.Source, out_dir: Path, imap: Callable = map, progress: bool = False) -> PrepareResult:
    """Decode ``src``, find copies of one photo, split it and write the augmented arrays of ``p`` (a
    :class:`~imgclf.core.params.Params`) into ``out_dir``. The augment stage and ``tune`` (for a
    trial's augment params) both prepare data this way, so equal params give equal arrays."""
    import tempfile

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".augment-scratch-", dir=out_dir.parent) as scratch:
        decoded = dataset.decode(
            src, p.data.image_size, Path(scratch), p.data.on_bad_image, imap=imap, progress=progress
        )
        groups = duplicates.find(decoded, imap=imap, progress=progress)
        names = duplicates.relative_names([src.files[row] for row in decoded.rows], src.root)
        duplicates.warn_mixed_classes(groups, names, decoded.y, src.labels)
        splits = duplicates.split(
            decoded.y, groups, p.data.duplicates, p.data.test_size, p.data.val_size, p.base.seed, src.labels
        )
        log.info(duplicates.summary(groups, p.data.duplicates))
        sizes = write_prepared(
            out_dir,
            decoded,
            splits,
            src.labels,
            p.augment.angles,
            p.augment.flip,
            imap=imap,
            progress=progress,
            resample=p.augment.resample,
        )
        kept = np.sort(np.concatenate(list(splits.values())))
        report = duplicates.report_csv(groups, names, decoded.y, src.labels, splits)
        result = PrepareResult(sizes, decoded.y[kept], decoded.skipped, groups, report)
        del decoded  # unmap the scratch file before its folder goes
    return result
