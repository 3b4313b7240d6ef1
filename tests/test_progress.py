"""Progress within an epoch: a plain line at most every IMGCLF_PROGRESS_SECONDS off a terminal."""

from __future__ import annotations

import logging

import pytest

from imgclf.console import progress


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock(1000.0)
    monkeypatch.setattr(progress.time, "monotonic", clock)
    monkeypatch.setenv("IMGCLF_PROGRESS_SECONDS", "2")
    return clock


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "train"]


def test_plain_lines_come_at_most_every_interval_with_steps_rate_and_time_left(clock, caplog):
    caplog.set_level(logging.INFO, logger="train")
    bar = progress.EpochProgress(epochs=3, steps=10, batch_size=8, images=80, interactive=False)
    bar.start(2)
    for _ in range(5):  # one step a second: 8 images/s
        clock.now += 1
        bar.advance()
    # Lines at 2 s and 4 s, not at 1, 3 and 5 s.
    assert _lines(caplog) == [
        "epoch 2/3: step 2/10 (20%), 8 img/s, ETA 00:00:08",
        "epoch 2/3: step 4/10 (40%), 8 img/s, ETA 00:00:06",
    ]
    for _ in range(5):
        clock.now += 1
        bar.advance()
    assert len(_lines(caplog)) == 4  # at 6 and 8 s; none for the last step (the epoch's own line follows)
    bar.close()


def test_a_resumed_epoch_counts_only_the_steps_it_ran(clock, caplog):
    caplog.set_level(logging.INFO, logger="train")
    bar = progress.EpochProgress(epochs=1, steps=10, batch_size=10, images=95, interactive=False)
    bar.start(1, step=6)  # 60 images were done before the interruption
    clock.now += 2
    bar.advance(2)  # 20 images in 2 s; 15 left
    assert _lines(caplog) == ["epoch 1/1: step 8/10 (80%), 10 img/s, ETA 00:00:01"]


def test_on_a_terminal_it_draws_a_bar_and_logs_no_lines(clock, caplog):
    caplog.set_level(logging.INFO, logger="train")
    bar = progress.EpochProgress(epochs=1, steps=4, batch_size=8, images=30, interactive=True)
    bar.start(1)
    for _ in range(4):
        clock.now += 5
        bar.advance()
    assert bar.bar.n == 30 and bar.bar.total == 30  # the last batch is short: images, not steps x batch
    bar.close()
    assert bar.bar is None and _lines(caplog) == []
