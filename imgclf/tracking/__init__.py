"""All MLflow plumbing; stages use :func:`recorder`, and the closing stage :func:`close_result`
and :func:`promote_champion`, and nothing else.

- :mod:`~imgclf.tracking.store`: where runs are stored (URI, local default, experiment);
- :mod:`~imgclf.tracking.runs`: a run's life cycle and the tags every run carries;
- :mod:`~imgclf.tracking.lineage`: the pipeline run, the stage runs under it, the row of runs
  without a result;
- :mod:`~imgclf.tracking.models`: the MLflow Keras model;
- :mod:`~imgclf.tracking.recorder`: a stage's run, from its params to its result, and the calls
  that close a result;
- :mod:`~imgclf.tracking.result`, :mod:`~imgclf.tracking.inputs`: what a stage made and read, as
  plain data;
- :mod:`~imgclf.tracking.datasets`, :mod:`~imgclf.tracking.system`, :mod:`~imgclf.tracking.study`:
  dataset inputs, machine figures, tune's study and trial runs.

Nothing here imports MLflow until it is used.
"""

from imgclf.tracking.lineage import PIPELINE
from imgclf.tracking.recorder import Recorder, close_result, promote_champion, recorder
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
    "close_result",
    "promote_champion",
    "metric_key",
    "recorder",
    "setup",
    "tracking_uri",
]
