"""Tests of common.loss: class-weighted cross-entropy as a mean of per-sample terms, and balanced weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import PrivacyConfig
from common.errors import ConfigError
from common.loss import WeightedCrossEntropy, balanced_class_weights, class_weights_for
from common.models import build_model
from common.privacy import make_private_training

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Using a non-full backward hook:UserWarning"),
]

WEIGHTS = (1.0, 3.0)
LABELS = torch.tensor([0, 1, 0, 0, 1, 0, 0, 0])


def _images(n: int = 8) -> Tensor:
    return torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(0))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn")


def _flat_grads(model: nn.Module) -> Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def _one_at_a_time(images: Tensor, labels: Tensor, weights: tuple[float, ...]) -> Tensor:
    """Each image's gradient of its own weighted term ``w[y] * CE``, computed alone: (N, parameters)."""
    model = _model()
    rows = []
    for image, label in zip(images, labels, strict=True):
        model.zero_grad()
        (weights[int(label)] * F.cross_entropy(model(image[None]), label[None])).backward()
        rows.append(_flat_grads(model))
    return torch.stack(rows)


def _opacus_per_sample(labels: Tensor, criterion: nn.Module, mode: str = "hooks") -> Tensor:
    """Opacus' per-sample gradients (N, parameters) of one DP step's batch; for ghost mode, their norms (N,)."""
    model = _model()
    privacy = PrivacyConfig(noise_multiplier=1.0, poisson_sampling=False, grad_sample_mode=mode)
    loader = DataLoader(TensorDataset(_images(len(labels)), labels), batch_size=len(labels))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private = make_private_training(model, optimizer, loader, privacy=privacy, criterion=criterion)
    images, batch_labels = next(iter(private.data_loader))
    private.criterion(private.module(images), batch_labels).backward()
    if mode == "ghost":
        return private.module.per_sample_gradient_norms.detach()
    return torch.cat([p.grad_sample.flatten(1) for p in model.parameters() if p.requires_grad], dim=1)


def test_the_weighted_loss_is_the_batch_mean_of_weighted_per_sample_terms() -> None:
    # Prepare
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 2, 1, 0, 2])
    weights = (0.5, 2.0, 4.0)
    by_hand = torch.logsumexp(logits, dim=1) - logits[torch.arange(6), labels]
    weighted = torch.tensor([weights[int(y)] for y in labels]) * by_hand

    # Execute
    mean = WeightedCrossEntropy(weights)(logits, labels)
    per_sample = WeightedCrossEntropy(weights, reduction="none")(logits, labels)
    total = WeightedCrossEntropy(weights, reduction="sum")(logits, labels)

    # Assert: divided by the batch size (6), not by the sum of the batch's weights as torch's weight= does
    torch.testing.assert_close(mean, weighted.sum() / 6)
    torch.testing.assert_close(per_sample, weighted)
    torch.testing.assert_close(total, weighted.sum())
    torch_weighted = nn.CrossEntropyLoss(weight=torch.tensor(weights))(logits, labels)
    assert not torch.allclose(mean, torch_weighted)


def test_weights_that_cannot_be_used_are_refused() -> None:
    with pytest.raises(ValueError, match=r"one finite weight > 0 per class, got \[1.0, 0.0\]"):
        WeightedCrossEntropy((1.0, 0.0))
    with pytest.raises(ValueError, match="reduction must be one of"):
        WeightedCrossEntropy((1.0, 1.0), reduction="batchmean")
    with pytest.raises(ValueError, match=r"3 class weights for a 2-class model"):
        WeightedCrossEntropy((1.0, 1.0, 1.0))(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="reduction='mean'"):
        model = _model()
        loader = DataLoader(TensorDataset(_images(), LABELS), batch_size=8)
        make_private_training(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            loader,
            privacy=PrivacyConfig(poisson_sampling=False),
            criterion=WeightedCrossEntropy(WEIGHTS, reduction="sum"),
        )


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])
def test_opacus_per_sample_gradients_are_each_images_own_weighted_term(mode: str) -> None:
    # Execute
    opacus = _opacus_per_sample(LABELS, WeightedCrossEntropy(WEIGHTS), mode)
    alone = _one_at_a_time(_images(), LABELS, WEIGHTS)

    # Assert: what Opacus clips is grad(w[y_i] * CE_i), so its norm is what the clipping bound applies to
    torch.testing.assert_close(opacus, alone, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(opacus.norm(dim=1), alone.norm(dim=1), atol=1e-6, rtol=1e-4)


def test_ghost_clipping_sees_the_norms_of_the_weighted_per_sample_gradients() -> None:
    norms = _opacus_per_sample(LABELS, WeightedCrossEntropy(WEIGHTS), "ghost")

    torch.testing.assert_close(norms, _one_at_a_time(_images(), LABELS, WEIGHTS).norm(dim=1), atol=1e-5, rtol=1e-4)


def test_an_images_per_sample_gradient_does_not_depend_on_the_other_labels() -> None:
    # Prepare: relabel image 5 only
    relabelled = LABELS.clone()
    relabelled[5] = 1 - relabelled[5]
    kept = [i for i in range(len(LABELS)) if i != 5]

    # Execute
    ours = _opacus_per_sample(LABELS, WeightedCrossEntropy(WEIGHTS))
    ours_relabelled = _opacus_per_sample(relabelled, WeightedCrossEntropy(WEIGHTS))
    torch_style = _opacus_per_sample(LABELS, nn.CrossEntropyLoss(weight=torch.tensor(WEIGHTS)))
    torch_relabelled = _opacus_per_sample(relabelled, nn.CrossEntropyLoss(weight=torch.tensor(WEIGHTS)))

    # Assert: every other image's gradient is unchanged; torch's sum-of-weights normaliser would change them all
    torch.testing.assert_close(ours_relabelled[kept], ours[kept], atol=0.0, rtol=0.0)
    assert not torch.allclose(ours_relabelled[5], ours[5])
    assert not torch.allclose(torch_relabelled[kept], torch_style[kept])


def test_balanced_weights_average_one_over_the_images_and_leave_an_absent_class_at_one() -> None:
    # Execute
    two = balanced_class_weights([30, 10])
    three = balanced_class_weights([6, 0, 2])

    # Assert: w_c = N / (K n_c), K the classes present
    assert two == pytest.approx((40 / 60, 40 / 20))
    assert (30 * two[0] + 10 * two[1]) / 40 == pytest.approx(1.0)
    assert three == pytest.approx((8 / 12, 1.0, 8 / 4))
    assert (6 * three[0] + 2 * three[2]) / 8 == pytest.approx(1.0)
    assert balanced_class_weights([5, 5]) == (1.0, 1.0)


def test_class_weights_for_a_site_follow_the_setting() -> None:
    labels = torch.tensor([0, 0, 0, 1, 2, 2])

    assert class_weights_for("none", labels, 3) is None
    assert class_weights_for("balanced", labels, 3) == pytest.approx((6 / 9, 6 / 3, 6 / 6))
    assert class_weights_for("balanced", labels.numpy(), 3) == class_weights_for("balanced", labels, 3)
    assert class_weights_for("1, 2,4", labels, 3) == (1.0, 2.0, 4.0)
    with pytest.raises(ConfigError, match=r"'training.class_weights' = '1,2' is invalid: it must be 3 comma-sep"):
        class_weights_for("1,2", labels, 3)
