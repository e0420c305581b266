"""The site's privacy ledger file: survives reopening, only grows, loses no step to a concurrent writer, stays one
ledger behind a symbolic link, fails closed when unreadable, edited by hand, deleted, unmounted or read-only."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from client.ledger import PrivacyLedger, lock_path
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
    assert rewritten["version"] == 3 and rewritten["checksum"].startswith("sha256:")
    assert PrivacyLedger.open(tmp_path / "l.json").history == [(1.0, 0.25, 8)]
    (tmp_path / "l.json").write_text(json.dumps({**old, "history": {**old["history"], "num_steps": [1]}}))
    with pytest.raises(ConfigError, match="has no checksum, but this site has written checksummed ledgers"):
        PrivacyLedger.open(tmp_path / "l.json")


def test_a_ledger_reached_through_a_symbolic_link_stays_one_ledger(tmp_path: Path) -> None:
    # Prepare: the site's ledger path is a link to the real ledger, which already holds 10 steps
    (tmp_path / "secure").mkdir()
    (tmp_path / "site").mkdir()
    real, link = tmp_path / "secure" / "ledger.json", tmp_path / "site" / "privacy_ledger.json"
    link.symlink_to(Path("..") / "secure" / "ledger.json")
    PrivacyLedger.open(real).record([(1.0, 0.25, 10)])

    # Execute: a round through the link adds 10 more
    with PrivacyLedger.locked(link) as ledger:
        seen = list(ledger.history)
        ledger.record([(1.0, 0.25, 20)])

    # Assert: the link is still a link, the real file holds every step, and one lock file guards it
    assert seen == [(1.0, 0.25, 10)]
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert PrivacyLedger.open(real).history == [(1.0, 0.25, 20)]
    assert lock_path(link) == lock_path(real) == real.resolve().with_name("ledger.json.lock")
    assert not (tmp_path / "site" / "privacy_ledger.json.lock").exists()


def test_the_lock_taken_through_the_real_path_holds_back_a_user_of_the_link(tmp_path: Path) -> None:
    (tmp_path / "secure").mkdir()
    real, link = tmp_path / "secure" / "ledger.json", tmp_path / "privacy_ledger.json"
    link.symlink_to(real)
    context = multiprocessing.get_context("fork")
    entered = context.Event()
    first = context.Process(target=_hold_the_lock, args=(real, entered, (1.0, 0.25, 8)))
    first.start()
    assert entered.wait(timeout=30)

    with PrivacyLedger.locked(link) as ledger:
        seen = list(ledger.history)
    first.join(timeout=30)

    assert seen == [(1.0, 0.25, 8)]


def test_a_deleted_ledger_fails_closed_while_its_lock_file_is_sealed(tmp_path: Path) -> None:
    # Prepare: a site that has spent, then loses its ledger file (its lock file stays)
    path = tmp_path / "l.json"
    PrivacyLedger.open(path).record([(1.0, 0.25, 16)])
    path.unlink()

    # Execute / Assert: never "nothing spent", whether read or locked
    with pytest.raises(ConfigError, match=r"privacy ledger .*l\.json is missing, but its lock file") as caught:
        PrivacyLedger.open(path)
    assert "missing although this site kept one" in caught.value.public_reason
    assert str(tmp_path) not in caught.value.public_reason
    with pytest.raises(ConfigError, match="is missing"), PrivacyLedger.locked(path):
        pytest.fail("a round would train on a ledger that forgot its spending")
    # Deleting the lock file as well is the deliberate reset
    lock_path(path).unlink()
    assert PrivacyLedger.open(path).history == []


@pytest.mark.parametrize("use", ["open", "locked"])
def test_a_ledger_under_a_missing_folder_is_refused_not_created(tmp_path: Path, use: str) -> None:
    path = tmp_path / "gone" / "mount" / "l.json"  # an unmounted drive, say

    with pytest.raises(ConfigError, match=r"folder .*gone.mount does not exist.*node config 'ledger'") as caught:
        if use == "open":
            PrivacyLedger.open(path)
        else:
            with PrivacyLedger.locked(path):
                pytest.fail("a round would train on a new, empty ledger")

    assert "node config 'ledger'" in caught.value.public_reason and str(tmp_path) not in caught.value.public_reason
    assert not (tmp_path / "gone").exists()


def refuse_writes_in(folder: Path, monkeypatch: pytest.MonkeyPatch, error: int = errno.EACCES) -> None:
    """Make ``folder`` read-only as the OS would (tests run as root, for whom chmod does not stop a write).

    New files (``O_CREAT`` of a file not there, ``O_TMPFILE``) are refused with ``error``; with ``EROFS`` (a
    read-only mount) so is opening any file there for writing.
    """
    real_open = os.open
    tmpfile = getattr(os, "O_TMPFILE", 0)

    def guarded(path: object, flags: int, *args: object, **kwargs: object) -> int:
        inside = str(path).startswith(str(folder))
        creates = (flags & os.O_CREAT and not os.path.exists(path)) or (tmpfile and flags & tmpfile == tmpfile)
        writes = flags & (os.O_WRONLY | os.O_RDWR)
        if inside and (creates or (error == errno.EROFS and writes)):
            raise OSError(error, os.strerror(error), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded)


@pytest.mark.parametrize("error", [errno.EACCES, errno.EROFS])
@pytest.mark.parametrize("existing", [False, True])
def test_a_read_only_ledger_folder_stops_the_round_before_it_trains_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, existing: bool
) -> None:
    # Prepare: a data mount that is read-only, fresh or holding a ledger and its lock file from before
    path = tmp_path / "mount" / "l.json"
    path.parent.mkdir()
    if existing:
        PrivacyLedger.open(path).record([(1.0, 0.25, 8)])
    refuse_writes_in(path.parent, monkeypatch, error)

    # Execute / Assert: a ConfigError naming the key and the rule, before the round could train
    refused = r"cannot be written .*must be writable.*node config 'ledger='"
    with pytest.raises(ConfigError, match=refused) as caught, PrivacyLedger.locked(path):
        pytest.fail("a round would train and then fail to record its spending")
    assert caught.value.public_reason.endswith("the ledger must be writable; point ledger= at a writable place")
    assert str(tmp_path) not in caught.value.public_reason
    if existing:  # a snapshot read still works
        assert PrivacyLedger.open(path).history == [(1.0, 0.25, 8)]
