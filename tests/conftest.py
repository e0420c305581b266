"""Shared fixtures: Flower's task identity for building Messages in-process, and tiny phantom sites."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def flower_identity() -> Iterator[None]:
    """Flower refuses to build a Message outside a running app ("TaskIdentity.run_id is not set")."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic sites of 24 images each, generated once per test session."""
    from simulations.phantoms import generate_federation

    root = tmp_path_factory.mktemp("phantoms")
    generate_federation(root, num_sites=2, images_per_site=24, seed=7, matrix_scale=0.25)
    return root


THREE_CLASS_LABELS = {"normal": 0, "benign": 1, "malignant": 2}
"""The three-class task's labels: the last class is the most severe (the headline 'vs rest' class)."""


@pytest.fixture(scope="session")
def tiny_three_class_federation(tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two tiny phantom sites relabelled from their ``finding`` column: 0 normal, 1 benign, 2 malignant."""
    import csv
    import shutil

    root = tmp_path_factory.mktemp("three_class") / "phantoms"
    shutil.copytree(tiny_federation, root, ignore=shutil.ignore_patterns(".cache", "privacy_ledger.json*"))
    for manifest in sorted(root.glob("site_*/manifest.csv")):
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns, rows = list(reader.fieldnames or []), list(reader)
        for row in rows:
            row["label"] = str(THREE_CLASS_LABELS[row["finding"]])
        with manifest.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    return root
