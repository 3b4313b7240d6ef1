"""Classifying new images with a trained model: the same decoding and resizing as training.

A model comes from the pipeline's ``models/model.h5`` (labels from ``data/prepared``), any
``.h5`` file (labels from a ``labels.json`` beside it), a train run's artifacts
(``runs:/<run id>``, holding ``model/model.h5`` and ``model/labels.json``) or an MLflow model
(``runs:/<run id>/keras_model``, ``models:/<name>/<version>``, whose metadata carries the labels).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.core.prepared import LABELS_FILE, read_labels
from imgclf.core.saved_model import load_model
from imgclf.data.images import IMAGE_SUFFIXES, BadImage, is_image_name, iter_files, load_array

log = logging.getLogger(__name__)


@dataclass
class Classifier:
    model: Any
    labels: list[str]
    image_size: int
    source: str

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        return np.asarray(self.model.predict(images, batch_size=batch_size, verbose=0), dtype=np.float64)


def collect(inputs: list[str]) -> list[Path]:
    """Files named on the command line, and the images under folders (nested, hidden skipped;
    files of other suffixes are counted in a warning). None at all is an error."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = list(iter_files(path))
            files += [f for f in found if is_image_name(f)]
            others = Counter(f.suffix.lower() or "(none)" for f in found if not is_image_name(f))
            if others:
                log.warning(
                    "%s: ignoring %d file(s) whose suffix is not a supported image format's: %s",
                    raw,
                    sum(others.values()),
                    ", ".join(f"{suffix} {n}" for suffix, n in others.most_common(5)),
                )
        elif path.exists():
            files.append(path)
        else:
            raise PipelineError(f"{raw}: no such file or folder")
    if not files:
        raise PipelineError(
            f"no images in {', '.join(inputs)}: the formats read are " + ", ".join(sorted(IMAGE_SUFFIXES))
        )
    return files


def _load_h5(model_path: Path, labels_path: Path, source: str) -> Classifier:
    if not labels_path.is_file():
        raise PipelineError(
            f"{labels_path}: class labels not found beside the model; put the "
            "pipeline's data/prepared/labels.json there"
        )
    return _checked(load_model(model_path), read_labels(labels_path), source)


def _checked(model, labels: list[str], source: str) -> Classifier:
    shape = model.input_shape
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3:
        raise PipelineError(f"{source}: expected a model taking square RGB images, got input {shape}")
    if model.output_shape[-1] != len(labels):
        raise PipelineError(f"{source}: the model has {model.output_shape[-1]} outputs but {len(labels)} labels")
    return Classifier(model=model, labels=labels, image_size=int(shape[1]), source=source)


def load_classifier(model: str | None = None) -> Classifier:
    """Load a model and its labels from a path or an MLflow URI (see the module docstring)."""
    if model is None:
        return _load_h5(paths.MODEL, paths.PREPARED_DIR / LABELS_FILE, str(paths.MODEL))
    if model.startswith(("runs:/", "models:/")):
        return _load_mlflow(model)
    path = Path(model)
    labels = path.with_name(LABELS_FILE)
    if not labels.is_file() and path.resolve() == paths.MODEL.resolve():
        labels = paths.PREPARED_DIR / LABELS_FILE
    return _load_h5(path, labels, model)


def _load_mlflow(uri: str) -> Classifier:
    import mlflow

    from imgclf import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    if uri.startswith("runs:/") and uri.rstrip("/").count("/") == 1:
        # A train run's plain artifacts: model/model.h5 and model/labels.json.
        from imgclf.tracking.models import fetch_model

        model_file, _ = fetch_model(uri, what="the model")
        return _load_h5(model_file, model_file.with_name(LABELS_FILE), uri)
    try:
        info = mlflow.models.get_model_info(uri)
        labels = (info.metadata or {}).get("labels")
        if not labels:
            raise PipelineError(f"{uri}: the MLflow model carries no 'labels' metadata")
        model = mlflow.keras.load_model(uri)
    except PipelineError:
        raise
    except Exception as err:  # MLflow raises many kinds for a bad URI
        raise PipelineError(f"{uri}: cannot load the model ({str(err).splitlines()[0]})") from None
    return _checked(model, list(labels), uri)


def classify(clf: Classifier, files: list[Path], top: int = 1, batch_size: int = 64):
    """Yield ``(path, [(label, probability), ...] or None, error or None)`` per file, in order."""
    top = max(1, min(top, len(clf.labels)))
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays, kept, errors = [], [], {}
        for path in chunk:
            try:
                arrays.append(load_array(path, clf.image_size))
                kept.append(path)
            except BadImage as err:
                errors[path] = str(err)
        probs = clf.probabilities(np.stack(arrays), batch_size) if arrays else np.empty((0, len(clf.labels)))
        rows = dict(zip(kept, probs))
        for path in chunk:
            if path in errors:
                yield path, None, errors[path]
                continue
            p = rows[path]
            best = np.argsort(-p, kind="stable")[:top]
            yield path, [(clf.labels[i], float(p[i])) for i in best], None
