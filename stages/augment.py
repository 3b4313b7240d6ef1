"""Stage ``augment``: class folders -> split, augmented uint8 arrays in ``data/prepared``.

Splits per original image (stratified, seeded) before augmenting the training part only, so
copies of one photo never land on both sides of the split.
"""
from __future__ import annotations

import csv
import io
import logging
import sys
import time

from imgclf import dataset, paths, tracking
from imgclf.cli import main
from imgclf.fileio import md5_tree, write_json, write_text
from imgclf.params import load

log = logging.getLogger("augment")


def run() -> None:
    p = load(paths.PARAMS)
    started = time.perf_counter()
    src = dataset.scan(paths.resolve(p.data.source), p.data.labels)
    with tracking.run("augment", p.mlflow.experiment,
                      params={"base": p.section("base"), "data": p.section("data"),
                              "augment": p.section("augment")}) as active:
        import mlflow

        progress = sys.stderr.isatty()
        decoded = dataset.decode(src, p.data.image_size, p.data.on_bad_image, progress=progress)
        splits = dataset.split_indices(decoded.y, p.data.test_size, p.data.val_size, p.base.seed, src.labels)
        sizes = dataset.write_prepared(paths.PREPARED_DIR, decoded, splits, src.labels,
                                       p.augment.angles, p.augment.flip, progress=progress)
        data_md5 = md5_tree(paths.PREPARED_DIR)
        per_class = {label: int((decoded.y == k).sum()) for k, label in enumerate(src.labels)}
        report = {
            "classes": len(src.labels),
            "images": int(len(decoded.y)),
            "images_per_class": per_class,
            "skipped_files": len(decoded.skipped),
            "ignored_files": len(src.ignored),
            "train_images": sizes["train"],
            "val_images": sizes["val"],
            "test_images": sizes["test"],
            "augment_seconds": round(time.perf_counter() - started, 3),
        }
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "reason"])
        writer.writerows((str(path), reason) for path, reason in decoded.skipped)
        write_text(paths.SKIPPED_REPORT, buf.getvalue())
        write_json(paths.AUGMENT_REPORT, report)

        mlflow.set_tag(tracking.TAG_DATA_MD5, data_md5)
        metrics = {k: v for k, v in report.items() if not isinstance(v, dict)}
        metrics.update({f"images_{tracking.metric_key(label)}": n for label, n in per_class.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(paths.AUGMENT_REPORT))
        mlflow.log_artifact(str(paths.SKIPPED_REPORT))
        mlflow.log_artifact(str(paths.PREPARED_DIR / paths.LABELS_FILE))
        log.info("%d images in %d classes -> train %d (augmented), val %d, test %d; %d skipped [run %s]",
                 report["images"], report["classes"], sizes["train"], sizes["val"], sizes["test"],
                 len(decoded.skipped), active.info.run_id)


if __name__ == "__main__":
    main("augment", run)
