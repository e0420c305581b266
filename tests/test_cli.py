"""The fedmammo command: exit codes and messages a user sees."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.cli import main


def test_phantoms_writes_the_requested_sites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["phantoms", "--out", str(tmp_path), "--sites", "2", "--images", "8"])

    assert code == 0
    assert (tmp_path / "site_0" / "manifest.csv").is_file() and (tmp_path / "site_1" / "manifest.csv").is_file()
    assert "site_1" in capsys.readouterr().out


def test_bad_override_exits_1_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "privacy.delta=2.0"])

    assert code == 1
    assert "privacy.delta" in capsys.readouterr().out


def test_report_rebuilds_from_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.report import RunDirectory

    RunDirectory(tmp_path / "run").write_config({"model": {"name": "small_cnn"}})

    assert main(["report", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report.html").is_file()
