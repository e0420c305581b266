"""common.proximal and train_local's ``proximal_mu``: FedProx's term on the sites, plain and under DP-SGD."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common import wire
from common.config import PrivacyConfig, TrainingConfig
from common.models import build_model
from common.privacy import make_private_training
from common.proximal import attach_proximal_term
from common.training import TrainResult, train_local

DP = PrivacyConfig(mode="local", noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-4)
NO_DP = PrivacyConfig(mode="none")


def _toy(n: int = 16) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    images = 0.1 * torch.randn(n, 1, 32, 32, generator=generator)
    labels = torch.arange(n) % 2
    images[labels == 1, :, 12:20, 12:20] += 1.0
    return TensorDataset(images, labels)


def _small() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", norm="groupnorm")


def _distance(model: nn.Module, anchor: nn.Module) -> float:
    pairs = zip(model.parameters(), anchor.parameters(), strict=True)
    return float(sum(((p.detach() - q.detach()) ** 2).sum() for p, q in pairs))


def test_the_step_adds_mu_times_the_distance_to_the_global_weights() -> None:
    # Prepare: a global weight, moved since; a known loss gradient
    weight = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    handle = attach_proximal_term(optimizer, 0.5)
    with torch.no_grad():
        weight.add_(torch.tensor([0.2, 0.4, -1.0]))  # w - w_global
    weight.grad = torch.tensor([0.1, 0.0, -0.3])

    # Execute
    optimizer.step()

    # Assert: w - lr x (g + mu (w - w_global))
    expected = torch.tensor([1.2, -1.6, -0.5]) - (torch.tensor([0.1, 0.0, -0.3]) + 0.5 * torch.tensor([0.2, 0.4, -1.0]))
    torch.testing.assert_close(weight.detach(), expected)
    assert handle is not None
    handle.remove()


def test_mu_zero_attaches_nothing_and_a_bad_mu_is_refused() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=1.0)

    assert attach_proximal_term(optimizer, 0.0) is None
    with pytest.raises(ValueError, match=r"proximal weight \(proximal-mu\) must be a finite number >= 0, got -0.1"):
        attach_proximal_term(optimizer, -0.1)
    with pytest.raises(ValueError, match=r"got nan"):
        attach_proximal_term(optimizer, float("nan"))


def test_without_dp_the_gradient_is_cross_entropy_plus_mu_times_the_distance() -> None:
    # Prepare: full-batch SGD, so the reference below sees the same batches
    mu, dataset = 0.5, _toy()
    training = TrainingConfig(local_epochs=4, batch_size=len(dataset), learning_rate=0.1)
    reference, anchor = _small(), _small()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    images, labels = dataset.tensors

    # Execute: train_local's term, and the FedProx objective written as a loss by hand
    result = train_local(_small(), dataset, training=training, privacy=NO_DP, seed=0, proximal_mu=mu)
    cross_entropies, proximal_terms = [], []
    for _ in range(training.local_epochs):
        optimizer.zero_grad()
        pairs = zip(reference.parameters(), anchor.parameters(), strict=True)
        proximal = mu / 2 * sum(((p - q.detach()) ** 2).sum() for p, q in pairs)
        cross_entropy = F.cross_entropy(reference(images), labels)
        (cross_entropy + proximal).backward()
        optimizer.step()
        cross_entropies.append(cross_entropy.item())
        proximal_terms.append(float(proximal))

    # Assert
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(result.state_dict[key], value, rtol=1e-5, atol=1e-6)
    # The reported loss is the cross-entropy alone (the term, a few per cent of it here, is left out).
    assert result.train_loss == pytest.approx(sum(cross_entropies) / len(cross_entropies), rel=1e-6)
    assert sum(proximal_terms) / len(proximal_terms) > 1e-3 * result.train_loss


def test_under_dp_the_accounting_is_unchanged_and_mu_pulls_towards_the_global_weights() -> None:
    # Prepare
    training = TrainingConfig(local_epochs=3, batch_size=4, learning_rate=0.5)
    dataset, anchor = _toy(), _small()

    # Execute: same seed, so the same Poisson batches and the same noise
    free, pulled = _small(), _small()
    without = train_local(free, dataset, training=training, privacy=DP, seed=7, history=[(1.0, 0.25, 8)])
    with_mu = train_local(pulled, dataset, training=training, privacy=DP, seed=7, history=[(1.0, 0.25, 8)],
                          proximal_mu=1.0)  # fmt: skip

    # Assert
    assert with_mu.history == without.history and with_mu.epsilon == without.epsilon > 0
    assert with_mu.num_steps == without.num_steps
    assert _distance(pulled, anchor) < 0.5 * _distance(free, anchor)
    assert not any(hasattr(p, "grad_sample") for p in pulled.parameters())  # Opacus unwrapped as usual


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_under_dp_the_term_is_added_after_opacus_clips_and_noises() -> None:
    """Every per-example gradient clipped to almost nothing, no noise: the pull alone moves the weights, by the full
    ``lr x mu x (w - w_global)``. Inside the loss it would have been clipped away with the rest."""
    # Prepare: DP plumbing with sigma 0 (past the schema, which refuses it for a run) and a vanishing clip norm
    privacy = copy.copy(DP)
    for key, value in {"noise_multiplier": 0.0, "max_grad_norm": 1e-9, "poisson_sampling": False}.items():
        object.__setattr__(privacy, key, value)
    model, dataset = _small(), _toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = attach_proximal_term(optimizer, 2.0)  # on the plain optimizer, as train_local does
    private = make_private_training(model, optimizer, DataLoader(dataset, batch_size=len(dataset)), privacy=privacy)
    with torch.no_grad():  # the site has moved 0.01 away from the global weights
        for param in model.parameters():
            param.add_(0.01)
    before = [param.detach().clone() for param in model.parameters()]

    # Execute: one DP-SGD step
    images, labels = next(iter(private.data_loader))
    private.optimizer.zero_grad()
    private.criterion(private.module(images), labels).backward()  # the mode's own loss: it clips per sample
    private.optimizer.step()

    # Assert: 0.1 x 2.0 x 0.01 on every weight
    for param, old in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(old - param.detach(), torch.full_like(old, 0.002), rtol=0, atol=1e-7)
    assert handle is not None
    handle.remove()
    private.module.to_standard_module()


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize(("sent", "used"), [({wire.PROXIMAL_MU: 0.7}, 0.7), ({}, 0.0)])
def test_the_client_trains_with_the_mu_its_train_request_carries(
    sent: dict[str, float], used: float, tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: what Flower's FedProx puts in the request's config (FedAvg puts nothing)
    from client import task
    from client.client_app import app
    from tests.test_client_app import _config, _context, _message

    seen: list[float] = []

    def recording(*args: object, proximal_mu: float = 0.0, **kwargs: object) -> TrainResult:
        seen.append(proximal_mu)
        return train_local(*args, proximal_mu=proximal_mu, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(task, "train_local", recording)
    config = _config(tiny_federation, tmp_path, **{"privacy.mode": "none", "training.local_epochs": 1})
    query = _message("train", config, 1)
    for key, value in sent.items():
        query.content[wire.CONFIG_KEY][key] = value

    # Execute
    reply = app(query, _context(config))

    # Assert
    assert not reply.has_error()
    assert seen == [used]
