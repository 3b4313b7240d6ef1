"""From a folder of class folders to decoded, split original images.

:func:`scan` finds the classes and their files, :func:`decode` turns every file into a fixed-size
RGB array (in worker processes, into a memory-mapped scratch file) and :func:`split_indices`
splits the originals, stratified and seeded, *before* any augmentation, so copies of one photo
never sit on both sides of the split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from sklearn.model_selection import train_test_split

from imgclf.core.errors import PipelineError
from imgclf.data.images import BadImage, is_image_name, iter_files, load_image

log = logging.getLogger(__name__)

CHUNK = 32  # images per task handed to a worker process


@dataclass
class Source:
    """The image files found under ``data.source``, with their class indices."""

    root: Path
    labels: list[str]
    files: list[Path]
    y: list[int]
    ignored: list[Path] = field(default_factory=list)


@dataclass
class Decoded:
    """Decoded originals, in a memory-mapped scratch file, plus what had to be skipped.

    ``x`` has a row per scanned file; ``rows`` lists the rows that hold a usable image, and
    ``y`` follows ``rows``. Position ``i`` (as in :func:`split_indices`) is
    ``x[rows[i]]``.
    """

    x: np.ndarray
    rows: np.ndarray
    y: np.ndarray
    skipped: list[tuple[Path, str]]
    path: Path

    def originals(self, positions: np.ndarray) -> np.ndarray:
        return self.x[self.rows[positions]]


def scan(source: Path, labels: list[str] | None = None) -> Source:
    """List the class folders of ``source`` and their image files.

    Class = folder name; ``labels`` (when given) fixes their order and must match the folders.
    """
    if not source.is_dir():
        raise PipelineError(
            f"data.source '{source}' is not a folder: create it with one subfolder "
            "of images per class, or set data.source in params.yaml"
        )
    folders = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(p.name for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    if stray:
        log.warning(
            "ignoring %d file(s) at the top of %s (images belong in class folders): %s",
            len(stray),
            source,
            ", ".join(stray[:5]),
        )
    if not folders:
        raise PipelineError(
            f"data.source '{source}' has no class folders: put each class's images in a subfolder named after the class"
        )
    labels = _classes(source, folders, labels)
    files: list[Path] = []
    y: list[int] = []
    ignored: list[Path] = []
    for index, label in enumerate(labels):
        for path in iter_files(source / label):
            if is_image_name(path):
                files.append(path)
                y.append(index)
            else:
                ignored.append(path)
    if ignored:
        log.warning("ignoring %d file(s) whose suffix is not an image format's, e.g. %s", len(ignored), ignored[0])
    return Source(root=source, labels=labels, files=files, y=y, ignored=ignored)


def _classes(source: Path, folders: list[str], labels: list[str] | None) -> list[str]:
    """The classes in order: ``labels`` checked against the class ``folders``, or the folders."""
    if labels is None:
        if len(folders) == 1:
            raise PipelineError(
                f"data.source '{source}' has one class folder, '{folders[0]}': a classifier needs two or more "
                f"(if the class folders are inside it, set data.source to '{source / folders[0]}')"
            )
        return folders
    missing = [lb for lb in labels if lb not in folders]
    if missing:
        quote = " (quote names YAML reads as numbers: '01')" if any(lb.isdigit() for lb in missing) else ""
        raise PipelineError(
            f"data.labels names {missing}, but {source} has no such folder; folders found: {folders}{quote}"
        )
    extra = [f for f in folders if f not in labels]
    if extra:
        raise PipelineError(
            f"{source} has class folders {extra} that data.labels does not list: "
            "add them to data.labels or move them out"
        )
    return list(labels)


class DecodeTask(NamedTuple):
    """One worker task: decode ``files`` into rows ``start...`` of the scratch array."""

    scratch: str
    start: int
    files: list[Path]
    size: int


def _decode_chunk(task: DecodeTask) -> list[str | None]:
    """Worker: run a :class:`DecodeTask`; return one error text (or None) per file."""
    x = np.load(task.scratch, mmap_mode="r+")
    errors: list[str | None] = []
    for offset, path in enumerate(task.files):
        try:
            x[task.start + offset] = np.asarray(load_image(path, task.size), dtype=np.uint8)
            errors.append(None)
        except BadImage as err:
            errors.append(str(err))
    x.flush()
    return errors


def decode(
    src: Source,
    image_size: int,
    scratch_dir: Path,
    on_bad_image: str = "skip",
    imap: Callable = map,
    progress: bool = False,
) -> Decoded:
    """Decode every file of ``src`` into a scratch file in ``scratch_dir``.

    ``imap`` (see :func:`imgclf.data.pool.worker_pool`) spreads the work over processes. Unusable files are
    skipped with one warning each, or stop everything under ``on_bad_image='fail'`` (the first
    in file order). The result does not depend on the number of processes.
    """
    from tqdm import tqdm

    n = len(src.files)
    path = Path(scratch_dir) / "originals.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3)).flush()
    tasks = [DecodeTask(str(path), start, src.files[start : start + CHUNK], image_size) for start in range(0, n, CHUNK)]
    rows: list[int] = []
    skipped: list[tuple[Path, str]] = []
    with tqdm(total=n, desc="decode", unit="img", disable=not progress) as bar:
        for task, errors in zip(tasks, imap(_decode_chunk, tasks)):
            for offset, (file, error) in enumerate(zip(task.files, errors)):
                if error is None:
                    rows.append(task.start + offset)
                elif on_bad_image == "fail":
                    raise PipelineError(
                        f"{file}: {error} (data.on_bad_image is 'fail'; remove the file or set it to 'skip')"
                    )
                else:
                    log.warning("skipping %s: %s", file, error)
                    skipped.append((file, error))
            bar.update(len(task.files))
    y = np.asarray([src.y[i] for i in rows], dtype=label_dtype(len(src.labels)))
    counts = np.bincount(y, minlength=len(src.labels))
    empty = [src.labels[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise PipelineError(
            f"class folder(s) {empty} under {src.root} have no usable image: add "
            "images or remove the folder (or its entry in data.labels)"
        )
    return Decoded(
        x=np.load(path, mmap_mode="r"), rows=np.asarray(rows, dtype=np.int64), y=y, skipped=skipped, path=path
    )


def label_dtype(n_classes: int) -> np.dtype:
    """Smallest unsigned type that holds every class index."""
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint32)


def split_indices(
    y: np.ndarray,
    test_size: float,
    val_size: float,
    seed: int,
    labels: list[str],
    group: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Stratified, seeded split of original-image indices into train / val / test.

    ``val_size`` is a fraction of what is left after the test split. With ``group`` (per
    position, the position of the first image of its group of copies: see
    :mod:`imgclf.data.duplicates`) the first images are split the same way and every copy
    follows its first into its split; without copies that is exactly the plain split.
    """
    firsts = np.arange(len(y)) if group is None else np.flatnonzero(group == np.arange(len(y)))
    if len(firsts) == len(y):
        return _split(y, test_size, val_size, seed, labels, "images")
    parts = _split(y[firsts], test_size, val_size, seed, labels, "distinct images (copies counted once)")
    where = np.empty(len(y), dtype=np.int8)
    for k, positions in enumerate(parts.values()):
        where[firsts[positions]] = k
    where = where[group]
    return {name: np.flatnonzero(where == k) for k, name in enumerate(parts)}


def _split(
    y: np.ndarray, test_size: float, val_size: float, seed: int, labels: list[str], what: str
) -> dict[str, np.ndarray]:
    """:func:`split_indices` of every position of ``y``; ``what`` names them in errors."""
    counts = np.bincount(y, minlength=len(labels))
    need = 2 if val_size == 0 else 3
    small = {labels[k]: int(c) for k, c in enumerate(counts) if c < need}
    if small:
        raise PipelineError(
            f"class(es) {small} have too few {what} for a stratified split (need at "
            f"least {need} each): add images or lower data.val_size to 0"
        )
    idx = np.arange(len(y))
    try:
        rest, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
        if val_size > 0:
            train, val = train_test_split(rest, test_size=val_size, stratify=y[rest], random_state=seed)
        else:
            train, val = rest, idx[:0]
    except ValueError as err:
        raise PipelineError(
            f"cannot split {len(y)} {what} into {len(labels)} classes with "
            f"data.test_size={test_size}, data.val_size={val_size} ({err}); add "
            "images or raise the fractions"
        ) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def skipped_csv(skipped: list[tuple[Path, str]]) -> str:
    """The files :func:`decode` skipped, as CSV rows (file, reason)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "reason"])
    writer.writerows((str(path), reason) for path, reason in skipped)
    return buf.getvalue()


# Largest class over smallest above which augment warns: the large class dominates the loss.
IMBALANCE = 3.0


def check_balance(per_class: dict[str, int]) -> bool:
    """Log the images per class; warn when the largest class has over :data:`IMBALANCE` times
    the images of the smallest. Returns whether it warned."""
    log.info("images per class: %s", ", ".join(f"{k} {v}" for k, v in per_class.items()))
    large, small = max(per_class, key=per_class.get), min(per_class, key=per_class.get)
    ratio = per_class[large] / max(per_class[small], 1)
    if ratio <= IMBALANCE:
        return False
    log.warning(
        "uneven classes: %s has %d images, %.1fx the %d of %s, and dominates the loss; train.class_weight: "
        "balanced weighs the classes evenly (reports/per_class.csv shows each class's figures)",
        large,
        per_class[large],
        ratio,
        per_class[small],
        small,
    )
    return True
