from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imgclf.core import params
from imgclf.core.errors import PipelineError

from .helpers import ROOT


def test_project_params_file_is_valid_and_matches_defaults():
    loaded = params.load(ROOT / "params.yaml")
    defaults = params.Params()
    assert loaded.train.conv_filters == [32, 64]
    assert loaded.train == defaults.train
    assert loaded.data.source == "data/demo"
    assert loaded.tune.space  # from settings.yaml beside it


def test_settings_live_in_their_own_file_and_shape_nothing(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("train: {epochs: 3}\n")
    (tmp_path / "settings.yaml").write_text("train: {resume: false}\naugment: {workers: 2}\nmlflow: {register: true}\n")
    p = params.load(tmp_path / "params.yaml")
    assert (p.train.epochs, p.train.resume, p.augment.workers, p.mlflow.register_model) == (3, False, 2, True)
    shaping = p.shaping("pipeline")
    assert "train.epochs" in shaping and "augment.angles" in shaping
    assert not [k for k in shaping if k in ("train.resume", "augment.workers") or k.split(".")[0] in ("mlflow", "tune")]


@pytest.mark.parametrize(
    "file, text, fragment",
    [
        ("params.yaml", "train: {resume: false}", "params.yaml: 'train.resume' belongs in settings.yaml"),
        ("params.yaml", "tune: {epochs: 2}", "params.yaml: 'tune' belongs in settings.yaml"),
        ("settings.yaml", "train: {epochs: 2}", "settings.yaml: 'train.epochs' belongs in params.yaml"),
        ("settings.yaml", "tune: {epochs: 0}", "settings.yaml: 'tune.epochs'"),
        ("settings.yaml", "mlflow: {registr: true}", "settings.yaml: unknown key 'mlflow.registr'"),
    ],
)
def test_a_key_in_the_wrong_file_or_a_bad_setting_names_the_file(tmp_path: Path, file: str, text: str, fragment: str):
    (tmp_path / "params.yaml").write_text("{}\n")
    (tmp_path / file).write_text(text + "\n")
    with pytest.raises(PipelineError) as err:
        params.load(tmp_path / "params.yaml")
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_split_settings_cuts_sections_between_the_files():
    raw = {"train": {"epochs": 1, "resume": False}, "mlflow": {"register": True}, "data": {"image_size": 16}}
    assert params.split_settings(raw) == (
        {"train": {"epochs": 1}, "data": {"image_size": 16}},
        {"train": {"resume": False}, "mlflow": {"register": True}},
    )


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"trian": {}}, "unknown key 'trian'"),
        ({"train": {"epochs": 0}}, "'train.epochs'"),
        ({"train": {"epochs": "many"}}, "'train.epochs'"),
        ({"data": {"test_size": 1.0}}, "'data.test_size'"),
        ({"data": {"test_size": 0}}, "'data.test_size'"),
        ({"train": {"optimizer": "adamax"}}, "'train.optimizer' must be one of 'adam', 'adamw', 'sgd' or 'rmsprop'"),
        ({"data": {"on_bad_image": "ignore"}}, "'data.on_bad_image'"),
        ({"data": {"labels": ["a", "a"]}}, "more than once"),
        ({"augment": {"angles": []}}, "'augment.angles'"),
        ({"data": {"image_size": 8}}, "data.image_size 8 is too small"),
        (
            {"train": {"strategy": "multiworker"}},
            "'train.strategy' must be one of 'default', 'mirrored' or 'multi_worker'",
        ),
    ],
)
def test_bad_params_give_one_line_naming_the_key(raw, fragment):
    with pytest.raises(PipelineError) as err:
        params.parse(raw)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(PipelineError, match="allowed keys here: .*epochs"):
        params.parse({"train": {"epoch": 3}})


def test_image_size_check_follows_architecture():
    # Two blocks with 3x3 kernels: 16 -> 7 -> 2, fine; one block lets 8 through.
    assert params.feature_map_size(16, 3, 2) == 2
    params.parse({"data": {"image_size": 8}, "train": {"conv_filters": [8]}})


def test_load_reports_yaml_syntax_errors(tmp_path: Path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: [1\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="not valid YAML"):
        params.load(bad)


def test_params_read_as_dvc_reads_them(tmp_path: Path):
    # YAML 1.2, as DVC writes `-S` values: off is a word, 1e-3 a number; folders named 0-9 by
    # number; an empty settings section lays nothing over params.yaml's.
    (tmp_path / "params.yaml").write_text(
        "data: {labels: [0, 1, yes, no], source: data/x}\ntrain: {mixed_precision: off, learning_rate: 1e-3}\n"
    )
    (tmp_path / "settings.yaml").write_text("train:\n  # resume: true\n")
    p = params.load(tmp_path / "params.yaml")
    assert p.data.labels == ["0", "1", "yes", "no"]
    assert (p.train.mixed_precision, p.train.learning_rate) == ("off", 0.001)
    (tmp_path / "params.yaml").write_text("data: {source: ~/photos}\n")
    with pytest.raises(PipelineError, match="'data.source' starts with ~, which DVC does not expand"):
        params.load(tmp_path / "params.yaml")


def test_load_missing_file(tmp_path: Path):
    with pytest.raises(PipelineError, match="not found"):
        params.load(tmp_path / "nope.yaml")


def test_flatten_names_params_like_dvc():
    p = params.parse(yaml.safe_load("train: {epochs: 2}"))
    flat = params.flatten({"train": p.section("train")})
    assert flat["train.epochs"] == 2
    assert flat["train.conv_filters"] == [32, 64]


def test_mlflow_register_is_spelled_register():
    p = params.parse({"mlflow": {"register": True}})
    assert p.mlflow.register_model is True
    assert p.section("mlflow")["register"] is True
    with pytest.raises(PipelineError, match="unknown key 'mlflow.register_modell'"):
        params.parse({"mlflow": {"register_modell": True}})
