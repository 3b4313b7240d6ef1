"""Stage entry points in-process, on a workspace in tmp_path: bad input and faults end cleanly."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from imgclf.console.cli import run_stage
from imgclf.core import paths
from imgclf.core.params import split_settings
from stages import augment, train

from .helpers import TINY_PARAMS, list_runs, make_class_folders

OUTPUTS = (
    "PREPARED_DIR",
    "MODEL",
    "REPORTS",
    "AUGMENT_REPORT",
    "SKIPPED_REPORT",
    "DUPLICATES_REPORT",
    "HISTORY",
    "TRAIN_REPORT",
    "METRICS",
    "PER_CLASS",
    "CONFUSION_CSV",
    "CONFUSION_PNG",
    "CURVES_PNG",
)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store: str):
    """Every path of the pipeline redirected into tmp_path, with tiny images and params."""
    for name in OUTPUTS:
        rel = getattr(paths, name).relative_to(paths.ROOT)
        monkeypatch.setattr(paths, name, tmp_path / rel)
    monkeypatch.setattr(paths, "PARAMS", tmp_path / "params.yaml")
    images = make_class_folders(tmp_path / "images", per_class=6)
    ws = type("Workspace", (), {})()
    ws.root, ws.images = tmp_path, images

    def write_params(**sections):
        raw = {k: dict(v) for k, v in TINY_PARAMS.items()}
        raw["data"]["source"] = str(images)
        # One process: starting two workers costs more than 18 images take. The tests of bad
        # images take two (``POOL``), so a bad file also goes through the worker pool.
        raw["augment"]["workers"] = 1
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        for name, part in zip(("params.yaml", "settings.yaml"), split_settings(raw)):
            (tmp_path / name).write_text(yaml.safe_dump(part))

    ws.write_params = write_params
    write_params()
    return ws


POOL = {"augment": {"workers": 2}}  # in write_params: decode and augment over two worker processes


def _runs(stage: str):
    return list_runs(os.environ["MLFLOW_TRACKING_URI"], stage)


def _last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_files_are_skipped_reported_and_counted(workspace, capsys):
    red = workspace.images / "red"
    (red / "empty.jpg").write_bytes(b"")
    (red / "notes.jpg").write_text("a text file renamed .jpg")
    (red / "error.png").write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    (red / "drawing.png").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')  # unsupported format
    good = (red / "00.png").read_bytes()
    (red / "cut.png").write_bytes(good[: len(good) // 2])
    workspace.write_params(**POOL)
    assert run_stage("augment", augment.run) == 0
    err = capsys.readouterr().err
    with open(paths.SKIPPED_REPORT, newline="", encoding="utf-8") as fh:
        skipped = {Path(row["file"]).name: row["reason"] for row in csv.DictReader(fh)}
    assert set(skipped) == {"empty.jpg", "notes.jpg", "error.png", "drawing.png", "cut.png"}
    assert "truncated" in skipped["cut.png"] and "not an image" in skipped["notes.jpg"]
    for name in skipped:
        assert sum(1 for line in err.splitlines() if "skipping" in line and name in line) == 1
    (run,) = _runs("augment")
    assert run.data.params["dataset.skipped_files"] == "5" and run.data.params["dataset.images"] == "18"
    assert np.load(paths.PREPARED_DIR / "y_test.npy", allow_pickle=False).dtype == np.uint8


def test_copies_of_one_image_are_grouped_reported_and_counted(workspace, capsys):
    import shutil

    import mlflow
    from PIL import Image

    blue = workspace.images / "blue"
    with Image.open(blue / "00.png") as img:
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(blue / "00-mirrored.png")
    shutil.copy(blue / "01.png", blue / "01-again.png")
    assert run_stage("augment", augment.run) == 0
    line = "duplicates: 2 groups holding 4 images (2 copies); each group kept in one split (data.duplicates: group)"
    assert line in capsys.readouterr().err
    with open(paths.DUPLICATES_REPORT, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["file"] for r in rows} == {"blue/00.png", "blue/00-mirrored.png", "blue/01.png", "blue/01-again.png"}
    assert len({(r["group"], r["split"]) for r in rows}) == 2  # each group in one split
    (run,) = _runs("augment")
    assert (run.data.params["dataset.duplicate_groups"], run.data.params["dataset.duplicate_images"]) == ("2", "4")
    assert "duplicates.csv" in [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]


def test_fail_policy_stops_at_the_bad_file_and_writes_nothing(workspace, capsys):
    workspace.write_params(data={"on_bad_image": "fail"}, **POOL)
    (workspace.images / "green" / "broken.webp").write_bytes(b"RIFF0000WEBPjunk")
    assert run_stage("augment", augment.run) == 2
    line = _last_line(capsys)
    assert "broken.webp" in line and "on_bad_image" in line
    assert not paths.PREPARED_DIR.exists()
    assert [r.info.status for r in _runs("augment")] == ["FAILED"]


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"train": {"epochs": 0}}, "'train.epochs'"),
        ({"data": {"test_size": 1.5}}, "'data.test_size'"),
        ({"train": {"optimizer": "adagrad"}}, "'train.optimizer' must be one of"),
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"data": {"image_size": 8}}, "too small"),
    ],
)
def test_bad_params_stop_before_any_work(workspace, capsys, params, fragment):
    workspace.write_params(**params)
    assert run_stage("augment", augment.run) == 2
    assert fragment in _last_line(capsys)
    assert not paths.PREPARED_DIR.exists()
    assert _runs("augment") == []


@pytest.mark.parametrize(
    "setup, fragment",
    [
        ("missing", "is not a folder"),
        ("empty", "no class folders"),
        ("empty_class", "have no usable image"),
        ("tiny_class", "too few images"),
        ("unknown_label", "no such folder"),
        ("unlisted_folder", "does not list"),
    ],
)
def test_folder_problems_say_what_to_do(workspace, capsys, setup, fragment):
    images = workspace.images
    if setup == "missing":
        workspace.write_params(data={"source": str(workspace.root / "nowhere")})
    elif setup == "empty":
        (workspace.root / "empty").mkdir()
        workspace.write_params(data={"source": str(workspace.root / "empty")})
    elif setup == "empty_class":
        (images / "purple").mkdir()
        (images / "purple" / ".DS_Store").write_bytes(b"\0")
    elif setup == "tiny_class":
        (images / "purple").mkdir()
        (images / "red" / "00.png").rename(images / "purple" / "00.png")
    elif setup == "unknown_label":
        workspace.write_params(data={"labels": ["red", "green", "blue", "cyan"]})
    elif setup == "unlisted_folder":
        workspace.write_params(data={"labels": ["red", "green"]})
    assert run_stage("augment", augment.run) == 2
    line = _last_line(capsys)
    assert line.startswith("error: augment: ") and fragment in line
    assert not paths.PREPARED_DIR.exists()


def test_full_disk_leaves_no_partial_output(workspace, capsys, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(paths.PREPARED_DIR / "x_train.npy"))

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    assert run_stage("augment", augment.run) == 1
    line = _last_line(capsys)
    assert "x_train.npy" in line and "disk is full" in line
    assert not paths.PREPARED_DIR.exists()
    assert not any(p.name.startswith(".prepared") for p in paths.PREPARED_DIR.parent.iterdir())
    assert [r.info.status for r in _runs("augment")] == ["FAILED"]


def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_the_rerun_resumes_from_it(workspace, capsys, monkeypatch):
    import tensorflow as tf

    from imgclf.training.checkpoint import STATE_FILE

    monkeypatch.setenv("IMGCLF_CHECKPOINT_DIR", str(workspace.root / "ckpts"))
    workspace.write_params(train={"epochs": 4})
    assert run_stage("augment", augment.run) == 0
    real = tf.train.CheckpointManager.save
    saves = []

    def save(self, *args, **kwargs):
        """The third save (epoch 3) fills the disk halfway through, as TensorFlow reports it."""
        saves.append(kwargs)
        if len(saves) == 3:
            partial = Path(self.directory) / "ckpt-3_temp"
            partial.mkdir()
            (partial / "part-00000-of-00001.data-00000-of-00001.tempstate1").write_bytes(b"\0" * 4096)
            raise tf.errors.ResourceExhaustedError(None, None, f"{partial}/part-00000; No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    capsys.readouterr()
    assert run_stage("train", train.run, params=paths.PARAMS) == 2
    line = _last_line(capsys)
    folder = next((workspace.root / "ckpts").glob("train-*"))
    assert line.startswith(f"error: train: no space left for a checkpoint in {folder}: one takes about "), line
    assert " are free" in line and "IMGCLF_CHECKPOINT_DIR" in line and "resumes from epoch 2" in line
    assert not paths.MODEL.exists()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("ckpt-3")) == []
    assert (folder / STATE_FILE).exists()

    monkeypatch.setattr(tf.train.CheckpointManager, "save", real)
    assert run_stage("train", train.run, params=paths.PARAMS) == 0
    assert "resuming from epoch 2" in capsys.readouterr().err
    (run,) = _runs("train")
    assert run.info.status == "FINISHED"
    import mlflow

    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4]


def test_unreachable_tracking_server_fails_before_training(workspace, capsys, monkeypatch):
    assert run_stage("augment", augment.run) == 0
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("IMGCLF_TRACKING_WAIT", "0")
    assert run_stage("train", train.run, params=paths.PARAMS) == 2
    line = _last_line(capsys)
    assert "http://127.0.0.1:9" in line and "connection refused" in line
    assert not paths.MODEL.exists()
