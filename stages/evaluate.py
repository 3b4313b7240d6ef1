"""Stage ``evaluate``: score ``models/model.h5`` on the held-out test images and write reports.

Also opens the pipeline-level MLflow run (every param that shaped the result, its test
metrics) and hangs the augment, train and evaluate runs under it.
"""
from __future__ import annotations

import logging
import os

from imgclf import paths, tracking
from imgclf.prepared import fingerprint, load_prepared
from imgclf.cli import main
from imgclf.errors import PipelineError
from imgclf.evaluation import (confusion_rows_csv, html_report, per_class_metrics, plot_confusion, plot_history,
                               plot_misclassified, score)
from imgclf.history import read_history_csv
from imgclf.fileio import atomic_path, md5_file, write_json, write_text
from imgclf.params import flatten, load

log = logging.getLogger("evaluate")

REPORT_FILES = (paths.METRICS, paths.PER_CLASS, paths.CONFUSION_CSV, paths.CONFUSION_PNG, paths.CURVES_PNG,
                paths.MISCLASSIFIED_PNG, paths.REPORT_HTML)


def run() -> None:
    p = load(paths.PARAMS)
    data = load_prepared(paths.PREPARED_DIR)
    if not paths.MODEL.is_file():
        raise PipelineError(f"{paths.MODEL} is missing: run the train stage first (dvc repro)")
    fingerprints = {tracking.TAG_DATA_MD5: fingerprint(paths.PREPARED_DIR),
                    tracking.TAG_MODEL_MD5: md5_file(paths.MODEL)}
    shaping = {name: p.section(name) for name in ("base", "data", "augment", "train")}
    with tracking.run(tracking.PIPELINE, p.mlflow.experiment, params=shaping, tags=fingerprints,
                      run_name=os.environ.get("DVC_EXP_NAME") or tracking.PIPELINE) as pipeline:
        with tracking.run("evaluate", p.mlflow.experiment, params={"evaluate": p.section("evaluate")},
                          tags=fingerprints, parent_run_id=pipeline.info.run_id) as active:
            import keras

            model = keras.models.load_model(paths.MODEL, compile=False, safe_mode=True)
            probs = model.predict(data.x["test"], batch_size=p.evaluate.batch_size, verbose=0)
            result = score(data.y["test"], probs, data.labels)
            metrics = result["metrics"]
            write_json(paths.METRICS, metrics)
            write_json(paths.PER_CLASS, result["per_class"])
            write_text(paths.CONFUSION_CSV, confusion_rows_csv(data.y["test"], result["y_pred"], data.labels))
            with atomic_path(paths.CONFUSION_PNG) as tmp:
                plot_confusion(result["confusion"], data.labels, tmp)
            with atomic_path(paths.CURVES_PNG) as tmp:
                plot_history(read_history_csv(paths.HISTORY), tmp)
            with atomic_path(paths.MISCLASSIFIED_PNG) as tmp:
                plot_misclassified(data.x["test"], data.y["test"], result["y_pred"], probs, data.labels, tmp)
            write_text(paths.REPORT_HTML, html_report(
                metrics, result["per_class"], flatten(shaping),
                {"Confusion matrix": paths.CONFUSION_PNG, "Training curves": paths.CURVES_PNG,
                 "Misclassified test images": paths.MISCLASSIFIED_PNG}))
            all_metrics = {**metrics, **per_class_metrics(result["per_class"])}
            tracking.log_metrics(all_metrics)
            for path in REPORT_FILES + (paths.HISTORY,):
                tracking.log_artifact(path, artifact_path="reports")
        tracking.log_metrics(all_metrics)
        tracking.link_inputs(pipeline.info.run_id, p.mlflow.experiment, fingerprints)
        log.info("test accuracy %.4f, loss %.4f on %d images [pipeline run %s, evaluate run %s]",
                 metrics["test_accuracy"], metrics["test_loss"], metrics["test_images"],
                 pipeline.info.run_id, active.info.run_id)


if __name__ == "__main__":
    main("evaluate", run)
