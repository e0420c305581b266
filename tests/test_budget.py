"""A hospital's own privacy limits: read from its node config, enforced before a round is trained."""

from __future__ import annotations

import pytest

from client.budget import SiteBudget, check_round, site_budget
from common.errors import ConfigError, PrivacyBudgetExceeded
from common.privacy import compute_epsilon

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
