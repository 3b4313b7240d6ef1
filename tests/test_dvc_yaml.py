"""dvc.yaml stays honest: it is written from the pipeline description (imgclf/pipeline.py), and
each stage's deps hold the code it imports, less the code that shapes no output."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from imgclf import pipeline
from imgclf.core.params import SETTINGS, Params

ROOT = Path(__file__).resolve().parents[1]
STAGES = tuple(s.name for s in pipeline.STAGES)


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


def _covers(entries: tuple[str, ...], file: str) -> bool:
    """Whether ``file`` is one of ``entries`` or lies in one of its folders."""
    return any(file == e or file.startswith(e + "/") for e in entries)


def test_dvc_yaml_is_written_from_the_pipeline_description():
    text = (ROOT / "dvc.yaml").read_text()
    assert pipeline.render_dvc_yaml(text) == text, "dvc.yaml drifted from imgclf/pipeline.py: run `make pipeline`"
    stages = _dvc()
    assert tuple(stages) == STAGES
    for s in pipeline.STAGES:
        assert stages[s.name]["cmd"] == s.cmd
        assert stages[s.name]["deps"] == list(s.deps)
        assert tuple(stages[s.name].get("params", ())) == s.params


def test_each_stage_imports_only_its_code_deps_or_code_that_shapes_no_output():
    for s in pipeline.STAGES:
        imported = code_closure(ROOT / "stages" / f"{s.name}.py")
        stray = sorted(f for f in imported if not _covers(s.code + pipeline.NOT_SHAPING, f))
        assert not stray, f"{s.name} imports {stray}: list it in imgclf/pipeline.py (code or NOT_SHAPING)"
        unused = [e for e in s.code if not any(_covers((e,), f) for f in imported)]
        assert not unused, f"{s.name} lists code it never imports: {unused}"


def test_code_deps_and_not_shaping_code_do_not_overlap():
    for s in pipeline.STAGES:
        assert not [e for e in s.code if _covers(pipeline.NOT_SHAPING, e)], s.name
        for entry in s.code:
            assert (ROOT / entry).exists(), entry


def test_every_section_shapes_a_stage_or_is_a_setting():
    shaping = {section for s in pipeline.STAGES for section in s.params}
    assert shaping | {k for k in SETTINGS if "." not in k} == set(Params.model_fields)
    assert set(pipeline.sections(pipeline.RESULT)) == {"base", "data", "augment", "train"}


def test_closure_follows_packages():
    closure = code_closure(ROOT / "stages" / "train.py")
    assert {"imgclf/__init__.py", "imgclf/tracking/__init__.py", "imgclf/tracking/recorder.py"} <= closure
    assert "imgclf/evaluation/scoring.py" not in closure
