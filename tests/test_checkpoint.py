"""Where checkpoints live, which runs may resume them, and what a fresh start clears."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from imgclf.core.params import parse  # noqa: E402
from imgclf.training import checkpoint  # noqa: E402
from imgclf.training.checkpoint import open_checkpoints  # noqa: E402


@pytest.fixture(autouse=True)
def _no_configured_root(monkeypatch):
    monkeypatch.delenv(checkpoint.ENV_DIR, raising=False)


def _commit(store, epoch: int = 3) -> None:
    store.run_id = "run-1"
    store.commit({"checkpoint": "ckpt-1", "epoch": epoch, "step": 0})


def test_anchored_at_the_main_repository_or_the_configured_folder(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "main"))
    assert checkpoint.checkpoints_root() == (tmp_path / "main" / ".imgclf" / "checkpoints").resolve()
    monkeypatch.setenv(checkpoint.ENV_DIR, str(tmp_path / "shared"))
    assert checkpoint.checkpoints_root() == (tmp_path / "shared").resolve()


def test_same_params_and_data_resume_and_anything_else_starts_fresh(monkeypatch, tmp_path: Path, caplog):
    monkeypatch.setenv(checkpoint.ENV_DIR, str(tmp_path))
    caplog.set_level(logging.INFO, logger="imgclf.training.checkpoint")
    p = parse({})
    store = open_checkpoints(p, "data-1")
    assert store.state is None
    _commit(store)
    store.close()

    again = open_checkpoints(p, "data-1")
    assert again.state["epoch"] == 3 and again.run_id == "run-1" and again.folder == store.folder
    assert "resuming from epoch 3" in caplog.text
    again.close()
    # train.resume does not shape the model, so it is not part of the key.
    assert open_checkpoints(parse({"train": {"resume": True, "epochs": 5}}), "data-1").folder == store.folder

    caplog.clear()
    discarded: list = []
    fresh = open_checkpoints(parse({"train": {"learning_rate": 0.01}}), "data-1", discarded=discarded)
    assert fresh.state is None and fresh.folder != store.folder
    assert "starting fresh" in caplog.text and "train.learning_rate 0.001 -> 0.01" in caplog.text
    assert not store.folder.exists()  # the stale one is gone
    # ... and its run is named, with why, for the stage to close.
    ((run_id, why),) = discarded
    assert run_id == "run-1" and "epoch 3 was discarded" in why and "train.learning_rate 0.001 -> 0.01" in why
    _commit(fresh)
    fresh.close()

    caplog.clear()
    other_data = open_checkpoints(parse({"train": {"learning_rate": 0.01}}), "data-2")
    assert other_data.state is None and "changed: the prepared data" in caplog.text
    _commit(other_data)
    other_data.close()

    # mixed_precision auto on a machine that has changed (a GPU gone): another policy, another
    # optimizer, so a fresh start rather than a restore that fails.
    caplog.clear()
    came_to = checkpoint.identity(parse({}), "data-2")["precision"]
    other = "mixed_float16" if came_to != "mixed_float16" else "float32"

    def resolve_elsewhere(setting: str, gpu=None, bf16=None) -> str:  # noqa: ARG001
        return other

    monkeypatch.setattr("imgclf.training.runtime.resolve_precision", resolve_elsewhere)
    moved = open_checkpoints(parse({"train": {"learning_rate": 0.01}}), "data-2")
    assert moved.state is None and f"the precision train.mixed_precision comes to ({came_to} -> {other})" in caplog.text
    moved.close()


def test_resume_false_removes_the_checkpoint_and_keeps_none(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(checkpoint.ENV_DIR, str(tmp_path))
    store = open_checkpoints(parse({}), "data")
    _commit(store)
    store.close()
    assert open_checkpoints(parse({"train": {"resume": False}}), "data") is None
    assert not store.folder.exists()


def test_a_folder_in_use_is_neither_shared_nor_removed(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(checkpoint.ENV_DIR, str(tmp_path))
    busy = open_checkpoints(parse({}), "data")
    _commit(busy)
    assert open_checkpoints(parse({}), "data") is None  # a second process trains without checkpoints
    other = open_checkpoints(parse({"train": {"epochs": 9}}), "data")
    assert busy.folder.exists()  # the other training's fresh start left it alone
    other.close()
    busy.remove()
    assert not busy.folder.exists()


def test_a_torn_state_file_is_never_resumed(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(checkpoint.ENV_DIR, str(tmp_path))
    store = open_checkpoints(parse({}), "data")
    _commit(store)
    store.close()
    (store.folder / checkpoint.STATE_FILE).write_text('{"format": 1, "epoch"')
    again = open_checkpoints(parse({}), "data")
    assert again.state is None
    again.close()
