"""The launcher's run-config file: what `flwr run --run-config` reads must validate back to the same config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from common.config import load_config
from simulations.launcher import APP_DIR, write_run_config


def test_run_config_toml_round_trips_through_the_schema(tmp_path: Path) -> None:
    config = load_config(
        {"federation.data_dir": 'C:\\odd "quoted" dir', "privacy.delta": 1e-6, "privacy.mode": "none", "seed": 9}
    )

    path = write_run_config(config, tmp_path / "run_config.toml")

    assert load_config(tomllib.loads(path.read_text())) == config


def test_every_written_key_is_declared_in_pyproject(tmp_path: Path) -> None:
    """`flwr run` rejects --run-config keys that pyproject's [tool.flwr.app.config] does not declare."""
    declared = load_config(tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"])

    written = tomllib.loads(write_run_config(load_config({}), tmp_path / "rc.toml").read_text())

    assert set(written) == set(declared.to_flat())


@pytest.mark.parametrize("component", ["serverapp", "clientapp"])
def test_flower_components_point_at_importable_apps(component: str) -> None:
    import importlib

    target = tomllib.loads((APP_DIR / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"][component]
    module, attribute = target.split(":")

    assert getattr(importlib.import_module(module), attribute) is not None
