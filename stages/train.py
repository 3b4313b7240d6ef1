"""Stage ``train``: fit the CNN on ``data/prepared`` and save it as ``models/model.h5``.

With ``train.strategy: multi_worker`` the same command runs on every worker of the
``TF_CONFIG`` cluster; only the chief (worker 0) writes the outputs and logs to MLflow.
"""

from __future__ import annotations

import logging

from imgclf import paths, tracking
from imgclf.cli import main
from imgclf.distribute import is_chief
from imgclf.fileio import atomic_path, md5_file, write_json, write_text
from imgclf.history import history_csv
from imgclf.params import load
from imgclf.prepared import LABELS_FILE, Prepared, fingerprint, load_prepared
from imgclf.result import StageResult
from imgclf.training import Trained, train

log = logging.getLogger("train")


def run() -> None:
    p = load(paths.PARAMS)
    data = load_prepared(paths.PREPARED_DIR)
    if p.train.strategy == "multi_worker" and not is_chief():
        trained = train(p, data)
        log.info("worker done after %d epochs; the chief writes the model and logs the run", len(trained.history))
        return
    with tracking.recorder("train", p) as rec:
        trained = train(p, data, on_start=rec.log_params, on_epoch=rec.log_epoch)
        rec.record(save(trained, data))


def save(trained: Trained, data: Prepared) -> StageResult:
    """Write the model, its history and the metrics file; return what was made."""
    with atomic_path(paths.MODEL) as tmp:
        trained.model.save(tmp)
    write_text(paths.HISTORY, history_csv(trained.history))
    final = {k: v for k, v in trained.history[-1].items() if k != "epoch"}
    write_json(paths.TRAIN_REPORT, final)
    images = len(data.x["train"]) * len(trained.history)
    return StageResult(
        # The per-epoch metrics are logged already, one step an epoch.
        metrics={
            "train_seconds": round(trained.seconds, 3),
            "train_images_per_second": round(images / trained.seconds, 1),
        },
        fingerprints={"data": fingerprint(paths.PREPARED_DIR), "model": md5_file(paths.MODEL)},
        artifacts=[(paths.MODEL, "model"), (paths.PREPARED_DIR / LABELS_FILE, "model"), (paths.HISTORY, None)],
        model=trained.model,
        labels=data.labels,
        summary=f"trained {len(trained.history)} epochs in {trained.seconds:.1f} s ("
        + ", ".join(f"{k}={v:.4f}" for k, v in final.items() if "accuracy" in k)
        + ")",
    )


if __name__ == "__main__":
    main("train", run)
