"""Reading the training config's values: YAML files, dotted keys, field types.

The config itself, one dataclass and its rules, is trainer/run/config.py; these are
the helpers its :func:`~ttspo.trainer.run.config.load_config` reads a file and types a
value with (an int field takes ``3``, a float field ``1e-4`` or ``3``, a list field
``[a, b]`` or ``a,b``), each error one ConfigError line naming the key and where it
was given.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from ttspo.builder.core.errors import ConfigError, first_line


def resolve(cfg: Any, key: str) -> Any:
    """The value at the dotted KEY of CFG (a section, or a field)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def read_yaml(path: Path) -> dict[str, Any]:
    """A config file's mapping of sections; one ConfigError line when it is not one."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, not a {type(data).__name__}")
    return data


def flatten(data: dict[str, Any], free_form: Sequence[str] = (), prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of DATA; the dict of a key in FREE_FORM is one value."""
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in free_form:
            out += flatten(v, free_form, key + ".")
        else:
            out.append((key, v))
    return out


def typed(value: Any, hint: Any, key: str, where: str) -> Any:
    """VALUE checked (and lightly coerced) against the field type HINT."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ConfigError(f"{where}: config {key} wants {type_name(hint)}, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise bad
        return [typed(v, args[0], key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:  # YAML reads 1e-4 (no dot) as a string; an int past float's range overflows
            return float(value)
        except (ValueError, OverflowError):
            raise bad from None
    if hint is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    return value


def type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
