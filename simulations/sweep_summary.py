"""Reads each sweep job's headline figures and writes the summary across jobs: sweep.json, CSV and Markdown."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.sweep_plot import PLOT_FILE, plot_privacy_utility

__all__ = [
    "CSV_FILE",
    "FAILED",
    "INTERRUPTED",
    "JSON_FILE",
    "MARKDOWN_FILE",
    "NO_RESULT",
    "OK",
    "PENDING",
    "PLOT_FILE",
    "JobOutcome",
    "read_figures",
    "write_summary",
]

JSON_FILE = "sweep.json"
CSV_FILE = "sweep_summary.csv"
MARKDOWN_FILE = "sweep_summary.md"
RESULT_FILES = {"study": "study.json", "simulate": "summary.json"}

PENDING, OK, FAILED, INTERRUPTED, NO_RESULT = "pending", "ok", "failed", "interrupted", "no result"

Figure = float | str | None
_CI_LOW, _CI_HIGH = "_ci_low", "_ci_high"
_LABELS = {
    "privacy_mode": "DP mode",
    "epsilon": "ε",
    "target_epsilon": "target ε",
    "auc": "AUC",
    "federated_auc": "federated AUC",
    "centralized_auc": "centralized AUC",
    "local_mean_auc": "local AUC (mean)",
    "loso_mean_auc": "LOSO held-out AUC (mean)",
}
_FED_MINUS_LOCAL = "fed_minus_local:"
_MAX_ERROR = 300


@dataclass
class JobOutcome:
    """What one sweep job gave: its status, error and flat figures (column name -> number, text or None)."""

    index: int
    overrides: list[str]
    swept: dict[str, str]
    folder: Path
    status: str = PENDING
    error: str | None = None
    figures: dict[str, Figure] = field(default_factory=dict)


def read_figures(kind: str, folder: Path) -> tuple[str, str | None, dict[str, Figure]]:
    """``(status, error, figures)`` from the ``study.json`` (study) or ``summary.json`` (simulate) in ``folder``.

    A missing or unreadable file gives status `NO_RESULT` and says why; missing values are None.
    """
    path = Path(folder) / RESULT_FILES[kind]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("it is not a JSON object")
        figures = _study_figures(data) if kind == "study" else _simulation_figures(data)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return NO_RESULT, f"cannot read {path}: {exc}", {}
    return OK, None, figures


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _auc(figures: dict[str, Figure], name: str, metrics: Mapping[str, Any] | None) -> None:
    metrics = metrics or {}
    for suffix in ("", _CI_LOW, _CI_HIGH):
        figures[f"{name}{suffix}"] = _number(metrics.get(f"auc{suffix}"))


def _study_figures(data: Mapping[str, Any]) -> dict[str, Figure]:
    """Pooled AUC per kind of model, federated − local per site, and the federated model's epsilon."""
    matrix, models = data.get("matrix") or {}, data.get("models") or {}
    privacy = (data.get("config") or {}).get("privacy") or {}
    mode = privacy.get("mode")
    federated = models.get("federated") or {}
    spent = [_number(v) for v in (federated.get("epsilon") or {}).values()]
    # Only what the federated model's sites recorded: a target is a plan, not a spending (no round released, say).
    epsilon = max((v for v in spent if v is not None), default=None)
    figures: dict[str, Figure] = {"privacy_mode": mode, "epsilon": None if mode == "none" else epsilon}
    figures["target_epsilon"] = None if mode == "none" else (_number(privacy.get("target_epsilon")) or None)
    for name in ("federated", "centralized"):
        trained = (models.get(name) or {}).get("trained", True) is not False  # an untrained model's AUC is no result
        _auc(figures, f"{name}_auc", (matrix.get(name) or {}).get("pooled") if trained else None)
    local = [_number(((matrix.get(m) or {}).get("pooled") or {}).get("auc")) for m in models if m.startswith("local:")]
    figures["local_mean_auc"] = _mean(local)
    loso = [
        _number(((matrix.get(m) or {}).get(m.removeprefix("loso:")) or {}).get("auc"))
        for m in models
        if m.startswith("loso:")
    ]
    figures["loso_mean_auc"] = _mean(loso)
    for comparison in data.get("comparisons") or []:
        site = comparison.get("site")
        if comparison.get("a") == "federated" and comparison.get("b") == f"local:{site}":
            for suffix, key in (("", "difference"), (_CI_LOW, "ci_low"), (_CI_HIGH, "ci_high")):
                figures[f"{_FED_MINUS_LOCAL}{site}{suffix}"] = _number(comparison.get(key))
    return figures


def _simulation_figures(data: Mapping[str, Any]) -> dict[str, Figure]:
    """Pooled AUC with its CI, sensitivity, specificity and the pooled (worst site's) epsilon."""
    pooled = data.get("pooled") or {}
    mode = (data.get("privacy") or {}).get("mode")
    figures: dict[str, Figure] = {
        "privacy_mode": mode,
        "epsilon": None if mode == "none" else _number(pooled.get("epsilon")),
    }
    _auc(figures, "auc", pooled)
    for name in ("sensitivity", "specificity"):
        figures[name] = _number(pooled.get(name))
    return figures


def _records(outcomes: Sequence[JobOutcome], root: Path) -> list[dict[str, Any]]:
    return [
        {
            "index": o.index,
            "overrides": o.overrides,
            "swept": o.swept,
            "folder": _relative(o.folder, root),
            "status": o.status,
            "error": o.error,
            "figures": o.figures,
        }
        for o in outcomes
    ]


def _relative(folder: Path, root: Path) -> str:
    try:
        return str(Path(folder).relative_to(root))
    except ValueError:
        return str(folder)


def _figure_columns(outcomes: Sequence[JobOutcome]) -> list[str]:
    return list(dict.fromkeys(name for o in outcomes for name in o.figures))


def _csv_text(swept_keys: Sequence[str], outcomes: Sequence[JobOutcome], root: Path) -> str:
    columns = _figure_columns(outcomes)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "status", *swept_keys, *columns, "folder", "error"])
    for o in outcomes:
        figures = [("" if o.figures.get(c) is None else o.figures[c]) for c in columns]
        swept = [o.swept.get(key, "") for key in swept_keys]
        writer.writerow([o.index, o.status, *swept, *figures, _relative(o.folder, root), o.error or ""])
    return buffer.getvalue()


def _label(column: str) -> str:
    if column.startswith(_FED_MINUS_LOCAL):
        return f"federated − local ({column.removeprefix(_FED_MINUS_LOCAL)})"
    return _LABELS.get(column, column.replace("_", " "))


def _cell(value: object) -> str:
    if value is None:
        return "–"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_text(kind: str, swept_keys: Sequence[str], outcomes: Sequence[JobOutcome], root: Path) -> str:
    columns = [c for c in _figure_columns(outcomes) if not c.endswith((_CI_LOW, _CI_HIGH))]
    header = ["#", "status", *swept_keys, *(_label(c) for c in columns), "folder", "error"]
    lines = [
        f"# {kind} sweep: {len(outcomes)} job(s), {sum(o.status == OK for o in outcomes)} ok",
        "",
        "AUC is pooled over all sites, with its 95% CI in brackets; ε is "
        + ("the federated model's largest per-site ε." if kind == "study" else "the worst site's cumulative ε."),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for o in outcomes:
        cells = [str(o.index), o.status, *(_cell(o.swept.get(key)) for key in swept_keys)]
        for c in columns:
            value, low, high = (o.figures.get(f"{c}{suffix}") for suffix in ("", _CI_LOW, _CI_HIGH))
            ci = f" [{low:.3f}, {high:.3f}]" if isinstance(low, float) and isinstance(high, float) else ""
            cells.append(_cell(value) + ci)
        error = (o.error or "")[:_MAX_ERROR]
        cells += [_cell(_relative(o.folder, root)), _cell(error) if error else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Replace ``path`` atomically: a stopped sweep never leaves half a summary."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_summary(root: Path, kind: str, swept_keys: Sequence[str], outcomes: Sequence[JobOutcome]) -> None:
    """(Re)write ``sweep.json``, ``sweep_summary.csv``, ``sweep_summary.md`` and ``privacy_utility.png`` in ``root``."""
    document = {"schema": 1, "kind": kind, "swept_keys": list(swept_keys), "jobs": _records(outcomes, root)}
    _write(root / JSON_FILE, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    _write(root / CSV_FILE, _csv_text(swept_keys, outcomes, root))
    _write(root / MARKDOWN_FILE, _markdown_text(kind, swept_keys, outcomes, root))
    plot_privacy_utility(root / PLOT_FILE, kind, swept_keys, outcomes)
