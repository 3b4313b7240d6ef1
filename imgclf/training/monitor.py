"""The monitored metric: which epoch is best, when to stop early, and each epoch's learning rate.

Plain Python with no TensorFlow, and all of its state in one small :class:`MonitorState`, so a
checkpoint can carry it and a resumed run decides exactly as an uninterrupted one would (Keras'
``EarlyStopping`` resets its state when ``fit`` starts again, keras-team/keras#19179).

Rules, per epoch ``e`` of ``train.epochs`` (counted from 1):

- **Best epoch**: the first epoch whose monitor beats every earlier one by more than
  ``early_stopping.min_delta`` (lower for a loss, higher for an accuracy). Its weights are the
  ones saved, whether or not training stops early.
- **Learning rate**: ``constant`` keeps ``learning_rate``; ``cosine`` is
  ``learning_rate * (1 + cos(pi * (e - 1) / epochs)) / 2``, from the full rate at epoch 1
  towards zero; ``plateau`` halves the rate after ``patience`` epochs without improvement
  (2 when early stopping is off), and again after each further ``patience`` such epochs.
- **Early stopping** (``patience`` > 0): stop after ``patience`` epochs without improvement.
  With ``plateau`` the halving comes first: training stops only when a halved rate has had
  ``patience`` epochs of its own and still brought no improvement.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from imgclf.core.params import TrainParams

PLATEAU_PATIENCE_WITHOUT_STOPPING = 2


@dataclass
class MonitorState:
    """Everything the rules above remember between epochs."""

    rate: float  # the plateau schedule's current rate
    best: float | None = None
    best_epoch: int = 0
    wait: int = 0  # epochs since the best one
    plateau_wait: int = 0  # epochs since the best one or the last halving
    halved: bool = False  # the rate was halved since the best epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> MonitorState:
        return cls(**raw)


@dataclass(frozen=True)
class Decision:
    improved: bool
    stop: bool


def within_phases(decision: Decision, state: MonitorState, more_to_come: bool, ends_phase: bool) -> Decision:
    """``decision`` for an epoch of a fine-tuning phase with ``more_to_come`` (the backbone frozen,
    before its top layers learn): never a stop, as the next phase has not had its chance (a head
    alone plateaus fast); at its last epoch (``ends_phase``) patience starts counting anew."""
    if not more_to_come:
        return decision
    if ends_phase:
        state.wait = state.plateau_wait = 0
    return Decision(improved=decision.improved, stop=False)


class Monitor:
    """Applies the rules above for one training's :class:`TrainParams`."""

    def __init__(self, p: TrainParams):
        self.p = p
        self.name = p.early_stopping.monitor
        self.lower_is_better = "loss" in self.name

    def initial(self) -> MonitorState:
        return MonitorState(rate=self.p.learning_rate)

    def learning_rate(self, epoch: int, state: MonitorState) -> float:
        """The rate for ``epoch`` (from 1), given the state after the epoch before."""
        if self.p.lr_schedule == "cosine":
            return self.p.learning_rate * (1 + math.cos(math.pi * (epoch - 1) / self.p.epochs)) / 2
        if self.p.lr_schedule == "plateau":
            return state.rate
        return self.p.learning_rate

    def update(self, state: MonitorState, epoch: int, metrics: dict[str, float]) -> Decision:
        """Fold ``epoch``'s metrics into ``state`` (in place) and say what follows."""
        value = metrics.get(self.name)
        if value is None or math.isnan(value):
            raise KeyError(f"the monitored {self.name} is missing from epoch {epoch}'s metrics {sorted(metrics)}")
        delta = self.p.early_stopping.min_delta
        if state.best is None or (value < state.best - delta if self.lower_is_better else value > state.best + delta):
            state.best, state.best_epoch = value, epoch
            state.wait = state.plateau_wait = 0
            state.halved = False
            return Decision(improved=True, stop=False)
        state.wait += 1
        state.plateau_wait += 1
        patience = self.p.early_stopping.patience
        if self.p.lr_schedule == "plateau":
            waited = state.plateau_wait >= (patience or PLATEAU_PATIENCE_WITHOUT_STOPPING)
            if waited and patience and state.halved:
                return Decision(improved=False, stop=True)
            if waited:
                state.rate /= 2
                state.plateau_wait = 0
                state.halved = True
            return Decision(improved=False, stop=False)
        return Decision(improved=False, stop=bool(patience) and state.wait >= patience)
