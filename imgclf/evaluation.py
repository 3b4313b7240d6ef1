"""Scoring predictions and drawing the reports: NumPy, scikit-learn and matplotlib only."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from imgclf.tracking import metric_key

# Keras clips probabilities the same way in its cross-entropy.
_EPS = 1e-7


def score(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Overall test metrics, per-class precision/recall/F1/support and the confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    k = range(len(labels))
    picked = np.clip(probs[np.arange(len(y_true)), y_true], _EPS, 1.0)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(k), zero_division=0)
    per_class = {labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])} for i in k}
    summary = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_loss": float(-np.log(picked).mean()),
        "test_macro_f1": float(f1.mean()),
        "test_macro_precision": float(precision.mean()),
        "test_macro_recall": float(recall.mean()),
        "test_images": int(len(y_true)),
    }
    return {"metrics": summary, "per_class": per_class,
            "confusion": confusion_matrix(y_true, y_pred, labels=list(k)), "y_pred": y_pred}


def per_class_metrics(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"cats": {"recall": .9}}`` -> ``{"test_recall_cats": .9}`` for side-by-side comparison."""
    return {f"test_{m}_{metric_key(label)}": float(v)
            for label, row in per_class.items() for m, v in row.items() if m != "support"}


def confusion_rows_csv(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> str:
    """One row per test image (actual, predicted): what DVC's ``confusion`` template reads."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((labels[int(a)], labels[int(p)]) for a, p in zip(y_true, y_pred))
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, labels: list[str], out: Path) -> None:
    """Counts and row-normalised confusion matrices side by side, as a PNG."""
    plt = _pyplot()
    n = len(labels)
    side = max(4.0, 0.45 * n + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), constrained_layout=True)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    for ax, data, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "normalised by true class", ".2f")):
        im = ax.imshow(data, cmap="Blues")
        ax.set(xticks=range(n), yticks=range(n), xticklabels=labels, yticklabels=labels,
               xlabel="predicted", ylabel="actual", title=f"Confusion matrix ({title})")
        ax.tick_params(axis="x", labelrotation=45)
        if n <= 30:
            top = data.max() or 1
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=8,
                            color="white" if data[i, j] > top / 2 else "black")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)


def plot_history(history: list[dict[str, float]], out: Path) -> None:
    """Loss and accuracy per epoch, training and validation, as a PNG."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if history and key in history[0]:
                ax.plot(epochs, [row[key] for row in history], style, label=key)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
