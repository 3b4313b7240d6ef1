"""The saved model file (``models/model.h5``): written by train, read by evaluate and predict."""

from __future__ import annotations

from pathlib import Path

from imgclf.core.errors import PipelineError


def load_model(path: Path):
    """Load a saved ``.h5`` model for inference (not compiled; no code from the file is run)."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: model not found; train one first (dvc repro)")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True, custom_objects=_legacy_h5_ops())
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: not a Keras model file ({str(err).splitlines()[0]})") from None


def _legacy_h5_ops() -> dict:
    """``custom_objects`` that let Keras 3 read back the ``.h5`` of a model holding arithmetic on
    a constant, such as MobileNetV3's ``ReLU(6)(x + 3.0) * (1 / 6)``.

    The ``.h5`` config names such a node ``Add`` or ``Multiply`` with only a name in its config;
    Keras's ``.h5`` reader takes that for the merge layer of the same name, which refuses the
    constant (``Only input tensors may be passed as positional arguments``). A real merge layer's
    config holds ``trainable`` and ``dtype``: that tells the two apart."""
    import keras
    from keras import layers

    class Arithmetic(keras.Operation):
        def __init__(self, fn, name: str):
            super().__init__(name=name)
            self.fn = fn

        def call(self, a, b):
            return self.fn(a, b)

        def compute_output_spec(self, a, b):  # noqa: ARG002
            return keras.KerasTensor(a.shape, a.dtype)

    def either(layer, fn):
        class LayerOrOperation:
            @classmethod
            def from_config(cls, config: dict):
                if "trainable" in config or "dtype" in config:
                    return layer.from_config(config)
                return Arithmetic(fn, config["name"])

        return LayerOrOperation

    return {"Add": either(layers.Add, keras.ops.add), "Multiply": either(layers.Multiply, keras.ops.multiply)}
