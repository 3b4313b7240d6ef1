"""The study's outcome: its figures for the study run, the winner as a ``dvc exp run`` command,
and ``reports/tune/`` (trials.csv and Optuna's plots)."""

from __future__ import annotations

import csv
import json
import logging
import shlex
from pathlib import Path
from typing import Any

from imgclf.core import paths
from imgclf.core.params import Params, fit_to_model
from imgclf.tuning.space import decode
from imgclf.tuning.storage import ATTR_BASELINE, counts

log = logging.getLogger("tune")

REPORT_DIR = paths.REPORTS / "tune"


def study_figures(p: Params, study) -> tuple[dict[str, float], dict[str, str]]:
    """The study run's metrics and tags now: counts, best value, best params and the winner's
    command."""
    from imgclf.tracking.study import TAG_BEST_TRIAL, TAG_COMMAND

    c = counts(study)
    metrics = {f"trials_{k}": v for k, v in c.items()}
    tags: dict[str, str] = {}
    if c["complete"]:
        best = study.best_trial
        metrics["best_value"] = best.value
        base = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(ATTR_BASELINE) and t.value is not None]
        if base:
            metrics["baseline_value"] = base[0].value
        tags = {f"best.{k}": str(v) for k, v in best.params.items()}
        tags[TAG_BEST_TRIAL] = str(best.number)
        tags[TAG_COMMAND] = shlex.join(winner_command(p, study))
    return metrics, tags


def _format(value: Any) -> str:
    """A value as ``dvc exp run -S`` reads it back (YAML)."""
    if isinstance(value, list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def winner_command(p: Params, study) -> list[str]:
    """``dvc exp run`` of the best trial's params, named after the study and the trial."""
    best = study.best_trial
    values = {k: decode(v, p.tune.space[k]) for k, v in best.params.items()}
    values["train.epochs"] = p.tune.epochs
    values = fit_to_model(p, values)  # what the trial trained with, e.g. a backbone without the CNN's params
    cmd = ["dvc", "exp", "run", "-n", f"{study.study_name}-trial-{best.number}"]
    for key, value in values.items():
        cmd += ["-S", f"{key}={_format(value)}"]
    return cmd


def write_reports(study, folder: Path = REPORT_DIR) -> list[Path]:
    """``trials.csv`` and, where there is enough to draw, the optimisation history and the
    param importances as PNGs; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    table = folder / "trials.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        keys = sorted({k for t in study.trials for k in t.params})
        w.writerow(["number", "state", "value", "epochs_reported", *keys])
        for t in study.trials:
            w.writerow([t.number, t.state.name, t.value, len(t.intermediate_values), *(t.params.get(k) for k in keys)])
    written.append(table)
    for name, draw in (
        ("optimization_history", ov.plot_optimization_history),
        ("param_importances", ov.plot_param_importances),
    ):
        try:
            ax = draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # too few complete trials
            log.info(
                "no %s plot: %s", name.replace("_", " "), str(err).splitlines()[0] if str(err) else "too few trials"
            )
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=100)
        plt.close(fig)
        written.append(folder / f"{name}.png")
    return written
