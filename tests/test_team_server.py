"""A team tracking server for real: PostgreSQL, `mlflow server` on it, the pipeline logging over HTTP.

Checks through the server's REST API that the runs, params, metrics and the .h5 artifact
arrived. PostgreSQL comes from Debian's package (`scripts/system-deps.sh` installs it); the test
skips, saying so, when it is missing (fails under IMGCLF_REQUIRE_SYSTEM_DEPS=1, as in CI).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .helpers import free_port, make_project, mlflow_server, need_system

# On one xdist worker (one PostgreSQL for the module: built once; tests/helpers.py, order_for_workers).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("team-server")]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    need_system(
        bool(found),
        "PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb)",
        "install Debian's `postgresql` package (scripts/system-deps.sh does this)",
    )
    return Path(found[-1]).parent


def _as_db_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its commands as the `postgres` account then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    bin_dir = _pg_bin()
    # pytest's temp folders are private to root; the postgres account needs a folder of its own.
    top = Path(tempfile.mkdtemp(prefix="imgclf-pg-"))
    top.chmod(0o755)
    data = top / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_db_user([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_db_user(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(data / "server.log"),
                "-w",
                "-o",
                f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        subprocess.run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_db_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres: str, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with mlflow_server(postgres, root, env, "--artifacts-destination", str(root / "artifacts")) as url:
        yield url, root / "artifacts"


def _api(url: str, endpoint: str, body: dict | None = None, **query) -> dict:
    full = f"{url}/api/2.0/mlflow/{endpoint}"
    if query:
        full += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_pipeline_logs_to_a_postgres_backed_server(tracking_server, tmp_path: Path):
    url, artifacts = tracking_server
    project = make_project(tmp_path / "project", env={"MLFLOW_TRACKING_URI": url})
    out = project.sh("dvc", "repro")
    assert not (project.root / "mlflow.db").exists(), "nothing may land in the local default store"

    exp = _api(url, "experiments/get-by-name", experiment_name="image-classification")["experiment"]
    runs = _api(url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100})["runs"]
    by_name = {r["info"]["run_name"]: r for r in runs}
    assert {"augment", "train", "evaluate", "pipeline"} <= set(by_name)
    # A team server keeps the row of runs without a result (deleting it needs more than EDIT).
    assert "runs without a result" in by_name
    assert all(r["info"]["status"] == "FINISHED" for r in runs)

    def params(run):
        return {p["key"]: p["value"] for p in run["data"].get("params", [])}

    def metrics(run):
        return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}

    train, pipeline = by_name["train"], by_name["pipeline"]
    assert params(train)["train.epochs"] == "2" and params(pipeline)["data.image_size"] == "16"
    local = json.loads((project.root / "reports" / "metrics.json").read_text())
    assert metrics(pipeline)["test_accuracy"] == pytest.approx(local["test_accuracy"])
    assert "val_loss" in metrics(train)
    tags = {t["key"]: t["value"] for t in pipeline["data"]["tags"]}
    assert {t["value"] for t in train["data"]["tags"] if t["key"] == "mlflow.parentRunId"} == {
        pipeline["info"]["run_id"]
    }
    assert tags["imgclf.model_md5"]
    # The pipeline's last line is the pipeline run's page on the server, in the UI's "Model training" view.
    page = f"{url}/#/experiments/{exp['experiment_id']}/runs/{pipeline['info']['run_id']}?workflowType=machine_learning"
    assert f"pipeline run {pipeline['info']['run_id']}: {page}\n" in out.stdout + out.stderr

    listed = _api(url, "artifacts/list", run_id=train["info"]["run_id"], path="model")
    assert {f["path"] for f in listed["files"]} == {"model/model.h5", "model/labels.json"}
    # The bytes themselves went through the server into its artifact store.
    stored = list(artifacts.rglob("model.h5"))
    assert len(stored) == 1
    assert stored[0].read_bytes() == (project.root / "models" / "model.h5").read_bytes()


def test_a_tune_study_lives_in_postgres_and_two_processes_share_it(postgres: str, project):
    import optuna
    import yaml

    url = urllib.parse.urlsplit(postgres)
    subprocess.run(
        [str(_pg_bin() / "createdb"), "-h", url.hostname, "-p", str(url.port), "-U", "postgres", "optuna"],
        check=True,
        capture_output=True,
    )
    storage = postgres.rsplit("/", 1)[0] + "/optuna"  # not MLflow's database: both keep alembic_version
    raw = yaml.safe_load((project.root / "settings.yaml").read_text())
    raw["tune"] = {"epochs": 1, "pruner": "none", "space": {"train.learning_rate": {"low": 0.0005, "high": 0.005}}}
    (project.root / "settings.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    done = project.sh("python", "-m", "stages.tune", "--trials", "5", "--jobs", "2", "--storage", storage)
    study = optuna.load_study(study_name="tune", storage=storage.replace("postgresql://", "postgresql+psycopg://"))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 5  # the budget; a process may finish a trial it started meanwhile
    assert f"study tune: {len(complete)} complete" in done.stdout
    assert not (project.root / "optuna.db").exists()  # nothing went to the local default
    (study_run,) = project.runs("tune-tune")
    trials = [r for r in project.runs() if r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]
    assert len(trials) == len(study.trials)
    assert len({r.data.tags["imgclf.worker"] for r in trials}) == 2, "both processes ran trials"
    assert study_run.data.params["tune.storage"] == storage.replace("postgresql://", "postgresql+psycopg://")
