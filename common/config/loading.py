"""Reads a nested (Hydra) or dotted (Flower run-config) mapping into the typed schema, strictly."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from common.config.schema import AppConfig
from common.errors import ConfigError

__all__ = ["load_config"]


def _unflatten(values: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            value = _unflatten(value)
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config key '{key}' clashes with scalar key '{part}'")
            node = child
        leaf = parts[-1]
        if isinstance(node.get(leaf), dict) and isinstance(value, dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return nested


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Accept what TOML/YAML give for a field of this type, refuse the rest by name."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    raise ConfigError(f"config key '{key}' = {value!r} has the wrong type: expected {kind.__name__}")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        names = ", ".join(f"'{prefix}{k}'" for k in unknown)
        raise ConfigError(f"unknown config key(s) {names}; known keys here: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        key = f"{prefix}{f.name}"
        kind = hints[f.name]
        value = values[f.name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key '{key}' must be a table of keys, got {value!r}")
            kwargs[f.name] = _build(kind, value, f"{key}.")
        else:
            if isinstance(kind, types.UnionType):  # pragma: no cover - schema uses plain types
                raise ConfigError(f"config key '{key}' has an unsupported type")
            kwargs[f.name] = _coerce(key, value, kind)
    return cls(**kwargs)


def load_config(values: Mapping[str, Any] | None = None) -> AppConfig:
    """Validate a nested (Hydra) or dotted (Flower run-config) mapping into an `AppConfig`.

    Missing keys take their defaults; unknown keys, wrong types and out-of-range values raise
    `ConfigError` naming the key, so a typo in ``--run-config`` or a Hydra override fails loudly.
    """
    return _build(AppConfig, _unflatten(dict(values or {})), "")
