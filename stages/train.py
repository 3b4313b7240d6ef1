"""Stage ``train``: fit the model on ``data/prepared`` and save it as ``models/model.h5``, with the
MLflow run that trained it in ``models/model_run.json`` (evaluate's dep: every training that ran
is closed by an evaluation, even one that reproduced the locked model bit for bit).

An interrupted training resumes from its last checkpoint, in the same MLflow run (see
:mod:`imgclf.training.checkpoint`). With ``train.strategy: multi_worker`` the same command runs on every
worker of the ``TF_CONFIG`` cluster; only the chief (worker 0) writes the outputs, the
checkpoints and the MLflow run.
"""

from __future__ import annotations

import logging

from imgclf import tracking
from imgclf.console.cli import main
from imgclf.core import paths
from imgclf.core.fileio import atomic_path, md5_file, write_json, write_text
from imgclf.core.history import history_csv
from imgclf.core.params import Params
from imgclf.core.prepared import LABELS_FILE, Prepared, fingerprint, load_prepared
from imgclf.tracking.inputs import split_inputs
from imgclf.tracking.models import fetch_model
from imgclf.tracking.result import StageResult
from imgclf.training.checkpoint import open_checkpoints
from imgclf.training.distribute import is_chief
from imgclf.training.fit import Trained, check_monitor, train
from imgclf.training.origin import resolve

log = logging.getLogger("train")


def run(p: Params) -> None:
    data = load_prepared(paths.PREPARED_DIR)
    check_monitor(p.train, data)
    chief = p.train.strategy != "multi_worker" or is_chief()
    discarded: list[tuple[str, str]] = []  # (run, why) of checkpoints removed: closed by the recorder
    origin = resolve(p.train, fetch=fetch_model)
    init = origin.key() if origin.pretrained else None
    store = open_checkpoints(p, fingerprint(paths.PREPARED_DIR), writer=chief, discarded=discarded, init=init)
    try:
        if not chief:
            trained = train(p, data, store, origin=origin)
            log.info("worker done after %d epochs; the chief writes the model and logs the run", len(trained.history))
            return
        inputs = split_inputs(paths.PREPARED_DIR, data, ("train", "val"), paths.resolve(p.data.source).name)
        with tracking.recorder(
            "train", p, continue_run=store and store.run_id, inputs=inputs, discarded=discarded
        ) as rec:
            if store is not None:
                store.run_id = rec.run_id
                if store.state:
                    rec.log_history(store.state["history"])
            trained = train(p, data, store, on_start=rec.log_params, on_epoch=rec.log_epoch, origin=origin)
            rec.record(save(trained, data, rec.run_id))
        if store is not None:
            store.remove()
    finally:
        if store is not None:
            store.close()


def save(trained: Trained, data: Prepared, run_id: str) -> StageResult:
    """Write the model (the best epoch's weights), the run that trained it, its history and the
    metrics file; return what was made."""
    with atomic_path(paths.MODEL) as tmp:
        trained.model.save(tmp)
    write_json(paths.MODEL_RUN, {"run_id": run_id})
    write_text(paths.HISTORY, history_csv(trained.history))
    best = {k: v for k, v in trained.best.items() if k != "epoch"}
    counts = {"best_epoch": trained.best_epoch, "epochs_run": len(trained.history)}
    write_json(paths.TRAIN_REPORT, {**best, **counts})
    return StageResult(
        # The per-epoch metrics are logged already, one step an epoch; the best epoch's again as best/*.
        metrics={
            **{f"best/{k}": v for k, v in best.items()},
            **counts,
            "timing/train_seconds": round(trained.seconds, 3),
            "timing/train_images_per_second": round(trained.images / max(trained.seconds, 1e-9), 1),
        },
        facts={"training.resumed_from_epoch": trained.resumed_from_epoch},
        fingerprints={"data": fingerprint(paths.PREPARED_DIR), "model": md5_file(paths.MODEL)},
        artifacts=[(paths.MODEL, "model"), (paths.PREPARED_DIR / LABELS_FILE, "model"), (paths.HISTORY, None)],
        model=trained.model,
        labels=data.labels,
        summary=f"trained {len(trained.history)} epochs in {trained.seconds:.1f} s, best epoch {trained.best_epoch} ("
        + ", ".join(f"{k}={v:.4f}" for k, v in best.items() if "accuracy" in k)
        + ")",
    )


if __name__ == "__main__":
    main("train", run, tensorflow=True, params=paths.PARAMS)
