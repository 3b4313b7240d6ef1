"""Reading the arrays the augment stage wrote: what train and evaluate load.

Kept apart from :mod:`imgclf.dataset` so that editing augmentation code does not force a
retrain when the arrays come out the same.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgclf import paths
from imgclf.errors import PipelineError


@dataclass
class Prepared:
    """Arrays of one prepared dataset, memory-mapped read-only."""

    labels: list[str]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]


def load_prepared(folder: Path) -> Prepared:
    """Read what ``write_prepared`` wrote, images memory-mapped (never unpickling anything)."""
    try:
        labels = json.loads((folder / paths.LABELS_FILE).read_text(encoding="utf-8"))
        x = {s: np.load(folder / f"x_{s}.npy", mmap_mode="r", allow_pickle=False) for s in paths.SPLITS}
        y = {s: np.load(folder / f"y_{s}.npy", allow_pickle=False) for s in paths.SPLITS}
    except FileNotFoundError as err:
        raise PipelineError(f"{err.filename} is missing: run the augment stage first (dvc repro)") from None
    return Prepared(labels=labels, x=x, y=y)


def fingerprint(folder: Path) -> str:
    """MD5 identifying a prepared dataset: of its manifest (see ``write_prepared``), or of all
    its files when it has none."""
    from imgclf.fileio import md5_file, md5_tree

    manifest = folder / paths.MANIFEST_FILE
    return md5_file(manifest) if manifest.is_file() else md5_tree(folder)
