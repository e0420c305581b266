"""The dp_overhead benchmark end to end on a tiny model: JSON figures and the summary line it ends with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from simulations.benchmarks.dp_overhead import main


def test_dp_overhead_writes_figures_and_ends_with_the_best_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    out = tmp_path / "dp.json"

    # Execute
    code = main(
        ["--arch", "small_cnn", "--image-size", "32", "--batch-size", "4", "--repeats", "1", "--json", str(out)]
    )

    # Assert
    figures = json.loads(out.read_text())["architectures"]["small_cnn"]
    assert code == 0
    assert figures["non_dp"]["step_s"] > 0
    hooks = figures["modes"]["hooks"]
    assert hooks["ok"] is True and hooks["step_s"] > 0 and hooks["ratio"] > 0
    assert set(figures["modes"]) == {"hooks", "ew", "functorch", "ghost", "mixed_ghost"}
    assert all(row["ok"] and row["memory_mib"] >= 0 for row in figures["modes"].values())
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"best DP/non-DP ratio: small_cnn (hooks|ew|functorch|ghost|mixed_ghost) (\d+\.\d+)x", last)
    assert match is not None, last
    assert float(match.group(2)) == pytest.approx(figures["modes"][match.group(1)]["ratio"], abs=0.006)


def test_dp_overhead_measures_several_sizes_and_chosen_modes_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    out = tmp_path / "dp.json"
    sizes = ["--image-size", "16", "--image-size", "24"]
    modes = ["--mode", "hooks", "--mode", "mixed_ghost"]

    # Execute
    code = main(["--arch", "small_cnn", *sizes, *modes, "--batch-size", "2", "--repeats", "1", "--json", str(out)])

    # Assert
    payload = json.loads(out.read_text())
    assert code == 0 and payload["image_size"] == [16, 24]
    assert set(payload["architectures"]) == {"small_cnn@16px", "small_cnn@24px"}
    assert [payload["architectures"][f"small_cnn@{n}px"]["image_size"] for n in (16, 24)] == [16, 24]
    assert all(set(figures["modes"]) == {"hooks", "mixed_ghost"} for figures in payload["architectures"].values())
    lines = capsys.readouterr().out.strip().splitlines()[-2:]
    assert [line.split()[3] for line in lines] == ["small_cnn@16px", "small_cnn@24px"]


def test_dp_overhead_refuses_an_unknown_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--arch", "alexnet9", "--json", str(tmp_path / "x.json")])

    assert "unknown --arch ['alexnet9']" in capsys.readouterr().err
