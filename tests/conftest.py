"""Fixtures only; the helpers they use live in ``tests/helpers.py``."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Project, make_class_folders, make_project

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def _own_mlflow_tracking_uri() -> Iterator[None]:
    """MLflow's ``set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI`` in this process's
    environment; undo it after each test so no test inherits another's store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    return make_class_folders(tmp_path / "images")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite MLflow store for one test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A git + DVC copy of the project on tiny images, after its first `dvc repro`."""
    p = make_project(tmp_path_factory.mktemp("project"), {"mlflow": {"register": True}})
    p.first = p.sh("dvc", "repro")
    return p
