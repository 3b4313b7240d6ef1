"""Command ``tune``: search the train params of ``tune.space`` with an Optuna study.

    python -m stages.tune --trials 20 [--timeout 2h] [--jobs 2] [--resume] [--apply]

Every trial is an MLflow run nested under the study's run; the best params come out as a
``dvc exp run`` command, which ``--apply`` runs. See :mod:`imgclf.tuning.search` and docs/tuning.md.
This module is the command: its arguments, the study's other processes, what it prints, and
the winner's ``dvc exp run``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import shlex
import subprocess
import sys
import time

from imgclf.console import interrupt
from imgclf.console.cli import main
from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.core.params import load
from imgclf.tuning import search
from imgclf.tuning.search import Options

log = logging.getLogger("tune")


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


def spawn_workers(o: Options) -> list[subprocess.Popen]:
    """The study's other ``--jobs`` processes: this command again, joining the study."""
    procs = []
    for k in range(1, o.jobs):
        cmd = [sys.executable, "-m", "stages.tune", "--resume", "--study", o.study, "--trials", str(o.trials)]
        cmd += ["--worker", str(k)]
        if o.storage:
            cmd += ["--storage", o.storage]
        if o.timeout:
            cmd += ["--timeout", str(o.timeout)]
        procs.append(subprocess.Popen(cmd, cwd=paths.ROOT, stdin=subprocess.PIPE))  # closed: stop
    return procs


# Seconds the other processes get to stop on their own, then after a SIGTERM, before a SIGKILL.
WORKER_GRACE = 60.0


def stop_workers(procs: list[subprocess.Popen]) -> None:
    """Stop the study's other processes, each closing its trial's run: their stdin is closed,
    which stops them as a first Ctrl-C does (:func:`~imgclf.console.interrupt.stop_when_closed`;
    nothing more if the terminal's Ctrl-C reached them too: a second signal would stop them at
    once, wherever they are). Those still running after :data:`WORKER_GRACE` get a SIGTERM, then
    a SIGKILL."""
    live = [proc for proc in procs if proc.poll() is None]
    for proc in live:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    if live:
        log.info("waiting for %d other process(es) of the study to close their trials", len(live))
    live = _still_running(live, WORKER_GRACE)
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    for proc in _still_running(live, WORKER_GRACE):
        log.warning("process %d did not stop in %.0f s: killing it", proc.pid, WORKER_GRACE)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _still_running(procs: list[subprocess.Popen], seconds: float) -> list[subprocess.Popen]:
    deadline = time.monotonic() + seconds
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    return [proc for proc in procs if proc.poll() is None]


def report(o: Options, out: search.Outcome) -> None:
    """The study's outcome and the winner's command, on stdout."""
    c = out.counts
    print(
        f"study {o.study}: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed (MLflow run {out.run_id})"
    )
    if out.best is None:
        return
    line = f"best: trial {out.best.number}, {out.monitor} {out.best.value:.4f}"
    if out.baseline_value is not None:
        line += f" (params.yaml's values: {out.baseline_value:.4f})"
    print(line)
    print("reproduce it as a DVC experiment:")
    print("  " + out.command)


def apply_winner(out: search.Outcome) -> None:
    """Run the winner's ``dvc exp run``: the final model comes from the normal pipeline. If an
    experiment of that name was run from this commit already (a second ``--apply``, or a study
    made anew under the same name), the winner runs under the name with a number added."""
    if out.command is None:
        raise PipelineError("no trial completed: there is no winner to run")
    cmd = shlex.split(out.command)
    at = cmd.index("-n") + 1
    listed = subprocess.run(
        ["dvc", "exp", "list", "--name-only"], cwd=paths.ROOT, capture_output=True, text=True, check=False
    )
    taken = set(listed.stdout.split())
    if cmd[at] in taken:
        name = next(f"{cmd[at]}-{k}" for k in range(2, len(taken) + 3) if f"{cmd[at]}-{k}" not in taken)
        log.info("experiment %s was run from this commit already: running the winner as %s", cmd[at], name)
        cmd[at] = name
    log.info("running %s", shlex.join(cmd))
    done = subprocess.run(cmd, cwd=paths.ROOT, check=False)
    if done.returncode != 0:
        raise PipelineError(f"{shlex.join(cmd)} failed (exit {done.returncode}); the study is kept: rerun it by hand")


def tune(argv: list[str] | None = None) -> None:
    o = parse_args(argv)
    if o.worker:  # spawned by the study's first process: stops when it says so, or dies
        interrupt.stop_when_closed(sys.stdin.buffer)
    s = search.open_search(load(paths.PARAMS), o)
    # The other processes start before this one imports TensorFlow (in optimize), so all of
    # them import it at once and start work together.
    procs = spawn_workers(o) if o.worker == 0 and o.jobs > 1 else []
    status = "FAILED"
    try:
        search.optimize(s)
        for proc in procs:
            proc.wait()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            stop_workers(procs)
        finally:  # even after a second Ctrl-C during the wait: the study run is closed
            outcome = search.conclude(s, status) if o.worker == 0 else None
            if outcome is not None:
                report(o, outcome)
    if outcome is not None and o.apply:
        apply_winner(outcome)


if __name__ == "__main__":
    main("tune", tune)
