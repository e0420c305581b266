"""Run folders: each run claims its own, atomically, even when runs start within the same second or are given one
fixed folder (``flwr run .`` with the default ``~/.fedmammo/runs/latest``)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from flwr.serverapp.strategy import Strategy

from common.config import AppConfig, load_config
from common.errors import ConfigError
from server.report.run_folder import CLAIM_FILE, CLAIMED_RUN_DIR_ENV, claim_run_dir, server_run_dir


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


class _OneRoundStrategy(Strategy):
    """Stands in for the recording strategy: round 1 appends one train row to the run's metrics.jsonl."""

    central = None
    latest_round = 0

    def __init__(self, run_dir: object) -> None:
        self.run_dir = run_dir
        self.latest_histograms: dict = {}
        self.latest_class_histograms: dict = {}

    def summary(self) -> None:
        return None

    def configure_train(self, *_: object) -> list:
        return []

    def aggregate_train(self, server_round: int, _: object) -> tuple[None, None]:
        if server_round == 1:
            self.run_dir.append_metrics([{"round": 1, "phase": "train", "site": "site-0", "epsilon": 1.0}])
        return None, None

    def configure_evaluate(self, *_: object) -> list:
        return []

    def aggregate_evaluate(self, *_: object) -> None:
        return None


class _NoSites:
    """A grid no message goes out on."""

    def send_and_receive(self, messages: object, *, timeout: float | None = None) -> list:
        return []


def test_two_server_runs_given_one_folder_write_separate_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: `flwr run .` twice with the same output.run_dir, no launcher in between
    from server import server_app
    from server.report import RunDirectory

    monkeypatch.delenv(CLAIMED_RUN_DIR_ENV, raising=False)
    monkeypatch.setattr(server_app, "build_strategy", lambda config, run_dir: _OneRoundStrategy(run_dir))
    config = load_config({"output.run_dir": str(tmp_path / "runs" / "shared"), "model.name": "small_cnn"})
    # Execute
    first = server_app.run_federation(_NoSites(), config)  # type: ignore[arg-type]
    second = server_app.run_federation(_NoSites(), config)  # type: ignore[arg-type]
    # Assert: two folders, each with its own run's one row
    assert first == tmp_path / "runs" / "shared" and second == tmp_path / "runs" / "shared-2"
    for folder in (first, second):
        assert len(RunDirectory(folder).read_metrics()) == 1 and (folder / "summary.json").is_file()


def test_the_server_claims_its_folder_unless_the_launcher_claimed_it_for_this_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = tmp_path / "runs" / "20250101-120000"
    monkeypatch.delenv(CLAIMED_RUN_DIR_ENV, raising=False)
    # no launcher: each call claims a folder of its own
    assert server_run_dir(str(configured)) == configured
    assert server_run_dir(str(configured)) == configured.with_name(f"{configured.name}-2")
    # the launcher claimed -3 and says so: the server writes there, holding the launcher's files already
    launched = claim_run_dir(configured)
    (launched / "flower.log").write_text("Flower's log\n")
    monkeypatch.setenv(CLAIMED_RUN_DIR_ENV, str(launched))
    assert launched == configured.with_name(f"{configured.name}-3") and server_run_dir(str(launched)) == launched
    # ...but never once an earlier run's metrics.jsonl is there
    (launched / "metrics.jsonl").write_text('{"round": 1, "phase": "train", "site": "a"}\n')
    fresh = server_run_dir(str(launched))
    assert fresh == launched.with_name(f"{launched.name}-2")
    assert (launched / "metrics.jsonl").read_text() == '{"round": 1, "phase": "train", "site": "a"}\n'
    # and a folder the launcher did not claim for this run is claimed afresh
    assert server_run_dir(str(configured)) not in (configured, launched, fresh)


def test_a_folder_named_latest_becomes_a_link_to_each_new_runs_timestamped_folder(tmp_path: Path) -> None:
    # Prepare: the default output.run_dir, ~/.fedmammo/runs/latest, here under tmp_path
    requested = tmp_path / "runs" / "latest"
    # Execute
    first = claim_run_dir(requested)
    (first / "metrics.jsonl").write_text('{"round": 1, "phase": "train", "site": "a"}\n')
    second = claim_run_dir(requested)
    # Assert: two timestamped folders beside it; latest opens the newest, the first run is untouched
    assert first != second and first.parent == second.parent == tmp_path / "runs"
    assert all(re.fullmatch(r"\d{8}-\d{6}(-\d+)?", folder.name) for folder in (first, second))
    assert requested.is_symlink() and requested.resolve() == second and os.readlink(requested) == second.name
    assert (first / "metrics.jsonl").read_text() == '{"round": 1, "phase": "train", "site": "a"}\n'
    assert not (second / "metrics.jsonl").exists()
    assert sorted(p.name for p in requested.parent.iterdir()) == sorted(["latest", first.name, second.name])


def test_a_real_latest_folder_of_an_older_run_is_left_intact(tmp_path: Path) -> None:
    # Prepare: an older fedmammo wrote a run into runs/latest itself
    requested = tmp_path / "runs" / "latest"
    requested.mkdir(parents=True)
    (requested / "metrics.jsonl").write_text('{"round": 1, "phase": "train", "site": "a"}\n')
    # Execute
    claimed = claim_run_dir(requested)
    # Assert: the run went to a timestamped folder; the old run is not touched (nor replaced by a link)
    assert claimed.parent == requested.parent and claimed != requested
    assert requested.is_dir() and not requested.is_symlink()
    assert (requested / "metrics.jsonl").read_text() == '{"round": 1, "phase": "train", "site": "a"}\n'
