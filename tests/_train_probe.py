"""Train the tiny CNN once under a given ``train.strategy`` and print a JSON line of results.

Run as ``python -m tests._train_probe STRATEGY`` by test_distributed.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def main() -> None:
    strategy_name = sys.argv[1]
    from imgclf.training.distribute import is_chief, make_strategy
    from imgclf.training.fit import fit
    from imgclf.training.model import build_model
    from imgclf.training.runtime import seed_everything

    strategy = make_strategy(strategy_name)
    from imgclf.core.params import TrainParams
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
    print(
        json.dumps(
            {
                "strategy": strategy_name,
                "replicas": strategy.num_replicas_in_sync,
                "chief": is_chief(),
                "accuracy": accuracy,
                "seconds": seconds,
                "train_accuracy": history[-1]["accuracy"],
                "epochs": len(history),
                "weights_md5": weights_md5(model),
            }
        ),
        flush=True,
    )


def weights_md5(model) -> str:
    import hashlib

    digest = hashlib.md5()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    main()
