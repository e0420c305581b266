"""The central-DP noise seed comes only from a local simulation's environment, never from the run config."""

from __future__ import annotations

import pytest

from common.privacy.noise_seed import SIMULATION_NOISE_SEED_ENV, simulation_noise_seed


def test_a_deployment_has_no_noise_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIMULATION_NOISE_SEED_ENV, raising=False)
    assert simulation_noise_seed() is None


@pytest.mark.parametrize(("value", "seed"), [("42", 42), ("-3", None), ("", None), ("not a seed", None)])
def test_a_simulation_seed_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, seed: int | None
) -> None:
    monkeypatch.setenv(SIMULATION_NOISE_SEED_ENV, value)
    assert simulation_noise_seed() == seed


def test_the_run_config_carries_no_noise_seed_of_its_own() -> None:
    # Every ClientApp receives the run config: nothing in it may name the server's noise seed
    from common.config import load_config

    assert not [key for key in load_config({}).to_flat() if "noise_seed" in key]
