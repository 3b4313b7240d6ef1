"""What a stage made, in a form the recorder logs: plain data, nothing about MLflow."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """One stage's outcome.

    - ``metrics``: figures to compare across runs (the final ones; per-epoch figures are logged
      as they come);
    - ``fingerprints``: MD5s of what the stage read and made, by kind (``data``, ``model``): how
      the pipeline run finds the runs that made its inputs;
    - ``artifacts``: files to keep with the run, each with the folder it goes to (or None);
    - ``model`` and ``labels``: a trained Keras model to log as an MLflow model;
    - ``facts``: counts and sizes that describe the run without being compared as metrics
      (logged as params);
    - ``summary``: one line for the log.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)
    model: Any = None
    labels: list[str] = field(default_factory=list)
    summary: str = ""


@dataclass(frozen=True)
class DataInput:
    """A dataset a stage reads, as MLflow lists it among a run's inputs (the Dataset column).

    - ``name``: what the UI shows, e.g. ``demo`` (the source folder) or ``demo/train`` (a split
      of the prepared arrays made from it);
    - ``context``: ``source``, ``train``, ``val`` or ``test``;
    - ``digest``: the MD5 that identifies the data (DVC's for a folder of images, the prepared
      fingerprint for a split);
    - ``location``: where it lives: the DVC remote when one is set, else the local folder;
    - ``profile``: images per class and the like, shown with the dataset.
    """

    name: str
    context: str
    digest: str
    location: str
    profile: dict[str, Any] = field(default_factory=dict)
