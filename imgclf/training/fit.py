"""Training: build the model under its strategy and fit it, resumably, one dict of metrics per epoch.

:func:`train` is what the train stage runs, on every worker of a multi-worker cluster alike.
:class:`Session` is one training across interruptions: the hooks a loop calls, over its
:class:`TrainingState` (history, the monitor's state, see :mod:`imgclf.training.monitor`, and
where it stands: epoch and step), its :class:`BestWeights`, its progress display and its
checkpoints (:mod:`imgclf.training.checkpoint`). :func:`fit` drives Keras' ``model.fit``
through it; the multi-worker step loop (:mod:`imgclf.training.distribute`) drives it too.

What a checkpoint holds, so that a resumed run continues exactly where the last one stopped:
every model variable (weights and the dropout layers' random-generator states), every optimizer
variable (moments, step count, rate), the best epoch's weights, and in ``state.json`` the
history, the monitor's state and the position. The data order of each epoch depends on the seed
and the epoch alone (:func:`imgclf.training.streaming.epoch_order`), so the resumed run reads the same
batches. A signal mid-epoch checkpoints at the end of the step it lands in, with the epoch's
running metric totals, so the resumed epoch's figures cover the whole epoch.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from imgclf.console import interrupt
from imgclf.console.progress import EpochProgress
from imgclf.core.errors import PipelineError
from imgclf.core.params import Params, TrainParams
from imgclf.core.prepared import Prepared
from imgclf.training.backbones import FineTuning
from imgclf.training.checkpoint import Checkpoints, CheckpointWriter
from imgclf.training.monitor import Monitor, MonitorState, within_phases
from imgclf.training.origin import Origin, copy_from, resolve

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class Trained:
    """A fitted model (the best epoch's weights) with its per-epoch history and counts.

    ``seconds`` and ``images`` add up every session of the training, resumed ones included.
    """

    model: Any
    history: list[dict[str, Any]]
    seconds: float
    images: int
    best_epoch: int
    resumed_from_epoch: int

    @property
    def best(self) -> dict[str, Any]:
        return self.history[self.best_epoch - 1]


@dataclass
class TrainingState:
    """Where one training stands, across interruptions: beside the TensorFlow checkpoint, this is
    what a checkpoint's ``state.json`` holds."""

    monitor: MonitorState  # best epoch, early stopping, the plateau schedule's rate
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed of the epoch after that
    partial: list[float] | None = None  # the epoch's running metric totals at ``step``
    seconds: float = 0.0  # training time so far, every session together
    images: int = 0  # training images seen so far
    stopped: bool = False  # early stopping decided to stop

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["seconds"] = round(self.seconds, 3)
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingState:
        fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        fields["monitor"] = MonitorState.from_dict(raw["monitor"])
        fields["history"] = [dict(row) for row in raw["history"]]
        return cls(**fields)


class BestWeights:
    """A copy of the model's weights at its best epoch so far."""

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self.variables = [tf.Variable(w, trainable=False) for w in model.weights]

    def keep(self) -> None:
        for best, current in zip(self.variables, self.model.weights, strict=True):
            best.assign(current)

    def restore(self) -> None:
        for current, best in zip(self.model.weights, self.variables, strict=True):
            current.assign(best)


class Session:
    """One training as it goes: the hooks a training loop calls (:func:`fit`'s Keras callbacks,
    the multi-worker step loop), which move its :class:`TrainingState`, keep the best weights,
    show progress, write checkpoints (:class:`~imgclf.training.checkpoint.CheckpointWriter`) and
    turn a pending signal into a stop after the step's checkpoint."""

    def __init__(
        self,
        model,
        p: TrainParams,
        images_per_epoch: int,
        store: Checkpoints | None = None,
        on_epoch: EpochCallback | None = None,
        tuning: FineTuning | None = None,
    ):
        self.model, self.p, self.on_epoch = model, p, on_epoch
        self.tuning = tuning or FineTuning(p, pretrained=False)
        self.images_per_epoch = images_per_epoch
        self.steps = max(1, math.ceil(images_per_epoch / p.batch_size))
        self.monitor = Monitor(p)
        self.state = TrainingState(self.monitor.initial())
        self.resumed_from = 0
        self.rate = p.learning_rate
        self.progress = EpochProgress(p.epochs, self.steps, p.batch_size, images_per_epoch)
        self._clock = time.perf_counter()
        self.tuning.widen(model)
        model.optimizer.build(model.trainable_variables)
        self.best = BestWeights(model)
        self.writer = CheckpointWriter(
            store, model=list(model.variables), optimizer=list(model.optimizer.variables), best=self.best.variables
        )

    def restore(self) -> None:
        """Carry on from the checkpoint's state, if any (none: a fresh start)."""
        saved = self.writer.restore()
        if saved:
            self.state = TrainingState.from_dict(saved)
            self.resumed_from = self.state.epoch

    # -- the loop's hooks ----------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> None:
        """Set the epoch's learning rate and start its progress display."""
        self.rate = self.monitor.learning_rate(epoch, self.state.monitor) * self.tuning.rate(epoch)
        self.model.optimizer.learning_rate.assign(self.rate)
        self.progress.start(epoch, self.state.step)

    def end_step(self, epoch: int, step: int, totals: Callable[[], list[float]]) -> None:
        """After step ``step`` (from 1) of ``epoch``: on a pending signal, checkpoint here and stop;
        after the epoch's last step, once the epoch is validated and saved (:meth:`end_epoch`), as
        a checkpoint of all its steps and none of its validation would resume to an epoch without
        training figures."""
        self.progress.advance()
        if interrupt.requested() and step < self.steps:
            self._count_time(images=self._images_between(self.state.step, step))
            self.state.step, self.state.partial = step, totals()
            self.writer.save(self.state.to_dict())
            self.progress.close()
            log.info("checkpoint written at epoch %d, step %d of %d", epoch, step, self.steps)
            raise KeyboardInterrupt("interrupted")

    def end_epoch(self, epoch: int, logs: dict[str, Any], check_signal: bool = True) -> bool:
        """Record epoch ``epoch``; keep its weights if best; checkpoint; return whether to stop."""
        self.progress.close()
        row = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}, "learning_rate": self.rate}
        decision = self.monitor.update(self.state.monitor, epoch, row)
        phase = self.tuning.at(epoch)
        more = phase.last < self.p.epochs
        decision = within_phases(decision, self.state.monitor, more_to_come=more, ends_phase=epoch == phase.last)
        if decision.improved:
            self.best.keep()
        self._count_time(images=self._images_between(self.state.step, self.steps))
        self.state.history.append(row)
        self.state.epoch, self.state.step, self.state.partial = epoch, 0, None
        self.state.stopped = decision.stop
        self.writer.save(self.state.to_dict())  # the last one too: a signal from here on loses nothing
        self._report(epoch, row, decision.improved)
        if check_signal and interrupt.requested():  # a signal during validation: its epoch is saved
            self.stop_at_epoch_end()
        return self.state.stopped or epoch >= self.p.epochs

    def stop_at_epoch_end(self) -> None:
        """Stop after an epoch whose checkpoint is written (a signal came during its end)."""
        log.info("checkpoint written at the end of epoch %d", self.state.epoch)
        raise KeyboardInterrupt("interrupted")

    def finish(self) -> Trained:
        """The best epoch's weights in the model, and what the training did."""
        self.progress.close()
        self.best.restore()
        return Trained(
            model=self.model,
            history=self.state.history,
            seconds=self.state.seconds,
            images=self.state.images,
            best_epoch=self.state.monitor.best_epoch,
            resumed_from_epoch=self.resumed_from,
        )

    # -- internals -----------------------------------------------------------------------------

    def _report(self, epoch: int, row: dict[str, Any], improved: bool) -> None:
        """The epoch's log line (and early stopping's), then ``on_epoch``."""
        figures = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch")
        log.info("epoch %d/%d: %s%s", epoch, self.p.epochs, figures, " (best)" if improved else "")
        if self.on_epoch:
            self.on_epoch(epoch, row)
        if self.state.stopped:
            monitor = self.state.monitor
            log.info(
                "early stopping: no %s better than epoch %d's %.4g for %d epochs",
                self.monitor.name,
                monitor.best_epoch,
                monitor.best,
                monitor.wait,
            )

    def _images_between(self, first_step: int, last_step: int) -> int:
        return min(last_step * self.p.batch_size, self.images_per_epoch) - min(
            first_step * self.p.batch_size, self.images_per_epoch
        )

    def _count_time(self, images: int) -> None:
        now = time.perf_counter()
        self.state.seconds += now - self._clock
        self._clock = now
        self.state.images += images


def fit(model, data: Prepared, p: TrainParams, seed: int, session: Session | None = None, strategy=None) -> Trained:
    """Train ``model`` on ``data`` from where ``session`` stands (a new one: from the start) to
    the last epoch or an early stop; return the best epoch's model and the history.

    ``model.fit`` does the work, except under a multi-worker strategy, which it cannot run in
    Keras 3 (keras-team/keras#20585): :func:`~imgclf.training.multi_worker.fit_multi_worker` does it there.
    A first Ctrl-C or SIGTERM stops at the end of the step it lands in, after a checkpoint.
    """
    from imgclf.training.distribute import is_multi_worker
    from imgclf.training.multi_worker import fit_multi_worker

    if session is None:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            session = Session(model, p, len(data.y["train"]))
    with interrupt.deferred():
        if strategy is not None and is_multi_worker(strategy):
            fit_multi_worker(model, strategy, data, p, seed, session)
        else:
            _fit_keras(model, data, p, seed, session)
    return session.finish()


def _session_hooks(model, session: Session):
    """The Keras callback class that calls ``session``'s hooks from ``model.fit``; made in a
    function so that Keras is imported only when training."""
    import keras

    restore_totals: list[float] | None = session.state.partial

    def metric_totals() -> list[float]:
        return [float(v.numpy()) for v in model.metrics_variables]

    class Hooks(keras.callbacks.Callback):
        def __init__(self, first_step: int):
            super().__init__()
            self.first_step = first_step

        def on_epoch_begin(self, epoch: int, logs=None) -> None:  # noqa: ARG002
            session.begin_epoch(epoch + 1)

        def on_train_batch_end(self, batch: int, logs=None) -> None:  # noqa: ARG002
            nonlocal restore_totals
            if restore_totals is not None:
                # Keras' epoch metrics are running sums and counts, built at the first step:
                # adding the interrupted epoch's sums now gives exactly the uninterrupted state.
                for variable, value in zip(model.metrics_variables, restore_totals, strict=True):
                    variable.assign_add(value)
                restore_totals = None
            session.end_step(session.state.epoch + 1, self.first_step + batch + 1, metric_totals)

        def on_epoch_end(self, epoch: int, logs=None) -> None:
            if session.end_epoch(epoch + 1, logs or {}):
                self.model.stop_training = True
            self.first_step = 0

    return Hooks


def _fit_keras(model, data: Prepared, p: TrainParams, seed: int, session: Session) -> None:
    """``model.fit`` from where ``session`` stands: one call per fine-tuning phase (each compiled
    for the layers that learn in it), after a resumed epoch's remaining steps in a call of their own."""
    from imgclf.training.streaming import training_batches, validation_batches

    x, y = data.x["train"], data.y["train"]
    val_ds = validation_batches(data, p.batch_size)
    hooks = _session_hooks(model, session)
    weights = class_weights(p, y, len(data.labels))
    at = session.state
    while not at.stopped and at.epoch < p.epochs:
        epoch, skip = at.epoch + 1, at.step
        session.tuning.enter(model, epoch, starting=not skip)
        last = epoch if skip else session.tuning.at(epoch).last
        model.fit(
            training_batches(x, y, p.batch_size, seed, epoch, last, skip=skip),
            validation_data=val_ds,
            initial_epoch=epoch - 1,
            epochs=last,
            steps_per_epoch=session.steps - skip,
            verbose=0,
            shuffle=False,  # the batches come in epoch_order already
            class_weight=weights,
            callbacks=[hooks(skip)],
        )
        if at.epoch < epoch:  # nothing ran: never loop on it
            raise RuntimeError(f"model.fit ran no epoch from epoch {epoch}")


def class_weights(p: TrainParams, y, classes: int) -> dict[int, float] | None:
    """Each class's loss weight under ``train.class_weight: balanced`` (scikit-learn's rule:
    images / (classes * the class's images), so every class weighs the same in total), or None."""
    if p.class_weight == "none":
        return None
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    weights = dict.fromkeys(range(classes), 1.0)
    weights.update(zip(present.tolist(), compute_class_weight("balanced", classes=present, y=y).tolist()))
    return weights


def prepare_model(p: Params, data: Prepared, origin: Origin | None = None):
    """The strategy, the dtype policy and the compiled model with ``origin``'s starting weights,
    built under the strategy."""
    from imgclf.training.distribute import make_strategy
    from imgclf.training.model import build_model
    from imgclf.training.runtime import seed_everything, set_precision

    strategy = make_strategy(p.train.strategy)  # first: a multi-worker one sets TensorFlow up
    interrupt.take_back()
    seed_everything(p.base.seed, p.train.deterministic)
    policy = set_precision(p.train.mixed_precision)
    with strategy.scope():
        model = build_model(data.x["train"].shape[1], len(data.labels), p.train, origin)
        if origin is not None and origin.kind == "model":
            copy_from(model, origin, data.labels, p.train.init_head)
    return strategy, policy, model


def check_monitor(p: TrainParams, data: Prepared) -> None:
    """Stop with one line when the monitored metric cannot exist for this data."""
    monitor = p.early_stopping.monitor
    if monitor.startswith("val_") and not len(data.y["val"]):
        raise PipelineError(
            f"train.early_stopping.monitor is {monitor} but the validation split is empty: "
            f"raise data.val_size, or monitor {monitor[4:]}"
        )


def train(
    p: Params,
    data: Prepared,
    store: Checkpoints | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: EpochCallback | None = None,
    origin: Origin | None = None,
) -> Trained:
    """Build the model for ``p`` from ``origin`` (default: ``train.init`` resolved here, which a
    model URI cannot be) and fit it on ``data``'s training split, resuming from ``store``.

    ``on_start(facts)`` gets the model's facts before the first epoch, ``on_epoch(epoch, row)``
    each epoch's metrics as it ends (after its checkpoint is written).
    """
    check_monitor(p.train, data)
    origin = origin or resolve(p.train)
    strategy, policy, model = prepare_model(p, data, origin)
    if origin.kind == "imagenet" and origin.md5 is None:
        origin = resolve(p.train)  # Keras has just downloaded the file: its MD5 for the record
    facts = {
        **origin.params(),
        "model.dtype_policy": policy,
        "model.parameters": model.count_params(),
        "model.replicas": strategy.num_replicas_in_sync,
    }
    if on_start:
        on_start(facts)
    with strategy.scope():
        tuning = FineTuning(p.train, origin.pretrained)
        session = Session(model, p.train, len(data.y["train"]), store, on_epoch, tuning)
        session.restore()
    return fit(model, data, p.train, p.base.seed, session, strategy=strategy)
