"""Stage ``augment``: class folders -> split, augmented uint8 arrays in ``data/prepared``.

Splits per original image (stratified, seeded) before augmenting the training part only, so
copies of one photo never land on both sides of the split.
"""
from __future__ import annotations

import csv
import io
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imgclf import dataset, paths, tracking
from imgclf.cli import main
from imgclf.fileio import write_json, write_text
from imgclf.prepared import fingerprint
from imgclf.params import Params, load

log = logging.getLogger("augment")


def run() -> None:
    p = load(paths.PARAMS)
    started = time.perf_counter()
    src = dataset.scan(paths.resolve(p.data.source), p.data.labels)
    workers = p.augment.workers or dataset.default_workers()
    paths.PREPARED_DIR.parent.mkdir(parents=True, exist_ok=True)
    # The pool first, while this is the only thread: its workers are forked, not spawned.
    with dataset.worker_pool(workers) as imap:
        sklearn_loaded = dataset.preload_split()
        with tracking.run("augment", p.mlflow.experiment,
                          params={"base": p.section("base"), "data": p.section("data"),
                                  "augment": p.section("augment")}, defer=True, after=sklearn_loaded) as active:
            report = augment(p, src, imap, started)
    log.info("%d images in %d classes -> train %d (augmented), val %d, test %d; %d skipped [run %s]",
             report["images"], report["classes"], report["train_images"], report["val_images"],
             report["test_images"], report["skipped_files"], active.info.run_id)


def augment(p: Params, src: dataset.Source, imap: Callable, started: float) -> dict:
    """Decode, split, augment and write; log to the active run; return the report."""
    progress = sys.stderr.isatty()
    with tempfile.TemporaryDirectory(prefix=".augment-scratch-", dir=paths.PREPARED_DIR.parent) as scratch:
        decoded = dataset.decode(src, p.data.image_size, Path(scratch), p.data.on_bad_image,
                                 imap=imap, progress=progress)
        splits = dataset.split_indices(decoded.y, p.data.test_size, p.data.val_size, p.base.seed,
                                       src.labels)
        sizes = dataset.write_prepared(paths.PREPARED_DIR, decoded, splits, src.labels, p.augment.angles,
                                       p.augment.flip, imap=imap, progress=progress,
                                       resample=p.augment.resample)
        y, skipped = decoded.y, decoded.skipped
        del decoded  # unmap the scratch file before its folder goes
    data_md5 = fingerprint(paths.PREPARED_DIR)
    per_class = {label: int((y == k).sum()) for k, label in enumerate(src.labels)}
    report = {
        "classes": len(src.labels),
        "images": int(len(y)),
        "images_per_class": per_class,
        "skipped_files": len(skipped),
        "ignored_files": len(src.ignored),
        "train_images": sizes["train"],
        "val_images": sizes["val"],
        "test_images": sizes["test"],
        "augment_seconds": round(time.perf_counter() - started, 3),
    }
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "reason"])
    writer.writerows((str(path), reason) for path, reason in skipped)
    write_text(paths.SKIPPED_REPORT, buf.getvalue())
    tracking.set_tag(tracking.TAG_DATA_MD5, data_md5)
    tracking.log_artifact(paths.SKIPPED_REPORT)
    tracking.log_artifact(paths.PREPARED_DIR / paths.LABELS_FILE)
    report["mlflow_seconds"] = round(tracking.seconds_spent(), 3)
    report["mlflow_background_cpu_seconds"] = round(tracking.background_cpu_seconds(), 3)
    write_json(paths.AUGMENT_REPORT, report)
    tracking.log_artifact(paths.AUGMENT_REPORT)
    metrics = {k: v for k, v in report.items() if not isinstance(v, dict)}
    metrics.update({f"images_{tracking.metric_key(label)}": n for label, n in per_class.items()})
    tracking.log_metrics(metrics)
    return report


if __name__ == "__main__":
    main("augment", run)
