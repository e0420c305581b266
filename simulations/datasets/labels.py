"""Classification tasks over public datasets: which findings are kept and which label each gets.

Contract shared with training and evaluation: a manifest's ``label`` is an integer class index in
``[0, num_classes)`` and the last class is always the most severe (the positive class of a binary task),
so a patient's worst image is their highest label and binary metrics score the last class.
"""

from __future__ import annotations

from collections.abc import Iterable

from common.errors import ConfigError

__all__ = [
    "BENIGN_VS_MALIGNANT",
    "MALIGNANT_VS_REST",
    "NORMAL_VS_ABNORMAL",
    "TASKS",
    "TASK_CLASSES",
    "THREE_CLASS",
    "apply_task",
    "task_num_classes",
    "worst_finding",
]

NORMAL_VS_ABNORMAL = "normal-vs-abnormal"
"""Label 1 = any lesion (benign or malignant), 0 = normal: a screening triage task."""
BENIGN_VS_MALIGNANT = "benign-vs-malignant"
"""Label 1 = malignant, 0 = benign; normal images are dropped: a diagnostic task."""
MALIGNANT_VS_REST = "malignant-vs-rest"
"""Label 1 = malignant, 0 = normal or benign; every image is kept: cancer detection on a whole population."""
THREE_CLASS = "three-class"
"""Label 0 = normal, 1 = benign, 2 = malignant; every image is kept (needs ``model.num_classes=3``)."""
TASKS = (NORMAL_VS_ABNORMAL, BENIGN_VS_MALIGNANT, MALIGNANT_VS_REST, THREE_CLASS)

TASK_CLASSES: dict[str, tuple[str, ...]] = {
    NORMAL_VS_ABNORMAL: ("normal", "abnormal"),
    BENIGN_VS_MALIGNANT: ("benign", "malignant"),
    MALIGNANT_VS_REST: ("normal or benign", "malignant"),
    THREE_CLASS: ("normal", "benign", "malignant"),
}
"""Task -> class names by label index, least to most severe (what ``federation.json`` records)."""

_LABELS: dict[str, dict[str, int]] = {
    NORMAL_VS_ABNORMAL: {"normal": 0, "benign": 1, "malignant": 1},
    BENIGN_VS_MALIGNANT: {"benign": 0, "malignant": 1},
    MALIGNANT_VS_REST: {"normal": 0, "benign": 0, "malignant": 1},
    THREE_CLASS: {"normal": 0, "benign": 1, "malignant": 2},
}
"""Task -> finding -> label; a finding the task does not list is dropped (normals in benign-vs-malignant)."""

_SEVERITY = {"normal": 0, "benign": 1, "malignant": 2}


def worst_finding(findings: Iterable[str]) -> str:
    """The most severe of an image's findings (an image with a benign and a malignant lesion is malignant)."""
    return max(findings, key=lambda f: _SEVERITY[f], default="normal")


def task_num_classes(task: str) -> int:
    """How many classes ``task`` labels, i.e. the ``model.num_classes`` a federation prepared for it needs.

    Raises
    ------
    ConfigError
        If the task is unknown.
    """
    if task not in TASK_CLASSES:
        raise ConfigError(f"task {task!r} is not one of {', '.join(TASKS)}")
    return len(TASK_CLASSES[task])


def _usable_tasks(findings: set[str]) -> list[str]:
    """Tasks for which images of these findings would fill every class (suggested when the chosen one cannot)."""
    return [t for t in TASKS if {_LABELS[t][f] for f in findings if f in _LABELS[t]} == set(range(task_num_classes(t)))]


def apply_task(rows: list[dict[str, object]], task: str, *, dataset: str) -> list[dict[str, object]]:
    """Set each row's ``label`` from its ``finding`` for ``task``; rows the task does not use are dropped.

    Raises
    ------
    ConfigError
        If the task is unknown, or leaves a class without images (e.g. normal-vs-abnormal on a dataset
        without normal images, three-class on one without normals), since a site missing a class cannot
        be trained or scored for it.
    ValueError
        If a row's ``finding`` is not normal, benign or malignant (an adapter bug, not a user error).
    """
    num_classes = task_num_classes(task)
    unknown = sorted({str(row["finding"]) for row in rows} - set(_SEVERITY))
    if unknown:
        raise ValueError(f"{dataset} rows have finding(s) {unknown}; an adapter must give normal, benign or malignant")
    mapping = _LABELS[task]
    kept = [{**row, "label": mapping[str(row["finding"])]} for row in rows if row["finding"] in mapping]
    classes = {row["label"] for row in kept}
    if classes != set(range(num_classes)):
        names = ", ".join(TASK_CLASSES[task])
        usable = _usable_tasks({str(row["finding"]) for row in rows})
        hint = f"try --task {' or '.join(usable)}" if usable else "this dataset has a single finding"
        raise ConfigError(
            f"task {task!r} on {dataset} leaves {len(kept)} image(s) of class(es) {sorted(classes)}; "
            f"it needs images of all {num_classes} classes ({names}) ({hint})"
        )
    return kept
