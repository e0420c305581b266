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
