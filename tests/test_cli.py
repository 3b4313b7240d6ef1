"""Stage outcomes become exit codes and one line on stderr."""
from __future__ import annotations

import pytest

from imgclf.cli import run_stage
from imgclf.errors import PipelineError


def _raise(exc: BaseException):
    def body():
        raise exc
    return body


@pytest.mark.parametrize("exc, code, text", [
    (PipelineError("data.source 'x' is not a folder"), 2, "error: augment: data.source 'x' is not a folder"),
    (ValueError("odd"), 1, "error: augment: ValueError: odd (set IMGCLF_DEBUG=1 for the traceback)"),
    (KeyboardInterrupt(), 130, "error: augment: interrupted"),
])
def test_failures_end_in_one_line_and_an_exit_code(capsys, monkeypatch, exc, code, text):
    monkeypatch.delenv("IMGCLF_DEBUG", raising=False)
    assert run_stage("augment", _raise(exc)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(text)
    assert not any("Traceback" in line for line in err)


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
