"""The fedmammo command: exit codes and messages a user sees."""

from __future__ import annotations

import re
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


def test_the_final_table_adds_per_class_auc_and_the_pooled_confusion_matrix_for_three_classes(tmp_path: Path) -> None:
    import json

    from rich.console import Console

    from simulations.cli import _print_summary

    per_class = {name: {"auc": 0.8, "auc_ci_low": 0.7, "auc_ci_high": 0.9, "num_cases": 4} for name in "abc"}
    entry = {"num_examples": 12, "auc": 0.75, "macro_auc": 0.81, "per_class": per_class, "epsilon": 1.0,
             "confusion_matrix": [[4, 0, 0], [1, 2, 1], [0, 1, 3]]}  # fmt: skip
    summary = {"classes": ["a", "b", "c"], "sites": {"site-0": entry}, "pooled": entry, "privacy": {"mode": "local"}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    console = Console(record=True, width=160)

    _print_summary(tmp_path, console)

    text = console.export_text()
    assert "c vs rest" in text and "macro AUC" in text and "0.810" in text and "4/4/4" in text
    assert "pooled confusion matrix" in text and re.search(r"│\s+b\s+│\s+1\s+│\s+2\s+│\s+1\s+│", text)


def test_the_final_table_of_a_binary_run_is_unchanged(tmp_path: Path) -> None:
    import json

    from rich.console import Console

    from simulations.cli import _print_summary

    entry = {"num_examples": 12, "auc": 0.75, "sensitivity": 0.5, "specificity": 0.9, "epsilon": 1.0}
    summary = {"classes": ["benign/normal", "malignant"], "sites": {"s": entry}, "pooled": entry}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    console = Console(record=True, width=160)

    _print_summary(tmp_path, console)

    text = console.export_text()
    assert "0.750" in text and "vs rest" not in text and "per class" not in text
