"""A stage's data as MLflow dataset inputs: what fills the UI's Dataset column and filter.

MLflow's own dataset classes hash a sample of the data for their digest; ours carries the digest
the pipeline already has (DVC's MD5, the prepared fingerprint; :mod:`imgclf.tracking.inputs`), shortened
as MLflow shows digests, with the whole MD5 in the profile.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from imgclf.tracking import outage
from imgclf.tracking.result import DataInput

CONTEXT_TAG = "mlflow.data.context"
DIGEST_CHARS = 10  # MLflow recommends short digests; the profile keeps the whole MD5


def _source(location: str):
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    try:
        with warnings.catch_warnings():  # MLflow registers its local source class twice and says so
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(location)
    except Exception:  # a remote MLflow has no source class for (ssh://, azure://, ...)
        return HTTPDatasetSource(location)


def entity(data: DataInput):
    """The MLflow dataset entity for ``data``."""
    from mlflow.entities import Dataset

    source = _source(data.location)
    return Dataset(
        name=data.name,
        digest=data.digest[:DIGEST_CHARS],
        source_type=source._get_source_type(),
        source=source.to_json(),
        schema=None,
        profile=json.dumps(data.profile, sort_keys=True),
    )


def dataset_inputs(inputs: list[DataInput]) -> list[Any]:
    """``inputs`` as MLflow ``DatasetInput`` entities, each tagged with its context."""
    from mlflow.entities import DatasetInput, InputTag

    return [DatasetInput(entity(d), [InputTag(CONTEXT_TAG, d.context)]) for d in inputs]


def log(run_id: str, inputs: list[DataInput]) -> None:
    """Record ``inputs`` as the datasets run ``run_id`` reads."""

    if inputs:
        outage.client().log_inputs(run_id, datasets=dataset_inputs(inputs))


def copy(run_id: str, runs: list[Any]) -> None:
    """Give run ``run_id`` every dataset input of ``runs`` (the pipeline run: its stages' data)."""

    seen, entities = set(), []
    for run in runs:
        for item in run.inputs.dataset_inputs if run.inputs else []:
            key = (item.dataset.name, item.dataset.digest)
            if key not in seen:
                seen.add(key)
                entities.append(item)
    if entities:
        outage.client().log_inputs(run_id, datasets=entities)
