"""The pipeline, described once: its stages in order, and for each the params sections it reads,
the data it reads, the code that shapes its outputs, what it makes, and whether it closes a result.

This description drives:

- ``dvc.yaml``: each stage's ``cmd``, ``params`` and ``deps`` (``make pipeline`` writes them;
  ``tests/test_dvc_yaml.py`` fails when they drift, or when a stage imports code that is
  neither among its deps nor in :data:`NOT_SHAPING`);
- the params a stage's MLflow run logs, and the pipeline run's (:meth:`~imgclf.core.params.Params.shaping`);
- the recorder: the tag a stage's fingerprint goes under, and which stages make a result
  (:mod:`imgclf.tracking`);
- the training checkpoint's key (:func:`imgclf.training.checkpoint.code_digest`).

Where the line runs: code that computes the bytes of a stage's outputs is a dep of that stage;
code that only records to MLflow, talks to the terminal, or describes the pipeline is not, so
editing it reruns nothing and leaves a training checkpoint resumable (see :data:`NOT_SHAPING`).
The formats that one stage hands to the next (the prepared arrays, the history CSV, the saved
model) live in ``imgclf/core``, which every stage lists.

Plain data: this module imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    """One DVC stage: ``python -m stages.<name>``, its MLflow run named ``<name>``."""

    name: str
    # Sections of params.yaml that shape its outputs: its DVC params and its run's params.
    params: tuple[str, ...] = ()
    # Data it reads: outputs of earlier stages, or ${...} taken from params.yaml.
    reads: tuple[str, ...] = ()
    # Files and folders (every .py under them) whose code shapes its outputs.
    code: tuple[str, ...] = ()
    # What its fingerprint names ("data": the prepared arrays, "model": the model file); a result
    # is made of the runs that made these.
    makes: str | None = None
    # Its run ends a result: the pipeline run (one row per result) is written after it.
    closes_result: bool = False

    @property
    def cmd(self) -> str:
        return f"python -m stages.{self.name}"

    @property
    def deps(self) -> tuple[str, ...]:
        """Its DVC deps: the data it reads, then its code."""
        return (*self.reads, *self.code)


CORE = "imgclf/core"

STAGES: tuple[Stage, ...] = (
    Stage("demo", code=("stages/demo.py", CORE, "imgclf/data")),
    Stage(
        "augment",
        params=("base", "data", "augment"),
        reads=("${data.source}",),
        code=("stages/augment.py", CORE, "imgclf/data"),
        makes="data",
    ),
    Stage(
        "train",
        params=("base", "train"),
        reads=("data/prepared",),
        code=("stages/train.py", CORE, "imgclf/training"),
        makes="model",
    ),
    Stage(
        "evaluate",
        params=("evaluate",),
        # model_run.json names the train run: every training that ran is closed by an evaluation,
        # even one whose model.h5 matches dvc.lock bit for bit (a fresh clone on the same CPU).
        reads=("data/prepared", "models/model.h5", "models/model_run.json", "reports/train_history.csv"),
        code=("stages/evaluate.py", CORE, "imgclf/evaluation"),
        closes_result=True,
    ),
)

# Code that no stage lists, and why editing it changes no output:
NOT_SHAPING = (
    "imgclf/__init__.py",  # sets TensorFlow's log level
    "imgclf/pipeline.py",  # this description: dvc.yaml is written from it
    "imgclf/console",  # the stage wrapper, signals, progress lines
    "imgclf/tracking",  # MLflow: runs, params, metrics, datasets, models, the pipeline run
)

# The name of a result's run: it carries the params of the stages that make something.
RESULT = "pipeline"


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def sections(name: str) -> tuple[str, ...]:
    """The params sections that shape stage ``name``, or with :data:`RESULT` the result: those
    of every stage that makes something, in pipeline order."""
    if name != RESULT:
        return stage(name).params
    out: list[str] = []
    for s in STAGES:
        if s.makes:
            out += [section for section in s.params if section not in out]
    return tuple(out)


def makers() -> dict[str, str]:
    """Each stage that makes something -> what it makes (``{"augment": "data", "train": "model"}``)."""
    return {s.name: s.makes for s in STAGES if s.makes}


def maker(kind: str) -> str:
    """The stage that makes ``kind`` (``"data"``, ``"model"``)."""
    return next(name for name, made in makers().items() if made == kind)


def closing() -> str:
    """The stage whose run closes a result."""
    return next(s.name for s in STAGES if s.closes_result)


def code_files(name: str, root: Path) -> list[Path]:
    """The ``.py`` files of stage ``name``'s code under ``root``, sorted."""
    files: set[Path] = set()
    for entry in stage(name).code:
        path = root / entry
        files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return sorted(files)


def render_dvc_yaml(current: str) -> str:
    """``dvc.yaml`` with each stage's ``cmd``, ``params`` and ``deps`` written from :data:`STAGES`
    (their outs, metrics and the plots are kept as they are)."""
    import re

    import yaml

    doc = yaml.safe_load(current) or {}
    old = doc.get("stages") or {}
    stages = {}
    for s in STAGES:
        body = {"cmd": s.cmd, "deps": list(s.deps)}
        if s.params:
            body["params"] = list(s.params)
        body.update({k: v for k, v in (old.get(s.name) or {}).items() if k not in ("cmd", "deps", "params")})
        stages[s.name] = body
    doc = {"stages": stages, **{k: v for k, v in doc.items() if k != "stages"}}

    class Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False):  # noqa: ARG002
            return super().increase_indent(flow, False)  # lists indented under their key

    text = yaml.dump(doc, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=120)
    lines = []
    for line in text.splitlines():
        if lines and lines[-1] != "stages:" and (not line.startswith(" ") or re.fullmatch(r"  \w+:", line)):
            lines.append("")  # a blank line between stages and before plots
        lines.append(line)
    header = "# Each stage's cmd, params and deps are written from imgclf/pipeline.py by `make pipeline`.\n"
    return header + "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parents[1] / "dvc.yaml"
    target.write_text(render_dvc_yaml(target.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {target}")
