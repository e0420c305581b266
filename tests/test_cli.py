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

    from simulations.cli_simulate import _print_summary

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

    from simulations.cli_simulate import _print_summary

    entry = {"num_examples": 12, "auc": 0.75, "sensitivity": 0.5, "specificity": 0.9, "epsilon": 1.0}
    summary = {"classes": ["benign/normal", "malignant"], "sites": {"s": entry}, "pooled": entry}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    console = Console(record=True, width=160)

    _print_summary(tmp_path, console)

    text = console.export_text()
    assert "0.750" in text and "vs rest" not in text and "per class" not in text


def test_the_final_table_marks_a_site_whose_figures_are_from_an_earlier_round(tmp_path: Path) -> None:
    import json

    from rich.console import Console

    from simulations.cli_simulate import _print_summary

    why = "figures from round 1, its last evaluation; round 2 evaluate: b: DicomError"
    late = {"round": 1, "num_examples": 10, "auc": 0.9, "epsilon": 1.0, "not_in_final_round": why}
    summary = {
        "final_round": 2,
        "sites": {"a": {"round": 2, "num_examples": 10, "auc": 0.65, "epsilon": 2.0}, "b": late},
        "pooled": {"round": 2, "num_examples": 10, "auc": 0.65, "epsilon": 2.0},
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    console = Console(record=True, width=200)

    _print_summary(tmp_path, console)

    text = console.export_text()
    assert "(round 2)" in text and re.search(r"│ b \*\s+│\s+1\s+│", text) and re.search(r"│ a\s+│\s+2\s+│", text)
    assert "* b: not in round 2: figures from round 1, its last evaluation; round 2 evaluate: b: DicomError" in text
    assert "pooled: round 2, over a only" in text


def test_report_of_a_missing_folder_exits_2_with_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", str(tmp_path / "typo" / "run")])

    out = capsys.readouterr().out
    assert code == 2
    assert len(out.strip().splitlines()) == 1 and "does not exist" in out and "Traceback" not in out
    assert not (tmp_path / "typo").exists()


def test_report_of_a_folder_that_holds_no_run_exits_2_and_writes_nothing_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["report", str(tmp_path)])

    assert code == 2 and "is not a run folder" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("summary.json", '{"sites": ', "summary.json cannot be read as JSON"),
        ("summary.json", "[1, 2]", "summary.json must hold a JSON object"),
        ("config.yaml", "model: [unclosed", "config.yaml cannot be read as YAML"),
        ("config.yaml", "evaluation: {target_specificity: high}\nprivacy: {mode: local, delta: tiny}\n", ""),
    ],
)
def test_report_of_a_broken_run_folder_exits_2_with_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str, says: str
) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        '{"round": 1, "phase": "train", "site": "a", "epsilon": 1.0, "train_loss": 0.5}\n{"round": "x"}\n'
    )
    (tmp_path / name).write_text(text)

    code = main(["report", str(tmp_path)])

    out = capsys.readouterr().out
    assert "Traceback" not in out
    if says:  # a file that cannot be read at all
        assert code == 2 and len(out.strip().splitlines()) == 1 and says in out
    else:  # values of the wrong kind: the report is still written, each value shown as text
        assert code == 0 and (tmp_path / "report.html").is_file()


def test_study_multirun_runs_one_study_per_combination_and_summarises_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import simulations.cli_study as cli_study

    seen: list[list[str]] = []

    def fake_study(overrides: list[str], folder: Path, console: object, *, verbose: bool = False) -> Path:
        seen.append(overrides)
        folder.mkdir(parents=True)
        auc = 0.6 + 0.1 * len(seen)
        study = {"config": {"privacy": {"mode": "none"}}, "models": {"federated": {"epsilon": {}}},
                 "matrix": {"federated": {"pooled": {"auc": auc}}}, "comparisons": []}  # fmt: skip
        (folder / "study.json").write_text(json.dumps(study), encoding="utf-8")
        return folder

    monkeypatch.setattr(cli_study, "run_one_study", fake_study)

    code = main(["study", "-m", "seed=1,2", "privacy=none", "--sweep-dir", str(tmp_path / "sweep")])

    assert code == 0
    assert sorted(seen) == [["seed=1", "privacy=none"], ["seed=2", "privacy=none"]]
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text(encoding="utf-8"))
    assert [job["status"] for job in summary["jobs"]] == ["ok", "ok"]
    assert "0.800" in (tmp_path / "sweep" / "sweep_summary.md").read_text(encoding="utf-8")
    assert "sweep_summary.md" in capsys.readouterr().out


def test_simulate_multirun_sweeps_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import simulations.cli_simulate as cli_simulate

    def fake_run(overrides: list[str], folder: Path, console: object, verbose: bool) -> Path:
        folder.mkdir(parents=True)
        summary = {"pooled": {"auc": 0.7, "epsilon": 3.0}, "privacy": {"mode": "local"}}
        (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        return folder

    monkeypatch.setattr(cli_simulate, "_simulate_one", fake_run)

    assert main(["simulate", "-m", "privacy.target_epsilon=1,4,8", "--sweep-dir", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text(encoding="utf-8"))
    assert len(summary["jobs"]) == 3 and (tmp_path / "s" / "privacy_utility.png").stat().st_size > 1000


def test_report_rebuilds_a_study_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.study_fixture import write_study_fixture

    folder = tmp_path / "study"
    folder.mkdir()
    write_study_fixture(folder)

    assert main(["report", str(folder)]) == 0
    assert (folder / "study.html").is_file() and "study.html" in capsys.readouterr().out


def test_simulate_refuses_a_study_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "study.enabled=true"]) == 1
    assert "fedmammo study" in capsys.readouterr().out


def test_study_arms_with_commas_is_one_value() -> None:
    from simulations.cli_study import quote_arms
    from simulations.hydra_config import compose_simulation

    overrides = quote_arms(["study.arms=local,federated", "seed=3"])
    config, _ = compose_simulation(overrides)

    assert overrides[1] == "seed=3"
    assert config.study.arm_names == ("local", "federated")
    assert quote_arms(["study.arms='loso,local'"]) == ["study.arms='loso,local'"]
