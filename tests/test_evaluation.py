"""Scores against hand-computed values; reports DVC and people can read."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from imgclf.core import history
from imgclf.evaluation import scoring as evaluation


def test_score_matches_hand_computation():
    labels = ["a", "b"]
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])
    r = evaluation.score(y, probs, labels)
    assert r["metrics"]["test_accuracy"] == pytest.approx(0.75)
    expected_loss = -np.mean(np.log([0.9, 0.4, 0.8, 0.7]))
    assert r["metrics"]["test_loss"] == pytest.approx(expected_loss)
    assert r["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert r["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert r["confusion"].tolist() == [[1, 1], [0, 2]]
    flat = evaluation.per_class_metrics(r["per_class"])
    assert flat["test_recall/a"] == pytest.approx(0.5) and "test_support/a" not in flat


def test_class_never_predicted_scores_zero_not_nan():
    r = evaluation.score(np.array([0, 1, 2]), np.eye(3)[[0, 1, 1]], ["x", "y", "z"])
    assert r["per_class"]["z"]["precision"] == 0.0


def test_a_class_with_nothing_to_measure_is_left_out_of_the_macro_averages():
    # "z" has no test image (a small class the split left out): a perfect model scores 1, not 2/3.
    perfect = evaluation.score(np.array([0, 0, 1]), np.eye(3)[[0, 0, 1]], ["x", "y", "z"])
    assert {k: perfect["metrics"][f"test_macro_{k}"] for k in ("precision", "recall", "f1")} == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
    }
    assert perfect["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Predicted without a test image of its own, "z" is a measured mistake: precision 0 counts.
    wrong = evaluation.score(np.array([0, 0, 1]), np.eye(3)[[0, 2, 1]], ["x", "y", "z"])
    assert wrong["metrics"]["test_macro_precision"] == pytest.approx((1 + 1 + 0) / 3)
    assert wrong["metrics"]["test_macro_recall"] == pytest.approx((0.5 + 1) / 2)
    # A class with test images that is never predicted is a measured failure: precision 0.
    lazy = evaluation.score(np.array([0, 0, 1, 1]), np.eye(2)[[0, 0, 0, 0]], ["a", "b"])
    assert lazy["metrics"]["test_macro_precision"] == pytest.approx((0.5 + 0) / 2)
    assert lazy["metrics"]["test_macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_class_names_are_drawn_as_written_and_many_classes_make_a_bounded_picture(tmp_path: Path):
    from PIL import Image

    labels = ["coin_$1", "note_$5"]
    evaluation.plot_confusion(np.array([[3, 1], [0, 4]]), labels, tmp_path / "cm.png")
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert evaluation.plot_misclassified(images, np.array([0, 1]), probs.argmax(1), probs, labels, tmp_path / "m.png")
    many = 300
    cm = np.random.default_rng(0).integers(0, 5, (many, many))
    evaluation.plot_confusion(cm, [f"class {i}" for i in range(many)], tmp_path / "many.png")
    with Image.open(tmp_path / "many.png") as png:
        assert max(png.size) <= 2 * 100 * evaluation.LARGEST_SIDE + 100


def test_confusion_csv_rows_per_image():
    text = evaluation.confusion_rows_csv(np.array([0, 1]), np.array([1, 1]), ["猫", "dog"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows == [{"actual": "猫", "predicted": "dog"}, {"actual": "dog", "predicted": "dog"}]


def test_per_class_metrics_are_flat_and_keep_the_class_name():
    flat = evaluation.per_class_metrics({"sea lions!": {"recall": 0.5, "support": 3}, "猫": {"f1": 1.0, "support": 1}})
    assert flat == {"test_recall/sea lions!": 0.5, "test_f1/猫": 1.0}


def test_history_round_trip_and_plots(tmp_path: Path):
    rows = [
        {"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4},
        {"epoch": 2, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.6},
    ]
    path = tmp_path / "h.csv"
    path.write_text(history.history_csv(rows))
    back = history.read_history_csv(path)
    assert back == rows
    evaluation.plot_history(back, tmp_path / "curves.png")
    evaluation.plot_confusion(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "cm.png")
    for name in ("curves.png", "cm.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_misclassified_grid_and_html_report(tmp_path: Path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 8, 8, 3)).astype(np.uint8)
    y_true = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9]])
    wrong = evaluation.plot_misclassified(images, y_true, probs.argmax(1), probs, ["cat", "dog"], tmp_path / "m.png")
    assert wrong == 2
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert (
        evaluation.plot_misclassified(images, y_true, y_true, np.eye(2)[y_true], ["cat", "dog"], tmp_path / "none.png")
        == 0
    )
    page = evaluation.html_report(
        {"test_accuracy": 0.6},
        {"cat": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}},
        {"train.epochs": 5, "data.labels": "<script>"},
        {"Wrong": tmp_path / "m.png"},
    )
    assert "0.6000" in page and "train.epochs" in page and "data:image/png;base64," in page
    assert "<script>" not in page and "&lt;script&gt;" in page
