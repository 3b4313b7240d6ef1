"""Train under ``train.strategy`` and print a JSON line of results per job.

Run as ``python -m tests._train_probe JOB...`` by test_distributed, where a JOB is a strategy
(``default``, ``mirrored``, ``multi_worker``: the tiny CNN once) or ``STRATEGY:finetune`` (a
MobileNetV3Small fine-tuned in two phases). The jobs run one after the other in this process, so
one TensorFlow start (and one cluster) serves them all.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    from imgclf.training.distribute import make_strategy

    strategies = {}
    for job in sys.argv[1:]:
        name, _, what = job.partition(":")
        if name not in strategies:
            strategies[name] = make_strategy(name)
        job_of = {"finetune": fine_tune, "rows": resumed_rows}
        result = job_of.get(what, train_cnn)(name, strategies[name])
        print(json.dumps({"job": job, **result}), flush=True)


def train_cnn(strategy_name: str, strategy) -> dict:
    """The tiny CNN on 90 images of the three colour classes, tested on 30."""
    from imgclf.core.params import TrainParams
    from imgclf.training.distribute import is_chief
    from imgclf.training.fit import fit
    from imgclf.training.model import build_model
    from imgclf.training.runtime import seed_everything
    from tests.helpers import CLASS_COLOURS, as_prepared, make_image

    seed_everything(0, deterministic=False)
    images, labels = [], []
    for c, colour in enumerate(CLASS_COLOURS.values()):
        for n in range(40):
            images.append(np.asarray(make_image(colour, seed=1000 * c + n)))
            labels.append(c)
    x, y = np.stack(images), np.asarray(labels, dtype=np.uint8)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    x_train, y_train, x_test, y_test = x[:90], y[:90], x[90:], y[90:]
    p = TrainParams(
        conv_filters=[8],
        dense_units=16,
        epochs=8,
        batch_size=16,
        mixed_precision="off",
        strategy=strategy_name,
        early_stopping={"monitor": "loss"},
    )
    with strategy.scope():
        model = build_model(16, 3, p)
    start = time.perf_counter()
    trained = fit(model, as_prepared(x_train, y_train, x_test[:0], y_test[:0]), p, seed=0, strategy=strategy)
    history = trained.history
    seconds = time.perf_counter() - start
    accuracy = float((model.predict(x_test, verbose=0).argmax(1) == y_test).mean())
    return {
        "replicas": strategy.num_replicas_in_sync,
        "chief": is_chief(),
        "accuracy": accuracy,
        "seconds": seconds,
        "train_accuracy": history[-1]["accuracy"],
        "epochs": len(history),
        "weights_md5": weights_md5(model),
    }


def resumed_rows(strategy_name: str, strategy) -> dict:  # noqa: ARG001
    """The rows each replica reads in steps 2 and 3 of the sharded input, uninterrupted and
    resumed after step 1: a resume must read what the uninterrupted run read."""
    from imgclf.training.multi_worker import _sharded_batches

    x = np.arange(60, dtype=np.uint8).reshape(60, 1, 1, 1)  # each row's image is its number
    y = np.zeros(60, dtype=np.uint8)

    def rows(skip: int, steps: int) -> list[list[int]]:
        batches = iter(_sharded_batches(strategy, x, y, global_batch=8, seed=0, skip=skip))
        out = []
        for _ in range(steps):
            images, _ = next(batches)
            out.append(sorted(int(v) for t in strategy.experimental_local_results(images) for v in t.numpy().ravel()))
        return out

    return {"uninterrupted": rows(0, 3)[1:], "resumed": rows(1, 2)}


def fine_tune(strategy_name: str, strategy) -> dict:
    """Two phases (1 frozen epoch, then the top 12 layers at a tenth of the rate) of a backbone
    taken as pretrained: print the learning rates, the weights' MD5 and which weights moved."""
    from imgclf.core.params import TrainParams
    from imgclf.training.backbones import FineTuning, build_backbone_model
    from imgclf.training.fit import Session, fit
    from imgclf.training.model import compile_model, make_optimizer
    from imgclf.training.runtime import seed_everything
    from tests.helpers import as_prepared

    seed_everything(0, deterministic=False)
    rng = np.random.default_rng(0)
    y = (np.arange(32) % 3).astype(np.uint8)
    x = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    p = TrainParams(
        model="mobilenet_v3_small",
        epochs=2,
        batch_size=8,
        mixed_precision="off",
        strategy=strategy_name,
        early_stopping={"monitor": "loss"},
        fine_tune={"frozen_epochs": 1, "unfreeze": 12},
    )
    tuning = FineTuning(p, pretrained=True)
    with strategy.scope():
        model = build_backbone_model(32, 3, p, None, pretrained=True)
        compile_model(model, make_optimizer(p.optimizer, p.learning_rate))
        session = Session(model, p, len(y), tuning=tuning)
    start = {w.path: w.numpy().copy() for w in model.weights}
    trained = fit(model, as_prepared(x, y, x[:0], y[:0]), p, seed=0, session=session, strategy=strategy)
    moved = sorted(w.path for w in model.weights if not np.array_equal(w.numpy(), start[w.path]))
    return {
        "rates": [row["learning_rate"] for row in trained.history],
        "moved": moved,
        "weights_md5": weights_md5(model),
    }


def weights_md5(model) -> str:
    import hashlib

    digest = hashlib.md5()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    from imgclf.console.cli import pause_collector, resume_collector, start_tensorflow_quietly

    pause_collector()  # as a stage starts (imgclf/console/cli.py)
    start_tensorflow_quietly()
    resume_collector()
    main()
