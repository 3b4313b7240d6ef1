"""Shared test helpers: tiny images, shrunk params, throw-away git + DVC projects, MLflow look-ups.

Fixtures live in ``conftest.py``; everything a test module imports comes from here.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imgclf.core.params import merge as _merge

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENT = "image-classification"

# Set by CI (.ci/run): a test whose system part is missing fails instead of skipping.
REQUIRE_SYSTEM_DEPS = "IMGCLF_REQUIRE_SYSTEM_DEPS"

# Each class is a colour; every image differs (noise, size) so copies can be told apart.
CLASS_COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}

# The real params.yaml, shrunk so a whole pipeline trains in seconds on tiny images.
TINY_PARAMS = {
    "data": {"image_size": 16, "test_size": 0.25, "val_size": 0.2},
    "augment": {"angles": [0, 10], "flip": True},
    "train": {"conv_filters": [4, 8], "dense_units": 16, "epochs": 2, "batch_size": 8},
}

# The experiments the `queued_experiments` fixture queues: name -> train.learning_rate.
QUEUED = {"queued-1": "0.002", "queued-2": "0.0005"}

PROJECT_FILES = ("dvc.yaml", "params.yaml", "settings.yaml", ".gitignore", ".dvcignore", "stages", "imgclf")


def make_image(colour: tuple[int, int, int], seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.array(colour, dtype=np.int16)
    noise = rng.integers(-30, 30, (size, size, 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    arr[rng.integers(0, size), :, :] = 255  # a white line makes rotations visible
    return Image.fromarray(arr, "RGB")


def make_photo(seed: int, width: int = 96, height: int | None = None) -> Image.Image:
    """A photo-like RGB image, different for every seed: colour noise smoothed at several scales
    (as light, texture and background vary in a photo) under a few flat shapes (its objects)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    height = height or width
    field = np.zeros((height, width, 3), dtype=np.float32)
    for cells, weight in ((3, 0.6), (6, 0.35), (12, 0.2), (24, 0.1)):
        low = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8), "RGB")
        field += (np.asarray(low.resize((width, height), Image.Resampling.BICUBIC), np.float32) - 128) * weight
    img = Image.fromarray(np.clip(field + rng.integers(60, 196, 3), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 7))):
        r = rng.uniform(0.06, 0.25) * min(width, height)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1), cx + r, cy + r), fill=colour)
        else:
            corners = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a in corners], fill=colour)
    return img


def colour_arrays(n: int = 48, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 RGB images in 3 classes (a class is its brightest channel) and their labels."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), n // 3).astype(np.uint8)
    x = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    x[np.arange(n), :, :, y] += 180
    return x, y


def as_prepared(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    """In-memory arrays as a :class:`~imgclf.core.prepared.Prepared` (no test split)."""
    from imgclf.core.prepared import Prepared

    return Prepared(
        labels=[str(c) for c in range(int(max(y.max(), 1)) + 1)],
        x={"train": x, "val": x_val, "test": x_val[:0]},
        y={"train": y, "val": y_val, "test": y_val[:0]},
    )


def make_class_folders(root: Path, per_class: int = 8, size: int = 16, fmt: str = "png") -> Path:
    """``root/<colour>/<n>.png``: ``per_class`` distinct small images per colour class."""
    for c, (label, colour) in enumerate(CLASS_COLOURS.items()):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            make_image(colour, seed=100 * c + n, size=size).save(folder / f"{n:02d}.{fmt}")
    return root


def list_runs(tracking_uri: str, name: str | None = None, experiment: str = EXPERIMENT) -> list:
    """Runs of ``experiment`` in the store at ``tracking_uri`` (all, or those named ``name``);
    none when the experiment does not exist. Leaves MLflow's global tracking URI alone."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if name is None or r.info.run_name == name]


def need_system(found: bool, what: str, hint: str) -> None:
    """Skip the test when a system part (a browser, a database server) is missing, saying what
    and how to get it; under ``IMGCLF_REQUIRE_SYSTEM_DEPS=1`` (CI) fail instead, so CI cannot
    pass without running it."""
    if found:
        return
    reason = f"{what} not found: {hint}"
    if os.environ.get(REQUIRE_SYSTEM_DEPS) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SYSTEM_DEPS}=1 requires it)", pytrace=False)
    pytest.skip(reason)


class Project:
    """A throw-away git + DVC project: run commands in it, read its outputs and its MLflow store."""

    def __init__(self, root: Path, env: dict | None = None, base_env: dict | None = None):
        """``env`` adds to (or overrides) ``base_env``: this process's environment by default,
        less its MLflow and DVC settings."""
        self.root = root
        base = os.environ if base_env is None else base_env
        self.env = {k: v for k, v in base.items() if not k.startswith(("MLFLOW_", "DVC_"))}
        self.env.update(
            {
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "DVC_NO_ANALYTICS": "1",
                "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@t",
                "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t",
            }
        )
        self.env.update(env or {})

    @property
    def tracking_uri(self) -> str:
        """The project's default MLflow store (its ``mlflow.db``)."""
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def sh(self, *cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600)
        if ok and proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def commit(self, message: str = "first results") -> None:
        """Commit everything, as a user does before running experiments from the results."""
        self.sh("git", "add", "-A")
        self.sh("git", "commit", "-qm", message)

    def json(self, rel: str):
        return json.loads((self.root / rel).read_text(encoding="utf-8"))

    def set_params(self, **sections: dict) -> None:
        """Change some keys of ``params.yaml`` or ``settings.yaml`` (each key in its own file),
        e.g. ``set_params(train={"epochs": 1, "resume": False})``."""
        write_params(self.root, sections)

    def runs(self, name: str | None = None) -> list:
        return list_runs(self.tracking_uri, name)

    def array_md5s(self) -> dict[str, str]:
        from imgclf.core.fileio import md5_file

        return {p.name: md5_file(p) for p in sorted((self.root / "data/prepared").glob("*.npy"))}


def write_params(root: Path, sections: dict) -> None:
    """Merge ``sections`` into ``root``'s ``params.yaml`` and ``settings.yaml``, each key into the
    file it belongs in."""
    from imgclf.core.params import split_settings

    for name, part in zip(("params.yaml", "settings.yaml"), split_settings(sections)):
        if part:
            path = root / name
            raw = _merge(yaml.safe_load(path.read_text()) if path.exists() else {}, part)
            path.write_text(yaml.safe_dump(raw, sort_keys=False))


def make_project(
    root: Path, params: dict | None = None, env: dict | None = None, base_env: dict | None = None
) -> Project:
    """A git + DVC copy of the project in ``root`` on tiny images (``data/tiny``), not yet run
    (``env`` and ``base_env`` as for :class:`Project`)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    make_class_folders(root / "data" / "tiny", per_class=8)
    write_params(root, _merge(TINY_PARAMS, {"data": {"source": "data/tiny"}, **(params or {})}))
    p = Project(root, env, base_env)
    p.sh("git", "init", "-q")
    p.sh("dvc", "init", "-q")
    p.sh("dvc", "config", "core.analytics", "false")
    p.commit("tiny project")
    return p


def _text_columns(db: sqlite3.Connection) -> Iterator[tuple[str, str]]:
    """(table, column) for every column of text affinity (TEXT, VARCHAR, CHAR, CLOB)."""
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        for _, column, declared, *_ in db.execute(f'PRAGMA table_info("{table}")'):
            if any(word in declared.upper() for word in ("CHAR", "CLOB", "TEXT")):
                yield table, column


def rewrite_store_paths(db_file: Path, old: Path, new: Path) -> int:
    """Replace the folder ``old`` by ``new`` in every text cell of an MLflow SQLite store.

    The store holds absolute paths (the experiment's artifact location, each run's artifact URI,
    model versions' sources, logged models): a copied store would still write into the
    original's ``mlartifacts/``. Returns how many cells changed.
    """
    pairs = [(f"{old}/", f"{new}/")]  # also inside file: URIs, unless they escape characters
    if old.as_uri() != f"file://{old}":
        pairs.insert(0, (old.as_uri() + "/", new.as_uri() + "/"))
    changed = 0
    db = sqlite3.connect(db_file)
    try:
        with db:
            for table, column in _text_columns(db):
                for before, after in pairs:
                    cur = db.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (before, after, before),
                    )
                    changed += cur.rowcount
    finally:
        db.close()
    return changed


def copy_project(template: Project, root: Path) -> Project:
    """A copy of ``template`` in ``root`` with everything it made (git, DVC cache, outputs, MLflow
    store and artifacts), its store rewritten to point at the copy. DVC rehashes the copied files
    (new inodes) and finds them up to date."""
    shutil.copytree(template.root, root, symlinks=True)
    if (root / "mlflow.db").exists():
        rewrite_store_paths(root / "mlflow.db", template.root, root)
    p = Project(root)
    p.env = dict(template.env)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on loopback (one worker), which a test can stop and start again on
    the same port (a server restart, as a team sees one)."""

    def __init__(self, backend: str, cwd: Path, env: dict, *extra: str, port: int | None = None):
        self.backend, self.cwd, self.env, self.extra = backend, cwd, env, extra
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"mlflow-server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> str:
        with open(self.log, "a") as fh:
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("mlflow")),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                    "--backend-store-uri",
                    self.backend,
                    *self.extra,
                ],
                cwd=self.cwd,
                # No background job runner (GenAI jobs, none here): it takes a core while it starts.
                env={**self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"mlflow server on {self.backend} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def mlflow_server(backend: str, cwd: Path, env: dict, *extra: str, timeout: float = 120) -> Iterator[str]:
    """A real `mlflow server` on loopback (one worker) until the block ends; yields its URL."""
    server = MlflowServer(backend, cwd, env, *extra)
    server.start(timeout)
    try:
        yield server.url
    finally:
        server.stop()


def train_until_signal(monkeypatch, p, data, at: tuple[int, int], init: dict | None = None) -> None:
    """Train ``p`` on ``data`` with checkpoints (key ``"data"``, and ``init``), a signal arriving
    at step ``at`` = (epoch, step): it stops there after a checkpoint, as a Ctrl-C would."""
    from imgclf.console import interrupt
    from imgclf.training.checkpoint import open_checkpoints
    from imgclf.training.fit import Session, train

    end_step = Session.end_step

    def signal_at(self, epoch, step, totals):
        if (epoch, step) == at:
            interrupt.request()
        return end_step(self, epoch, step, totals)

    monkeypatch.setattr(Session, "end_step", signal_at)
    store = open_checkpoints(p, "data", init=init)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(p, data, store)
    finally:
        interrupt.clear()
        monkeypatch.setattr(Session, "end_step", end_step)
        store.close()


def _weight(item: pytest.Item) -> int:
    """A rough cost, in seconds of CPU on 2 cores: a test that runs DVC or stages in a copy of the
    template (or reads the queued experiments, which one of them runs) about 25, another slow
    test about 10 (a server, a TensorFlow process), the rest 1."""
    if item.get_closest_marker("slow") is None:
        return 1
    if "built_template" not in item.fixturenames:
        return 10
    return 25 if {"project", "queued_experiments"} & set(item.fixturenames) else 1


def order_for_workers(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """``items`` ordered for pytest-xdist's ``--dist worksteal`` on ``workers`` processes.

    Worksteal gives each worker a contiguous share of the list (equal counts, in order), and an
    idle worker later steals the back half of the longest queue. In file order one share held
    most of the heavy tests, which then ran last while the others idled. Here the heavy tests
    are spread over the shares by their rough cost (:func:`_weight`; tests marked with the same
    ``xdist_group`` stay together, as they share a module fixture), each share starts with those
    that need no template (it builds meanwhile), and the quick tests fill the shares in file
    order, so that what is stolen at the end is quick.
    """
    sizes, left = [], len(items)
    for k in range(workers):  # as the scheduler splits: the rest over the workers still to serve
        sizes.append(left // (workers - k))
        left -= sizes[-1]
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        if _weight(item) > 1:
            mark = item.get_closest_marker("xdist_group")
            units.setdefault(f"group:{mark.args[0]}" if mark else item.nodeid, []).append(item)
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for unit in sorted(units.values(), key=lambda u: -sum(map(_weight, u))):  # heaviest first
        k = min(range(workers), key=lambda k: (len(shares[k]) + len(unit) > sizes[k], loads[k]))
        shares[k] += unit
        loads[k] += sum(map(_weight, unit))
    heavy = {id(item) for share in shares for item in share}
    quick = iter([item for item in items if id(item) not in heavy])
    ordered = []
    for k, share in enumerate(shares):
        share.sort(key=lambda item: "built_template" in item.fixturenames)  # stable
        ordered += share + list(itertools.islice(quick, max(sizes[k] - len(share), 0)))
    return ordered + list(quick)
