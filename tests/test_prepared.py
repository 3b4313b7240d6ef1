"""The prepared folder's reader: missing files and bad label lists say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.core.errors import PipelineError
from imgclf.core.prepared import load_prepared, read_labels, write_labels


def test_load_prepared_missing(tmp_path: Path):
    with pytest.raises(PipelineError, match="run the augment stage"):
        load_prepared(tmp_path)


def test_labels_round_trip_and_bad_lists_are_refused(tmp_path: Path):
    path = tmp_path / "labels.json"
    write_labels(path, ["猫", "dog"])
    assert read_labels(path) == ["猫", "dog"]
    for text, fragment in [
        ("{broken", "cannot read the class labels"),
        ('{"a": 1}', "expected a JSON list"),
        ('["a", 2]', "expected a JSON list"),
        ('["a", "a"]', "more than once"),
    ]:
        path.write_text(text)
        with pytest.raises(PipelineError, match=fragment):
            read_labels(path)
