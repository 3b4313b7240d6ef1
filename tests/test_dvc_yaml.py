"""dvc.yaml stays honest: each stage lists exactly the code it runs and the params that shape it."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from imgclf.params import STAGE_PARAMS, Params

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("demo", "augment", "train", "evaluate")


def _imgclf_imports(path: Path) -> set[str]:
    """Modules of the imgclf package that ``path`` imports (at any depth of the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "imgclf":
            found.add(node.module)
            # `from package import module` imports the module too.
            found |= {f"{node.module}.{a.name}" for a in node.names if _source(f"{node.module}.{a.name}")}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "imgclf"}
    return found


def _source(module: str) -> Path | None:
    """The file of ``module``: ``a/b.py`` or a package's ``a/b/__init__.py``; None if neither."""
    base = ROOT / module.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def code_closure(entry: Path) -> set[str]:
    """The stage file plus every imgclf module it reaches (with their packages' __init__)."""
    files = {entry.relative_to(ROOT).as_posix()}
    todo, seen = [entry], set()
    while todo:
        for module in _imgclf_imports(todo.pop()):
            parts = module.split(".")
            for depth in range(1, len(parts) + 1):
                name = ".".join(parts[:depth])
                path = _source(name)
                if name not in seen and path is not None:
                    seen.add(name)
                    files.add(path.relative_to(ROOT).as_posix())
                    todo.append(path)
    return files


def _dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_each_stage_depends_on_exactly_the_code_it_imports():
    stages = _dvc()
    for name in STAGES:
        deps = {d for d in stages[name]["deps"] if d.endswith(".py")}
        assert deps == code_closure(ROOT / "stages" / f"{name}.py"), name


def test_each_stage_lists_the_params_that_shape_it():
    stages = _dvc()
    assert tuple(stages) == STAGES
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        assert tuple(stage.get("params", ())) == STAGE_PARAMS[name], name
    # evaluate's params shape only evaluate; mlflow and tune (the search's settings) shape none.
    assert set(STAGE_PARAMS["pipeline"]) | {"evaluate", "mlflow", "tune"} == set(Params.model_fields)


def test_closure_follows_packages():
    closure = code_closure(ROOT / "stages" / "train.py")
    assert {"imgclf/__init__.py", "imgclf/tracking/__init__.py", "imgclf/tracking/recorder.py"} <= closure
