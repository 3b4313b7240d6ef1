"""Progress within a training epoch: steps, images per second and time left.

On a terminal it is a bar, drawn by ``tqdm`` like augment's. Anywhere else (CI, ``dvc queue
logs``, a redirect to a file) a bar would be a stream of carriage returns, so it is one plain log
line at most every ``IMGCLF_PROGRESS_SECONDS`` seconds (30 by default) with the same figures.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("train")

DEFAULT_SECONDS = 30.0


class EpochProgress:
    """Shows the steps of one epoch after another; call :meth:`start`, :meth:`advance`, :meth:`close`."""

    def __init__(self, epochs: int, steps: int, batch_size: int, images: int, interactive: bool | None = None):
        self.epochs, self.steps, self.batch_size, self.images = epochs, steps, batch_size, images
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.interval = float(os.environ.get("IMGCLF_PROGRESS_SECONDS") or DEFAULT_SECONDS)
        self.bar = None
        self.epoch = self.step = self.first_step = 0
        self.started = self.last_line = 0.0

    def _done_images(self, step: int) -> int:
        return min(step * self.batch_size, self.images)

    def start(self, epoch: int, step: int = 0) -> None:
        """Epoch ``epoch`` (from 1) begins, ``step`` of its steps done already (a resume)."""
        self.close()
        self.epoch, self.step, self.first_step = epoch, step, step
        self.started = self.last_line = time.monotonic()
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.images,
                initial=self._done_images(step),
                desc=f"epoch {epoch}/{self.epochs}",
                unit="img",
                leave=False,
                dynamic_ncols=True,
            )

    def advance(self, steps: int = 1) -> None:
        before = self._done_images(self.step)
        self.step += steps
        if self.bar is not None:
            self.bar.update(self._done_images(self.step) - before)
            self.bar.set_postfix_str(f"step {self.step}/{self.steps}", refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval and self.step < self.steps:
            self.last_line = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """The plain progress line: steps, images, images/s and the epoch's time left."""
        elapsed = max(now - self.started, 1e-9)
        rate = (self._done_images(self.step) - self._done_images(self.first_step)) / elapsed
        left = (self.images - self._done_images(self.step)) / rate if rate > 0 else float("nan")
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if left == left else "?"
        return (
            f"epoch {self.epoch}/{self.epochs}: step {self.step}/{self.steps} "
            f"({100 * self.step // self.steps}%), {rate:.0f} img/s, ETA {eta}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
