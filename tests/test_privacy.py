"""Tests of common.privacy: history as plain lists, epsilon replay, and Opacus wrapping that remembers."""

from __future__ import annotations

import math

import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.models import build_model
from common.privacy import compute_epsilon, history_from_lists, history_to_lists, make_private

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")


def _data(n: int = 8, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 32, 32, generator=generator), torch.tensor([0, 1] * (n // 2)))


def _dp_step(
    model: nn.Module, privacy: PrivacyConfig, *, history: list | None = None, seed: int = 0, lr: float = 0.1
) -> PrivacyEngine:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loader = DataLoader(_data(), batch_size=8, generator=torch.Generator().manual_seed(seed))
    module, dp_optimizer, dp_loader, engine = make_private(
        model, optimizer, loader, privacy=privacy, history=history, seed=seed
    )
    for images, labels in dp_loader:
        dp_optimizer.zero_grad()
        nn.functional.cross_entropy(module(images), labels).backward()
        dp_optimizer.step()
    return engine


def test_history_lists_round_trip_exactly() -> None:
    # Prepare
    history = [(1.1, 0.1 / 3, 7), (0.8, 0.25, 120)]

    # Execute
    lists = history_to_lists(history)
    back = history_from_lists(lists)

    # Assert
    assert back == history
    assert lists == {"noise_multiplier": [1.1, 0.8], "sample_rate": [0.1 / 3, 0.25], "num_steps": [7, 120]}
    assert all(type(v) is float for v in lists["noise_multiplier"] + lists["sample_rate"])
    assert all(type(v) is int for v in lists["num_steps"])
    assert history_from_lists(history_to_lists([])) == []


def test_history_lists_of_different_length_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"differ in length \(noise_multiplier 2, sample_rate 1, num_steps 1\)"):
        history_from_lists({"noise_multiplier": [1.0, 1.0], "sample_rate": [0.1], "num_steps": [3]})


def test_history_lists_missing_key_or_bad_value_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"missing list\(s\) \['num_steps'\]"):
        history_from_lists({"noise_multiplier": [1.0], "sample_rate": [0.1]})
    with pytest.raises(ConfigError, match=r"entry 0 = \(1.0, 1.5, 3\) is invalid"):
        history_from_lists({"noise_multiplier": [1.0], "sample_rate": [1.5], "num_steps": [3]})


def test_compute_epsilon_empty_noiseless_and_monotone() -> None:
    # Execute
    empty = compute_epsilon([], delta=1e-5)
    noiseless = compute_epsilon([(0.0, 0.1, 1)], delta=1e-5)
    short = compute_epsilon([(1.0, 0.1, 10)], delta=1e-5)
    long = compute_epsilon([(1.0, 0.1, 10), (1.0, 0.1, 90)], delta=1e-5)
    prv = compute_epsilon([(1.0, 0.1, 10)], delta=1e-5, accountant="prv")

    # Assert
    assert empty == 0.0
    assert math.isinf(noiseless)
    assert 0.0 < short < long
    assert 0.0 < prv < 2 * short


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_make_private_continues_the_prior_history(accountant: str) -> None:
    # Prepare
    torch.manual_seed(0)
    privacy = PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1.0, accountant=accountant, poisson_sampling=False)
    prior = [(1.0, 1.0, 4)]

    # Execute
    engine = _dp_step(build_model("small_cnn"), privacy, history=prior)

    # Assert
    assert engine.accountant.history == [(1.0, 1.0, 5)]
    assert prior == [(1.0, 1.0, 4)]
    assert compute_epsilon(engine.accountant.history, delta=1e-4, accountant=accountant) > compute_epsilon(
        prior, delta=1e-4, accountant=accountant
    )


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_dp_without_noise_or_clipping_equals_plain_sgd(name: str) -> None:
    # Prepare
    torch.manual_seed(0)
    dp_model = build_model(name, norm="groupnorm")
    plain_model = build_model(name, norm="groupnorm")
    plain_model.load_state_dict(dp_model.state_dict())
    privacy = PrivacyConfig(noise_multiplier=0.0, max_grad_norm=1e6, poisson_sampling=False)
    images, labels = _data().tensors

    # Execute
    _dp_step(dp_model, privacy)
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    nn.functional.cross_entropy(plain_model(images), labels).backward()
    optimizer.step()

    # Assert
    plain_state = plain_model.state_dict()
    for key, dp_value in dp_model.state_dict().items():
        torch.testing.assert_close(dp_value, plain_state[key], atol=1e-5, rtol=1e-4, msg=key)


def test_noise_is_reproducible_from_the_seed() -> None:
    # Prepare
    privacy = PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    models = []
    for seed in (5, 5, 6):
        torch.manual_seed(0)
        model = build_model("small_cnn")
        _dp_step(model, privacy, seed=seed)
        models.append(model.state_dict())

    # Assert
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    assert not torch.equal(models[0]["fc.weight"], models[2]["fc.weight"])
