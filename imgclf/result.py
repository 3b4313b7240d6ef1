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
    - ``summary``: one line for the log.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)
    model: Any = None
    labels: list[str] = field(default_factory=list)
    summary: str = ""
