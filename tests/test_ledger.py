"""The site's privacy ledger file: survives reopening, only grows, loses no step to a concurrent writer, fails
closed when unreadable or edited by hand."""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from pathlib import Path

import pytest

from client.ledger import PrivacyLedger
from common.errors import ConfigError


def test_round_trip_is_exact(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "l.json")
    history = [(1.1, 0.25, 8), (0.9, 1 / 3, 5)]

    ledger.record(history)

    assert PrivacyLedger.open(tmp_path / "l.json").history == history


def test_merged_steps_count_as_growth_but_dropping_steps_is_refused(tmp_path: Path) -> None:
    ledger = PrivacyLedger.open(tmp_path / "l.json")
    ledger.record([(1.0, 0.25, 8)])

    ledger.record([(1.0, 0.25, 16)])  # Opacus merged round 2 into the same entry
    with pytest.raises(ValueError, match="never drop one"):
        ledger.record([(1.0, 0.25, 4)])

    assert PrivacyLedger.open(tmp_path / "l.json").history == [(1.0, 0.25, 16)]


@pytest.mark.parametrize("text", ["{broken", '{"version": 9, "history": {}}', '{"version": 1}'])
def test_unreadable_ledger_names_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "l.json").write_text(text)

    with pytest.raises(ConfigError, match=r"privacy ledger .*l\.json is unreadable"):
        PrivacyLedger.open(tmp_path / "l.json")


def _record_one_step(path: Path, step: tuple[float, float, int], barrier) -> None:
    """One training's view of the ledger: read it, wait until the other process has read it too, add a step."""
    ledger = PrivacyLedger.open(path)
    barrier.wait(timeout=30)
    ledger.record([*ledger.history, step])


def test_two_processes_recording_at_once_keep_both_steps(tmp_path: Path) -> None:
    # Prepare: both processes read the (empty) ledger before either writes, as two trainings on one site would
    context = multiprocessing.get_context("fork")  # no torch work in the children: fork is safe and fast
    barrier = context.Barrier(2)
    steps = [(1.0, 0.25, 8), (1.5, 0.125, 3)]
    workers = [context.Process(target=_record_one_step, args=(tmp_path / "l.json", s, barrier)) for s in steps]

    # Execute
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)

    # Assert: neither write overwrote the other's step
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert sorted(PrivacyLedger.open(tmp_path / "l.json").history) == sorted(steps)


def _hold_the_lock(path: Path, entered, step: tuple[float, float, int]) -> None:
    with PrivacyLedger.locked(path) as ledger:
        entered.set()
        time.sleep(0.5)  # a round training while it holds the ledger
        ledger.record([*ledger.history, step])


def test_the_lock_makes_a_second_user_wait_and_read_the_first_ones_steps(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    entered = context.Event()
    first = context.Process(target=_hold_the_lock, args=(tmp_path / "l.json", entered, (1.0, 0.25, 8)))
    first.start()
    assert entered.wait(timeout=30)

    with PrivacyLedger.locked(tmp_path / "l.json") as ledger:
        seen = list(ledger.history)
    first.join(timeout=30)

    assert seen == [(1.0, 0.25, 8)]


def test_a_hand_edit_that_lowers_the_spending_fails_the_checksum(tmp_path: Path) -> None:
    # Prepare
    PrivacyLedger.open(tmp_path / "l.json").record([(1.0, 0.25, 16)])
    data = json.loads((tmp_path / "l.json").read_text())
    data["history"]["num_steps"] = [2]
    (tmp_path / "l.json").write_text(json.dumps(data))

    # Execute / Assert: fails closed, naming the file
    with pytest.raises(ConfigError, match=r"privacy ledger .*l\.json is tampered with") as caught:
        PrivacyLedger.open(tmp_path / "l.json")
    assert "tampered" in caught.value.public_reason and "l.json" not in caught.value.public_reason


def test_an_old_ledger_without_a_checksum_is_accepted_once_and_rewritten_with_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a version-1 ledger, as fedmammo wrote them before checksums
    old = {"version": 1, "history": {"noise_multiplier": [1.0], "sample_rate": [0.25], "num_steps": [8]}}
    (tmp_path / "l.json").write_text(json.dumps(old))

    # Execute
    with caplog.at_level(logging.WARNING, logger="client.ledger"), PrivacyLedger.locked(tmp_path / "l.json") as ledger:
        history = list(ledger.history)

    # Assert: read, logged, rewritten with a checksum; stripping the checksum again is no longer accepted
    assert history == [(1.0, 0.25, 8)]
    assert "has no checksum (version 1): rewriting it" in caplog.text
    rewritten = json.loads((tmp_path / "l.json").read_text())
    assert rewritten["version"] == 2 and rewritten["checksum"].startswith("sha256:")
    assert PrivacyLedger.open(tmp_path / "l.json").history == [(1.0, 0.25, 8)]
    (tmp_path / "l.json").write_text(json.dumps({**old, "history": {**old["history"], "num_steps": [1]}}))
    with pytest.raises(ConfigError, match="has no checksum, but this site has written checksummed ledgers"):
        PrivacyLedger.open(tmp_path / "l.json")
