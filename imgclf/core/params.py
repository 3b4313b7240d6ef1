"""Load and validate ``params.yaml`` into typed objects: the one place that knows its shape.

Every stage calls :func:`load` before doing any work, so an unknown key, a wrong type or an
out-of-range value stops the pipeline at once with a one-line message naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgclf import pipeline
from imgclf.core.errors import PipelineError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
# train.model: the original script's CNN, or a keras.applications backbone with a new head
# (imgclf/training/backbones.py holds what each needs).
BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0", "resnet50_v2")
MODELS = ("cnn", *BACKBONES)
# The CNN's own params: a backbone model rejects a value other than the default.
CNN_ONLY = ("conv_filters", "kernel_size", "dense_units", "dropout_conv")
# Smallest image side a backbone takes (keras.applications' own limit).
BACKBONE_MIN_SIZE = 32

# Keys that shape no output: how a stage runs (worker processes, resume), where it records
# (mlflow) and how `tune` searches. They live in settings.yaml beside params.yaml, which DVC does
# not track: changing one reruns nothing, and `dvc exp show` has no column for them. A key or
# section here, written in the other file, is an error that says where it belongs.
SETTINGS = ("augment.workers", "train.resume", "mlflow", "tune")
PARAMS_FILE = "params.yaml"
SETTINGS_FILE = "settings.yaml"


def is_setting(key: str) -> bool:
    """Whether the dotted ``key`` (a section or a param) belongs in settings.yaml."""
    return any(key == s or key.startswith(s + ".") for s in SETTINGS)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseParams(_Section):
    """Settings shared by every stage."""

    seed: int = Field(42, ge=0, lt=2**32, description="drives NumPy, Python and TensorFlow")


class DataParams(_Section):
    """Where the images are and how they are read and split."""

    source: str = "data/demo"
    labels: list[str] | None = None
    image_size: int = Field(32, ge=8, le=1024)
    test_size: float = Field(0.2, gt=0, lt=1)
    val_size: float = Field(0.2, ge=0, lt=1)
    on_bad_image: Literal["skip", "fail"] = "skip"
    duplicates: Literal["group", "keep", "drop"] = "group"

    @field_validator("source")
    @classmethod
    def _no_home_shorthand(cls, v: str) -> str:
        if v.startswith("~"):
            raise ValueError("starts with ~, which DVC does not expand: write the folder's absolute path")
        return v

    @field_validator("labels", mode="before")
    @classmethod
    def _numbers_name_folders(cls, v: Any) -> Any:
        # Folders named 0-9 (the demo's) are numbers to YAML: the names are their text.
        if isinstance(v, list):
            return [str(x) if isinstance(x, int | float) and not isinstance(x, bool) else x for x in v]
        return v

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("needs at least 2 class names, or null to use the folder names")
            dupes = sorted({x for x in v if v.count(x) > 1})
            if dupes:
                raise ValueError(f"lists {dupes} more than once")
        return v


class AugmentParams(_Section):
    """Transforms applied to each training image (test and validation images stay as they are)."""

    angles: list[float] = Field(default_factory=lambda: [-20, -15, -10, -5, 0, 5, 10, 15])
    flip: bool = False
    resample: Literal["nearest", "bilinear"] = "nearest"
    workers: int = Field(0, ge=0, le=256, description="processes; 0 = one per core; output is the same")

    @field_validator("angles")
    @classmethod
    def _some_angles(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("needs at least one angle (use [0] to keep images as they are)")
        if any(abs(a) > 180 for a in v):
            raise ValueError("angles are degrees in [-180, 180]")
        return v


MONITORS = ("val_loss", "val_accuracy", "loss", "accuracy")


class EarlyStoppingParams(_Section):
    """Which epoch is best (its weights are the ones saved), and when to stop waiting for a better one."""

    patience: int = Field(0, ge=0, description="epochs without improvement before stopping; 0 = never stop early")
    monitor: Literal[MONITORS] = "val_loss"  # type: ignore[valid-type]
    min_delta: float = Field(0.0, ge=0, description="smallest change of the monitor that counts as better")


class FineTuneParams(_Section):
    """Two phases for a backbone that starts from trained weights (``train.init`` not none):
    the backbone frozen while the new head learns, then its top layers learning too, slower."""

    frozen_epochs: int = Field(2, ge=0, description="epochs of the first phase: only the head learns")
    unfreeze: int | str = Field("all", description="backbone layers, from the top, that learn afterwards")
    lr_factor: float = Field(0.1, gt=0, le=1, description="the second phase's rate: train.learning_rate times this")

    @field_validator("unfreeze")
    @classmethod
    def _not_negative(cls, v: int | str) -> int | str:
        if (isinstance(v, int) and v < 0) or (isinstance(v, str) and v != "all"):
            raise ValueError("is a count of layers (0 = the backbone stays frozen) or 'all'")
        return v


class TrainParams(_Section):
    """The model (the original script's CNN by default, or a pretrained backbone) and how it is fitted."""

    model: Literal[MODELS] = "cnn"  # type: ignore[valid-type]
    init: str = Field("none", min_length=1, description="none | imagenet | a file | runs:/<id> | models:/<name>@<a>")
    init_head: Literal["keep", "new"] = "keep"
    fine_tune: FineTuneParams = Field(default_factory=FineTuneParams)
    conv_filters: list[int] = Field(default_factory=lambda: [32, 64])
    kernel_size: int = Field(3, ge=1, le=15)
    dense_units: int = Field(512, ge=1)
    dropout_conv: float = Field(0.25, ge=0, lt=1)
    dropout_dense: float = Field(0.5, ge=0, lt=1)
    optimizer: Literal[OPTIMIZERS] = "adam"  # type: ignore[valid-type]
    learning_rate: float = Field(0.001, gt=0, le=10)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(5, ge=1)
    mixed_precision: Literal["auto", "off", "bfloat16", "float16"] = "auto"
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    deterministic: bool = True
    lr_schedule: Literal["constant", "cosine", "plateau"] = "constant"
    class_weight: Literal["none", "balanced"] = "none"
    early_stopping: EarlyStoppingParams = Field(default_factory=EarlyStoppingParams)
    resume: bool = Field(True, description="continue an interrupted training from its last checkpoint")

    @field_validator("conv_filters")
    @classmethod
    def _positive_filters(cls, v: list[int]) -> list[int]:
        if not v or any(f < 1 for f in v):
            raise ValueError("needs one positive filter count per conv block, e.g. [32, 64]")
        return v


class PromoteParams(_Section):
    """When a registered model becomes the ``champion`` (see :mod:`imgclf.tracking.models`)."""

    # Figures where higher is better; test_loss is not offered.
    metric: Literal["test_accuracy", "test_macro_f1", "test_macro_precision", "test_macro_recall"] = "test_accuracy"
    min: float = Field(0.0, ge=0.0, le=1.0)


class EvaluateParams(_Section):
    batch_size: int = Field(256, ge=1)
    promote: PromoteParams = Field(default_factory=PromoteParams)


class MlflowParams(_Section):
    """Tracking settings; they do not shape results, so no stage lists them as DVC params."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    experiment: str = Field("image-classification", min_length=1)
    # "register" would shadow pydantic's own attribute; params.yaml spells it "register".
    register_model: bool = Field(False, alias="register")
    model_name: str = Field("image-classifier", min_length=1)


# train and augment params a study may not search: they set how training runs, not what it learns, or
# (epochs, the monitor) are the study's own settings.
NOT_SEARCHABLE = (
    "train.strategy",
    "train.resume",
    "train.deterministic",
    "train.mixed_precision",
    "train.epochs",
    "train.early_stopping.monitor",
    "augment.workers",
)


class SpaceEntry(_Section):
    """One searched param: a range (``low``, ``high``, optionally ``log`` or ``step``) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SpaceEntry:
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("takes either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices needs at least one value")
        elif self.low is None or self.high is None:
            raise ValueError("needs low and high, or choices")
        elif self.low >= self.high:
            raise ValueError(f"low {self.low} must be below high {self.high}")
        elif self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log needs low above 0 and no step")
        return self


class TuneParams(_Section):
    """The search of ``python -m stages.tune``: the space and how trials are judged and stopped.

    It shapes no stage's output, so no stage lists it as a DVC param."""

    epochs: int = Field(5, ge=1, description="each trial's epoch budget; the winner trains as long")
    pruner: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = Field(3, ge=0, description="trials before pruning and TPE's model start")
    stale_after: int = Field(120, ge=2, description="seconds without a heartbeat before a running trial counts as dead")
    space: dict[str, SpaceEntry] = Field(default_factory=dict)


class Params(_Section):
    base: BaseParams = Field(default_factory=BaseParams)
    data: DataParams = Field(default_factory=DataParams)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)
    tune: TuneParams = Field(default_factory=TuneParams)

    @model_validator(mode="after")
    def _space_is_searchable(self) -> Params:
        train = searchable(self)
        for key, entry in self.tune.space.items():
            where = f"tune.space.{key}"
            if key not in train:
                raise ValueError(
                    f"{where}: not a train or augment param; the space holds their names, e.g. train.learning_rate"
                )
            if key in NOT_SEARCHABLE:
                raise ValueError(f"{where}: cannot be searched (the study sets it, or it does not change the model)")
            whole = whole_numbered(key)
            ends = (entry.low, entry.high, entry.step or 1)
            if whole and entry.choices is None and any(v != int(v) for v in ends):
                raise ValueError(f"{where}: {key} is a whole number; give whole low, high and step")
        return self

    @model_validator(mode="after")
    def _params_fit_the_model(self) -> Params:
        t = self.train
        if t.init == "none" and t.init_head != "keep":
            raise ValueError("train.init_head applies when train.init names a model to start from; train.init is none")
        if t.model == "cnn":
            if t.fine_tune != FineTuneParams():
                raise ValueError("train.fine_tune applies to the backbones only, not train.model cnn: remove it")
            if t.init == "imagenet":
                raise ValueError(
                    "train.init imagenet: ImageNet weights exist for the backbones only; "
                    "set train.model to one of " + ", ".join(BACKBONES)
                )
            return self
        defaults = TrainParams()
        changed = [k for k in CNN_ONLY if getattr(t, k) != getattr(defaults, k)]
        if changed:
            raise ValueError(
                f"train.{changed[0]} applies to train.model cnn only, not {t.model}: "
                "remove it or set it back to its default"
            )
        if self.data.image_size < BACKBONE_MIN_SIZE:
            raise ValueError(
                f"data.image_size {self.data.image_size} is too small for {t.model}: "
                f"backbones take images of {BACKBONE_MIN_SIZE} px or more"
            )
        return self

    @model_validator(mode="after")
    def _image_fits_architecture(self) -> Params:
        if self.train.model != "cnn":
            return self
        size = feature_map_size(self.data.image_size, self.train.kernel_size, len(self.train.conv_filters))
        if size < 1:
            raise ValueError(
                f"data.image_size {self.data.image_size} is too small for "
                f"{len(self.train.conv_filters)} conv blocks with kernel_size {self.train.kernel_size}: "
                "raise data.image_size or use fewer train.conv_filters"
            )
        return self

    @model_validator(mode="after")
    def _monitor_has_data(self) -> Params:
        monitor = self.train.early_stopping.monitor
        if monitor.startswith("val_") and self.data.val_size == 0:
            raise ValueError(
                f"train.early_stopping.monitor is {monitor} but data.val_size is 0 (no validation split): "
                f"set data.val_size above 0, or monitor {monitor[4:]}"
            )
        return self

    def section(self, name: str) -> dict[str, Any]:
        """One section as a plain dict."""
        return getattr(self, name).model_dump(by_alias=True)

    def shaping(self, stage: str) -> dict[str, Any]:
        """The params that shape ``stage`` (its sections in :mod:`imgclf.pipeline`, less the
        settings), or with ``"pipeline"`` the result, flattened as DVC and MLflow name them:
        ``{"train.epochs": 5, ...}``."""
        flat = flatten({name: self.section(name) for name in pipeline.sections(stage)})
        return {k: v for k, v in flat.items() if not is_setting(k)}


def searchable(p: Params) -> dict[str, Any]:
    """The params a study may name, with their values in ``p``: train's and augment's."""
    return flatten({"train": p.section("train"), "augment": p.section("augment")})


def whole_numbered(key: str) -> bool:
    """Whether the dotted param ``key`` takes whole numbers, by its declared type: ``int``, or a
    union with ``int`` and no ``float`` (``train.fine_tune.unfreeze``, a count or ``all``)."""
    import typing

    model: type[BaseModel] = Params
    *parents, leaf = key.split(".")
    for part in parents:
        model = model.model_fields[part].annotation
    declared = model.model_fields[leaf].annotation
    if typing.get_origin(declared) in (list, tuple, dict):
        return False
    kinds = typing.get_args(declared) or (declared,)
    return int in kinds and float not in kinds


def check_space(p: Params, source: str = SETTINGS_FILE) -> None:
    """Every value the space can give (its ends, its choices) is a valid param with the rest of
    ``p``; checked by ``tune``, not by the stages, so a space that does not fit another image
    size stops the search only, never ``dvc repro``."""
    for key, entry in p.tune.space.items():
        values = entry.choices if entry.choices is not None else [entry.low, entry.high]
        for value in values:
            try:
                with_values(p, fit_to_model(p, {key: value}), key)
            except PipelineError as err:
                reason = str(err).split(": ", 1)[-1]
                raise PipelineError(f"{source}: tune.space.{key}: {value!r} is not a valid value ({reason})") from None


def with_values(p: Params, values: dict[str, Any], source: str = "params.yaml") -> Params:
    """``p`` with each dotted param of ``values`` (e.g. ``train.learning_rate``) set, validated;
    a bad value raises :class:`PipelineError` naming the key, as from ``source``."""
    raw = p.model_dump(by_alias=True)
    for key, value in values.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return parse(raw, source)


def fit_to_model(p: Params, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (dotted params, e.g. a trial's) plus, for the ``train.model`` they give or ``p``
    has, the params that do not apply to it set back to their defaults: a study may search the
    model together with the CNN's params or the fine-tuning ones."""
    model = values.get("train.model", p.train.model)
    defaults = flatten({"train": TrainParams().model_dump()})
    if model == "cnn":
        unused = [k for k in defaults if k.startswith("train.fine_tune.")]
        if values.get("train.init", p.train.init) == "imagenet":  # a backbone's weights, not the CNN's
            unused.append("train.init")
    else:
        unused = [f"train.{k}" for k in CNN_ONLY]
    current = flatten({"train": p.train.model_dump()})
    return {**values, **{k: defaults[k] for k in unused if values.get(k, current[k]) != defaults[k]}}


def with_value(p: Params, key: str, value: Any) -> Params:
    return with_values(p, {key: value}, key)


def feature_map_size(image_size: int, kernel_size: int, blocks: int) -> int:
    """Side of the last feature map: each block is a 'same' conv, a 'valid' conv and a 2x2 pool."""
    size = image_size
    for _ in range(blocks):
        size = (size - (kernel_size - 1)) // 2
    return size


def _format_error(err: ValidationError, source: str, settings_source: str | None = None) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if settings_source and is_setting(key):
        source = settings_source
    kind = first["type"]
    if kind == "extra_forbidden":
        parent = first["loc"][:-1]
        allowed = _allowed_keys(parent)
        return f"{source}: unknown key '{key}'; allowed keys here: {', '.join(allowed)}"
    msg = first["msg"]
    if kind == "literal_error":
        msg = msg.replace("Input should be", "must be one of")
    msg = msg.replace("Input should be", "must be")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind == "value_error" and not first["loc"]:
        # A check across sections: its message starts with the key it is about.
        if settings_source and is_setting(msg.split(":")[0].split(" ")[0]):
            source = settings_source
        return f"{source}: {msg}"
    return f"{source}: '{key}' {msg[0].lower() + msg[1:]} (got {first.get('input')!r})"


def _allowed_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            break
        model = field.annotation
    return list(model.model_fields)


def parse(raw: Any, source: str = PARAMS_FILE, settings_source: str | None = None) -> Params:
    """Validate an already-loaded mapping of all sections; raise :class:`PipelineError` naming the
    bad key and its file (``settings_source`` for a key of :data:`SETTINGS`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections (base, data, augment, train, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise PipelineError(_format_error(err, source, settings_source)) from None


def load(path: str | Path) -> Params:
    """Read and validate a params file and the settings file beside it (see :data:`SETTINGS`;
    a missing settings file means the defaults)."""
    path = Path(path)
    raw = _read_yaml(path, missing="params file not found; run from the project root")
    settings_path = path.with_name(SETTINGS_FILE)
    settings = _read_yaml(settings_path, missing=None)
    for source, mapping, wanted in ((path, raw, False), (settings_path, settings, True)):
        if mapping is not None and not isinstance(mapping, dict):
            raise PipelineError(f"{source.name}: expected a mapping of sections")
        for key in flatten(mapping or {}, sections_too=True):
            if any(setting.startswith(key + ".") for setting in SETTINGS):
                continue  # a section holding both kinds (train, augment)
            if is_setting(key) != wanted:
                home = SETTINGS_FILE if is_setting(key) else PARAMS_FILE
                why = "it shapes no output" if is_setting(key) else "it shapes outputs, so DVC tracks it"
                raise PipelineError(f"{source.name}: '{key}' belongs in {home} ({why}): move it there")
    return parse(merge(raw or {}, settings or {}), path.name, settings_path.name)


def _read_yaml(path: Path, missing: str | None) -> Any:
    """A YAML file's content; a missing file is None, or an error saying ``missing``.

    Read as YAML 1.2, as DVC reads and writes params.yaml (``-S``, ``params diff``): ``off``,
    ``yes`` and ``1e-3`` are a word, a word and a number, not two booleans and a word (YAML 1.1)."""
    from ruamel.yaml import YAML, YAMLError

    try:
        return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing is None:
            return None
        raise PipelineError(f"{path}: {missing}") from None
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PipelineError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}") from None


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, section by section (a deep merge of mappings)."""
    out = dict(base)
    for key, value in extra.items():
        if value is None and isinstance(out.get(key), dict):
            continue  # an empty section (its keys commented out) lays nothing over
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def split_settings(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A mapping of sections cut in two: what goes in params.yaml, what in settings.yaml."""
    params: dict[str, Any] = {}
    settings: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str, p_out: dict[str, Any], s_out: dict[str, Any]) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if is_setting(name):
                s_out[key] = value
            elif isinstance(value, dict) and any(s.startswith(name + ".") for s in SETTINGS):
                walk(value, name + ".", p_out.setdefault(key, {}), s_out.setdefault(key, {}))
                if not s_out[key]:
                    del s_out[key]
            else:
                p_out[key] = value

    walk(raw, "", params, settings)
    return params, settings


def flatten(params: dict[str, Any], prefix: str = "", sections_too: bool = False) -> dict[str, Any]:
    """``{"train": {"epochs": 5}}`` -> ``{"train.epochs": 5}``, as DVC and MLflow name params
    (with ``sections_too``, each section also gets an entry of its own: ``{"train": {...}, ...}``)."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if sections_too:
                out[name] = value
            out.update(flatten(value, name + ".", sections_too))
        else:
            out[name] = value
    return out
