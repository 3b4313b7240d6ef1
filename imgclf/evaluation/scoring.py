"""Scoring predictions and drawing the reports: NumPy, scikit-learn and matplotlib only."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

# Keras clips probabilities the same way in its cross-entropy.
_EPS = 1e-7


def score(y_true: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Overall test metrics, per-class precision/recall/F1/support and the confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = probs.argmax(axis=1)
    k = range(len(labels))
    picked = np.clip(probs[np.arange(len(y_true)), y_true], _EPS, 1.0)
    # A class with no test image and never predicted has nothing to measure: it is left out of
    # the macro averages (a small class can miss the test set); per class it reads 0. A class
    # with test images that is never predicted scores precision 0, as before.
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=list(k), zero_division=np.nan
    )
    present = support > 0
    precision, f1 = np.where(present, np.nan_to_num(precision), precision), np.where(present, np.nan_to_num(f1), f1)
    per_class = {
        labels[i]: {
            "precision": float(np.nan_to_num(precision[i])),
            "recall": float(np.nan_to_num(recall[i])),
            "f1": float(np.nan_to_num(f1[i])),
            "support": int(support[i]),
        }
        for i in k
    }
    summary = {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_loss": float(-np.log(picked).mean()),
        "test_macro_f1": _mean_of_measured(f1),
        "test_macro_precision": _mean_of_measured(precision),
        "test_macro_recall": _mean_of_measured(recall),
        "test_images": int(len(y_true)),
    }
    return {
        "metrics": summary,
        "per_class": per_class,
        "confusion": confusion_matrix(y_true, y_pred, labels=list(k)),
        "y_pred": y_pred,
    }


def _mean_of_measured(values: np.ndarray) -> float:
    measured = values[~np.isnan(values)]
    return float(measured.mean()) if measured.size else 0.0


def per_class_metrics(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{"cats": {"recall": .9}}`` -> ``{"test_recall/cats": .9}``: in MLflow's chart view, one
    section per measure with a chart per class."""
    return {f"test_{m}/{label}": float(v) for label, row in per_class.items() for m, v in row.items() if m != "support"}


def per_class_csv(per_class: dict[str, dict[str, float]]) -> str:
    """One row per class (class, precision, recall, f1, support): what ``dvc plots`` draws."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    writer.writerows([c, r["precision"], r["recall"], r["f1"], r["support"]] for c, r in per_class.items())
    return buf.getvalue()


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


def _plain(text: str) -> str:
    """``text`` as matplotlib draws it literally (a ``$`` would start a formula)."""
    return text.replace("$", r"\$")


# Above this many classes the matrices have no class names (confusion.csv has them), and their
# size stops growing: a PNG of thousands of pixels a side says nothing more.
NAMED_CLASSES = 60
LARGEST_SIDE = 25.0  # inches, at 100 dpi


def plot_confusion(cm: np.ndarray, labels: list[str], out: Path) -> None:
    """Counts and row-normalised confusion matrices side by side, as a PNG."""
    plt = _pyplot()
    n = len(labels)
    side = min(max(4.0, 0.45 * n + 2.5), LARGEST_SIDE)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side), constrained_layout=True)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    named = n <= NAMED_CLASSES
    for ax, data, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "normalised by true class", ".2f")):
        im = ax.imshow(data, cmap="Blues")
        ax.set(
            xticks=range(n) if named else [],
            yticks=range(n) if named else [],
            xlabel="predicted" if named else f"predicted ({n} classes in the order of labels.json)",
            ylabel="actual",
            title=f"Confusion matrix ({title})",
        )
        if named:
            ax.set_xticklabels([_plain(c) for c in labels])
            ax.set_yticklabels([_plain(c) for c in labels])
        ax.tick_params(axis="x", labelrotation=45)
        if n <= 30:
            top = data.max() or 1
            for i in range(n):
                for j in range(n):
                    ax.text(
                        j,
                        i,
                        format(data[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if data[i, j] > top / 2 else "black",
                    )
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


def plot_misclassified(
    images: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    out: Path,
    limit: int = 36,
) -> int:
    """A grid of (up to ``limit``) misclassified test images titled true -> predicted (p).

    The least confident mistakes are not the interesting ones: the grid shows the most
    confident first. Returns how many test images were misclassified.
    """
    plt = _pyplot()
    wrong = np.flatnonzero(y_true != y_pred)
    order = wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")][:limit]
    cols = max(1, min(6, len(order)))
    rows = max(1, -(-len(order) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order):
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(
            f"{_plain(labels[y_true[i]])} → {_plain(labels[y_pred[i]])}\n(p={probs[i, y_pred[i]]:.2f})", fontsize=8
        )
    title = f"Misclassified test images: {len(wrong)} of {len(y_true)}" + (
        f" (the {len(order)} most confident shown)" if len(wrong) > len(order) else ""
    )
    if not len(wrong):
        axes[0, 0].text(0.5, 0.5, "none", ha="center", va="center", fontsize=14)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100, format="png")
    plt.close(fig)
    return int(len(wrong))


def html_report(
    metrics: dict[str, Any], per_class: dict[str, dict[str, float]], params: dict[str, Any], images: dict[str, Path]
) -> str:
    """One self-contained HTML page: metrics, per-class table, the plots (embedded) and params."""
    import base64
    import html

    def table(header: list[str], rows: list[list[Any]]) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Evaluation report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}",
        "td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}th{background:#f3f3f3}",
        "td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}</style></head><body>",
        "<h1>Evaluation report</h1><h2>Test metrics</h2>",
        table(["metric", "value"], [[k, v] for k, v in metrics.items()]),
        "<h2>Per class</h2>",
        table(
            ["class", "precision", "recall", "F1", "support"],
            [[c, r["precision"], r["recall"], r["f1"], r["support"]] for c, r in per_class.items()],
        ),
    ]
    for title, path in images.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"
        )
    parts += ["<h2>Params</h2>", table(["param", "value"], [[k, v] for k, v in params.items()]), "</body></html>"]
    return "\n".join(parts) + "\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
