"""The model ``train.model`` names: the CNN, or a backbone (:mod:`imgclf.training.backbones`).

The default architecture is the original script's: per block a 'same' conv, a 'valid' conv, 2x2 max-pool
and dropout (blocks of 32 and 64 filters), then Dense 512, dropout and softmax. Pixels are scaled
inside the model, so arrays stay uint8 on disk and the saved model takes raw 0..255 images.
"""

from __future__ import annotations

from imgclf.core import internals
from imgclf.core.params import TrainParams
from imgclf.training.origin import Origin


def build_model(image_size: int, n_classes: int, p: TrainParams, origin: Origin | None = None):
    """Build and compile ``p.model`` for ``image_size`` x ``image_size`` RGB uint8 input, with the
    starting weights of ``origin`` (:mod:`imgclf.training.origin`; None: random)."""
    if p.model == "cnn":
        model = build_cnn(image_size, n_classes, p)
    else:
        from imgclf.training.backbones import build_backbone_model

        weights = None
        if origin is not None and origin.kind in ("imagenet", "weights"):
            weights = str(origin.file) if origin.file else "imagenet"
        model = build_backbone_model(image_size, n_classes, p, weights, pretrained=bool(origin and origin.pretrained))
    compile_model(model, make_optimizer(p.optimizer, p.learning_rate))
    return model


def compile_model(model, optimizer) -> None:
    """Compile ``model`` with ``optimizer`` (again between fine-tuning phases: Keras fixes the
    variables a training step updates when it compiles)."""
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])


def build_cnn(image_size: int, n_classes: int, p: TrainParams):
    """The original script's CNN, uncompiled."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255, name="scale")(inputs)
    k = p.kernel_size
    for b, filters in enumerate(p.conv_filters, start=1):
        x = layers.Conv2D(filters, k, padding="same", activation="relu", name=f"block{b}_conv1")(x)
        x = layers.Conv2D(filters, k, activation="relu", name=f"block{b}_conv2")(x)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        x = layers.Dropout(p.dropout_conv, name=f"block{b}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(p.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(p.dropout_dense, name="dense_dropout")(x)
    # float32 probabilities (and loss) whatever the compute precision.
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


def make_optimizer(name: str, learning_rate: float):
    """Keras's optimizer ``name``; Adam and AdamW make each update in one fused kernel."""
    import keras

    classes = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": keras.optimizers.SGD,
        "rmsprop": keras.optimizers.RMSprop,
    }
    optimizer = classes[name](learning_rate=learning_rate)
    if name in ("adam", "adamw") and keras.backend.backend() == "tensorflow":
        fuse_adam(optimizer)
    return optimizer


def restart_optimizer(optimizer) -> None:
    """Set ``optimizer``'s state (its step count and every slot: moments, velocities) back to a
    new one's, keeping its rate; a loss-scaling wrapper keeps its scale. Adam corrects its first
    steps' moments by the step count: left at the first phase's count, the layers that start
    learning in the second took steps of several times the rate until their moments filled
    (docs/backbones.md)."""
    import keras

    inner = getattr(optimizer, "inner_optimizer", optimizer)  # mixed_float16's LossScaleOptimizer
    for variable in inner.variables:
        if variable is not inner.learning_rate:
            variable.assign(keras.ops.zeros_like(variable))


def fuse_adam(optimizer) -> None:
    """Make ``optimizer`` (a Keras Adam or AdamW) update each variable with TensorFlow's fused
    ``ResourceApplyAdam`` kernel.

    Keras's Adam updates a variable with about a dozen separate element-wise ops, each a pass
    over memory; on a CPU, for the original script's 6-17 million-weight dense layer, that took as long as
    all the convolutions together (see the README's speed section). The fused kernel computes
    the same formula in one pass. Only the method changes: the optimizer's class, config,
    variables and checkpoints stay Keras's own, so saved models load without this code. AdamW's
    weight decay is applied by Keras before the update, as before; AMSGrad and sparse gradients
    keep Keras's own update, and so does a Keras version other than the one the fused update
    was written for (:mod:`imgclf.core.internals`).
    """
    import types

    import keras
    import tensorflow as tf

    if not internals.matches("keras"):
        return
    keras_update = optimizer.update_step

    def handle(variable):
        return (variable.value if isinstance(variable, keras.Variable) else variable).handle

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return keras_update(gradient, variable, learning_rate)
        dtype = variable.dtype
        momentum, velocity = internals.adam_slots(self, variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=handle(variable),
            m=handle(momentum),
            v=handle(velocity),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )

    optimizer.update_step = types.MethodType(update_step, optimizer)
