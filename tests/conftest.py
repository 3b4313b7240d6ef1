"""Shared fixtures: tiny deterministic image folders and shrunk params."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]

# Each class is a colour; every image differs (noise, size) so copies can be told apart.
CLASS_COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def make_image(colour: tuple[int, int, int], seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.int16)
    noise = rng.integers(-30, 30, (size, size, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    arr[rng.integers(0, size), :, :] = 255  # a white line makes rotations visible
    return Image.fromarray(arr, "RGB")


def make_class_folders(root: Path, per_class: int = 8, size: int = 16, fmt: str = "png") -> Path:
    """``root/<colour>/<n>.png``: ``per_class`` distinct small images per colour class."""
    for c, (label, colour) in enumerate(CLASS_COLOURS.items()):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            make_image(colour, seed=100 * c + n, size=size).save(folder / f"{n:02d}.{fmt}")
    return root


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "images")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


# The real params.yaml, shrunk so a whole pipeline trains in seconds on tiny images.
TINY_PARAMS = {
    "data": {"image_size": 16, "test_size": 0.25, "val_size": 0.2},
    "augment": {"angles": [0, 10], "flip": True},
    "train": {"conv_filters": [4, 8], "dense_units": 16, "epochs": 2, "batch_size": 8},
}
