"""Atomic writes: a failure mid-write leaves the old result (or nothing), never a partial file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgclf.core.fileio import atomic_dir, atomic_path, md5_tree, write_json, write_text
from imgclf.data.dataset import skipped_csv


def test_atomic_path_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "sub" / "model.h5"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".h5" and tmp.parent == target.parent
        tmp.write_bytes(b"v1")
    assert target.read_bytes() == b"v1"
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"v1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.h5"]


def test_atomic_dir_replaces_only_on_success(tmp_path: Path):
    target = tmp_path / "prepared"
    with atomic_dir(target) as tmp:
        (tmp / "a.npy").write_bytes(b"1")
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "a.npy").write_bytes(b"2")
        raise OSError("disk full")
    assert (target / "a.npy").read_bytes() == b"1"
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]


def test_md5_tree_sees_names_and_contents(tmp_path: Path):
    write_json(tmp_path / "a" / "x.json", {"b": 1, "a": [1, 2]})
    first = md5_tree(tmp_path / "a")
    assert (tmp_path / "a" / "x.json").read_text().startswith('{\n  "a"')
    (tmp_path / "a" / "x.json").rename(tmp_path / "a" / "y.json")
    assert md5_tree(tmp_path / "a") != first


def test_a_file_name_that_is_not_utf8_is_written_escaped(tmp_path: Path):
    # A Latin-1 name from a Windows zip, as Python lists it on Linux: a lone surrogate.
    name = os.fsdecode(b"caf\xe9.jpg")
    write_text(tmp_path / "skipped.csv", skipped_csv([(Path(name), "corrupt")]))
    assert (tmp_path / "skipped.csv").read_text(encoding="utf-8") == "file,reason\ncaf\\udce9.jpg,corrupt\n"
    write_json(tmp_path / "labels.json", [name])
    assert json.loads((tmp_path / "labels.json").read_text(encoding="utf-8")) == [name]  # read back the same
