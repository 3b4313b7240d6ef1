"""Per-epoch training metrics as CSV: written by train, read by evaluate and ``dvc plots``.

Kept apart from the evaluation code so that editing a plot never retrains the model.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any


def history_csv(history: list[dict[str, Any]]) -> str:
    """Per-epoch training metrics as CSV (the DVC plots of the training curves)."""
    buf = io.StringIO()
    columns = list(history[0]) if history else ["epoch"]
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({c: (f"{row[c]:.6g}" if isinstance(row[c], float) else row[c]) for c in columns})
    return buf.getvalue()


def read_history_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
