"""The MLflow UI in a real browser (headless Chromium driven by Playwright): the pictures in the
README and what the UI test checks in them.

Two views of an experiment, as a user opens them in the "Model training" view:

- ``runs.png``: the runs table, one row per pipeline result, with the Dataset column, the
  params that experiments change and the test metrics as columns;
- ``charts.png``: the chart view of the same rows, filtered to ``test_accuracy`` and the
  learning curves.

The MLflow Assistant panel, open by default, is closed first. Run it on a project after
``make run`` and a few experiments to refresh the README's pictures::

    python -m tests.mlflow_ui /path/to/project docs/
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

VIEWPORT = {"width": 1800, "height": 820}
# What the runs table shows beside the run name and the dataset.
PARAM_COLUMNS = ("train.learning_rate", "train.lr_schedule", "train.epochs")
METRIC_COLUMNS = ("test_accuracy", "test_loss", "best_epoch")
HIDDEN_COLUMNS = ("Source", "Models")
# The charts the chart view is filtered to (its search box takes a regular expression).
CHARTS = r"^(test_accuracy|loss|val_loss)$"


@dataclass
class Views:
    """What the two pictures show, as text read from the page."""

    runs_table: str  # the runs table's text: run names, datasets, params and metrics
    datasets: list[str]  # the Dataset column's entries, e.g. "demo (c3361a1dd7)"
    charts: list[str]  # titles of the charts shown in the chart view
    compare: str = ""  # the compare view's text, when asked for


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _pick_columns(page, names: tuple[str, ...], check: bool) -> None:
    """Tick (or untick) columns in the runs table's column picker (a tree of checkboxes), each
    found through the picker's search box."""
    page.get_by_role("button", name="Columns", exact=True).click()
    search = page.get_by_placeholder("Search columns")
    for name in names:
        search.fill(name)
        title = page.locator(".du-bois-light-tree-title", has_text=re.compile(f"^{re.escape(name)}$"))
        node = page.locator(".du-bois-light-tree-treenode", has=title).first
        box = node.locator(".du-bois-light-tree-checkbox")
        box.wait_for()
        if ("du-bois-light-tree-checkbox-checked" in (box.get_attribute("class") or "")) != check:
            box.click()
    search.fill("")
    page.keyboard.press("Escape")


def take(
    chromium: str, server: str, experiment_id: str, out: Path, row_names: list[str], compare: list[str] = ()
) -> Views:
    """Open the experiment on the MLflow ``server``, save ``runs.png`` and ``charts.png`` in
    ``out`` and return what they show. ``row_names`` are the pipeline runs expected as rows.
    With ``compare`` (run ids), also open the compare view of those runs (``compare.png``)."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(60_000)
            page.goto(f"{server}/#/experiments/{experiment_id}?workflowType=machine_learning")
            for name in row_names:
                page.get_by_role("link", name=name, exact=True).first.wait_for()
            close = page.get_by_role("button", name="Close")
            if close.count():
                close.first.click()  # the Assistant panel
            _pick_columns(page, PARAM_COLUMNS + METRIC_COLUMNS, check=True)
            _pick_columns(page, HIDDEN_COLUMNS, check=False)
            page.get_by_role("columnheader", name="test_accuracy").first.wait_for()
            page.wait_for_timeout(1000)  # let the grid settle its column widths
            page.screenshot(path=str(out / "runs.png"))
            table = page.locator(".ag-root").first.inner_text()
            datasets = [t.strip() for t in page.locator("button:has-text('(')").all_inner_texts() if "(" in t]

            page.locator("label:has(input[name=runs-view-mode][value=CHART])").click()
            page.get_by_placeholder("Search metric charts").fill(CHARTS)
            page.get_by_text("test_accuracy", exact=True).first.wait_for()
            page.wait_for_timeout(2000)  # the charts draw after their data arrives
            page.screenshot(path=str(out / "charts.png"))
            names = ("test_accuracy", "loss", "val_loss", "val_accuracy", "accuracy", "test_loss")  # shown or not
            charts = [name for name in names if page.get_by_text(name, exact=True).count()]

            compared = ""
            if compare:
                query = urllib.parse.urlencode(
                    {"runs": json.dumps(list(compare)), "experiments": json.dumps([experiment_id])}
                )
                page.goto(f"{server}/#/compare-runs?{query}")
                page.get_by_text("Run details").first.wait_for()
                page.wait_for_timeout(1000)
                page.screenshot(path=str(out / "compare.png"))
                compared = page.locator("body").inner_text()
        finally:
            browser.close()
    return Views(runs_table=table, datasets=datasets, charts=charts, compare=compared)


def main(argv: list[str] | None = None) -> None:
    """Take the README's pictures from a project's MLflow store (its ``mlflow.db``)."""
    import os

    import mlflow

    from .helpers import mlflow_server

    ap = argparse.ArgumentParser(prog="python -m tests.mlflow_ui", description=main.__doc__)
    ap.add_argument("project", type=Path, help="a project folder after `make run` and some experiments")
    ap.add_argument("out", type=Path, help="where runs.png and charts.png go")
    ap.add_argument("--experiment", default="image-classification")
    args = ap.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        sys.exit("error: Chromium not found (apt-get install -y chromium)")
    uri = f"sqlite:///{args.project.resolve() / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(args.experiment)
    rows = client.search_runs([experiment.experiment_id], "tags.`imgclf.stage` = 'pipeline'")
    with mlflow_server(uri, args.project, dict(os.environ)) as server:
        views = take(chromium, server, experiment.experiment_id, args.out, [r.info.run_name for r in rows])
    print(f"wrote {args.out / 'runs.png'} and {args.out / 'charts.png'}; charts: {', '.join(views.charts)}")


if __name__ == "__main__":
    main()
