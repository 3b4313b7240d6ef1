"""The MLflow UI in a real browser: a real `mlflow server` on the pipeline's store, headless Chromium.

Two pipeline runs with different params (the first repro's, and an experiment this test runs on
its own copy of the project) must show on the experiment page and, side by side, in the compare
view with their differing params and their test metrics. Screenshots land in ``test-output/ui/``
for people to look at. Without Chromium the test skips (fails under IMGCLF_REQUIRE_SYSTEM_DEPS=1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from .helpers import ROOT, Project, mlflow_server, need_system

pytestmark = pytest.mark.slow

OUT = ROOT / "test-output" / "ui"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path. Session-scoped, so that without one the test skips before the shared
    project is built."""
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    need_system(
        found is not None,
        "Chromium",
        "install Debian's `chromium` package (apt-get install -y chromium; scripts/system-deps.sh does this)",
    )
    return found


def _browse(chromium: str, url: str, shot: Path, profile: Path) -> str:
    """Render ``url`` headless: save a screenshot and return the DOM after scripts ran."""
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1600,1000",
        "--virtual-time-budget=20000",
        "--hide-scrollbars",
    ]
    shot.parent.mkdir(parents=True, exist_ok=True)
    # One page load gives both: each load of the app costs seconds of CPU.
    dom = subprocess.run(
        base + [f"--screenshot={shot}", "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False
    )
    assert shot.is_file() and shot.stat().st_size > 10_000, f"no screenshot of {url}: {dom.stderr[-2000:]}"
    return dom.stdout


def test_experiment_page_and_compare_view_show_two_pipeline_runs(chromium: str, project: Project, tmp_path: Path):
    # A second pipeline result with other params, as a user's experiment from the first results makes.
    project.sh("git", "add", "-A")
    project.sh("git", "commit", "-qm", "first results")
    project.sh("dvc", "exp", "run", "--temp", "-S", "train.learning_rate=0.003", "-n", "ui-lr3")
    (first,) = project.runs("pipeline")  # the first repro's
    (second,) = project.runs("ui-lr3")
    assert first.data.tags.get("imgclf.stage") == second.data.tags.get("imgclf.stage") == "pipeline"
    assert second.data.params["train.learning_rate"] == "0.003"
    exp_id = first.info.experiment_id

    with mlflow_server(project.tracking_uri, tmp_path, project.env) as server:
        page = _browse(
            chromium,
            f"{server}/#/experiments/{exp_id}?workflowType=machine_learning",
            OUT / "experiment.png",
            tmp_path / "p1",
        )
        assert "image-classification" in page
        assert "ui-lr3" in page and "pipeline" in page

        ids = json.dumps([first.info.run_id, second.info.run_id])
        query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([exp_id])})
        page = _browse(chromium, f"{server}/#/compare-runs?{query}", OUT / "compare.png", tmp_path / "p2")
    assert "train.learning_rate" in page
    assert first.data.params["train.learning_rate"] in page and "0.003" in page
    assert "test_accuracy" in page
    assert f"{second.data.metrics['test_accuracy']:.3g}"[:4] in page
