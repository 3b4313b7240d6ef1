"""Fixtures only; the helpers they use live in ``tests/helpers.py``."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import imgclf  # noqa: F401  (first: it quiets TensorFlow before any test imports it)
from imgclf.console.cli import pause_collector, resume_collector

from .helpers import QUEUED, Project, copy_project, make_class_folders, make_project, order_for_workers


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


@pytest.fixture(scope="session")
def new_store(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], str]:
    """``new_store(path)`` puts a new SQLite MLflow store at ``path`` and returns its URI. Each is a
    copy of one made once per process: making the tables runs all of MLflow's migrations, seconds
    of CPU for each store. That one has no experiment, so MLflow makes each copy's Default
    experiment when it opens it, with its artifacts beside the copy."""
    import sqlite3

    import mlflow

    made = tmp_path_factory.mktemp("migrated") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()
    with contextlib.closing(sqlite3.connect(made)) as con, con:
        con.execute("DELETE FROM experiments")

    def copy(path: Path) -> str:
        shutil.copyfile(made, path)
        return f"sqlite:///{path}"

    return copy


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_store: Callable[[Path], str]) -> str:
    """A new SQLite MLflow store for one test (:func:`new_store`)."""
    import mlflow

    uri = new_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):
    """Collection imports TensorFlow, MLflow and Keras in each process that runs tests: without
    the garbage collector, as a stage starts (``pause_collector``)."""
    pause_collector()
    try:
        return (yield)
    finally:
        resume_collector()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, spread the heavy tests over the workers (``order_for_workers``)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        items[:] = order_for_workers(items, workers)


def _shared_base(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The folder all of pytest-xdist's workers share (each has its own base under it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if worker_id != "master" else base


def _shared_build(base: Path, name: str, build, wait: bool = True) -> Path | None:
    """``base/name``, built by ``build(root)`` unless built: under a lock, so that one process of
    the test run builds it while the others wait. With ``wait=False`` return None at once when
    another holds the lock."""
    import fcntl

    with open(base / f"{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return None
        root, done = base / name, base / f"{name}.built"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed halfway
            build(root)
            done.touch()
        return root


def _build_template(base: Path, wait: bool = True, base_env: dict | None = None) -> Project | None:
    """The template in ``base`` (:func:`_shared_build`): a tiny project after its first
    `dvc repro`. ``base_env``: the environment to build in (this process's by default)."""

    def build(root: Path) -> None:
        make_project(root, {"mlflow": {"register": True}}, base_env=base_env).sh("dvc", "repro")

    root = _shared_build(base, "template", build, wait)
    return None if root is None else Project(root)


@pytest.fixture(scope="session", autouse=True)
def _template_ahead(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, worker_id: str):
    """Start building the template in a thread as the session starts, when any selected test
    needs it: the first `dvc repro` then runs beside the quick tests instead of holding up the
    first test that needs it. One process builds it (the others find the lock taken)."""
    import threading

    if any("built_template" in getattr(item, "fixturenames", ()) for item in request.session.items):
        base = _shared_base(tmp_path_factory, worker_id)
        # The environment as the session starts: tests that run meanwhile may set variables.
        args = (base, False, dict(os.environ))
        threading.Thread(target=_build_template, args=args, name="template-ahead").start()


@pytest.fixture(scope="session")
def built_template(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Project:
    """The tiny git + DVC project after its first `dvc repro` (model registered in MLflow), built
    once per test run and shared by pytest-xdist's workers (started ahead by ``_template_ahead``;
    a process that needs it before it is done waits). Tests use it through ``template``
    (read-only) or ``project`` (a copy)."""
    return _build_template(_shared_base(tmp_path_factory, worker_id))


@pytest.fixture(scope="session")
def queued_experiments(built_template: Project, tmp_path_factory, worker_id: str) -> Project:
    """A copy of the template whose first results are committed, then two experiments queued
    with other learning rates (``QUEUED``) and run by `dvc queue start -j 2`, built once per test
    run (:func:`_shared_build`) for the tests that read them (mark them
    ``xdist_group("queued")``). READ-ONLY."""

    from mlflow.exceptions import MlflowException

    def build(root: Path) -> None:
        p = copy_project(built_template, root)
        p.commit()
        for name, lr in QUEUED.items():
            p.sh("dvc", "exp", "run", "--queue", "-S", f"train.learning_rate={lr}", "-n", name)
        p.sh("dvc", "queue", "start", "-j", "2")
        # Until DVC's queue is done: asked every 30 s while the store shows a result missing (each
        # `dvc queue status` costs a second of CPU, which the experiments need), then every 2 s.
        deadline = time.monotonic() + 480  # then the tests find them unfinished in `dvc queue status`
        asked = 0.0
        while time.monotonic() < deadline:
            try:
                runs = p.runs()
            except MlflowException:  # a store busy being written: `dvc queue status` decides meanwhile
                runs = []
            results = {r.info.run_name for r in runs if r.info.run_name in QUEUED and r.info.status == "FINISHED"}
            if len(results) == len(QUEUED) or time.monotonic() - asked > 30:
                status, asked = p.sh("dvc", "queue", "status").stdout, time.monotonic()
                if "Queued" not in status and "Running" not in status:
                    break
            time.sleep(2)

    root = _shared_build(_shared_base(tmp_path_factory, worker_id), "queued", build)
    p = Project(root)
    p.env = dict(built_template.env)
    return p


def _tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file under ``root`` (bytecode caches aside)."""
    return {
        str(path.relative_to(root)): (st.st_size, st.st_mtime_ns)
        for path in root.rglob("*")
        if "__pycache__" not in path.parts
        for st in [path.lstat()]
        if not path.is_dir()
    }


@contextlib.contextmanager
def _left_alone(template: Project, hint: str) -> Iterator[None]:
    """Fail if a file of the template changed during the block."""
    before = _tree_state(template.root)
    yield
    after = _tree_state(template.root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the read-only template changed ({hint}): {changed[:20]}"


@pytest.fixture
def template(built_template: Project) -> Iterator[Project]:
    """The shared project after its first `dvc repro`, READ-ONLY: for tests that only read its
    results. Fails the test that changed a file in it (that test must take ``project``)."""
    with _left_alone(built_template, "use the `project` fixture"):
        yield built_template


@pytest.fixture
def project(built_template: Project, tmp_path: Path) -> Iterator[Project]:
    """This test's own copy of the project after its first `dvc repro`: change it at will. Fails
    the test if the copy wrote into the template (a path the copy did not rewrite)."""
    with _left_alone(built_template, "a copy wrote into it"):
        yield copy_project(built_template, tmp_path / "project")
