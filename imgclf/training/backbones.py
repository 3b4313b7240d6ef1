"""The pretrained backbones of ``train.model``: a ``keras.applications`` network under a new head,
and the phases of fine-tuning it.

The model takes raw uint8 images like the CNN: each backbone's own preprocessing is inside it
(Keras's, where the application has it; a rescaling layer for ResNet50V2), so the saved ``.h5``,
the MLflow model and ``stages.predict`` need nothing else. The head is global average pooling,
dropout (``train.dropout_dense``) and a softmax layer named ``probabilities``, as the CNN's last.

A backbone that starts from trained weights runs in inference mode (its BatchNormalization layers
keep their statistics) and is fine-tuned in two phases (:func:`phases`): first frozen while the
head learns, then with its top ``train.fine_tune.unfreeze`` layers learning too, at the rate
times ``lr_factor``; its BatchNormalization layers stay frozen throughout. From random weights it
trains whole, in training mode, in one phase.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from imgclf.core.errors import PipelineError
from imgclf.core.params import TrainParams

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    builder: str  # the keras.applications function
    weights_file: str  # its no-top ImageNet weights, as Keras names them in its cache
    scale: tuple[float, float] | None  # (scale, offset) to the input range it expects; None: Keras's is inside


BACKBONES = {
    "mobilenet_v3_small": Backbone("MobileNetV3Small", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", None),
    "mobilenet_v3_large": Backbone("MobileNetV3Large", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", None),
    "efficientnet_v2_b0": Backbone("EfficientNetV2B0", "efficientnetv2-b0_notop.h5", None),
    "resnet50_v2": Backbone("ResNet50V2", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", (1 / 127.5, -1.0)),
}
# A backbone trained from random weights: its BatchNormalization layers' moving statistics follow
# the batches at this momentum. Keras's applications use 0.999 (MobileNetV3, EfficientNetV2) or
# 0.99, made for ImageNet's millions of steps: after the few hundred steps of a small folder the
# statistics are still near their start, and the model, evaluated in inference mode, guesses.
SCRATCH_BN_MOMENTUM = 0.9


def backbone_of(model):
    """The backbone inside a model :func:`build_backbone_model` built (the one nested model)."""
    import keras

    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def keras_cache() -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models`` (default ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def imagenet_file(model: str) -> Path:
    """The file Keras downloads the ImageNet weights of backbone ``model`` to."""
    return keras_cache() / BACKBONES[model].weights_file


def build_backbone_model(image_size: int, n_classes: int, p: TrainParams, weights: str | None, pretrained: bool):
    """The backbone ``p.model`` under a new head, uncompiled. ``weights``: a weights file, or
    ``"imagenet"`` (Keras's cache, or its download), or None (random); ``pretrained``: it starts
    from trained weights (these, or a model's copied in later), so it runs in inference mode."""
    import keras
    from keras import layers

    spec = BACKBONES[p.model]
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    scale, offset = spec.scale or (1.0, 0.0)  # 1.0: only a cast to float, Keras's preprocessing follows
    x = layers.Rescaling(scale, offset, name="preprocess")(inputs)
    own = {} if spec.scale else {"include_preprocessing": True}
    builder = getattr(keras.applications, spec.builder)
    shape = (image_size, image_size, 3)
    try:
        base = builder(include_top=False, weights=weights, input_shape=shape, **own)
    except Exception as err:  # Keras raises plain Exceptions for a failed download or a bad file
        raise PipelineError(_weights_error(p.model, weights, err)) from None
    if pretrained:
        x = base(x, training=False)  # BatchNormalization keeps the trained statistics
    else:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
        x = base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(p.dropout_dense, name="head_dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=p.model)


def _weights_error(model: str, weights: str | None, err: Exception) -> str:
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    reason = re.sub(r"URL fetch failure on \S+ ?(None )?(-- )?", "", reason)
    if weights is None:
        return f"cannot build train.model {model} ({reason[:300]})"
    if weights != "imagenet":
        return f"train.init {weights}: not weights for train.model {model} ({reason[:300]})"
    url = re.search(r"https?://\S+?\.h5", str(err))
    where = f" from {url.group(0)}" if url else ""
    return (
        f"train.init imagenet: Keras could not get {BACKBONES[model].weights_file}{where} ({reason[:200]}); "
        f"with no network, copy that file into {keras_cache()} (Keras's cache: $KERAS_HOME/models, "
        "default ~/.keras/models) and run again, or set train.init to a weights file"
    )


# -- the phases of fine-tuning ---------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """Epochs ``first``..``last`` (from 1): whether the backbone is frozen, and the rate factor."""

    first: int
    last: int
    frozen: bool
    rate: float = 1.0


def phases(p: TrainParams, pretrained: bool) -> list[Phase]:
    """The training's phases: one, everything learning, unless a backbone starts from trained
    weights; then the frozen epochs, then the rest with the top layers unfrozen."""
    if p.model == "cnn" or not pretrained:
        return [Phase(1, p.epochs, frozen=False)]
    if p.fine_tune.unfreeze == 0:
        return [Phase(1, p.epochs, frozen=True)]
    frozen = min(p.fine_tune.frozen_epochs, p.epochs)
    out = [Phase(1, frozen, frozen=True)] if frozen else []
    if frozen < p.epochs:
        out.append(Phase(frozen + 1, p.epochs, frozen=False, rate=p.fine_tune.lr_factor))
    return out


def phase_at(plan: list[Phase], epoch: int) -> Phase:
    """The phase epoch ``epoch`` belongs to."""
    return next(ph for ph in plan if ph.first <= epoch <= ph.last)


def set_trainable(model, p: TrainParams, phase: Phase, pretrained: bool) -> bool:
    """Freeze and unfreeze ``model``'s layers for ``phase``; return whether anything changed.

    Only a pretrained backbone is ever frozen: unfrozen means its top ``unfreeze`` layers less
    its BatchNormalization layers."""
    from keras import layers

    if p.model == "cnn" or not pretrained:
        return False
    base = backbone_of(model)
    before = [w.trainable for w in model.weights]
    base.trainable = True
    inner = base.layers
    top = len(inner) if p.fine_tune.unfreeze == "all" else min(int(p.fine_tune.unfreeze), len(inner))
    for i, layer in enumerate(inner):
        open_ = not phase.frozen and i >= len(inner) - top
        layer.trainable = open_ and not isinstance(layer, layers.BatchNormalization)
    return before != [w.trainable for w in model.weights]


class FineTuning:
    """The phases of one training (:func:`phases`), applied to its model as epochs go."""

    def __init__(self, p: TrainParams, pretrained: bool):
        self.p, self.pretrained = p, pretrained
        self.plan = phases(p, pretrained)

    def at(self, epoch: int) -> Phase:
        return phase_at(self.plan, epoch)

    def rate(self, epoch: int) -> float:
        """The factor on the learning rate in ``epoch``."""
        return self.at(epoch).rate

    def widen(self, model) -> None:
        """Set the most layers learning that any phase has: the optimizer is built for those
        variables, so one checkpoint layout serves every phase."""
        phase = next((ph for ph in self.plan if not ph.frozen), self.plan[-1])
        set_trainable(model, self.p, phase, self.pretrained)

    def enter(self, model, epoch: int, recompile: bool = True, starting: bool = True) -> bool:
        """Set ``model``'s layers for ``epoch``'s phase; recompile a changed model (Keras fixes the
        variables a step updates when it compiles). ``starting``: ``epoch`` starts now, not
        resumed mid-way; the first epoch of a later phase then gets a new optimizer's state (as
        Keras's own fine-tuning recipe compiles a new optimizer). Returns whether anything changed."""
        from imgclf.training.model import compile_model, restart_optimizer

        phase = self.at(epoch)
        if starting and epoch == phase.first > 1:
            restart_optimizer(model.optimizer)
        changed = set_trainable(model, self.p, phase, self.pretrained)
        if changed:
            learning = sum(math.prod(w.shape) for w in model.trainable_weights)
            top = self.p.fine_tune.unfreeze
            what = "only the head learns" if phase.frozen else f"the head and the backbone's top {top} layers learn"
            log.info("epochs %d-%d: %s (%d weights), rate x%g", phase.first, phase.last, what, learning, phase.rate)
            if recompile:
                with model.distribute_strategy.scope():  # its metrics' variables, mirrored if need be
                    compile_model(model, model.optimizer)
        return changed
