"""Classification tasks: labels per finding, the last class most severe, and a task that leaves a class empty."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from common.errors import ConfigError
from simulations.datasets.labels import (
    BENIGN_VS_MALIGNANT,
    MALIGNANT_VS_REST,
    NORMAL_VS_ABNORMAL,
    TASK_CLASSES,
    TASKS,
    THREE_CLASS,
    apply_task,
    task_num_classes,
)
from simulations.datasets.mini_mias import read_mini_mias
from tests.test_datasets_mini_mias import _fixture


def _rows(normal: int = 3, benign: int = 2, malignant: int = 1) -> list[dict[str, object]]:
    counts = {"normal": normal, "benign": benign, "malignant": malignant}
    return [{"patient_id": f"{f}{i}", "finding": f} for f, n in counts.items() for i in range(n)]


@pytest.mark.parametrize(
    ("task", "labels"),
    [
        (NORMAL_VS_ABNORMAL, {0: 3, 1: 3}),
        (BENIGN_VS_MALIGNANT, {0: 2, 1: 1}),
        (MALIGNANT_VS_REST, {0: 5, 1: 1}),
        (THREE_CLASS, {0: 3, 1: 2, 2: 1}),
    ],
)
def test_each_task_labels_findings(task: str, labels: dict[int, int]) -> None:
    rows = apply_task(_rows(), task, dataset="x")

    assert Counter(r["label"] for r in rows) == labels
    assert all(isinstance(r["label"], int) for r in rows)


@pytest.mark.parametrize("task", TASKS)
def test_labels_are_class_indices_with_malignant_last(task: str) -> None:
    rows = apply_task(_rows(), task, dataset="x")

    assert {r["label"] for r in rows} == set(range(task_num_classes(task))) == set(range(len(TASK_CLASSES[task])))
    assert all(r["label"] == task_num_classes(task) - 1 for r in rows if r["finding"] == "malignant")


def test_a_task_that_leaves_a_class_empty_names_the_tasks_that_fit() -> None:
    without_normals = _rows(normal=0)
    without_malignant = _rows(malignant=0)

    with pytest.raises(ConfigError, match=r"leaves 3 image\(s\) of class\(es\) \[1, 2\].*all 3 classes.*"
                       r"try --task benign-vs-malignant or malignant-vs-rest\)"):  # fmt: skip
        apply_task(without_normals, THREE_CLASS, dataset="cbis-ddsm")
    with pytest.raises(ConfigError, match="try --task normal-vs-abnormal"):
        apply_task(without_malignant, MALIGNANT_VS_REST, dataset="x")
    with pytest.raises(ConfigError, match="this dataset has a single finding"):
        apply_task(_rows(benign=0, malignant=0), NORMAL_VS_ABNORMAL, dataset="x")


def test_unknown_tasks_and_findings_are_refused() -> None:
    with pytest.raises(ConfigError, match="task 'four-class' is not one of"):
        apply_task(_rows(), "four-class", dataset="x")
    with pytest.raises(ConfigError, match="is not one of"):
        task_num_classes("four-class")
    with pytest.raises(ValueError, match=r"finding\(s\) \['suspicious'\]"):
        apply_task([*_rows(), {"patient_id": "p", "finding": "suspicious"}], THREE_CLASS, dataset="x")


def test_another_adapter_takes_the_new_tasks(tmp_path: Path) -> None:
    rows = read_mini_mias(_fixture(tmp_path))

    three = apply_task(rows, THREE_CLASS, dataset="mini-mias")
    rest = apply_task(rows, MALIGNANT_VS_REST, dataset="mini-mias")

    assert Counter(r["label"] for r in three) == {0: 2, 1: 2, 2: 2}
    assert Counter(r["label"] for r in rest) == {0: 4, 1: 2}
