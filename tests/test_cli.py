"""Stage outcomes become exit codes and one line on stderr."""

from __future__ import annotations

import pytest

from imgclf.console import interrupt
from imgclf.console.cli import run_stage
from imgclf.core.errors import PipelineError


@pytest.fixture
def own_signals():
    """Put this process's SIGINT/SIGTERM handlers (and the interrupt flag) back after the test."""
    import signal

    before = {s: signal.getsignal(s) for s in interrupt.SIGNALS}
    yield
    interrupt.install()  # clears the flag
    for s, handler in before.items():
        signal.signal(s, handler)


def _raise(exc: BaseException):
    def body():
        raise exc

    return body


def _python(code: str, timeout: int = 60):
    """``python -c code`` in a new process at the project root; its outcome, output captured."""
    import subprocess
    import sys

    from .helpers import ROOT

    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "exc, code, text",
    [
        (PipelineError("data.source 'x' is not a folder"), 2, "error: augment: data.source 'x' is not a folder"),
        (ValueError("odd"), 1, "error: augment: ValueError: odd (set IMGCLF_DEBUG=1 for the traceback)"),
        (KeyboardInterrupt(), 130, "error: augment: interrupted"),
    ],
)
def test_failures_end_in_one_line_and_an_exit_code(capsys, monkeypatch, exc, code, text):
    monkeypatch.delenv("IMGCLF_DEBUG", raising=False)
    assert run_stage("augment", _raise(exc)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(text)
    assert not any("Traceback" in line for line in err)


def test_bad_params_fail_before_tensorflow_starts(capsys, monkeypatch, tmp_path):
    from imgclf.console import cli

    started, ran = [], []
    monkeypatch.setattr(cli, "start_tensorflow_quietly", lambda: started.append(1))
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  epochs: 0\n")
    assert run_stage("train", lambda p: ran.append(p), tensorflow=True, params=params) == 2
    assert (started, ran) == ([], [])
    assert capsys.readouterr().err.strip().endswith("'train.epochs' must be greater than or equal to 1 (got 0)")
    params.write_text("train:\n  epochs: 3\n")
    assert run_stage("train", lambda p: ran.append(p.train.epochs), tensorflow=True, params=params) == 0
    assert (started, ran) == ([1], [3])


def _lose_a_ctrl_c() -> None:
    """Ctrl-C whose KeyboardInterrupt is swallowed, as in a finalizer or a weakref callback."""
    import os
    import signal

    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at the next bytecode boundaries
            pass
    except KeyboardInterrupt:
        pass


@pytest.mark.parametrize("after", ["error", "check"])
def test_a_lost_ctrl_c_still_ends_the_stage_as_interrupted(capsys, own_signals, after):
    def body():
        _lose_a_ctrl_c()
        if after == "check":
            interrupt.check()  # what training does at each epoch's end
        raise RuntimeError("a library turned the interrupt into its own error")

    assert run_stage("train", body) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: train: interrupted; no output was written"


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_during_training_a_first_signal_waits_for_the_step_a_second_one_does_not(own_signals, signame, capfd):
    import os
    import signal

    interrupt.install()
    with interrupt.deferred():
        os.kill(os.getpid(), getattr(signal, signame))
        for _ in range(1000):  # the handler runs at the next bytecode boundaries: nothing is raised
            pass
        assert interrupt.requested()
        assert "stopping after this step" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), getattr(signal, signame))
            for _ in range(1000):
                pass


def test_check_passes_without_a_signal(own_signals):
    interrupt.install()
    interrupt.check()
    assert not interrupt.requested()


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("IMGCLF_DEBUG", "1")
    with pytest.raises(ValueError):
        run_stage("train", _raise(ValueError("odd")))


def test_success_is_zero():
    assert run_stage("demo", lambda: None) == 0


def test_full_disk_names_the_file_and_what_to_do(capsys):
    import errno

    err = OSError(errno.ENOSPC, "No space left on device", "models/model.h5")
    assert run_stage("train", _raise(err)) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "error: train: cannot write models/model.h5: the disk is full: free some space, then rerun"


@pytest.mark.parametrize("code", [0, 2])
def test_fast_exit_still_joins_threads_runs_exit_handlers_and_flushes(tmp_path, code):
    """``main`` skips Python's teardown, but not what a stage's libraries rely on at exit."""

    script = f"""
import atexit, sys, threading, time
from pathlib import Path
from imgclf.console.cli import main
from imgclf.core.errors import PipelineError

def late_write():
    time.sleep(0.3)
    Path({str(tmp_path / "thread.txt")!r}).write_text("joined")

def body():
    atexit.register(lambda: Path({str(tmp_path / "atexit.txt")!r}).write_text("ran"))
    threading.Thread(target=late_write).start()
    sys.stdout.write("buffered, no newline")
    if {code}:
        raise PipelineError("bad")

main("demo", body)
"""
    proc = _python(script)
    assert proc.returncode == code
    assert proc.stdout == "buffered, no newline"
    assert (tmp_path / "thread.txt").read_text() == "joined"
    assert (tmp_path / "atexit.txt").read_text() == "ran"


@pytest.mark.parametrize("as_program", [True, False])
def test_a_stage_program_imports_without_the_collector_and_its_body_runs_with_it(as_program):
    """``python -m stages.<name>`` pauses the garbage collector while it imports and
    ``run_stage`` resumes it, start-up frozen, for the body; a test importing a stage changes
    nothing. (``sys.argv[0]`` is set as Python sets it during ``-m``'s package import; a real
    stage run has no hook to report from.)"""
    script = (
        f"import sys\nif {as_program}: sys.argv[:1] = ['-m']  # as while `python -m` imports the package\n"
        "import gc, stages\n"
        "from imgclf.console.cli import run_stage\n"
        "seen = [gc.isenabled()]\n"
        "run_stage('demo', lambda: seen.extend([gc.isenabled(), gc.get_freeze_count() > 0]))\n"
        "print(seen)\n"
    )
    proc = _python(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("[False, True, True]" if as_program else "[True, True, False]")


@pytest.mark.slow  # a fresh process that starts TensorFlow
def test_tensorflow_starts_without_its_chatter_but_other_lines_pass(tmp_path):
    code = (
        "import os, sys\n"
        "from imgclf.console import cli\n"
        "real = cli.internals.TF_STARTUP_CHATTER\n"
        "cli.start_tensorflow_quietly()\n"
        "print('stage line', file=sys.stderr)\n"
        "print(bool(real.match('E0000 00:00:1795.5   30259 cuda_platform.cc:52] failed call to cuInit')),\n"
        "      bool(real.match('E0000 00:00:1795.5   30259 some_op.cc:12] a real error')), file=sys.stderr)\n"
    )
    proc = _python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["stage line", "True False"], lines  # nothing of TensorFlow's start-up
