"""Where runs are stored: the tracking URI, the local default store, the experiment.

The default store is a SQLite file at the main repository (``DVC_ROOT``), with artifacts beside
it, so ``dvc exp run --temp`` and queued experiments, which run in throw-away copies, keep their
runs. ``MLFLOW_TRACKING_URI`` points elsewhere (a team server) and nothing else changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.tracking import outage

# Fail fast on a dead tracking server instead of retrying for minutes (users may override).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
# No usage reports to MLflow's makers: the pipeline talks to its tracking store and nothing else,
# and the reporting thread would make the augment stage spawn its workers instead of forking them.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# No download bars from `stages.predict --model runs:/...` (they land in logs as a wall of \r).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def default_store() -> Path:
    return paths.store_root() / "mlflow.db"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite file at the (main) project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{default_store()}"


def shown_uri(uri: str | None = None) -> str:
    """The tracking URI (by default the one in use) fit to print: without a user or password
    written into it (``http://user:secret@host`` shows as ``http://host``)."""
    uri = uri or tracking_uri()
    parts = urllib.parse.urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    host = parts.hostname or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def is_server(uri: str | None = None) -> bool:
    """Whether the store at ``uri`` (by default the one in use) is a tracking server, reached
    over HTTP with its own permissions, rather than a database this process writes itself."""
    return urllib.parse.urlsplit(uri or tracking_uri()).scheme in ("http", "https", "databricks")


# Where `mlflow ui` serves by default, for a store this process writes itself (SQLite, a folder).
LOCAL_UI = "http://127.0.0.1:5000"


def ui_link(experiment_id: str, run_id: str, uri: str | None = None) -> str | None:
    """The address of a run's page in the MLflow UI, in its "Model training" view (the UI opens
    on its GenAI view, which shows no runs): on the tracking server itself, or where `mlflow ui`
    serves a store this process writes itself. None for Databricks, whose UI lives elsewhere."""
    uri = uri or tracking_uri()
    if uri.startswith("databricks"):
        return None
    base = shown_uri(uri).rstrip("/") if is_server(uri) else LOCAL_UI  # else SQLite, a database, a folder
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def _is_default_store(uri: str) -> bool:
    return uri == f"sqlite:///{default_store()}"


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creating the local store and experiment (parallel workers race on the schema),
    and moving the champion alias (two experiments finishing at once). A no-op for a server."""
    if not _is_default_store(uri):
        yield
        return
    with open(default_store().with_name(".mlflow.db.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def exclusive() -> contextlib.AbstractContextManager[None]:
    """Hold the local store's lock for a read-then-write (see :func:`_store_lock`)."""
    return _store_lock(tracking_uri())


def setup(experiment: str) -> str:
    """Point MLflow at the store and the experiment, creating them if needed; return its id.

    Any failure (no server, a bad URI, a broken store) raises :class:`PipelineError` naming the
    URI and what to do.
    """
    import mlflow

    uri = tracking_uri()
    outage.health.watch(uri)
    mlflow.set_tracking_uri(uri)
    try:
        with _store_lock(uri):
            client = outage.client()  # a server that is restarting is waited for
            exp = client.get_experiment_by_name(experiment)
            if exp is None:
                exp_id = client.create_experiment(experiment, artifact_location=_artifacts_beside(uri))
            else:
                exp_id = exp.experiment_id
        outage.patiently("opening the experiment", mlflow.set_experiment, experiment_id=exp_id)
    except PipelineError:
        raise
    except Exception as err:  # connection errors come in many types
        refused = _credentials(err)
        if refused:
            raise PipelineError(f"tracking server {shown_uri(uri)} {refused}") from None
        raise PipelineError(
            f"cannot use MLflow tracking store {shown_uri(uri)}: {outage.reason(err)} "
            "(fix MLFLOW_TRACKING_URI or start the server)"
        ) from None
    return exp_id


def _artifacts_beside(uri: str) -> str | None:
    """For a SQLite store, ``mlartifacts/`` beside its file; else None (the server decides).

    MLflow's own default for a SQLite store is ``./mlruns`` in the current folder, which for a
    ``dvc exp run --temp`` copy is deleted with it.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix) :]).resolve().parent / "mlartifacts").as_uri()


def _credentials(err: Exception) -> str | None:
    """What to do when the server refused who we are (HTTP 401 or 403), or None. The
    credentials themselves are never shown."""
    text = str(err)
    code = re.search(r"error code (40[13])\b", text)
    if not code:
        return None
    if code.group(1) == "403":
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        return (
            f"denies user {user!r} access to the experiment: ask the server's admin for a permission, "
            "or set MLFLOW_TRACKING_USERNAME to another account"
        )
    missing = [v for v in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD") if not os.environ.get(v)]
    stored = Path("~/.mlflow/credentials").expanduser()  # MLflow's own file, read when the variables are unset
    if missing and stored.exists():
        return f"refused the login in {stored}: correct it, or set MLFLOW_TRACKING_USERNAME and _PASSWORD"
    if missing:
        return f"needs a login: set {' and '.join(missing)} (an account on the server)"
    return (
        "refused the login in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD: set them to an account on the server"
    )
