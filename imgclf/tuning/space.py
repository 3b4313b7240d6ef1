"""The search space: the values a trial gets for each param of ``tune.space``, as params.yaml
spells them, the study's first trial (params.yaml's own values) and ``--enqueue``'s trials."""

from __future__ import annotations

import json
from typing import Any

from imgclf.core.errors import PipelineError
from imgclf.core.params import Params, SpaceEntry, fit_to_model, searchable, whole_numbered, with_values


def encode(value: Any) -> Any:
    """A choice as Optuna can store it: scalars as they are, lists as their JSON text."""
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def decode(value: Any, entry: SpaceEntry) -> Any:
    """A value as Optuna stored it, back as params.yaml spells it."""
    if entry.choices is None:
        return value
    return {encode(c): c for c in entry.choices}.get(value, value)


def suggest(trial, p: Params) -> dict[str, Any]:
    """The trial's values for every param of ``tune.space``, as params.yaml spells them."""
    values = {}
    for key, e in p.tune.space.items():
        if e.choices is not None:
            raw = trial.suggest_categorical(key, [encode(c) for c in e.choices])
        elif whole_numbered(key):
            raw = trial.suggest_int(key, int(e.low), int(e.high), step=int(e.step or 1), log=e.log)
        else:
            raw = trial.suggest_float(key, e.low, e.high, step=e.step, log=e.log)
        values[key] = decode(raw, e)
    return values


def trial_params(p: Params, values: dict[str, Any]) -> Params:
    """``p`` with a trial's ``values`` and the study's epoch budget."""
    return with_values(p, fit_to_model(p, {**values, "train.epochs": p.tune.epochs}), "tune")


def baseline(p: Params) -> dict[str, Any]:
    """params.yaml's own values for the searched params that lie in the space (Optuna's names,
    encoded): the study's first trial, so its best is measured against them."""
    current = searchable(p)
    out = {}
    for key, e in p.tune.space.items():
        value = current[key]
        if e.choices is not None:
            if value in e.choices:
                out[key] = encode(value)
        elif e.low <= value <= e.high:
            out[key] = value
    return out


def parse_enqueue(text: str, p: Params) -> dict[str, Any]:
    """``--enqueue 'train.learning_rate=0.003,train.batch_size=64'`` as a trial to run first."""
    from ruamel.yaml import YAML

    read = YAML(typ="safe", pure=True).load  # YAML 1.2, as params.yaml is read: off is a word
    out = {}
    for part in filter(None, (s.strip() for s in _split_top(text))):
        key, sep, value = part.partition("=")
        if not sep or key not in p.tune.space:
            raise PipelineError(
                f"--enqueue {part!r}: give KEY=VALUE with KEY one of tune.space: {', '.join(p.tune.space)}"
            )
        out[key] = encode(read(value))
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets (``train.conv_filters=[16,32]`` stays whole)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]
