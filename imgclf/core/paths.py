"""Every path the pipeline reads or writes, in one place.

Paths hang off the project root (the folder holding ``dvc.yaml``, found from this file, so a
``dvc exp run --temp`` copy writes into itself); ``dvc.yaml`` names the same files as stage deps
and outs.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PARAMS = ROOT / "params.yaml"
SETTINGS = ROOT / "settings.yaml"  # read with PARAMS (imgclf.core.params.load)
DEMO_DIR = ROOT / "data" / "demo"
PREPARED_DIR = ROOT / "data" / "prepared"
MODEL = ROOT / "models" / "model.h5"
MODEL_RUN = ROOT / "models" / "model_run.json"  # the MLflow run that trained MODEL
REPORTS = ROOT / "reports"

AUGMENT_REPORT = REPORTS / "augment.json"
SKIPPED_REPORT = REPORTS / "skipped.csv"
DUPLICATES_REPORT = REPORTS / "duplicates.csv"  # groups of copies of one photo (imgclf.data.duplicates)
HISTORY = REPORTS / "train_history.csv"
TRAIN_REPORT = REPORTS / "train.json"
METRICS = REPORTS / "metrics.json"
PER_CLASS = REPORTS / "per_class.csv"
CONFUSION_CSV = REPORTS / "confusion.csv"
CONFUSION_PNG = REPORTS / "confusion.png"
CURVES_PNG = REPORTS / "training_curves.png"
MISCLASSIFIED_PNG = REPORTS / "misclassified.png"
REPORT_HTML = REPORTS / "report.html"
# The files inside PREPARED_DIR are named in imgclf.core.prepared.


def store_root() -> Path:
    """Folder that holds the default MLflow store.

    DVC sets ``DVC_ROOT`` to the main repository, also for ``dvc exp run --temp`` and queued
    experiments, which run in throw-away copies; anchoring the store there keeps their runs.
    """
    return Path(os.environ.get("DVC_ROOT") or ROOT).resolve()


def resolve(path: str | os.PathLike) -> Path:
    """A path from params: absolute as given, else relative to the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else ROOT / p
