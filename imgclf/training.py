"""Training: build the model under its strategy and fit it, one dict of metrics per epoch.

:func:`train` is what the train stage runs, on every worker of a multi-worker cluster alike;
:func:`fit` runs Keras' ``model.fit``, or the multi-worker step loop where ``fit`` cannot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf import interrupt
from imgclf.distribute import fit_multi_worker, is_multi_worker
from imgclf.params import Params, TrainParams
from imgclf.prepared import Prepared
from imgclf.streaming import make_dataset

log = logging.getLogger(__name__)


def fit(
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    p: TrainParams,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    strategy=None,
) -> list[dict[str, Any]]:
    """Train ``model``; return one dict of metrics per epoch (``epoch`` counts from 1).

    ``model.fit`` does the work, except under a multi-worker strategy, which it cannot run in
    Keras 3 (keras-team/keras#20585): :func:`fit_multi_worker` does it there.
    """
    import keras

    history: list[dict[str, Any]] = []

    def record(epoch: int, logs: dict) -> None:
        row = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        history.append(row)
        log.info("epoch %d/%d: %s", epoch, p.epochs, " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "epoch"))
        if on_epoch:
            on_epoch(epoch, row)
        interrupt.check()  # a Ctrl-C whose exception got lost stops training here

    if strategy is not None and is_multi_worker(strategy):
        fit_multi_worker(model, strategy, x_train, y_train, x_val, y_val, p, seed, record)
        return history

    class _Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            record(epoch + 1, logs or {})

    train_ds = make_dataset(x_train, y_train, p.batch_size, shuffle=True, seed=seed)
    val_ds = make_dataset(x_val, y_val, p.batch_size, shuffle=False, seed=seed) if len(x_val) else None
    # The dataset shuffles itself (seeded); Keras' own shuffle does not apply to tf.data.
    model.fit(train_ds, validation_data=val_ds, epochs=p.epochs, verbose=0, shuffle=False, callbacks=[_Record()])
    return history


@dataclass
class Trained:
    """A fitted model with its per-epoch history and the seconds its fitting took."""

    model: Any
    history: list[dict[str, Any]]
    seconds: float


def prepare_model(p: Params, data: Prepared):
    """The strategy, the dtype policy and the compiled model, built under the strategy."""
    from imgclf.distribute import make_strategy
    from imgclf.model import build_model
    from imgclf.runtime import seed_everything, set_precision

    strategy = make_strategy(p.train.strategy)  # first: a multi-worker one sets TensorFlow up
    seed_everything(p.base.seed, p.train.deterministic)
    policy = set_precision(p.train.mixed_precision)
    with strategy.scope():
        model = build_model(data.x["train"].shape[1], len(data.labels), p.train)
    return strategy, policy, model


def train(
    p: Params,
    data: Prepared,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> Trained:
    """Build the model for ``p`` and fit it on ``data``'s training split.

    ``on_start(facts)`` gets the model's facts before the first epoch, ``on_epoch(epoch, row)``
    each epoch's metrics as it ends.
    """
    strategy, policy, model = prepare_model(p, data)
    facts = {
        "model.dtype_policy": policy,
        "model.parameters": model.count_params(),
        "model.replicas": strategy.num_replicas_in_sync,
    }
    if on_start:
        on_start(facts)
    started = time.perf_counter()
    history = fit(
        model, data.x["train"], data.y["train"], data.x["val"], data.y["val"], p.train, p.base.seed,
        on_epoch=on_epoch, strategy=strategy,
    )  # fmt: skip
    return Trained(model=model, history=history, seconds=time.perf_counter() - started)
