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


def test_a_run_flower_reports_failed_is_a_failure_that_says_so_not_exit_code_0(tmp_path: Path) -> None:
    from simulations.run_outcome import RunStatus, failure_message

    log = tmp_path / "flower.log"
    failed = RunStatus("finished:failed", "ServerApp failed with exception: ModelError")

    message = failure_message(0, 7, failed, summary_written=False, log_path=log)

    assert message is not None and "exit code 0" not in message
    assert "run 7 as finished:failed: ServerApp failed with exception: ModelError" in message and str(log) in message
    assert failure_message(0, 7, RunStatus("finished:completed"), summary_written=True, log_path=log) is None
    assert "wrote no summary.json" in failure_message(0, 7, None, summary_written=False, log_path=log)
    assert "exited with code 2" in failure_message(2, None, None, summary_written=False, log_path=log)
    assert "finished:stopped" in failure_message(
        0, 7, RunStatus("finished:stopped"), summary_written=True, log_path=log
    )


def test_the_run_status_is_read_from_flwr_ls_json(tmp_path: Path) -> None:
    import json
    import stat

    from simulations.run_outcome import RunStatus, parse_run_id, read_run_status

    payload = {"success": True, "runs": [{"run-id": "7", "status": "finished:failed", "status-details": "boom"}]}
    fake = tmp_path / "flwr"
    fake.write_text(f"#!/bin/sh\necho 'Displaying information for run ID 7...'\necho '{json.dumps(payload)}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)

    status = read_run_status(str(fake), "local", 7, env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)

    assert status == RunStatus("finished:failed", "boom")
    assert parse_run_id("\x1b[32mSuccessfully started run 1234567\x1b[0m") == 1234567
    assert parse_run_id("INFO: starting") is None


def test_a_federation_whose_server_app_fails_raises_naming_the_failure(tiny_federation: Path, tmp_path: Path) -> None:
    """`flwr run --stream` exits 0 when the ServerApp raises: the launcher must still report a failed run."""
    from simulations.launcher import SimulationError, run_simulation
    from tests.test_simulation_e2e import tiny_config

    config = tiny_config(
        tiny_federation,
        privacy__mode="none",
        federation__synthetic=False,
        model__weights_path=str(tmp_path / "missing.pth"),  # the ServerApp fails building its initial model
    )

    with pytest.raises(SimulationError, match=r"finished:failed") as raised:
        run_simulation(config, tmp_path / "run")

    assert "exit code 0" not in str(raised.value)
