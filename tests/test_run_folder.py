"""Run folders: each run claims its own, atomically, even when runs start within the same second."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from common.config import AppConfig
from common.errors import ConfigError
from simulations.run_folder import CLAIM_FILE, claim_run_dir


def _claim_together(requested: Path, count: int) -> list[Path]:
    """``count`` threads claim ``requested`` at the same moment (a barrier releases them together)."""
    barrier = threading.Barrier(count)
    claimed: list[Path] = []
    errors: list[BaseException] = []

    def claim() -> None:
        barrier.wait()
        try:
            claimed.append(claim_run_dir(requested))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    return claimed


def test_runs_started_in_the_same_second_get_separate_folders(tmp_path: Path) -> None:
    # Prepare: eight runs whose timestamp names are the same second
    requested = tmp_path / "runs" / "20250101-120000"
    # Execute
    claimed = _claim_together(requested, 8)
    # Assert
    assert len(set(claimed)) == 8
    assert set(claimed) == {requested, *(requested.with_name(f"{requested.name}-{n}") for n in range(2, 9))}
    assert all((folder / CLAIM_FILE).is_file() for folder in claimed)


def test_an_existing_empty_folder_is_claimed_once_and_a_used_one_never(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text('{"round": 1}\n')

    assert claim_run_dir(empty) == empty
    assert claim_run_dir(empty) == tmp_path / "empty-2"  # claimed by the first call now
    assert claim_run_dir(used) == tmp_path / "used-2"
    assert (used / "metrics.jsonl").read_text() == '{"round": 1}\n'


def test_two_concurrent_simulations_write_separate_run_folders(tiny_federation: Path, tmp_path: Path) -> None:
    """Two real federations asked for the same folder at once: each gets its own, with only its own rows."""
    from server.report import RunDirectory
    from simulations.launcher import run_simulation
    from tests.test_simulation_e2e import tiny_config

    configs = []
    for name in ("a", "b"):  # each its own copy of the sites: only the run folder is asked for by both
        shutil.copytree(tiny_federation, tmp_path / name, ignore=shutil.ignore_patterns(".cache", "privacy_ledger*"))
        configs.append(
            tiny_config(tmp_path / name, strategy__num_rounds=1, privacy__mode="none", federation__synthetic=False)
        )
    requested = tmp_path / "runs" / "20250101-120000"
    results: list[Path] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(config: AppConfig) -> None:
        barrier.wait()
        try:
            results.append(run_simulation(config, requested))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(config,)) for config in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert not errors, errors
    assert sorted(results) == [requested, requested.with_name(f"{requested.name}-2")]
    for folder in results:
        rows = RunDirectory(folder).read_metrics()
        assert sorted((r["phase"], r["site"]) for r in rows) == sorted(
            (phase, site) for phase in ("train", "evaluate") for site in ("site-0", "site-1", "pooled")
        ), folder
        assert (folder / "summary.json").is_file()


def test_a_run_folder_inside_a_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")

    with pytest.raises(ConfigError, match=r"'output.run_dir' = .*cannot create its parent"):
        claim_run_dir(tmp_path / "a-file" / "run")
