"""Stage ``evaluate``: score ``models/model.h5`` on the held-out test images and write reports.

The stage that closes a result: after its run, it writes the result's pipeline run (every param
that shaped it, its test metrics, the augment, train and evaluate runs under it) and, with
``mlflow.register`` on, applies the champion rule.
"""

from __future__ import annotations

from imgclf import tracking
from imgclf.console.cli import main
from imgclf.core import paths
from imgclf.core.fileio import atomic_path, md5_file, write_json, write_text
from imgclf.core.history import read_history_csv
from imgclf.core.params import Params
from imgclf.core.prepared import Prepared, fingerprint, load_prepared
from imgclf.core.saved_model import load_model
from imgclf.evaluation.scoring import (
    confusion_rows_csv,
    html_report,
    per_class_csv,
    per_class_metrics,
    plot_confusion,
    plot_history,
    plot_misclassified,
    score,
)
from imgclf.tracking.inputs import split_inputs
from imgclf.tracking.result import StageResult

REPORT_FILES = (
    paths.METRICS,
    paths.PER_CLASS,
    paths.CONFUSION_CSV,
    paths.CONFUSION_PNG,
    paths.CURVES_PNG,
    paths.MISCLASSIFIED_PNG,
    paths.REPORT_HTML,
    paths.HISTORY,
)


def run(p: Params) -> None:
    data = load_prepared(paths.PREPARED_DIR)
    model = load_model(paths.MODEL)
    inputs = split_inputs(paths.PREPARED_DIR, data, ("test",), paths.resolve(p.data.source).name)
    with tracking.recorder("evaluate", p, inputs=inputs) as rec:
        rec.record(evaluate(p, data, model))
    result_run = tracking.close_result(p, rec)
    if p.mlflow.register_model:
        tracking.promote_champion(p, rec, result_run, data.labels)


def evaluate(p: Params, data: Prepared, model) -> StageResult:
    """Score ``model`` on the test split, write the reports; return what was measured."""
    probs = model.predict(data.x["test"], batch_size=p.evaluate.batch_size, verbose=0)
    scored = score(data.y["test"], probs, data.labels)
    metrics = scored["metrics"]
    images = metrics.pop("test_images")  # a count: the test dataset's profile has it
    write_json(paths.METRICS, metrics)
    write_text(paths.PER_CLASS, per_class_csv(scored["per_class"]))
    write_text(paths.CONFUSION_CSV, confusion_rows_csv(data.y["test"], scored["y_pred"], data.labels))
    with atomic_path(paths.CONFUSION_PNG) as tmp:
        plot_confusion(scored["confusion"], data.labels, tmp)
    with atomic_path(paths.CURVES_PNG) as tmp:
        plot_history(read_history_csv(paths.HISTORY), tmp)
    with atomic_path(paths.MISCLASSIFIED_PNG) as tmp:
        plot_misclassified(data.x["test"], data.y["test"], scored["y_pred"], probs, data.labels, tmp)
    plots = {
        "Confusion matrix": paths.CONFUSION_PNG,
        "Training curves": paths.CURVES_PNG,
        "Misclassified test images": paths.MISCLASSIFIED_PNG,
    }
    write_text(paths.REPORT_HTML, html_report(metrics, scored["per_class"], p.shaping("pipeline"), plots))
    return StageResult(
        metrics={**metrics, **per_class_metrics(scored["per_class"])},
        fingerprints={"data": fingerprint(paths.PREPARED_DIR), "model": md5_file(paths.MODEL)},
        artifacts=[(path, "reports") for path in REPORT_FILES],
        summary=f"test accuracy {metrics['test_accuracy']:.4f}, loss {metrics['test_loss']:.4f} on {images} images",
    )


if __name__ == "__main__":
    main("evaluate", run, tensorflow=True, params=paths.PARAMS)
