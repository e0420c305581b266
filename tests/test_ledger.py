"""The site's privacy ledger file: survives reopening, only grows, fails closed when unreadable."""

from __future__ import annotations

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
