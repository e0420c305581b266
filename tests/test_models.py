"""Tests of common.models: every registered model is Opacus-valid and trains; weights load or fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import PrivacyConfig
from common.errors import ModelError
from common.models import NORM_POLICIES, FrozenBatchNorm2d, adapt_input_conv, available_models, build_model
from common.models.norm import group_norm
from common.privacy import make_private

IMAGE = 32


def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, IMAGE, IMAGE, generator=generator), torch.tensor([0, 1] * (n // 2))


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _changed(before: list[torch.Tensor], model: nn.Module) -> bool:
    return all(not torch.equal(b, a) for b, a in zip(before, _trainable(model), strict=True))


@pytest.fixture(scope="module")
def torchvision_resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet-like.pth"
    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so copying them is observable
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path


def test_registry_lists_required_models() -> None:
    # Act
    names = available_models()

    # Assert
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "small_cnn"} <= set(names)
    assert names == sorted(names)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("norm", NORM_POLICIES)
@pytest.mark.parametrize("name", available_models())
def test_every_model_is_opacus_valid_and_trains(name: str, norm: str) -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, in_channels=1, norm=norm)
    images, _ = _batch(2)
    labels = torch.tensor([0, 2])

    # Execute / Assert: validation and forward shape
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(images).shape == (2, 3)

    # Execute / Assert: one plain SGD step changes every trainable parameter
    plain_optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = _trainable(model)
    nn.functional.cross_entropy(model(images), labels).backward()
    plain_optimizer.step()
    assert _changed(before, model)

    # Execute / Assert: one DP-SGD step through Opacus changes every trainable parameter
    privacy = PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loader = DataLoader(TensorDataset(images, labels), batch_size=2)
    module, dp_optimizer, dp_loader, engine = make_private(
        model, optimizer, loader, privacy=privacy, history=None, seed=1
    )
    before = _trainable(model)
    for x, y in dp_loader:
        dp_optimizer.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        dp_optimizer.step()
    assert _changed(before, model)
    assert engine.accountant.history == [(1.0, 1.0, 1)]


def test_resnet_state_dict_keys_match_torchvision() -> None:
    # Prepare
    reference = torchvision.models.resnet50(weights=None).state_dict()

    # Execute
    ours = build_model("resnet50", num_classes=1000, in_channels=3, norm="frozen_bn").state_dict()

    # Assert
    assert list(ours) == list(reference)
    assert all(ours[k].shape == reference[k].shape for k in reference)


def test_unknown_model_name_lists_available() -> None:
    with pytest.raises(ModelError, match=r"'resnet9000' is unknown; available models: \[.*'resnet18'.*'small_cnn'"):
        build_model("resnet9000")


def test_unknown_norm_policy_is_refused() -> None:
    with pytest.raises(ModelError, match=r"norm 'batchnorm' is unknown.*'groupnorm', 'frozen_bn'"):
        build_model("small_cnn", norm="batchnorm")


def test_groupnorm_uses_a_divisor_of_the_channels() -> None:
    assert group_norm(64).num_groups == 32
    assert group_norm(48).num_groups == 16
    assert group_norm(3).num_groups == 1


@pytest.mark.parametrize("norm", NORM_POLICIES)
def test_torchvision_weights_load_with_folded_conv1(torchvision_resnet18_file: Path, norm: str) -> None:
    # Prepare
    saved = torch.load(torchvision_resnet18_file, weights_only=True)

    # Execute
    model = build_model("resnet18", in_channels=1, norm=norm, weights_path=torchvision_resnet18_file)

    # Assert
    state = model.state_dict()
    assert state["conv1.weight"].shape == (64, 1, 7, 7)
    torch.testing.assert_close(state["conv1.weight"], saved["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(state["layer3.1.conv2.weight"], saved["layer3.1.conv2.weight"])
    torch.testing.assert_close(state["layer2.0.bn1.weight"], saved["layer2.0.bn1.weight"])
    torch.testing.assert_close(state["layer2.0.downsample.1.bias"], saved["layer2.0.downsample.1.bias"])
    assert state["fc.weight"].shape == (2, 512)
    if norm == "frozen_bn":
        torch.testing.assert_close(state["bn1.running_var"], saved["bn1.running_var"])
    else:
        assert "bn1.running_var" not in state
        assert isinstance(model.bn1, nn.GroupNorm)


def test_weights_of_another_architecture_name_the_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "resnet50-weights.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)

    # Execute / Assert
    with pytest.raises(ModelError, match=r"resnet50-weights\.pth' does not fit model 'resnet18'.*unexpected keys"):
        build_model("resnet18", weights_path=path)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nowhere\.pth' does not exist"):
        build_model("resnet18", weights_path=tmp_path / "nowhere.pth")


def test_weights_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)

    # Execute / Assert
    with pytest.raises(ModelError, match=r"list\.pth' holds a list, not a state dict"):
        build_model("small_cnn", weights_path=path)


def test_own_checkpoint_round_trips(tmp_path: Path) -> None:
    # Prepare
    torch.manual_seed(1)
    original = build_model("small_cnn", norm="groupnorm")
    path = tmp_path / "small.pth"
    torch.save(original.state_dict(), path)

    # Execute
    torch.manual_seed(2)
    loaded = build_model("small_cnn", norm="groupnorm", weights_path=str(path))

    # Assert
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_frozen_bn_stays_in_eval_mode_and_frozen() -> None:
    # Prepare
    model = build_model("resnet18", norm="frozen_bn")

    # Execute
    model.eval()
    model.train()

    # Assert
    frozen = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen and all(isinstance(m, FrozenBatchNorm2d) for m in frozen)
    assert all(not m.training for m in frozen)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert model.training and model.layer1.training


def test_adapt_input_conv_tiles_for_other_channel_counts() -> None:
    # Prepare
    weight = torch.randn(8, 3, 3, 3)

    # Execute
    two = adapt_input_conv(weight, 2)
    one = adapt_input_conv(weight, 1)

    # Assert
    assert two.shape == (8, 2, 3, 3)
    torch.testing.assert_close(two, weight[:, :2] * 1.5)
    torch.testing.assert_close(one[:, 0], weight.sum(dim=1))
    assert adapt_input_conv(weight, 3) is weight
