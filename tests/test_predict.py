"""python -m stages.predict on a real (tiny) model: lines, --top, --json, bad files, bad models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from imgclf.console.cli import run_stage
from imgclf.core.params import TrainParams
from stages import predict

from .helpers import CLASS_COLOURS, as_prepared, make_class_folders

keras = pytest.importorskip("keras")

LABELS = sorted(CLASS_COLOURS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny CNN trained on the colour classes, saved as .h5 with labels.json beside it."""
    from imgclf.data.dataset import decode, scan
    from imgclf.training.fit import fit
    from imgclf.training.model import build_model
    from imgclf.training.runtime import seed_everything

    root = tmp_path_factory.mktemp("model")
    images = make_class_folders(root / "train", per_class=10)
    decoded = decode(scan(images), 16, root)
    x, y = decoded.originals(np.arange(len(decoded.y))), decoded.y
    p = TrainParams(
        conv_filters=[8],
        dense_units=16,
        epochs=15,
        batch_size=8,
        mixed_precision="off",
        early_stopping={"monitor": "loss"},
    )
    seed_everything(0, True)
    model = build_model(16, 3, p)
    fit(model, as_prepared(x, y, x[:0], y[:0]), p, 0)
    model.save(root / "model.h5")
    (root / "labels.json").write_text(json.dumps(LABELS))
    return root


def _predict(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = run_stage("predict", lambda: predict.run(list(argv)))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.strip().splitlines()


def test_one_line_per_image_with_label_and_probability(model_dir: Path, tmp_path: Path, capsys):
    images = make_class_folders(tmp_path / "new", per_class=2, size=40, fmt="jpg")  # other size, format
    code, out, _ = _predict(capsys, str(images), "--model", str(model_dir / "model.h5"))
    assert code == 0 and len(out) == 6
    right = 0
    for line in out:
        path, label, prob = line.split("\t")
        assert 0 < float(prob) <= 1 and label in LABELS
        right += label == Path(path).parent.name
    assert right >= 5, out


def test_top_k_and_json(model_dir: Path, tmp_path: Path, capsys):
    images = make_class_folders(tmp_path / "new", per_class=1)
    file = images / "red" / "00.png"
    code, out, _ = _predict(capsys, str(file), "--model", str(model_dir / "model.h5"), "--top", "3")
    fields = out[0].split("\t")
    assert code == 0 and len(fields) == 7 and sorted(fields[1::2]) == LABELS
    probs = [float(p) for p in fields[2::2]]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-3)
    code, out, _ = _predict(capsys, str(file), "--model", str(model_dir / "model.h5"), "--json", "--top", "2")
    record = json.loads(out[0])
    assert record["path"] == str(file) and record["label"] == record["top"][0]["label"]
    assert len(record["top"]) == 2


def test_bad_files_get_the_augment_messages(model_dir: Path, tmp_path: Path, capsys):
    images = make_class_folders(tmp_path / "new", per_class=1)
    (images / "red" / "fake.png").write_text("<html>not an image</html>")
    code, out, err = _predict(capsys, str(images), "--model", str(model_dir / "model.h5"))
    assert code == 2 and len(out) == 3
    assert any("skipping" in line and "fake.png" in line and "not an image" in line for line in err)
    assert err[-1] == "error: predict: 1 of 4 file(s) could not be classified (see the warnings above)"


def test_odd_file_names_keep_one_line_each_and_other_suffixes_are_counted(model_dir: Path, tmp_path: Path, capsys):
    folder = tmp_path / "export"
    folder.mkdir()
    image = make_class_folders(tmp_path / "in", per_class=1) / "red" / "00.png"
    latin1 = folder / os.fsdecode(b"caf\xe9.png")  # a name from a Windows zip: not UTF-8
    for name in (latin1, folder / "tab\there.png"):
        name.write_bytes(image.read_bytes())
    for k in range(3):
        (folder / f"IMG_{k}.HEIC").write_bytes(b"not read")
    code, out, err = _predict(capsys, str(folder), "--model", str(model_dir / "model.h5"))
    assert code == 0 and [line.split("\t")[0] for line in out] == [f"{folder}/caf\\xe9.png", f"{folder}/tab\\there.png"]
    assert any("ignoring 3 file(s)" in line and ".heic 3" in line for line in err), err
    code, out, _ = _predict(capsys, str(folder), "--model", str(model_dir / "model.h5"), "--json")
    assert json.loads(out[0])["path"] == f"{folder}/caf\\xe9.png" and json.loads(out[1])["path"].endswith(
        "tab\there.png"
    )
    only_heic = tmp_path / "heic"
    only_heic.mkdir()
    (only_heic / "IMG_0.HEIC").write_bytes(b"not read")
    code, _, err = _predict(capsys, str(only_heic), "--model", str(model_dir / "model.h5"))
    assert code == 2 and err[-1].startswith(f"error: predict: no images in {only_heic}: the formats read are .bmp")


@pytest.mark.parametrize(
    "setup, fragment",
    [
        ("missing_model", "model not found"),
        ("no_labels", "class labels not found"),
        ("wrong_labels", "3 outputs but 2 labels"),
        ("not_a_model", "not a Keras model file"),
        ("missing_input", "no such file or folder"),
        ("batch_size", "--batch-size must be at least 1 (got 0)"),
    ],
)
def test_bad_models_and_inputs(model_dir: Path, tmp_path: Path, capsys, setup: str, fragment: str):
    image = make_class_folders(tmp_path / "in", per_class=1) / "red" / "00.png"
    model = tmp_path / "m" / "model.h5"
    model.parent.mkdir()
    if setup != "missing_model":
        model.write_bytes((model_dir / "model.h5").read_bytes())
    if setup == "wrong_labels":
        (model.parent / "labels.json").write_text('["a", "b"]')
    elif setup in ("missing_model", "not_a_model"):
        (model.parent / "labels.json").write_text(json.dumps(LABELS))
    if setup == "not_a_model":
        model.write_text("hello")
    target = str(tmp_path / "nothing.png") if setup == "missing_input" else str(image)
    code, _, err = _predict(capsys, target, "--model", str(model), *(["--batch-size", "0"] * (setup == "batch_size")))
    assert code == 2 and fragment in err[-1] and err[-1].startswith("error: predict: ")


def test_predict_decodes_a_photo_exactly_as_augment_does(tmp_path: Path):
    from imgclf import predict
    from imgclf.data import dataset

    from .test_images import camera_photo

    for label, seed in (("scene", 0), ("scene", 1), ("street", 2)):
        (tmp_path / "photos" / label).mkdir(parents=True, exist_ok=True)
        camera_photo(tmp_path / "photos" / label / f"{seed}.jpg", seed=seed)
    src = dataset.scan(tmp_path / "photos")
    decoded = dataset.decode(src, 64, tmp_path)  # the augment stage's decoding
    for row, path in enumerate(src.files):
        assert np.array_equal(decoded.originals(np.array([row]))[0], predict.load_array(path, 64))
