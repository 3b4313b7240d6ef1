"""dvc.yaml stays honest: each stage lists exactly the code it runs, and names match everywhere."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from imgclf import params as params_mod

from .helpers import ROOT

STAGES = ("demo", "augment", "train", "evaluate")


def _imgclf_imports(path: Path) -> set[str]:
    """Modules of the imgclf package that ``path`` imports (at any depth of the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "imgclf":
            if node.module == "imgclf":
                found |= {f"imgclf.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "imgclf"}
    return found


def code_closure(entry: Path) -> set[str]:
    """The stage file plus every imgclf module it reaches, as project-relative paths."""
    seen: set[str] = set()
    todo = [entry]
    files = {entry.relative_to(ROOT).as_posix(), "imgclf/__init__.py"}
    while todo:
        for module in _imgclf_imports(todo.pop()):
            if module not in seen:
                seen.add(module)
                path = ROOT / (module.replace(".", "/") + ".py")
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


def test_stage_names_match_modules_and_params_sections():
    stages = _dvc()
    assert tuple(stages) == STAGES
    sections = set(params_mod.Params.model_fields)
    for name, stage in stages.items():
        assert stage["cmd"] == f"python -m stages.{name}"
        for section in stage.get("params", []):
            assert section in sections, (name, section)
    assert {"augment", "train", "evaluate"} <= sections
