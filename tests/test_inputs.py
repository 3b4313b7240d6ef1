"""What a stage reads, described for MLflow: DVC's digest of a folder, the DVC remote, per-class
profiles of the prepared splits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from imgclf.core.prepared import Prepared
from imgclf.tracking import inputs

from .helpers import make_class_folders


def test_a_folder_digest_is_dvcs_own(tmp_path: Path):
    images = make_class_folders(tmp_path / "images", per_class=3)
    outside = inputs.folder_md5(images, root=tmp_path)  # not a DVC project yet
    # What `dvc add` records for the same folder.
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "images"], cwd=tmp_path, check=True)
    recorded = (tmp_path / "images.dvc").read_text()
    digest = inputs.folder_md5(images, root=tmp_path)  # in the project, from DVC's state
    assert f"md5: {digest}.dir" in recorded and outside == digest
    (images / "red" / "00.png").write_bytes((images / "red" / "01.png").read_bytes())
    assert inputs.folder_md5(images, root=tmp_path) != digest  # the content counts


def test_the_default_dvc_remote_is_the_location(tmp_path: Path):
    assert inputs.remote_url(tmp_path) is None  # no DVC project there
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text(
        "[core]\n    remote = store\n['remote \"store\"']\n    url = s3://bucket/imgclf\n"
    )
    assert inputs.remote_url(tmp_path) == "s3://bucket/imgclf"


def test_prepared_splits_carry_their_counts_per_class(tmp_path: Path):
    (tmp_path / "manifest.json").write_text("{}")
    data = Prepared(
        labels=["cat", "dog"],
        x={s: np.zeros((n, 4, 4, 3), np.uint8) for s, n in (("train", 5), ("val", 2), ("test", 3))},
        y={"train": np.array([0, 0, 0, 1, 1]), "val": np.array([1, 1]), "test": np.array([0, 1, 1])},
    )
    train, test = inputs.split_inputs(tmp_path, data, ("train", "test"), "pets")
    assert (train.name, train.context, test.name, test.context) == ("pets/train", "train", "pets/test", "test")
    assert train.digest == test.digest and len(train.digest) == 32
    assert train.profile["images_per_class"] == {"cat": 3, "dog": 2} and train.profile["images"] == 5
    assert test.profile["images_per_class"] == {"cat": 1, "dog": 2} and test.profile["shape"] == [3, 4, 4, 3]
