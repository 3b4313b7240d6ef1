"""The MLflow UI in a real browser: a real `mlflow server` on the pipeline's store, headless
Chromium driven by Playwright (:mod:`tests.mlflow_ui`, which also takes the README's pictures).

Two pipeline runs with different params (the first repro's, and an experiment queued from it:
the ``queued_experiments`` fixture, which the queued-experiments test reads too) must show in the
"Model training" runs table with their dataset, params and test metrics; the chart view must
have a ``test_accuracy`` chart and the learning curves; the compare view must set them side by
side. Screenshots land in ``test-output/ui/`` for people to look at. Without Chromium the test
skips (fails under IMGCLF_REQUIRE_SYSTEM_DEPS=1).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import mlflow_ui
from .helpers import QUEUED, ROOT, Project, mlflow_server, need_system

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


@pytest.mark.xdist_group("queued")  # on one worker with the queued-experiments test (they share its runs)
def test_runs_table_chart_view_and_compare_view_show_two_pipeline_runs(
    chromium: str, queued_experiments: Project, tmp_path: Path
):
    project, name = queued_experiments, "queued-1"
    (first,) = project.runs("pipeline")  # the first repro's
    (second,) = project.runs(name)
    assert first.data.tags.get("imgclf.stage") == second.data.tags.get("imgclf.stage") == "pipeline"
    assert second.data.params["train.learning_rate"] == QUEUED[name]
    exp_id = first.info.experiment_id
    digest = first.data.tags["imgclf.data_md5"][:10]

    with mlflow_server(project.tracking_uri, tmp_path, project.env) as server:
        ids = [first.info.run_id, second.info.run_id]
        views = mlflow_ui.take(chromium, server, exp_id, OUT, ["pipeline", name], compare=ids)

    # The runs table: both results, their data, the params that differ and the test metrics.
    assert "pipeline" in views.runs_table and name in views.runs_table
    assert "runs without a result" not in views.runs_table  # no empty row beside the results
    for column in ("train.learning_rate", "test_accuracy", "best_epoch"):
        assert column in views.runs_table, column
    assert QUEUED[name] in views.runs_table
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
    assert "train.learning_rate" in compare and QUEUED[name] in compare and "test_accuracy" in compare
