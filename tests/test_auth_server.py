"""A team server with a lock: `mlflow server --app-name basic-auth`, as docs/mlflow.md starts it.

The pipeline logs in with MLflow's own MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and
never shows the password; wrong or missing credentials stop a stage before any work, in one line
that names the variables to set.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request

import pytest

from .helpers import MlflowServer, Project, make_project

# On one xdist worker (one locked server for the module: built once; tests/helpers.py, order_for_workers).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("auth-server")]

ADMIN_PASSWORD = "adm1n-Pa55-for-tests"
USER, PASSWORD = "alice", "al1ce-Pa55-for-tests"


def _call(url: str, endpoint: str, body: dict | None, user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(
        f"{url}/api/2.0/mlflow/{endpoint}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory, new_store):
    root = tmp_path_factory.mktemp("locked-server")
    config = root / "auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = EDIT\n"
        f"database_uri = sqlite:///{root / 'users.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_AUTH_CONFIG_PATH=str(config),
        MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
        MLFLOW_FLASK_SERVER_SECRET_KEY="a-test-secret-key",
    )
    server = MlflowServer(new_store(root / "runs.db"), root, env, "--app-name", "basic-auth")
    server.start()
    try:
        _call(server.url, "users/create", {"username": USER, "password": PASSWORD}, "admin", ADMIN_PASSWORD)
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return make_project(tmp_path_factory.mktemp("auth") / "project")


def _augment(p: Project, url: str, **credentials: str):
    env = {k: v for k, v in p.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    env.update(MLFLOW_TRACKING_URI=url, IMGCLF_TRACKING_WAIT="0", **credentials)
    saved, p.env = p.env, env
    try:
        return p.sh("python", "-m", "stages.augment", ok=False)
    finally:
        p.env = saved


def test_the_right_login_records_the_stage_and_shows_no_password(locked_server: str, project: Project):
    proc = _augment(project, locked_server, MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=PASSWORD)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert PASSWORD not in proc.stdout + proc.stderr
    by_name = "experiments/get-by-name?experiment_name=image-classification"
    exp = _call(locked_server, by_name, None, USER, PASSWORD)["experiment"]
    search = {"experiment_ids": [exp["experiment_id"]]}
    found = _call(locked_server, "runs/search", search, USER, PASSWORD)["runs"]
    (augment,) = [r for r in found if r["info"]["run_name"] == "augment"]
    assert augment["info"]["status"] == "FINISHED"
    assert PASSWORD not in json.dumps(augment)  # not in a param, tag or anything else of the run


@pytest.mark.parametrize(
    "credentials, says",
    [
        ({"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": "wrong-password"}, "refused the login in"),
        ({}, "needs a login: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        ({"MLFLOW_TRACKING_USERNAME": USER}, "needs a login: set MLFLOW_TRACKING_PASSWORD"),
    ],
)
def test_a_wrong_or_missing_login_stops_before_any_work_in_one_line(
    locked_server: str, project: Project, credentials: dict, says: str
):
    prepared = project.root / "data" / "prepared"
    before = sorted(prepared.iterdir()) if prepared.exists() else None
    proc = _augment(project, locked_server, **credentials)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: augment: tracking server {locked_server} ") and says in lines[-1], lines
    assert "Traceback" not in proc.stderr and "wrong-password" not in proc.stdout + proc.stderr
    assert (sorted(prepared.iterdir()) if prepared.exists() else None) == before  # no work done
