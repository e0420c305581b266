"""NaN- and infinity-safe JSON values: NaN <-> null, +/-inf <-> "Infinity"/"-Infinity", numpy -> Python."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["from_json_safe", "to_json_safe"]

_TEXT_KEYS = frozenset({"site", "phase", "error", "model", "strategy", "name", "classes", "class_names"})
_INFINITIES = {"Infinity": math.inf, "-Infinity": -math.inf}


def to_json_safe(value: Any) -> Any:
    """Plain JSON types: NaN -> None, ±inf -> "Infinity"/"-Infinity", numpy scalars/arrays -> Python."""
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json_safe(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
    return value


def from_json_safe(value: Any, key: str = "") -> Any:
    """Undo `to_json_safe`: None -> NaN, "Infinity"/"-Infinity" -> float (except under text keys like ``site``)."""
    if isinstance(value, dict):
        return {k: from_json_safe(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_safe(v, key) for v in value]
    if value is None:
        return math.nan
    if isinstance(value, str) and key not in _TEXT_KEYS and value in _INFINITIES:
        return _INFINITIES[value]
    return value
