"""The privacy section of the run config refuses settings whose epsilon would be infinite or meaningless."""

from __future__ import annotations

import math

import pytest

from common.config import load_config
from common.errors import ConfigError


def test_local_dp_without_noise_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'privacy.noise_multiplier' = 0.0 is invalid: it must be > 0 with privacy"):
        load_config({"privacy.mode": "local", "privacy.noise_multiplier": 0.0})


def test_sigma_zero_is_fine_where_it_is_not_used() -> None:
    # A target epsilon derives each site's sigma; without DP there is no noise to speak of
    assert load_config({"privacy.noise_multiplier": 0.0, "privacy.target_epsilon": 4.0}).privacy.target_epsilon == 4
    assert load_config({"privacy.mode": "none", "privacy.noise_multiplier": 0.0}).privacy.mode == "none"


@pytest.mark.parametrize("key", ["privacy.noise_multiplier", "privacy.max_grad_norm", "privacy.target_epsilon"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_privacy_settings_are_refused(key: str, value: float) -> None:
    # inf clipping is no clipping, inf noise no model: the accountant's epsilon would not describe the training
    with pytest.raises(ConfigError, match=rf"'{key}' = {value!r} is invalid: it must be a finite number"):
        load_config({key: value})
