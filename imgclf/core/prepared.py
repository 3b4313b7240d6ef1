"""The prepared-data folder (``data/prepared``): its files, its labels, its fingerprint.

Written by the augment stage, read by train, evaluate and predict. Kept apart from the code that
decodes and augments, so editing that code does not force a retrain when the arrays come out
the same.

Layout: ``x_{train,val,test}.npy`` (uint8 images), ``y_*.npy`` (class indices),
``labels.json`` (class names, in index order) and ``manifest.json`` (the MD5 of every file,
see :func:`write_manifest`), whose MD5 is the dataset's fingerprint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf.core.errors import PipelineError
from imgclf.core.fileio import md5_file, md5_tree

LABELS_FILE = "labels.json"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass
class Prepared:
    """Arrays of one prepared dataset, memory-mapped read-only."""

    labels: list[str]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]


def write_labels(path: Path, labels: list[str]) -> None:
    """Write the class names as a JSON list (UTF-8, one per line)."""
    path.write_text(json.dumps(labels, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def read_labels(path: Path) -> list[str]:
    """Read and check a ``labels.json``: a JSON list of distinct class names."""
    try:
        labels = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: cannot read the class labels ({err})") from None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise PipelineError(f"{path}: expected a JSON list of class names")
    if len(set(labels)) != len(labels):
        raise PipelineError(f"{path}: a class name is listed more than once")
    return labels


def load_prepared(folder: Path) -> Prepared:
    """Read what the augment stage wrote, images memory-mapped (never unpickling anything)."""
    try:
        labels = read_labels(folder / LABELS_FILE)
        x = {s: np.load(folder / f"x_{s}.npy", mmap_mode="r", allow_pickle=False) for s in SPLITS}
        y = {s: np.load(folder / f"y_{s}.npy", allow_pickle=False) for s in SPLITS}
    except FileNotFoundError as err:
        raise PipelineError(f"{err.filename} is missing: run the augment stage first (dvc repro)") from None
    return Prepared(labels=labels, x=x, y=y)


def write_manifest(folder: Path, digests: dict[str, str], note: dict[str, str] | None = None) -> None:
    """Write ``manifest.json``: the MD5 of every file in ``folder`` but those in ``digests``,
    which carry a digest computed as they were written (``note`` says how, per file)."""
    files = {p.name: md5_file(p) for p in sorted(folder.iterdir()) if p.name not in digests}
    files.update(digests)
    manifest = {"files": dict(sorted(files.items())), **(note or {})}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def fingerprint(folder: Path) -> str:
    """MD5 identifying a prepared dataset: of its manifest, or of all its files when it has none."""
    manifest = folder / MANIFEST_FILE
    return md5_file(manifest) if manifest.is_file() else md5_tree(folder)
