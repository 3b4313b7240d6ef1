"""Stage ``train``: fit the CNN on ``data/prepared`` and save it as ``models/model.h5``.

With ``train.strategy: multi_worker`` the same command runs on every worker of the
``TF_CONFIG`` cluster; only the chief (worker 0) writes the outputs and logs to MLflow.
"""
from __future__ import annotations

import logging
import time

from imgclf import paths, tracking
from imgclf.cli import main
from imgclf.fileio import atomic_path, md5_file, write_json, write_text
from imgclf.history import history_csv
from imgclf.params import Params, load
from imgclf.prepared import Prepared, fingerprint, load_prepared

log = logging.getLogger("train")


def run() -> None:
    p = load(paths.PARAMS)
    data = load_prepared(paths.PREPARED_DIR)
    from imgclf.model import is_chief

    if p.train.strategy == "multi_worker" and not is_chief():
        train_worker(p, data)
        return
    data_md5 = fingerprint(paths.PREPARED_DIR)
    with tracking.run("train", p.mlflow.experiment, params={"base": p.section("base"), "train": p.section("train")},
                      tags={tracking.TAG_DATA_MD5: data_md5}, defer=True) as active:
        from imgclf.model import fit

        strategy, policy, model = prepare_model(p, data)
        x_train = data.x["train"]
        active.ready()  # the store must work before hours of training, not after
        tracking.log_param("model.dtype_policy", policy)
        tracking.log_param("model.parameters", model.count_params())
        tracking.log_param("model.replicas", strategy.num_replicas_in_sync)

        def on_epoch(epoch: int, row: dict) -> None:
            tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)

        started = time.perf_counter()
        history = fit(model, x_train, data.y["train"], data.x["val"], data.y["val"], p.train,
                      p.base.seed, on_epoch=on_epoch, strategy=strategy)
        seconds = time.perf_counter() - started

        with atomic_path(paths.MODEL) as tmp:
            model.save(tmp)
        model_md5 = md5_file(paths.MODEL)
        tracking.set_tag(tracking.TAG_MODEL_MD5, model_md5)
        write_text(paths.HISTORY, history_csv(history))
        summary = {k: v for k, v in history[-1].items() if k != "epoch"}
        summary.update({"train_seconds": round(seconds, 3),
                        "train_images_per_second": round(len(x_train) * p.train.epochs / seconds, 1)})
        tracking.log_artifact(paths.MODEL, artifact_path="model")
        tracking.log_artifact(paths.PREPARED_DIR / paths.LABELS_FILE, artifact_path="model")
        tracking.log_keras_model(model, data.labels, p.mlflow.model_name if p.mlflow.register_model else None)
        tracking.log_artifact(paths.HISTORY)
        summary["mlflow_seconds"] = round(tracking.seconds_spent(), 3)
        summary["mlflow_background_cpu_seconds"] = round(tracking.background_cpu_seconds(), 3)
        write_json(paths.TRAIN_REPORT, summary)
        tracking.log_metrics({k: summary[k] for k in ("train_seconds", "train_images_per_second", "mlflow_seconds",
                                                          "mlflow_background_cpu_seconds")})
        log.info("trained %d epochs in %.1f s (%s) [run %s]", p.train.epochs, seconds,
                 ", ".join(f"{k}={v:.4f}" for k, v in summary.items() if "accuracy" in k), active.info.run_id)


def prepare_model(p: Params, data: Prepared):
    """The strategy, the dtype policy and the compiled model, built under the strategy."""
    from imgclf.model import build_model, make_strategy, seed_everything, set_precision

    strategy = make_strategy(p.train.strategy)  # first: a multi-worker one sets TensorFlow up
    seed_everything(p.base.seed, p.train.deterministic)
    policy = set_precision(p.train.mixed_precision)
    with strategy.scope():
        model = build_model(data.x["train"].shape[1], len(data.labels), p.train)
    return strategy, policy, model


def train_worker(p: Params, data: Prepared) -> None:
    """A non-chief worker's part: the same training steps, no outputs, no MLflow run."""
    from imgclf.model import fit, tf_config

    task = tf_config()["task"]
    strategy, _, model = prepare_model(p, data)
    log.info("%s %s of %d replicas: training; the chief writes the model and logs the run",
             task["type"], task["index"], strategy.num_replicas_in_sync)
    history = fit(model, data.x["train"], data.y["train"], data.x["val"], data.y["val"], p.train, p.base.seed,
                  strategy=strategy)
    log.info("%s %s done after %d epochs", task["type"], task["index"], len(history))


if __name__ == "__main__":
    main("train", run)
