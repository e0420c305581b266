"""Per-class (one vs rest) results of one site's entry: nested for summary.json, read back from either form.

metrics.jsonl rows hold them flat (``auc_class0``, ``num_cases_class0``, ..., ``macro_auc``,
``confusion_matrix``), as sites send them; summary.json nests them under ``per_class``, keyed by class name,
which is what a person opening the file reads. Old runs (binary, or from before per-class results) hold
neither, and every reader here then returns nothing rather than failing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from common import wire
from common.config import resolve_class_names
from common.errors import ConfigError
from common.metrics import CLASS_METRICS, class_key

__all__ = ["PER_CLASS", "class_names_of", "class_results", "confusion_matrix", "nest_class_results"]

PER_CLASS = "per_class"
"""summary.json key: ``{class name: {auc, auc_ci_low, auc_ci_high, num_cases}}`` in class index order."""

_FLAT = re.compile(r"^(?:" + "|".join(CLASS_METRICS) + r")_class(\d+)$")


def _flat_count(entry: Mapping[str, Any]) -> int:
    indices = [int(m.group(1)) for key in entry if (m := _FLAT.match(str(key)))]
    return max(indices) + 1 if indices else 0


def nest_class_results(entry: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """``entry`` with its flat per-class keys moved under `PER_CLASS` by name (``num_classes`` dropped).

    An entry without per-class keys (a binary run) comes back unchanged. Classes beyond ``class_names``
    (which cannot happen within one run) are named ``class_<i>``.
    """
    count = _flat_count(entry)
    out = {k: v for k, v in entry.items() if not _FLAT.match(str(k)) and (count == 0 or k != wire.NUM_CLASSES)}
    if count == 0:
        return out
    names = [class_names[i] if i < len(class_names) else f"class_{i}" for i in range(count)]
    out[PER_CLASS] = {
        name: {m: entry.get(class_key(m, i), math.nan) for m in CLASS_METRICS} for i, name in enumerate(names)
    }
    return out


def class_results(entry: Mapping[str, Any], class_names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """One dict per class in index order, ``{"name", "auc", "auc_ci_low", "auc_ci_high", "num_cases"}``.

    Reads the nested form (summary.json) or the flat one (metrics.jsonl rows); [] when the entry has neither.
    """
    nested = entry.get(PER_CLASS)
    if isinstance(nested, Mapping) and nested:
        return [
            {"name": str(name), **{m: values.get(m, math.nan) for m in CLASS_METRICS}}
            for name, values in nested.items()
            if isinstance(values, Mapping)
        ]
    count = _flat_count(entry)
    names = [class_names[i] if i < len(class_names) else f"class_{i}" for i in range(count)]
    return [
        {"name": names[i], **{m: entry.get(class_key(m, i), math.nan) for m in CLASS_METRICS}} for i in range(count)
    ]


def confusion_matrix(entry: Mapping[str, Any]) -> list[list[int]] | None:
    """The entry's K x K argmax confusion counts (row = true class), or None when it has no square matrix."""
    matrix = entry.get(wire.CONFUSION_MATRIX)
    if not isinstance(matrix, Sequence) or not matrix:
        return None
    rows = [list(row) for row in matrix if isinstance(row, Sequence)]
    if len(rows) != len(matrix) or any(len(row) != len(rows) for row in rows):
        return None
    return [[int(v) if isinstance(v, (int, float)) and math.isfinite(v) else 0 for v in row] for row in rows]


def class_names_of(
    summary: Mapping[str, Any] | None, config: Mapping[str, Any] | None, results: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The run's class names: summary.json's ``classes``, else the run's config, else defaults for the class count.

    [] for a binary run (or one from before per-class results), which the report shows as before.
    """
    names = (summary or {}).get("classes")
    if isinstance(names, Sequence) and not isinstance(names, str) and len(names) > 2:
        return [str(n) for n in names]
    count = max((len(class_results(entry)) for entry in results.values()), default=0)
    if count <= 2:
        return []
    model = (config or {}).get("model")
    text = str(model.get("class_names") or "") if isinstance(model, Mapping) else ""
    try:
        return list(resolve_class_names(text, count))
    except ConfigError:
        return list(resolve_class_names("", count))
