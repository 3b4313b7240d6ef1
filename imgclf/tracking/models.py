"""Logging a trained Keras model as an MLflow model, optionally registered."""

from __future__ import annotations


def log_keras_model(model, labels: list[str], registered_name: str | None = None) -> str:
    """Log ``model`` to the active run as an MLflow Keras model (artifact ``keras_model``).

    The signature takes raw uint8 RGB images and returns one probability per label; the labels
    ride along as metadata. With ``registered_name`` the model is also registered, one version
    per call. Returns the model URI. Pip requirements are given, not inferred: inference would
    load the model again in a subprocess.
    """
    from importlib.metadata import version

    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    size = model.input_shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(labels)), "probabilities")]),
    )
    info = mlflow.keras.log_model(
        model,
        name="keras_model",
        signature=signature,
        metadata={"labels": labels},
        pip_requirements=[f"tensorflow=={version('tensorflow')}", f"keras=={version('keras')}"],
        registered_model_name=registered_name,
    )
    return info.model_uri
