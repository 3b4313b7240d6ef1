"""Logging a trained Keras model as an MLflow model, optionally registered."""

from __future__ import annotations

from imgclf.tracking import outage


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


CHAMPION = "champion"
# A registered version carries its evaluation's figures as tags under this prefix.
FIGURE_TAG = "imgclf."


def _champion_figure(client, champion, metric: str, experiment_id: str) -> float | None:
    """The champion's ``metric``: from its version's tags, else from the latest evaluate run of
    its model (a version evaluated before this rule existed)."""
    from imgclf.tracking import lineage
    from imgclf.tracking.runs import TAG_MODEL_MD5

    if FIGURE_TAG + metric in champion.tags:
        return float(champion.tags[FIGURE_TAG + metric])
    try:
        md5 = client.get_run(champion.run_id).data.tags.get(TAG_MODEL_MD5)
    except Exception:
        return None
    run = lineage.find_stage_run(experiment_id, "evaluate", TAG_MODEL_MD5, md5) if md5 else None
    return run.data.metrics.get(metric) if run else None


def _newest(versions):
    """The highest-numbered of registered model ``versions``."""
    return max(versions, key=lambda v: int(v.version))


# A registered version's classes, in its outputs' order (JSON), tagged when it is evaluated.
LABELS_TAG = "imgclf.labels"


def _kept_champion(client, champion, version: str, metric: str, value: float, labels, experiment_id) -> str | None:
    """Why ``champion`` stays the champion against ``version`` (its ``metric`` ``value``, its
    classes ``labels``), or None if the version replaces it."""
    import json

    if str(champion.version) == version:
        return f"version {version} is the champion already"
    if LABELS_TAG in champion.tags and json.loads(champion.tags[LABELS_TAG]) != labels:
        return (
            f"version {version} has other classes than champion version {champion.version} (or another order): "
            "register it under another mlflow.model_name, or move the alias by hand"
        )
    best = _champion_figure(client, champion, metric, experiment_id)
    if best is None:
        return (
            f"champion version {champion.version} has no recorded {metric}: move the alias by hand "
            f"(MlflowClient().set_registered_model_alias) if version {version} should replace it"
        )
    if value <= best:
        return f"version {version}: {metric} {value:.4f} does not beat champion version {champion.version}'s {best:.4f}"
    return None


def promote(
    name: str,
    metric: str,
    minimum: float,
    figures: dict[str, float],
    train_run_id: str | None,
    experiment_id: str,
    labels: list[str],
) -> tuple[bool, str]:
    """Move the alias ``champion`` of registered model ``name`` to the version that train run
    ``train_run_id`` registered, if its ``metric`` (in ``figures``, this evaluation's) reaches
    ``minimum`` and beats the current champion's; a tie keeps the champion. A champion with
    other classes (``labels``, in the model's output order) is never replaced: what follows the
    alias would start answering with other classes.

    The version gets every figure as a tag (``imgclf.test_accuracy``) and its classes, so the
    next comparison reads the champion's from the registry. Returns (promoted, why).
    """
    import json

    from mlflow.exceptions import MlflowException

    client = outage.client()
    if train_run_id is None:
        return False, "no train run in this tracking store made this model"
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{train_run_id}'")
    if not versions:
        return False, f"the model is not registered as {name} (it was trained with mlflow.register: false)"
    version = str(_newest(versions).version)
    for key, value in figures.items():
        client.set_model_version_tag(name, version, FIGURE_TAG + key, str(value))
    client.set_model_version_tag(name, version, LABELS_TAG, json.dumps(labels, ensure_ascii=False))
    value = figures[metric]
    if value < minimum:
        return False, f"version {version}: {metric} {value:.4f} is below evaluate.promote.min {minimum}"
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    refused = _kept_champion(client, champion, version, metric, value, labels, experiment_id) if champion else None
    if refused:
        return False, refused
    client.set_registered_model_alias(name, CHAMPION, version)
    before = f" (was version {champion.version})" if champion is not None else ""
    return True, f"version {version} is the champion{before}: {metric} {value:.4f}"


def fetch_model(uri: str, what: str = "train.init"):
    """A model of this project named by ``uri`` (``runs:/<train run id>``, or a registered
    version: ``models:/<name>@<alias>``, ``models:/<name>/<version>``) as local files: the
    train run's ``model/model.h5`` and its labels (None when the run has no ``labels.json``).
    For ``train.init`` (:mod:`imgclf.training.origin`) and predict; ``what`` starts its errors."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    import mlflow

    from imgclf.core.errors import PipelineError
    from imgclf.core.prepared import LABELS_FILE, read_labels
    from imgclf.tracking.store import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    client = outage.client()
    try:
        if uri.startswith("runs:/"):
            run_id = uri[len("runs:/") :].strip("/").split("/")[0]
        else:
            name, _, ref = uri[len("models:/") :].strip("/").replace("@", "/@", 1).partition("/")
            if ref.startswith("@"):
                version = client.get_model_version_by_alias(name, ref[1:])
            elif ref == "latest":
                versions = client.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise PipelineError(f"{what} {uri}: the registry has no version of {name}")
                version = _newest(versions)
            else:
                version = client.get_model_version(name, ref)
            run_id = version.run_id
        folder = Path(tempfile.mkdtemp(prefix="imgclf-model-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        download = mlflow.artifacts.download_artifacts
        outage.patiently(f"fetching {what}", download, run_id=run_id, artifact_path="model", dst_path=folder)
    except Exception as err:  # MLflow raises many kinds for a bad URI or a missing artifact
        if isinstance(err, PipelineError):
            raise
        raise PipelineError(f"{what} {uri}: cannot fetch the model ({outage.reason(err)})") from None
    model, labels = folder / "model" / "model.h5", folder / "model" / LABELS_FILE
    if not model.is_file():
        raise PipelineError(f"{what} {uri}: run {run_id} holds no model/model.h5 (not a train run of this project)")
    return model, read_labels(labels) if labels.is_file() else None
