"""Classification tasks over public datasets: which findings are kept and which label each gets."""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import ConfigError

__all__ = ["BENIGN_VS_MALIGNANT", "NORMAL_VS_ABNORMAL", "TASKS", "apply_task", "worst_finding"]

NORMAL_VS_ABNORMAL = "normal-vs-abnormal"
"""Label 1 = any lesion (benign or malignant), 0 = normal: a screening triage task."""
BENIGN_VS_MALIGNANT = "benign-vs-malignant"
"""Label 1 = malignant, 0 = benign; normal images are dropped: a diagnostic task."""
TASKS = (NORMAL_VS_ABNORMAL, BENIGN_VS_MALIGNANT)

_SEVERITY = {"normal": 0, "benign": 1, "malignant": 2}


def worst_finding(findings: Iterable[str]) -> str:
    """The most severe of an image's findings (an image with a benign and a malignant lesion is malignant)."""
    return max(findings, key=lambda f: _SEVERITY[f], default="normal")


def apply_task(rows: list[dict[str, object]], task: str, *, dataset: str) -> list[dict[str, object]]:
    """Set each row's ``label`` from its ``finding`` for ``task``; rows the task does not use are dropped.

    Raises
    ------
    ConfigError
        If the task is unknown, or leaves only one class (e.g. normal-vs-abnormal on a dataset without
        normal images), since a one-class site cannot be trained or scored.
    """
    if task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    if task == NORMAL_VS_ABNORMAL:
        kept = [{**row, "label": int(row["finding"] != "normal")} for row in rows]
    else:
        kept = [{**row, "label": int(row["finding"] == "malignant")} for row in rows if row["finding"] != "normal"]
    classes = {row["label"] for row in kept}
    if len(classes) < 2:
        other = BENIGN_VS_MALIGNANT if task == NORMAL_VS_ABNORMAL else NORMAL_VS_ABNORMAL
        raise ConfigError(
            f"task {task!r} on {dataset} leaves {len(kept)} image(s) of class(es) {sorted(classes)}; "
            f"it needs both classes (try --task {other})"
        )
    return kept
