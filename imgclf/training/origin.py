"""Where a training's starting weights come from: ``train.init``.

- ``none``: random weights, as the original script;
- ``imagenet``: a backbone's ImageNet weights, from Keras's cache or Keras's own download
  (:mod:`imgclf.training.backbones`);
- a weights file for the backbone (e.g. Keras's no-top ``.h5`` copied by hand);
- a model of this project: a ``.h5`` file (its classes in a ``labels.json`` beside it), or a
  train run (``runs:/<id>``) or a registered version (``models:/<name>@<alias>``, ``models:/<name>/<n>``),
  which the stage fetches (:func:`imgclf.tracking.models.fetch_model`) before training.

A model's weights are copied layer by layer into the model ``train.model`` describes, so both
must be the same architecture; its classes must be this data's (in any order: the softmax
columns follow the labels), unless ``train.init_head: new`` takes only its features.
The origin is logged as ``init.*`` params and is part of the checkpoint's key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.core.fileio import md5_file
from imgclf.core.params import TrainParams
from imgclf.core.prepared import LABELS_FILE, read_labels

log = logging.getLogger(__name__)

# A URI's model as local files: (the .h5, its labels or None).
Fetch = Callable[[str], tuple[Path, list[str] | None]]
URI_SCHEMES = ("runs:/", "models:/")


@dataclass(frozen=True)
class Origin:
    """The resolved ``train.init``."""

    kind: str  # none | imagenet | weights | model
    source: str  # train.init as written
    file: Path | None = None  # the local file (imagenet: only once in Keras's cache)
    md5: str | None = None
    labels: list[str] | None = None  # a model's classes

    @property
    def pretrained(self) -> bool:
        return self.kind != "none"

    def params(self) -> dict[str, Any]:
        """What the training's run logs of it."""
        out: dict[str, Any] = {"init.kind": self.kind}
        if self.source.startswith(URI_SCHEMES):
            out["init.uri"] = self.source
        if self.file is not None:
            out["init.file"] = self.file.name
        if self.md5:
            out["init.md5"] = self.md5
        return out

    def key(self) -> dict[str, Any]:
        """What a checkpoint must match: the kind, the source and the file's bytes. ImageNet's
        file is named by Keras, which checks its hash as it downloads it during the first run:
        keyed by its MD5, the checkpoint of that run (no file yet) would not match its resume."""
        if self.kind == "imagenet":
            return {"kind": self.kind, "source": self.source}
        return {"kind": self.kind, "source": self.source, "md5": self.md5}


def resolve(p: TrainParams, fetch: Fetch | None = None) -> Origin:
    """``p.init`` made concrete: which file, with which MD5 (a URI through ``fetch``)."""
    init = p.init
    if init == "none":
        return Origin("none", init)
    if init == "imagenet":
        from imgclf.training.backbones import imagenet_file

        cached = imagenet_file(p.model)
        return Origin("imagenet", init, cached, md5_file(cached)) if cached.is_file() else Origin("imagenet", init)
    if init.startswith(URI_SCHEMES):
        if fetch is None:
            raise PipelineError(f"train.init {init}: a model URI is fetched by the train stage; run it there")
        file, labels = fetch(init)
        return Origin("model", init, file, md5_file(file), labels)
    file = _local(init)
    if _is_model_file(file):
        labels_file = file.with_name(LABELS_FILE)
        labels = read_labels(labels_file) if labels_file.is_file() else None
        return Origin("model", init, file, md5_file(file), labels)
    if p.model == "cnn":
        raise PipelineError(f"train.init {init}: not a saved model (a weights file is for a backbone train.model)")
    return Origin("weights", init, file, md5_file(file))


def _local(init: str) -> Path:
    """A path from params: absolute, or under the project (or, for an experiment run in a copy,
    under the main repository, where files git does not track stay)."""
    candidates = [paths.resolve(init), paths.store_root() / init]
    for path in candidates:
        if path.is_file():
            return path
    hint = ""
    if candidates[0].resolve() == paths.MODEL.resolve():
        hint = (
            ": DVC removes the train stage's outputs before it runs; copy the model (and labels.json) "
            "elsewhere, or use runs:/<run id> or models:/<name>@champion"
        )
    raise PipelineError(f"train.init {init}: no such file{hint or ' (none, imagenet, a file, runs:/ or models:/)'}")


def _is_model_file(path: Path) -> bool:
    """Whether ``path`` is a saved model of this project (its last layer ``probabilities``), else
    weights for a backbone: Keras's weights files, or a whole ``keras.applications`` model."""
    import h5py

    if not h5py.is_hdf5(path):
        return path.suffix == ".keras"
    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    return config is not None and '"name": "probabilities"' in str(config)


def copy_from(model, origin: Origin, labels: list[str], head: str) -> None:
    """Copy the weights of ``origin``'s model into ``model``, layer by layer (the softmax layer's
    columns in the order of ``labels``; with ``head`` new, the softmax layer is left as built)."""
    import numpy as np

    from imgclf.core.saved_model import load_model

    source = load_model(origin.file)
    name = origin.source
    if source.name != model.name:
        raise PipelineError(
            f"train.init {name} is a {source.name} model but train.model is {model.name}: "
            f"set train.model: {source.name}"
        )
    order = _head_order(origin, labels) if head == "keep" else None
    for layer in model.layers:
        if not layer.weights or (layer.name == "probabilities" and order is None):
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise PipelineError(f"train.init {name} has no layer {layer.name}: not a model of this project") from None
        if layer.name == "probabilities":
            weights = [np.take(w, order, axis=-1) for w in weights]
        for mine, theirs in zip(layer.get_weights(), weights, strict=True):
            if mine.shape != theirs.shape:
                raise PipelineError(
                    f"train.init {name}: layer {layer.name} holds {theirs.shape} there but {mine.shape} here; "
                    "data.image_size and the model's params must be those it was trained with"
                )
        layer.set_weights(weights)
    log.info("starting from %s (%s)", name, "its head too" if order is not None else "a new head")


def _head_order(origin: Origin, labels: list[str]) -> list[int]:
    """For each of ``labels``, its column in the init model's softmax; an error naming the
    classes that differ."""
    if origin.labels is None:
        raise PipelineError(
            f"train.init {origin.source}: its classes are unknown (no {LABELS_FILE} beside it): put the "
            f"model's {LABELS_FILE} there, or set train.init_head: new to learn a new head"
        )
    missing = [c for c in labels if c not in origin.labels]
    extra = [c for c in origin.labels if c not in labels]
    if missing or extra:
        raise PipelineError(
            f"train.init {origin.source} was trained on other classes: here but not there {missing}, "
            f"there but not here {extra}; set train.init_head: new to keep its features and learn a new head"
        )
    return [origin.labels.index(c) for c in labels]
