"""All MLflow plumbing; stages use :func:`recorder` and nothing else.

- :mod:`~imgclf.tracking.store`: where runs are stored (URI, local default, experiment);
- :mod:`~imgclf.tracking.runs`: a run's life cycle and the tags every run carries;
- :mod:`~imgclf.tracking.lineage`: the pipeline run and the links to the stage runs under it;
- :mod:`~imgclf.tracking.models`: the MLflow Keras model;
- :mod:`~imgclf.tracking.recorder`: a stage's run, from its params to its result.

Nothing here imports MLflow until it is used.
"""

from imgclf.tracking.lineage import PIPELINE
from imgclf.tracking.recorder import Recorder, recorder
from imgclf.tracking.runs import (
    TAG_DATA_MD5,
    TAG_GIT_COMMIT,
    TAG_LINKED_FROM,
    TAG_MODEL_MD5,
    TAG_PARENT,
    TAG_STAGE,
    metric_key,
)
from imgclf.tracking.store import setup, tracking_uri

__all__ = [
    "PIPELINE",
    "TAG_DATA_MD5",
    "TAG_GIT_COMMIT",
    "TAG_LINKED_FROM",
    "TAG_MODEL_MD5",
    "TAG_PARENT",
    "TAG_STAGE",
    "Recorder",
    "metric_key",
    "recorder",
    "setup",
    "tracking_uri",
]
