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
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: not a Keras model file ({str(err).splitlines()[0]})") from None
