"""Typed configuration from TOML files and ``--set section.key=value`` overrides.

Configuration is dataclasses. These helpers fill them from nested dicts (the
TOML layout): an unknown key or a value of the wrong type raises ``ValueError``
naming the dotted key (``optim.lr``), never a traceback deep in a run.

Two rules make a config class reusable inside another one:

- a nested dataclass field starts from the field's own default (its
  ``default_factory()``), so an embedding class can give the embedded one other
  defaults, and a table only changes the keys it names;
- a renamed key keeps working for one release: a dataclass lists
  ``CONFIG_ALIASES = {"old.dotted.key": "new.dotted.key"}`` (paths relative to
  that class); an old key is moved to its new place with a
  :class:`DeprecatedConfigKey` warning naming both.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import typing
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union


class DeprecatedConfigKey(DeprecationWarning):
    """A config key that was renamed; the message names the new key."""


# Python hides DeprecationWarning outside __main__; a renamed key in a user's TOML
# file is meant for that user, so this category is shown (once per key).
warnings.filterwarnings("default", category=DeprecatedConfigKey)


def convert(key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(key, value, inner[0])
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return [convert(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        # A free-form table (e.g. keyword arguments for a model factory): its
        # keys are checked by whoever consumes it.
        if not isinstance(value, Mapping):
            raise ValueError(f"{key} must be a table, got {type(value).__name__} {value!r}")
        return {str(k): v for k, v in value.items()}
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {type(value).__name__} {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")  # pragma: no cover


def _pop_path(data: Dict[str, Any], parts: Sequence[str]) -> tuple:
    """Remove ``data[p0][p1]...``; returns ``(found, value)`` and prunes tables left empty."""
    node = data
    for part in parts[:-1]:
        node = node.get(part) if isinstance(node, Mapping) else None
        if not isinstance(node, dict):
            return False, None
    if parts[-1] not in node:
        return False, None
    value = node.pop(parts[-1])
    return True, value


def _has_path(data: Mapping[str, Any], parts: Sequence[str]) -> bool:
    node: Any = data
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _set_path(data: Dict[str, Any], parts: Sequence[str], value: Any, key: str) -> None:
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"config key {key}: {part} is not a table")
        node = child
    node[parts[-1]] = value


def _move_aliases(cls, data: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    """``data`` with the renamed keys of ``cls`` itself (its ``CONFIG_ALIASES``) moved to their new place."""
    aliases: Mapping[str, str] = getattr(cls, "CONFIG_ALIASES", {})
    if not aliases or not isinstance(data, Mapping):
        return data
    data = copy.deepcopy(dict(data))
    names = {f.name for f in dataclasses.fields(cls)}
    for old, new in aliases.items():
        found, value = _pop_path(data, old.split("."))
        if not found:
            continue
        if _has_path(data, new.split(".")):
            raise ValueError(f"config keys {prefix}{old} (its old name) and {prefix}{new} are both set; "
                             f"keep {prefix}{new}")
        warnings.warn(f"config key {prefix}{old} is deprecated and will be removed in the next release; "
                      f"use {prefix}{new}", DeprecatedConfigKey, stacklevel=4)
        _set_path(data, new.split("."), value, prefix + new)
        top = old.split(".")[0]
        if top not in names and data.get(top) == {}:
            del data[top]  # a table that held only old keys
    return data


def apply_aliases(cls, data: Mapping[str, Any], prefix: str = "") -> Mapping[str, Any]:
    """Rename the old keys of ``cls`` and of its nested dataclasses in ``data`` (a new dict; warns per key).

    A config read from several layers (preset, file, ``--set``) renames each layer
    before merging, so an old key in a later layer overrides a new key in an earlier one.
    """
    data = _move_aliases(cls, data, prefix)
    if not isinstance(data, Mapping):
        return data
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name in out and dataclasses.is_dataclass(hints[f.name]):
            out[f.name] = apply_aliases(hints[f.name], out[f.name], f"{prefix}{f.name}.")
    return out


def _nested_default(f: dataclasses.Field) -> Optional[Any]:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    if dataclasses.is_dataclass(f.default):
        return copy.deepcopy(f.default)
    return None


def build_dataclass(cls, data: Mapping[str, Any], prefix: str = "", base: Optional[Any] = None):
    """Build dataclass ``cls`` from nested dicts; unknown keys and wrong types raise naming the dotted key.

    Args:
        cls: the dataclass.
        data: the TOML-layout table.
        prefix: dotted path of ``data`` (for messages).
        base: an instance of ``cls`` whose values stand in for the keys ``data`` leaves out
            (default: the class defaults). A nested dataclass field's base is the field's default.
    """
    if not isinstance(data, Mapping):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a table, got {type(data).__name__}")
    data = _move_aliases(cls, data, prefix)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]!s} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            default = getattr(base, name) if base is not None else _nested_default(f)
            if name in data or default is not None:
                kwargs[name] = build_dataclass(hint, data.get(name, {}), f"{prefix}{name}.", default)
        elif name in data:
            kwargs[name] = convert(f"{prefix}{name}", data[name], hint)
        elif base is not None:
            kwargs[name] = copy.deepcopy(getattr(base, name))
    return cls(**kwargs)


def parse_override(text: str) -> tuple:
    """Parse ``"section.key=value"``; the value is TOML (bare words are strings)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ValueError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as jsd or /path/to/store
    return key, value


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``--set`` overrides to a nested dict (in place) and return it."""
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key.split("."), value, key)
    return data


def read_toml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a TOML file into nested dicts; a missing file or bad TOML gives a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML: {exc}") from None


def deep_merge(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
    """Merge ``update`` into ``base`` (in place), table by table."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base
