"""A hospital's own privacy limits: read from its node config, enforced before a round is trained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import client.budget
from client.budget import LIMITS_FILE_NAME, SiteBudget, check_round, declined_with_spending, site_budget, site_epsilon
from common.config import load_config
from common.errors import ConfigError, PrivacyBudgetExceeded
from common.privacy import compute_epsilon, parse_spent

PLANNED = (1.0, 0.25, 8)


def test_node_config_sets_the_limits_and_delta_defaults_to_the_sites_own() -> None:
    budget = site_budget({"max-epsilon": "3.5", "min-noise-multiplier": 0.7})

    assert budget == SiteBudget(max_epsilon=3.5, delta=1e-5, min_noise_multiplier=0.7)
    assert site_budget({}) == SiteBudget(max_epsilon=None, delta=1e-5, min_noise_multiplier=0.0)
    assert site_budget({"max-delta": 1e-6}).delta == 1e-6


def test_the_run_cannot_buy_epsilon_by_raising_its_delta() -> None:
    # A plan costing more than 8 at the site's delta 1e-5 but less at delta 0.5: declined whatever the run's delta
    budget = site_budget({"max-epsilon": 8.0})
    planned = (0.8, 0.05, 200)
    assert compute_epsilon([planned], delta=1e-5) > 8.0 > compute_epsilon([planned], delta=0.5)

    with pytest.raises(PrivacyBudgetExceeded, match=r"at delta 1e-05, above its ceiling max-epsilon=8"):
        check_round(budget, mode="local", history=[], planned=planned, accountant="rdp")


def test_a_limited_site_declines_a_run_without_poisson_sampling() -> None:
    budget = site_budget({"max-epsilon": 8.0})

    with pytest.raises(PrivacyBudgetExceeded, match=r"Poisson sampling off"):
        check_round(budget, mode="local", history=[], planned=PLANNED, accountant="rdp", poisson_sampling=False)
    check_round(site_budget({}), mode="local", history=[], planned=PLANNED, accountant="rdp", poisson_sampling=False)


@pytest.mark.parametrize(("key", "value"), [("max-epsilon", "lots"), ("max-epsilon", -1.0), ("max-delta", 2.0)])
def test_bad_limits_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"node config '{key}'"):
        site_budget({key: value})


def test_a_round_within_the_ceiling_passes_and_one_past_it_is_declined() -> None:
    budget = SiteBudget(max_epsilon=None, delta=1e-4, min_noise_multiplier=0.0)
    after_one = compute_epsilon([PLANNED], delta=1e-4)
    within = SiteBudget(max_epsilon=after_one * 1.001, delta=1e-4, min_noise_multiplier=0.0)

    check_round(budget, mode="local", history=[], planned=PLANNED, accountant="rdp")
    check_round(within, mode="local", history=[], planned=PLANNED, accountant="rdp")
    with pytest.raises(PrivacyBudgetExceeded, match="above its ceiling max-epsilon"):
        check_round(within, mode="local", history=[PLANNED], planned=PLANNED, accountant="rdp")


def test_a_limited_site_declines_central_dp_its_update_would_leave_unnoised() -> None:
    budget = SiteBudget(max_epsilon=8.0, delta=1e-4, min_noise_multiplier=0.0)

    with pytest.raises(PrivacyBudgetExceeded, match=r"central DP .* un-noised update would leave the hospital"):
        check_round(budget, mode="central", history=[], planned=PLANNED, accountant="rdp")


def test_too_little_noise_is_declined() -> None:
    budget = SiteBudget(max_epsilon=None, delta=1e-4, min_noise_multiplier=1.5)

    with pytest.raises(PrivacyBudgetExceeded, match=r"below this site.s minimum min-noise-multiplier=1\.5"):
        check_round(budget, mode="local", history=[], planned=PLANNED, accountant="rdp")


def test_a_limits_file_in_the_site_folder_applies_and_node_config_wins(tmp_path) -> None:
    (tmp_path / "privacy_limits.toml").write_text('max-epsilon = 4.0\n"min-noise-multiplier" = 0.5\n')
    from_file = site_budget({}, tmp_path)
    overridden = site_budget({"max-epsilon": 2.0}, tmp_path)

    assert (from_file.max_epsilon, from_file.min_noise_multiplier) == (4.0, 0.5)
    assert (overridden.max_epsilon, overridden.min_noise_multiplier) == (2.0, 0.5)


def test_a_bad_limits_file_names_itself(tmp_path) -> None:
    (tmp_path / "privacy_limits.toml").write_text("max-epsilonn = 4.0\n")

    with pytest.raises(ConfigError, match=r"privacy_limits\.toml has unknown key"):
        site_budget({}, tmp_path)


ROUND = (1.0, 1 / 3, 6)
"""One round whose PRV epsilon (about 6.05 at delta 1e-5) is well below its RDP epsilon (about 6.84)."""


def test_the_run_cannot_choose_a_laxer_accountant_for_the_sites_ceiling() -> None:
    # Prepare: a ceiling the round passes by PRV's figure but not by RDP's
    rdp = compute_epsilon([ROUND], delta=1e-5, accountant="rdp")
    prv = compute_epsilon([ROUND], delta=1e-5, accountant="prv")
    assert prv < rdp
    budget = site_budget({"max-epsilon": (rdp + prv) / 2})

    # Execute / Assert: declined whichever accountant the run names (the site's default reads both)
    for run_accountant in ("prv", "rdp"):
        with pytest.raises(PrivacyBudgetExceeded, match=r"above its ceiling .* \(by the site.s accountant=both\)"):
            check_round(budget, mode="local", history=[], planned=ROUND, accountant=run_accountant)


def test_the_site_chooses_its_accountant_and_both_takes_the_larger_epsilon() -> None:
    rdp = compute_epsilon([ROUND], delta=1e-5, accountant="rdp")
    prv = compute_epsilon([ROUND], delta=1e-5, accountant="prv")
    ceiling = (rdp + prv) / 2

    assert site_epsilon(site_budget({}), [ROUND]) == pytest.approx(max(rdp, prv))
    assert site_epsilon(site_budget({"accountant": "prv"}), [ROUND]) == pytest.approx(prv)
    check_round(site_budget({"max-epsilon": ceiling, "accountant": "prv"}), mode="local", history=[], planned=ROUND)
    with pytest.raises(ConfigError, match=r"node config 'accountant' = 'moments' is invalid"):
        site_budget({"accountant": "moments"})


def _limits_folder(site: Path) -> None:
    (site / LIMITS_FILE_NAME).mkdir()


def _dangling_limits_link(site: Path) -> None:
    (site / LIMITS_FILE_NAME).symlink_to(site / "moved_away.toml")


def _malformed_limits(site: Path) -> None:
    (site / LIMITS_FILE_NAME).write_text("max-epsilon = = 3\n")


def _boolean_limit(site: Path) -> None:
    (site / LIMITS_FILE_NAME).write_text("max-epsilon = true\n")


@pytest.mark.parametrize("break_it", [_limits_folder, _dangling_limits_link, _malformed_limits, _boolean_limit])
def test_a_limits_file_that_is_there_but_unreadable_fails_closed(tmp_path: Path, break_it: Callable) -> None:
    # Prepare
    break_it(tmp_path)

    # Execute / Assert: never "no limits"
    with pytest.raises(ConfigError, match=r"privacy limits file .*privacy_limits\.toml|'max-epsilon' = True"):
        site_budget({}, tmp_path)


def test_an_unreadable_limits_file_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: tests run as root, for whom chmod 000 still reads; the OS's refusal is simulated
    (tmp_path / LIMITS_FILE_NAME).write_text("max-epsilon = 3.0\n")
    real_read_text = Path.read_text

    def refuse(path: Path, *args: object, **kwargs: object) -> str:
        if path.name == LIMITS_FILE_NAME:
            raise PermissionError(13, "Permission denied", str(path))
        return real_read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"privacy limits file .* is unreadable") as caught:
        site_budget({}, tmp_path)
    assert "cannot be read" in caught.value.public_reason and str(tmp_path) not in caught.value.public_reason


def test_no_limits_file_is_no_limits(tmp_path: Path) -> None:
    assert site_budget({}, tmp_path).max_epsilon is None


HUGE = (1.0, 0.5, 2000)
"""A history whose RDP epsilon (about 392 at delta 1e-4) is past the point where PRV's grid is not computed."""


def _decline() -> PrivacyBudgetExceeded:
    return PrivacyBudgetExceeded("declined: over the ceiling", public="declined: over the ceiling")


@pytest.mark.parametrize(
    ("history", "accountant"), [([ROUND], "prv"), ([ROUND], "rdp"), ([(0.0, 0.25, 1)], "rdp"), ([], "prv")]
)
def test_a_decline_carries_the_ledgers_epsilon_in_the_form_the_server_reads(history: list, accountant: str) -> None:
    privacy = load_config({"privacy.accountant": accountant}).privacy

    declined = declined_with_spending(_decline(), history, privacy)

    expected = compute_epsilon(history, delta=privacy.delta, accountant=accountant)  # inf once a step had no noise
    assert parse_spent(declined.public_reason) == expected and parse_spent(str(declined)) == expected
    assert declined.public_reason.startswith("declined: over the ceiling [ledger-epsilon=")


def test_a_declines_epsilon_is_computed_as_guarded_as_the_budget_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a run reporting by PRV, a ledger far past any ceiling; PRV there would take gigabytes (refused here)
    def rdp_only(history: list, *, delta: float, accountant: str = "rdp") -> float:
        if accountant == "prv":
            raise AssertionError("PRV computed on a huge epsilon while the ledger's lock is held")
        return compute_epsilon(history, delta=delta, accountant=accountant)

    monkeypatch.setattr(client.budget, "compute_epsilon", rdp_only)
    privacy = load_config({"privacy.accountant": "prv"}).privacy

    # Execute
    declined = declined_with_spending(_decline(), [HUGE], privacy)

    # Assert: RDP's figure, an upper bound on its own
    assert parse_spent(declined.public_reason) == compute_epsilon([HUGE], delta=privacy.delta, accountant="rdp")


@pytest.mark.parametrize("failure", [MemoryError, RuntimeError, ValueError])
def test_a_decline_goes_out_without_the_figure_when_it_cannot_be_computed(
    monkeypatch: pytest.MonkeyPatch, failure: type[Exception]
) -> None:
    def failing(*args: object, **kwargs: object) -> float:
        raise failure("the accountant failed")

    monkeypatch.setattr(client.budget, "compute_epsilon", failing)

    declined = declined_with_spending(_decline(), [ROUND], load_config({}).privacy)

    assert declined.public_reason == "declined: over the ceiling" and parse_spent(declined.public_reason) is None
