"""Where the test suite's CPU goes, in one run: each Python process's own CPU and each test's.

    python -m benchmarks.suite_cpu                      # the whole suite
    python -m benchmarks.suite_cpu -- -m "not slow"     # pytest's own arguments after --

Runs ``python -m pytest`` with two probes on PYTHONPATH; neither changes what the tests run:
a ``sitecustomize`` module that records, as each Python process exits (stages, `dvc`, `mlflow
server`, probes, pytest's workers), its CPU seconds, its command and its working folder (then
hands over to any other ``sitecustomize`` on the path); and a pytest plugin that records the
CPU each test takes in the worker that runs it and its ``tmp_path``. Then it prints the wall
time, the machine's busy CPU time over the run (``/proc/stat``: every process, detached ones
included), the gauge of docs/testing.md's table (user CPU of ``import tensorflow``) and a
pure-Python loop that no dependency moves, each before and after, then the CPU by kind of
process and by test (its own and that of the processes run in its folder).

What the tables miss: processes killed by a signal (the SIGKILLs of the resume and study
tests), those that leave by ``os._exit`` (the worker pool's forked workers) and other programs
(PostgreSQL, Chromium, git); only the machine's figure has them. A test's in-process CPU counts
every thread of its worker, background ones too (the template built ahead, MLflow's).
The records stay in the temporary folder it names, as JSON lines.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Written into the probe folder; imported by every Python process that starts with it on PYTHONPATH.
SITECUSTOMIZE = """
import atexit, importlib.machinery, importlib.util, json, os, resource, sys

_HERE = os.path.dirname(os.path.abspath(__file__))

def _record():
    try:
        try:
            cwd = os.getcwd()
        except OSError:  # its folder was deleted
            cwd = ""
        used = resource.getrusage(resource.RUSAGE_SELF)
        rec = {"pid": os.getpid(), "argv": sys.argv[:4], "cwd": cwd,
               "cpu": round(used.ru_utime + used.ru_stime, 2),
               "test": os.environ.get("PYTEST_CURRENT_TEST", "")}
        with open(os.path.join(_HERE, "processes.jsonl"), "a") as fh:
            fh.write(json.dumps(rec) + "\\n")
    except Exception:
        pass

atexit.register(_record)

# The sitecustomize this one hides, if any, runs as it would have.
_next = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != _HERE])
if _next is not None and _next.loader is not None:
    _next.loader.exec_module(importlib.util.module_from_spec(_next))
"""

PLUGIN = """
import json, os, time
import pytest

_OUT = os.path.join(os.path.dirname(__file__), "tests.jsonl")
_TMP = {}

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    # Before the fixtures go: pytest empties funcargs once teardown is over.
    _TMP[item.nodeid] = str((getattr(item, "funcargs", None) or {}).get("tmp_path") or "")
    yield

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    start = time.process_time()
    yield
    rec = {"test": item.nodeid, "cpu": round(time.process_time() - start, 2), "tmp": _TMP.pop(item.nodeid, ""),
           "worker": os.getpid()}
    with open(_OUT, "a") as fh:
        fh.write(json.dumps(rec) + "\\n")
"""


def machine_busy() -> float:
    """Seconds of CPU the machine has spent busy (all cores, all processes) since it started."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guest is in user


def gauges() -> tuple[float, float]:
    """(user CPU seconds of ``import tensorflow`` in a new process, as docs/testing.md's gauge;
    CPU seconds of a fixed pure-Python loop here)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    subprocess.run([sys.executable, "-c", "import tensorflow"], check=True, capture_output=True)
    tensorflow = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
    start, total = time.process_time(), 0
    for i in range(30_000_000):
        total += i
    return tensorflow, time.process_time() - start


def kind(rec: dict, workers: set[int]) -> str:
    """What a recorded process was: a stage, a `dvc` or `mlflow` command, a pytest worker, ..."""
    argv = rec["argv"] or [""]
    first = argv[0]
    if rec["pid"] in workers:
        return "pytest worker (in-process tests)"
    path = Path(first)
    if path.parent.name == "stages" and path.suffix == ".py":  # python -m stages.train
        return f"stage {path.stem}"
    name = path.name
    if name == "dvc" or first.endswith("dvc/__main__.py"):
        words = [a for a in argv[1:] if not a.startswith("-")][:2]
        if words and words[0] not in ("exp", "queue", "metrics", "params", "plots", "remote"):
            words = words[:1]
        return "dvc " + " ".join(words)
    if name == "mlflow":
        return "mlflow " + (argv[1] if len(argv) > 1 else "")
    if name == "_train_probe.py":
        return "training probe"
    if first.endswith("pytest/__main__.py"):
        return "pytest (controller)"
    if name == "__main__.py":  # python -m <package>
        return f"python -m {path.parent.name}"
    return "python " + (first if first == "-c" else name)


def owner(rec: dict, tmp_of: dict[str, str], base: str) -> str:
    """The test a process ran for: the one whose tmp_path holds its working folder; else the
    session fixture's folder (template, queued, ...); else the test running when it started."""
    cwd = rec["cwd"]
    for tmp, test in tmp_of.items():
        if cwd == tmp or cwd.startswith(tmp + os.sep):
            return test
    if base and cwd.startswith(base + os.sep):
        parts = Path(cwd).relative_to(base).parts
        parts = parts[1:] if parts and parts[0].startswith("popen-gw") else parts
        if parts:
            return f"(fixture folder {parts[0]})"
    return re.sub(r" \((setup|call|teardown)\)$", "", rec["test"]) or "(outside any test)"


def _records(path: Path) -> list[dict]:
    """The JSON lines of ``path`` (none if it is missing; a torn line is skipped)."""
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def table(rows: dict[str, list[float]], top: int, title: str) -> None:
    print(f"\n{title}\n{'CPU s':>8} {'count':>5}  what")
    for what, cpus in sorted(rows.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"{sum(cpus):8.1f} {len(cpus):5d}  {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=25, help="rows of each table")
    ap.add_argument("pytest_args", nargs="*", help="pytest's arguments (after --)")
    args = ap.parse_args()

    probe = Path(tempfile.mkdtemp(prefix="imgclf-suite-cpu-"))
    (probe / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (probe / "suite_cpu_plugin.py").write_text(PLUGIN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(probe), env.get("PYTHONPATH", "")) if p)

    gauge_before = gauges()
    busy_at, started = machine_busy(), time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-p", "suite_cpu_plugin", "-q", *args.pytest_args]
    code = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    wall, busy = time.monotonic() - started, machine_busy() - busy_at
    gauge_after = gauges()

    processes, tests = _records(probe / "processes.jsonl"), _records(probe / "tests.jsonl")
    workers = {t["worker"] for t in tests}
    tmp_of = {t["tmp"]: t["test"] for t in tests if t["tmp"]}
    # <basetemp>/popen-gwN/<test>0 under pytest-xdist, <basetemp>/<test>0 without
    bases = {str(Path(t).parents[1] if Path(t).parent.name.startswith("popen-gw") else Path(t).parent) for t in tmp_of}
    base = next(iter(bases)) if len(bases) == 1 else ""

    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    by_test: dict[str, list[float]] = collections.defaultdict(list)
    for rec in processes:
        what = kind(rec, workers)
        by_kind[what].append(rec["cpu"])
        if rec["pid"] not in workers and what != "pytest (controller)":
            by_test[owner(rec, tmp_of, base)].append(rec["cpu"])
    for t in tests:
        by_test[t["test"]].append(t["cpu"])

    recorded = sum(r["cpu"] for r in processes)
    cores = os.cpu_count() or 1
    print(
        f"\npytest exited {code}: {int(wall // 60)}m{wall % 60:02.0f}s wall; the machine busy {busy:.0f} s of "
        f"CPU ({busy / (wall * cores):.0%} of {cores} cores); {recorded:.0f} s recorded by Python processes"
    )
    print(
        f"gauges before/after: import tensorflow {gauge_before[0]:.2f}/{gauge_after[0]:.2f} s, "
        f"pure-Python loop {gauge_before[1]:.2f}/{gauge_after[1]:.2f} s"
    )
    table(by_kind, args.top, "CPU by kind of process (a pytest worker's includes its tests' in-process CPU)")
    table(by_test, args.top, "CPU by test or fixture (in-process, and its processes; count = records)")
    print(f"\nrecords: {probe}")
    return code


if __name__ == "__main__":
    sys.exit(main())
