"""The search space: what a trial samples, and the config it becomes."""
from __future__ import annotations

from typing import Any

from ..config import Config, ParamSpec, parse_config, set_path
from ..errors import ConfigError


def trial_config(base: Config, values: dict[str, Any], origin: str = "tune.space") -> Config:
    """`base` with dotted fields set, validated as `--set` validates them (set_path + parse_config)."""
    raw = base.model_dump(mode="json")
    # Options belong to one fusion (film's `pool` means nothing to concat): as in `compare`, a trial of
    # another fusion starts without them, unless the space sets some.
    if values.get("fusion.name", base.fusion.name) != base.fusion.name and not any(
            key.startswith("fusion.options.") for key in values):
        raw["fusion"]["options"] = {}
    for key, value in values.items():
        try:
            set_path(raw, key, value)
        except ConfigError as error:  # its message speaks of --set; here the field came from tune.space
            raise ConfigError(str(error).replace("--set ", "tune.space: ", 1)) from None
    return parse_config(raw, origin)


def check_space(base: Config) -> None:
    """Set each field to its range's ends and to each of its choices: a misspelt field, or a value
    the field refuses, fails here, naming it, before the data is read or any trial trains."""
    if not base.tune.space:
        raise ConfigError("tune.space is empty: name the fields to search, e.g. "
                          "tune: {space: {train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}}")
    for key, spec in base.tune.space.items():
        for value in spec.ends():
            try:
                trial_config(base, {key: value}, origin=f"tune.space {key}={value!r}")
            except ConfigError as error:  # a registry's error ("unknown fusion") names the value only
                message = str(error)
                raise ConfigError(message if key in message else f"tune.space {key}={value!r}: {message}") from None


def suggest(trial: Any, key: str, spec: ParamSpec) -> Any:
    """One field's value for an Optuna trial (its parameter is named by the dotted field)."""
    if spec.choices is not None:
        return trial.suggest_categorical(key, spec.choices)
    if spec.is_int():
        return trial.suggest_int(key, spec.low, spec.high, step=spec.step or 1, log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def base_values(base: Config) -> dict[str, Any] | None:
    """The config's own values of the searched fields, when every one lies in its range or choices:
    tried first, so the study's best is at least as good as the config it started from."""
    raw, values = base.model_dump(mode="json"), {}
    for key, spec in base.tune.space.items():
        node = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        inside = node in spec.choices if spec.choices is not None else (
            isinstance(node, (int, float)) and spec.low <= node <= spec.high)
        if not inside:
            return None
        values[key] = node
    return values
