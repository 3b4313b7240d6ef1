"""The monitor's rules: best epoch, early stopping, and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest

from imgclf.core.errors import PipelineError
from imgclf.core.params import TrainParams, parse
from imgclf.training.monitor import Monitor, MonitorState, within_phases


def _run(p: TrainParams, values: list[float]) -> tuple[list[float], list[bool], MonitorState]:
    """Feed one monitored value per epoch; return each epoch's rate, each stop decision, the state."""
    monitor, rates, stops = Monitor(p), [], []
    state = monitor.initial()
    for epoch, value in enumerate(values, start=1):
        rates.append(monitor.learning_rate(epoch, state))
        stops.append(monitor.update(state, epoch, {p.early_stopping.monitor: value}).stop)
        if stops[-1]:
            break
    return rates, stops, state


def test_best_epoch_needs_more_than_min_delta_and_follows_the_metric_direction():
    p = TrainParams(early_stopping={"monitor": "val_loss", "min_delta": 0.05})
    _, stops, state = _run(p, [1.0, 0.97, 0.9, 0.88])
    assert (state.best_epoch, state.best) == (3, 0.9) and not any(stops)  # 0.97 and 0.88: not enough
    _, _, state = _run(TrainParams(early_stopping={"monitor": "val_accuracy"}), [0.5, 0.8, 0.7, 0.8])
    assert state.best_epoch == 2  # higher is better; a tie is no improvement


def test_early_stopping_waits_patience_epochs_and_never_stops_when_off():
    p = TrainParams(epochs=20, early_stopping={"patience": 2})
    _, stops, state = _run(p, [1.0, 0.5, 0.6, 0.4, 0.45, 0.41, 0.3])
    assert len(stops) == 6 and stops[-1] and state.best_epoch == 4  # epochs 5 and 6 did not beat 0.4
    _, stops, _ = _run(TrainParams(epochs=20), [1.0] + [2.0] * 10)
    assert not any(stops) and len(stops) == 11


def test_the_frozen_phase_never_stops_a_fine_tuning_and_patience_counts_anew_after_it():
    from imgclf.training.backbones import phase_at, phases

    p = TrainParams(
        model="mobilenet_v3_small",
        init="imagenet",
        epochs=10,
        fine_tune={"frozen_epochs": 6},
        early_stopping={"monitor": "val_loss", "patience": 3},
    )
    plan = phases(p, pretrained=True)
    # The head alone plateaus from epoch 3 (patience runs out at 6, or at 5 with patience 2); the
    # top layers learning bring the loss down from epoch 8.
    for patience in (3, 2):
        p = p.model_copy(update={"early_stopping": p.early_stopping.model_copy(update={"patience": patience})})
        monitor, stops = Monitor(p), []
        state = monitor.initial()
        for epoch, value in enumerate([0.9, 0.7, 0.69, 0.70, 0.695, 0.71, 0.72, 0.5, 0.45, 0.44], start=1):
            phase = phase_at(plan, epoch)
            decision = monitor.update(state, epoch, {"val_loss": value})
            decision = within_phases(decision, state, phase.last < p.epochs, ends_phase=epoch == phase.last)
            stops.append(decision.stop)
            if stops[-1]:
                break
        assert stops == [False] * 10 and state.best_epoch == 10, patience


def test_cosine_goes_from_the_full_rate_towards_zero_over_the_epochs():
    p = TrainParams(epochs=4, learning_rate=0.1, lr_schedule="cosine")
    rates, _, _ = _run(p, [1.0, 0.9, 0.8, 0.7])
    assert rates == pytest.approx(
        [0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2]
    )
    assert rates == sorted(rates, reverse=True)


def test_plateau_halves_after_patience_and_stops_only_when_halving_did_not_help():
    p = TrainParams(epochs=30, learning_rate=0.8, lr_schedule="plateau")  # no early stopping: patience 2
    rates, stops, _ = _run(p, [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0])
    assert rates == [0.8, 0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.2] and not any(stops)
    p = TrainParams(epochs=30, learning_rate=0.8, lr_schedule="plateau", early_stopping={"patience": 3})
    rates, stops, state = _run(p, [1.0] + [1.0] * 10)
    # Epoch 4: three epochs without improvement halve the rate; epoch 7: three more at it, stop.
    assert rates == [0.8, 0.8, 0.8, 0.8, 0.4, 0.4, 0.4] and stops[-1] and state.best_epoch == 1


def test_the_state_survives_a_round_trip_through_json():
    p = TrainParams(lr_schedule="plateau", early_stopping={"patience": 3})
    _, _, state = _run(p, [1.0, 0.9, 0.95, 0.97])
    assert MonitorState.from_dict(state.to_dict()) == state


def test_a_validation_monitor_without_a_validation_split_is_a_params_error():
    with pytest.raises(
        PipelineError, match=r"train.early_stopping.monitor is val_loss but data.val_size is 0.*monitor loss"
    ):
        parse({"data": {"val_size": 0}})
    assert parse({"data": {"val_size": 0}, "train": {"early_stopping": {"monitor": "loss"}}}).data.val_size == 0
    with pytest.raises(PipelineError, match="early_stopping.monitor"):
        parse({"train": {"early_stopping": {"monitor": "f1"}}})
