"""Tests of common.training: local DP/plain training, cumulative epsilon, frozen BatchNorm, evaluation."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.config import PrivacyConfig, TrainingConfig, load_config
from common.errors import ConfigError, ManifestError
from common.models import build_model
from common.privacy import compute_epsilon, history_from_lists, history_to_lists, privacy_for_budget
from common.training import EvalResult, TrainResult, evaluate, train_local

DP = PrivacyConfig(mode="local", noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-4, grad_sample_mode="hooks")
NO_DP = PrivacyConfig(mode="none")


def _unchecked(privacy: PrivacyConfig, **changes: object) -> PrivacyConfig:
    """``privacy`` with ``changes`` past the schema, which refuses sigma 0 under local DP (a run must not train
    un-noised); the plumbing itself takes it, and these tests compare it with plain SGD."""
    changed = copy.copy(privacy)
    for key, value in changes.items():
        object.__setattr__(changed, key, value)
    return changed


EXACT = _unchecked(
    PrivacyConfig(max_grad_norm=1e6, poisson_sampling=False, grad_sample_mode="hooks"), noise_multiplier=0.0
)
"""DP plumbing with no noise and no effective clipping: must give plain SGD's update exactly."""


def _toy(n: int = 32, seed: int = 0) -> TensorDataset:
    """Separable: class-1 images carry a bright square in the centre."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(n, 1, 32, 32, generator=generator)
    labels = torch.arange(n) % 2
    images[labels == 1, :, 12:20, 12:20] += 1.0
    return TensorDataset(images, labels)


def _small(seed: int = 0, norm: str = "groupnorm") -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", norm=norm)


def test_epsilon_accumulates_across_rounds_and_replays() -> None:
    # Prepare
    training = TrainingConfig(local_epochs=1, batch_size=8, learning_rate=0.05)
    dataset = _toy(24)

    # Execute
    first = train_local(_small(), dataset, training=training, privacy=DP, seed=1)
    second = train_local(_small(), dataset, training=training, privacy=DP, history=first.history, seed=2)

    # Assert
    assert 0.0 < first.epsilon < second.epsilon
    assert first.history == [(1.0, 1 / 3, 3)]
    assert second.history == [(1.0, 1 / 3, 6)]
    assert compute_epsilon(second.history, delta=DP.delta) == second.epsilon
    assert history_from_lists(history_to_lists(second.history)) == second.history


def test_training_without_dp_learns_and_returns_plain_keys() -> None:
    # Prepare
    model = _small()
    dataset = _toy()
    keys = list(model.state_dict())
    before = evaluate(model, dataset).loss
    training = TrainingConfig(local_epochs=6, batch_size=8, learning_rate=0.05)

    # Execute
    result = train_local(model, dataset, training=training, privacy=NO_DP, seed=0)

    # Assert
    assert isinstance(result, TrainResult)
    assert result.epsilon == 0.0 and result.history == []
    assert list(result.state_dict) == keys
    assert result.num_examples == 32 and result.num_steps == 24
    assert evaluate(model, dataset).loss < 0.7 * before
    assert all(v.device.type == "cpu" and not v.requires_grad for v in result.state_dict.values())


def test_training_without_dp_keeps_the_prior_ledger() -> None:
    # Prepare
    prior = [(1.0, 0.25, 8)]

    # Execute
    result = train_local(_small(), _toy(8), training=TrainingConfig(batch_size=4), privacy=NO_DP, history=prior)

    # Assert
    assert result.history == prior
    assert result.epsilon == compute_epsilon(prior, delta=NO_DP.delta) > 0


def test_dp_training_unwraps_opacus() -> None:
    # Prepare
    model = _small()
    keys = list(model.state_dict())

    # Execute
    result = train_local(model, _toy(16), training=TrainingConfig(local_epochs=1, batch_size=4), privacy=DP, seed=0)

    # Assert
    assert list(result.state_dict) == keys
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert np.isfinite(result.train_loss) and result.num_steps == 4


def test_same_seed_same_weights_with_dp() -> None:
    # Prepare
    training = TrainingConfig(local_epochs=2, batch_size=4)

    # Execute
    runs = [train_local(_small(), _toy(16), training=training, privacy=DP, seed=s) for s in (3, 3, 4)]

    # Assert
    assert all(torch.equal(runs[0].state_dict[k], runs[1].state_dict[k]) for k in runs[0].state_dict)
    assert not torch.equal(runs[0].state_dict["fc.weight"], runs[2].state_dict["fc.weight"])


def test_empty_poisson_batches_still_count_as_private_steps() -> None:
    # Prepare: 2 examples, batch 1 -> sample rate 1/2, a quarter of the batches are empty
    nonempty: list[int] = []

    def count(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        nonempty.append(len(images))
        return images

    training = TrainingConfig(local_epochs=10, batch_size=1)

    # Execute
    result = train_local(_small(), _toy(2), training=training, privacy=DP, seed=0, augment=count)

    # Assert
    assert result.num_steps == 20
    assert result.history == [(1.0, 0.5, 20)]
    assert 0 < len(nonempty) < 20
    assert np.isfinite(result.train_loss)


@pytest.mark.parametrize("privacy", [DP, NO_DP], ids=["dp", "no-dp"])
def test_frozen_batchnorm_does_not_train(privacy: PrivacyConfig) -> None:
    # Prepare
    model = _small(norm="frozen_bn")
    with torch.no_grad():
        model.features[1].running_mean.fill_(0.3)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.1.")}
    head = model.fc.weight.detach().clone()

    # Execute
    result = train_local(model, _toy(16), training=TrainingConfig(batch_size=4), privacy=privacy, seed=0)

    # Assert
    assert not model.features[1].training and model.training
    for key, value in frozen.items():
        assert torch.equal(result.state_dict[key], value), key
    assert not torch.equal(result.state_dict["fc.weight"], head)


def test_augment_is_applied_with_a_generator() -> None:
    # Prepare
    seen: list[torch.Generator] = []

    def flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        seen.append(generator)
        return images.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else images

    # Execute
    train_local(_small(), _toy(8), training=TrainingConfig(local_epochs=1, batch_size=4), privacy=NO_DP, augment=flip)

    # Assert
    assert len(seen) == 2 and all(isinstance(g, torch.Generator) for g in seen)


def test_empty_training_set_is_refused() -> None:
    empty = TensorDataset(torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ManifestError, match="training set is empty"):
        train_local(_small(), empty, training=TrainingConfig(), privacy=NO_DP)


def test_evaluate_scores_and_labels() -> None:
    # Prepare
    model = _small().train()
    dataset = _toy(10)

    # Execute
    result = evaluate(model, dataset, batch_size=4)

    # Assert
    assert isinstance(result, EvalResult)
    assert result.num_examples == 10
    assert result.scores.shape == (10,) and result.scores.dtype == np.float64
    assert np.all((result.scores >= 0) & (result.scores <= 1))
    assert result.labels.dtype == np.int64
    np.testing.assert_array_equal(result.labels, np.arange(10) % 2)
    assert np.isfinite(result.loss) and result.loss > 0
    assert model.training


def _weights_after(privacy: PrivacyConfig, training: TrainingConfig, n: int = 16) -> dict[str, torch.Tensor]:
    return train_local(_small(), _toy(n), training=training, privacy=privacy, seed=0).state_dict


@pytest.mark.filterwarnings("ignore:Using a non-full backward hook:UserWarning")
@pytest.mark.parametrize("mode", ["ew", "functorch", "ghost", "mixed_ghost"])
def test_every_grad_sample_mode_gives_the_hooks_update(mode: str) -> None:
    # Prepare
    training = TrainingConfig(local_epochs=1, batch_size=8, learning_rate=0.1)

    # Execute
    hooks = _weights_after(EXACT, training)
    other = _weights_after(_unchecked(EXACT, grad_sample_mode=mode), training)

    # Assert
    assert not torch.equal(hooks["fc.weight"], _small().state_dict()["fc.weight"])
    for key, value in hooks.items():
        torch.testing.assert_close(other[key], value, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch", "ghost", "mixed_ghost"])
def test_every_grad_sample_mode_trains_with_poisson_noise_and_unwraps(mode: str) -> None:
    # Prepare
    model = _small()
    privacy = dataclasses.replace(DP, grad_sample_mode=mode)

    # Execute: 3 examples, batch 1: empty Poisson batches are likely
    result = train_local(model, _toy(3), training=TrainingConfig(local_epochs=4, batch_size=1), privacy=privacy)

    # Assert
    assert result.history == [(1.0, 1 / 3, 12)] and result.num_steps == 12
    assert np.isfinite(result.train_loss)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


class _Scaled(nn.Module):
    """A linear classifier behind a bare ``x * weight``: a layer ExpandedWeights ('ew') cannot handle."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(32 * 32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x * self.scale).flatten(1))


def test_a_mode_that_cannot_handle_the_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"'privacy.grad_sample_mode' = 'ew' does not work for model _Scaled: .*mul"):
        train_local(
            _Scaled(),
            _toy(8),
            training=TrainingConfig(local_epochs=1, batch_size=4),
            privacy=dataclasses.replace(DP, grad_sample_mode="ew"),
        )


@pytest.mark.parametrize("mode", ["hooks", "ghost", "mixed_ghost"])
def test_physical_batches_give_the_logical_batch_update(mode: str) -> None:
    # Prepare
    privacy = _unchecked(EXACT, grad_sample_mode=mode)
    whole = TrainingConfig(local_epochs=1, batch_size=8, learning_rate=0.1)
    split = dataclasses.replace(whole, physical_batch_size=2)

    # Execute
    reference = train_local(_small(), _toy(16), training=whole, privacy=privacy, seed=0)
    chunked = train_local(_small(), _toy(16), training=split, privacy=privacy, seed=0)

    # Assert
    assert chunked.num_steps == reference.num_steps == 2
    assert chunked.history == reference.history == [(0.0, 0.5, 2)]
    for key, value in reference.state_dict.items():
        torch.testing.assert_close(chunked.state_dict[key], value, atol=1e-5, rtol=1e-4, msg=key)


def test_physical_batches_with_poisson_count_logical_steps() -> None:
    training = TrainingConfig(local_epochs=2, batch_size=8, physical_batch_size=3)

    result = train_local(_small(), _toy(16), training=training, privacy=DP, seed=0)

    assert result.history == [(1.0, 0.5, 4)] and result.num_steps == 4


def test_physical_batch_size_is_ignored_without_dp() -> None:
    training = TrainingConfig(local_epochs=1, batch_size=8, physical_batch_size=2)

    result = train_local(_small(), _toy(16), training=training, privacy=NO_DP, seed=0)

    assert result.num_steps == 2


def test_prv_accountant_trains_and_replays() -> None:
    privacy = dataclasses.replace(DP, accountant="prv")

    result = train_local(_small(), _toy(8), training=TrainingConfig(local_epochs=1, batch_size=4), privacy=privacy)

    assert result.history == [(1.0, 0.5, 2)]
    assert 0.0 < result.epsilon < float("inf")
    assert result.epsilon == compute_epsilon(result.history, delta=privacy.delta, accountant="prv")


def test_target_epsilon_is_spent_by_the_whole_plan() -> None:
    # Prepare: 3 rounds x 2 epochs on 10 examples, batch 4 (3 Poisson steps per epoch, rate 1/3)
    rounds, training = 3, TrainingConfig(local_epochs=2, batch_size=4, learning_rate=0.05)
    budget = PrivacyConfig(target_epsilon=5.0, delta=1e-4)
    privacy = privacy_for_budget(budget, num_examples=10, batch_size=4, epochs_total=rounds * training.local_epochs)

    # Execute
    history: list = []
    for server_round in range(rounds):
        history = train_local(
            _small(), _toy(10), training=training, privacy=privacy, history=history, seed=server_round
        ).history

    # Assert
    assert history == [(privacy.noise_multiplier, 1 / 3, 18)]
    assert 0.95 * 5.0 <= compute_epsilon(history, delta=1e-4) <= 5.0


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")
def test_train_on_site_spends_the_target_over_the_planned_rounds(tiny_federation: Path, tmp_path: Path) -> None:
    # Prepare
    from client.site import resolve_site
    from client.task import load_site_data, train_on_site

    config = load_config(
        {
            "federation.data_dir": str(tiny_federation),
            "federation.num_sites": 2,
            "data.image_size": 32,
            "data.cache_dir": str(tmp_path / "cache"),
            "training.batch_size": 4,
            "training.local_epochs": 1,
            "strategy.num_rounds": 2,
            "privacy.target_epsilon": 3.0,
        }
    )
    site = resolve_site({"partition-id": 0, "num-partitions": 2}, config)
    num_train = len(load_site_data(site, config).train)
    expected = privacy_for_budget(config.privacy, num_examples=num_train, batch_size=4, epochs_total=2)
    state = build_model("small_cnn").state_dict()

    # Execute
    history: list = []
    for server_round in (1, 2):
        result = train_on_site(site, config, state, history, server_round)
        history, state = result.history, result.state_dict

    # Assert: one noise level for both rounds, and the plan's epsilon is spent
    assert [entry[0] for entry in history] == [expected.noise_multiplier]
    assert expected.noise_multiplier != config.privacy.noise_multiplier
    assert 0.95 * 3.0 <= result.epsilon <= 3.0


def _three_class(n: int = 12) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    return TensorDataset(0.1 * torch.randn(n, 1, 32, 32, generator=generator), torch.arange(n) % 3)


def test_evaluate_three_classes_scores_the_last_class_softmax() -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3)
    dataset = _three_class()

    # Execute
    result = evaluate(model, dataset, batch_size=5)

    # Assert: every class's probability, and the headline score is P(last class), not a sigmoid of one logit
    assert result.probabilities.shape == (12, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(result.scores, result.probabilities[:, -1])
    with torch.no_grad():
        expected = torch.softmax(model(dataset.tensors[0]).double(), dim=1)[:, 2].numpy()
    np.testing.assert_allclose(result.scores, expected, atol=1e-6)
    expected_loss = torch.nn.functional.cross_entropy(model(dataset.tensors[0]), dataset.tensors[1]).item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)  # cross-entropy over the three classes


def test_three_classes_train_with_dp_and_a_label_beyond_the_model_is_refused_by_name() -> None:
    torch.manual_seed(0)
    three = build_model("small_cnn", num_classes=3)
    result = train_local(three, _three_class(), training=TrainingConfig(batch_size=4, local_epochs=1), privacy=DP)
    assert math.isfinite(result.train_loss) and result.epsilon > 0

    with pytest.raises(ValueError, match=r"label\(s\) \[2\] are not class indices of this 2-class model"):
        evaluate(_small(), _three_class())
    with pytest.raises(ValueError, match=r"must be in \[0, 2\) \(model.num_classes = 2\)"):
        train_local(_small(), _three_class(), training=TrainingConfig(batch_size=4, local_epochs=1), privacy=NO_DP)


def test_without_class_weights_training_is_exactly_plain_cross_entropy_sgd() -> None:
    # Prepare: the loop train_local ran before class weights existed, by hand (same seed derivation)
    training = TrainingConfig(local_epochs=2, batch_size=4, learning_rate=0.05)
    dataset = _toy(12)
    reference = _small()
    loader_seed = int(np.random.SeedSequence(5).generate_state(3)[0])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(loader_seed)
    )
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.0, weight_decay=0.0)
    for _ in range(2):
        for images, labels in loader:
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(reference(images), labels).backward()
            optimizer.step()

    # Execute
    result = train_local(_small(), dataset, training=training, privacy=NO_DP, seed=5, class_weights=None)

    # Assert: bit for bit
    for key, value in reference.state_dict().items():
        assert torch.equal(result.state_dict[key], value), key


@pytest.mark.parametrize("mode", ["hooks", "ghost", "mixed_ghost"])
def test_without_class_weights_dp_training_is_unchanged(mode: str) -> None:
    privacy = dataclasses.replace(DP, grad_sample_mode=mode)
    training = TrainingConfig(local_epochs=2, batch_size=4)

    default = train_local(_small(), _toy(16), training=training, privacy=privacy, seed=3)
    none = train_local(_small(), _toy(16), training=training, privacy=privacy, seed=3, class_weights=None)
    weighted = train_local(_small(), _toy(16), training=training, privacy=privacy, seed=3, class_weights=(1.0, 3.0))

    assert all(torch.equal(none.state_dict[k], v) for k, v in default.state_dict.items())
    assert none.train_loss == default.train_loss
    assert not torch.equal(weighted.state_dict["fc.weight"], default.state_dict["fc.weight"])


@pytest.mark.filterwarnings("ignore:Using a non-full backward hook:UserWarning")
@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch", "ghost", "mixed_ghost"])
@pytest.mark.parametrize("physical", [0, 3], ids=["whole", "physical-3"])
def test_weighted_dp_plumbing_gives_the_plain_weighted_update(mode: str, physical: int) -> None:
    """Without noise or clipping, DP-SGD's update is the mean of the per-sample gradients of w[y] * CE, in
    every grad-sample mode and with logical batches split into physical ones (each chunk's mean is undone)."""
    # Prepare
    weights = (0.5, 2.5)
    training = TrainingConfig(local_epochs=1, batch_size=8, learning_rate=0.1, physical_batch_size=physical)

    # Execute
    plain = train_local(_small(), _toy(16), training=training, privacy=NO_DP, seed=0, class_weights=weights)
    private = train_local(
        _small(),
        _toy(16),
        training=training,
        privacy=_unchecked(EXACT, grad_sample_mode=mode),
        seed=0,
        class_weights=weights,
    )
    unweighted = train_local(_small(), _toy(16), training=training, privacy=NO_DP, seed=0)

    # Assert
    assert private.num_steps == plain.num_steps == 2
    for key, value in plain.state_dict.items():
        torch.testing.assert_close(private.state_dict[key], value, atol=1e-5, rtol=1e-4, msg=key)
    assert not torch.allclose(plain.state_dict["fc.weight"], unweighted.state_dict["fc.weight"])


@pytest.mark.parametrize("mode", ["hooks", "ew", "functorch", "ghost", "mixed_ghost"])
def test_weighted_dp_training_takes_empty_poisson_batches(mode: str) -> None:
    # 3 examples, batch 1: empty Poisson batches are likely
    privacy = dataclasses.replace(DP, grad_sample_mode=mode)
    training = TrainingConfig(local_epochs=4, batch_size=1)

    result = train_local(_small(), _toy(3), training=training, privacy=privacy, class_weights=(1.0, 2.0))

    assert result.history == [(1.0, 1 / 3, 12)] and result.num_steps == 12
    assert np.isfinite(result.train_loss)


@pytest.mark.parametrize("privacy", [DP, NO_DP], ids=["dp", "no-dp"])
def test_class_weights_or_labels_that_do_not_fit_the_model_are_refused_as_such(privacy: PrivacyConfig) -> None:
    training = TrainingConfig(local_epochs=1, batch_size=4)

    with pytest.raises(ValueError, match=r"3 class weights for a 2-class model") as count:
        train_local(_small(), _toy(8), training=training, privacy=privacy, class_weights=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"label\(s\) \[2\] are not class indices") as label:
        train_local(_small(), _three_class(), training=training, privacy=privacy, class_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"one finite weight > 0 per class"):
        train_local(_small(), _toy(8), training=training, privacy=privacy, class_weights=(1.0, -1.0))

    # Not mistaken for a grad-sample mode that cannot handle the model (the first DP step runs in that guard)
    assert not isinstance(count.value, ConfigError) and not isinstance(label.value, ConfigError)
