"""Stage ``augment``: class folders -> split, augmented uint8 arrays in ``data/prepared``.

Splits per original image (stratified, seeded) before augmenting the training part only, so
copies of one photo never land on both sides of the split; copies already in the folder are
found and grouped first (:mod:`imgclf.data.duplicates`, ``reports/duplicates.csv``).
"""

from __future__ import annotations

import sys
import time

from imgclf import tracking
from imgclf.console.cli import main
from imgclf.core import paths
from imgclf.core.fileio import write_json, write_text
from imgclf.core.params import Params, load
from imgclf.core.prepared import LABELS_FILE, fingerprint
from imgclf.data import dataset
from imgclf.data.augmentation import prepare
from imgclf.data.pool import default_workers, worker_pool
from imgclf.tracking.inputs import source_input
from imgclf.tracking.result import StageResult


def run() -> None:
    p = load(paths.PARAMS)
    src = dataset.scan(paths.resolve(p.data.source), p.data.labels)
    # The workers are forked first, while this process has one thread: the recorder starts the
    # system-metrics thread, after which they would have to be spawned (seconds of imports).
    with (
        worker_pool(p.augment.workers or default_workers()) as imap,
        tracking.recorder("augment", p, inputs=[source_input(src.root, src.labels, src.y, len(src.ignored))]) as rec,
    ):
        rec.record(augment(p, src, imap))


def augment(p: Params, src: dataset.Source, imap=map) -> StageResult:
    """Decode, split, augment (over ``imap``, see :func:`~imgclf.data.pool.worker_pool`); write
    ``data/prepared`` and the reports; return what was made."""
    started = time.perf_counter()
    sizes, y, skipped, groups, duplicates_csv = prepare(
        p, src, paths.PREPARED_DIR, imap=imap, progress=sys.stderr.isatty()
    )
    per_class = {label: int((y == k).sum()) for k, label in enumerate(src.labels)}
    dataset.check_balance(per_class)
    report = {
        "classes": len(src.labels),
        "images": int(len(y)),
        "images_per_class": per_class,
        "skipped_files": len(skipped),
        "ignored_files": len(src.ignored),
        "duplicate_groups": len(groups.groups),
        "duplicate_images": groups.images,
        "duplicates_dropped": groups.copies if p.data.duplicates == "drop" else 0,
        **{f"{split}_images": n for split, n in sizes.items()},
    }
    write_text(paths.SKIPPED_REPORT, dataset.skipped_csv(skipped))
    write_text(paths.DUPLICATES_REPORT, duplicates_csv)
    write_json(paths.AUGMENT_REPORT, report)
    seconds = time.perf_counter() - started
    return StageResult(
        # Counts describe the data (params, and per class the dataset's profile); speed is compared.
        metrics={
            "timing/augment_seconds": round(seconds, 3),
            "timing/augment_images_per_second": round(
                (len(y) + report["duplicates_dropped"] + len(skipped)) / max(seconds, 1e-9), 1
            ),
        },
        facts={f"dataset.{k}": v for k, v in report.items() if not isinstance(v, dict)},
        fingerprints={"data": fingerprint(paths.PREPARED_DIR)},
        artifacts=[
            (paths.SKIPPED_REPORT, None),
            (paths.DUPLICATES_REPORT, None),
            (paths.PREPARED_DIR / LABELS_FILE, None),
            (paths.AUGMENT_REPORT, None),
        ],
        summary=(
            f"{report['images']} images in {report['classes']} classes -> train {sizes['train']} (augmented), "
            f"val {sizes['val']}, test {sizes['test']}; {len(skipped)} skipped"
        ),
    )


if __name__ == "__main__":
    main("augment", run)
