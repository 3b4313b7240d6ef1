"""The MLflow UI in a real browser: a real `mlflow server` on the pipeline's store, headless
Chromium driven by Playwright (:mod:`tests.mlflow_ui`, which also takes the README's pictures).

Two pipeline runs with different params (the first repro's, and an experiment this test runs on
its own copy of the project) must show in the "Model training" runs table with their dataset,
params and test metrics; the chart view must have a ``test_accuracy`` chart and the learning
curves; the compare view must set them side by side. Screenshots land in ``test-output/ui/``
for people to look at. Without Chromium the test skips (fails under IMGCLF_REQUIRE_SYSTEM_DEPS=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import mlflow_ui
from .helpers import ROOT, Project, mlflow_server, need_system

pytestmark = pytest.mark.slow

OUT = ROOT / "test-output" / "ui"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path. Session-scoped, so that without one the test skips before the shared
    project is built."""
    found = mlflow_ui.find_chromium()
    need_system(
        found is not None,
        "Chromium",
        "install Debian's `chromium` package (apt-get install -y chromium; scripts/system-deps.sh does this)",
    )
    return found


def test_runs_table_chart_view_and_compare_view_show_two_pipeline_runs(chromium: str, project: Project, tmp_path: Path):
    # A second pipeline result with other params, as a user's experiment from the first results makes.
    project.sh("git", "add", "-A")
    project.sh("git", "commit", "-qm", "first results")
    project.sh("dvc", "exp", "run", "-S", "train.learning_rate=0.003", "-n", "ui-lr3")
    (first,) = project.runs("pipeline")  # the first repro's
    (second,) = project.runs("ui-lr3")
    assert first.data.tags.get("imgclf.stage") == second.data.tags.get("imgclf.stage") == "pipeline"
    assert second.data.params["train.learning_rate"] == "0.003"
    exp_id = first.info.experiment_id
    digest = first.data.tags["imgclf.data_md5"][:10]

    with mlflow_server(project.tracking_uri, tmp_path, project.env) as server:
        ids = [first.info.run_id, second.info.run_id]
        views = mlflow_ui.take(chromium, server, exp_id, OUT, ["pipeline", "ui-lr3"], compare=ids)

    # The runs table: both results, their data, the params that differ and the test metrics.
    assert "pipeline" in views.runs_table and "ui-lr3" in views.runs_table
    for column in ("train.learning_rate", "test_accuracy", "best_epoch"):
        assert column in views.runs_table, column
    assert "0.003" in views.runs_table
    assert f"{second.data.metrics['test_accuracy']:.3g}"[:4] in views.runs_table
    # The Dataset column names the data a pipeline run read, with its digest.
    assert any(entry.startswith("tiny") for entry in views.datasets), views.datasets
    assert any(digest in entry for entry in views.datasets), (digest, views.datasets)
    # The chart view: test accuracy, and the learning curves.
    assert {"test_accuracy", "loss", "val_loss"} <= set(views.charts), views.charts
    for picture in ("runs.png", "charts.png", "compare.png"):
        assert (OUT / picture).stat().st_size > 20_000, picture
    # The compare view sets the two side by side with their differing param.
    compare = views.compare
    assert "train.learning_rate" in compare and "0.003" in compare and "test_accuracy" in compare
