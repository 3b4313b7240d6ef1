"""Command ``tune``: search the train params of ``tune.space`` with an Optuna study.

    python -m stages.tune --trials 20 [--timeout 2h] [--jobs 2] [--resume] [--apply]

Every trial is an MLflow run nested under the study's run; the best params come out as a
``dvc exp run`` command, which ``--apply`` runs. See :mod:`imgclf.tuning.search` and the README.
"""

from __future__ import annotations

import argparse
import re

from imgclf.console.cli import main
from imgclf.core import paths
from imgclf.core.params import load
from imgclf.tuning.search import Options, run


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m`` or ``2h`` as seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: give e.g. 90s, 30m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return int(text)


def parse_args(argv: list[str] | None = None) -> Options:
    ap = argparse.ArgumentParser(prog="python -m stages.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=positive, required=True, help="the study's budget of finished trials")
    ap.add_argument("--timeout", type=duration, help="stop starting trials after this long (90s, 30m, 2h)")
    ap.add_argument("--jobs", type=positive, default=1, help="processes working on the study at once")
    ap.add_argument("--resume", action="store_true", help="continue (or join) the existing study")
    ap.add_argument("--storage", help="Optuna storage URL (default: optuna.db at the main repository)")
    ap.add_argument("--study", default="tune", help="the study's name in the storage (default: tune)")
    ap.add_argument("--apply", action="store_true", help="run the winner's dvc exp run when the study ends")
    ap.add_argument("--enqueue", action="append", default=[], metavar="KEY=VALUE,...", help="a trial to run first")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    return Options(
        trials=a.trials,
        timeout=a.timeout,
        jobs=a.jobs,
        resume=a.resume,
        storage=a.storage,
        study=a.study,
        apply=a.apply,
        enqueue=tuple(a.enqueue),
        worker=a.worker,
    )


def tune(argv: list[str] | None = None) -> None:
    o = parse_args(argv)
    run(load(paths.PARAMS), o)


if __name__ == "__main__":
    main("tune", tune)  # TensorFlow starts once the study is open (imgclf.tuning.search.run)
