"""Tests of common.models: every registered model is Opacus-valid and trains; weights load or fail loudly."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from common.config import PrivacyConfig
from common.errors import ModelError
from common.models import (
    NORM_POLICIES,
    FrozenBatchNorm2d,
    adapt_input_conv,
    available_models,
    build_model,
    input_size,
    min_input_size,
)
from common.models.adapters import RepeatChannels
from common.models.norm import group_norm
from common.privacy import make_private

IMAGE = 32


NEW_MODELS = (
    "vgg16",
    "vgg19",
    "alexnet",
    "densenet121",
    "inception_v3",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
)


def _batch(n: int = 4, seed: int = 0, size: int = IMAGE) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=generator), torch.tensor([0, 1] * (n // 2))


def _dp_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, noise: float = 1.0, clip: float = 1.0
) -> list[tuple[float, float, int]]:
    privacy = PrivacyConfig(noise_multiplier=1.0, max_grad_norm=clip, poisson_sampling=False)
    object.__setattr__(privacy, "noise_multiplier", noise)  # noise 0 (plain SGD) is refused by the schema for runs
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loader = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    module, dp_optimizer, dp_loader, engine = make_private(
        model, optimizer, loader, privacy=privacy, history=None, seed=1
    )
    for x, y in dp_loader:
        dp_optimizer.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        dp_optimizer.step()
    return engine.accountant.history


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters() if p.requires_grad]


def _all_have_gradients(model: nn.Module) -> bool:
    # Not "the step changed every parameter": randomly initialised deep nets under identity frozen BN
    # (no weights) have gradients near 1e-14 in their first layers, below float32 resolution of a step.
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return all(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)


def _changed(before: list[torch.Tensor], model: nn.Module) -> bool:
    return all(not torch.equal(b, a) for b, a in zip(before, _trainable(model), strict=True))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # On a shared 2-core machine, torch's OpenMP workers spin-wait behind other processes and the
    # DenseNet/Inception/VGG cases slow down 40-fold; one thread keeps this file at a few seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "small_cnn", *NEW_MODELS} <= set(names)
    assert names == sorted(names)


# VGG and AlexNet have no norm layers, so both policies build the same network; one case each
# (VGG's ~120M fully connected weights make a DP step take ~12 s on 2 CPU cores).
NORM_FREE = ("vgg16", "vgg19", "alexnet")
CASES = [(n, norm) for n in available_models() for norm in NORM_POLICIES if norm == "groupnorm" or n not in NORM_FREE]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize(("name", "norm"), CASES)
def test_every_model_is_opacus_valid_and_trains(name: str, norm: str) -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, in_channels=1, norm=norm)
    images, _ = _batch(2, size=max(IMAGE, min_input_size(name)))
    labels = torch.tensor([0, 2])

    # Execute / Assert: validation and forward shape
    assert ModuleValidator.validate(model, strict=True) == []
    assert model(images).shape == (2, 3)

    # Execute / Assert: one plain SGD step reaches every trainable parameter and changes the model
    plain_optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = _trainable(model)
    nn.functional.cross_entropy(model(images), labels).backward()
    plain_optimizer.step()
    assert _all_have_gradients(model)
    assert not all(torch.equal(b, a) for b, a in zip(before, _trainable(model), strict=True))
    plain_optimizer.zero_grad(set_to_none=True)

    # Execute / Assert: one DP-SGD step through Opacus changes every trainable parameter
    before = _trainable(model)
    history = _dp_step(model, images, labels)
    assert _changed(before, model)
    assert history == [(1.0, 1.0, 1)]


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


def _save_torchvision(path: Path, arch: str, **kwargs: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    model = getattr(torchvision.models, arch)(weights=None, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics, so copying them is observable
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    state = model.state_dict()
    torch.save(state, path)
    return state


def test_norm_free_models_ignore_the_norm_policy() -> None:
    # Execute
    grouped = build_model("alexnet", norm="groupnorm")
    frozen = build_model("alexnet", norm="frozen_bn")

    # Assert
    assert list(grouped.state_dict()) == list(frozen.state_dict())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in frozen.modules())


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("alexnet", {}),
        ("densenet121", {}),
        ("inception_v3", {"aux_logits": False, "init_weights": False}),
        ("mobilenet_v3_small", {}),
        ("mobilenet_v3_large", {}),
        ("efficientnet_b0", {}),
    ],
)
def test_new_architectures_keep_torchvision_keys_and_bn_eps(name: str, kwargs: dict[str, object]) -> None:
    # Prepare
    reference = getattr(torchvision.models, name)(weights=None, **kwargs)

    # Execute
    ours = build_model(name, num_classes=1000, in_channels=3, norm="frozen_bn")

    # Assert: same keys and shapes, so torchvision .pth files load; frozen BN normalises exactly like torchvision's
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in reference.state_dict().items())
    ours_modules = dict(ours.named_modules())
    for key, module in reference.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            assert isinstance(ours_modules[key], FrozenBatchNorm2d)
            assert ours_modules[key].eps == module.eps
    assert not any(getattr(m, "inplace", False) for m in ours.modules())


def test_grayscale_repeat_loads_an_unmodified_torchvision_state_dict(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.manual_seed(3)
    reference = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(reference.state_dict(), path)
    images, _ = _batch(2, size=48)

    # Execute
    model = build_model("mobilenet_v3_small", num_classes=1000, norm="frozen_bn", grayscale="repeat", weights_path=path)

    # Assert: unchanged keys and 3-channel stem; a grey image gives exactly torchvision's output on its RGB copy
    assert list(model.state_dict()) == list(reference.state_dict())
    assert model.features[0][0].weight.shape == (16, 3, 3, 3)
    assert isinstance(model.grayscale_repeat, RepeatChannels)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images), reference.eval()(images.repeat(1, 3, 1, 1)))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_grayscale_repeat_model_takes_a_dp_step() -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", norm="groupnorm", grayscale="repeat")
    images, labels = _batch(2)
    before = _trainable(model)

    # Execute
    assert ModuleValidator.validate(model, strict=True) == []
    history = _dp_step(model, images, labels)

    # Assert
    assert history == [(1.0, 1.0, 1)]
    assert _changed(before, model)


def test_unknown_grayscale_mode_is_refused() -> None:
    with pytest.raises(ModelError, match=r"grayscale 'rgb' is unknown; it must be one of \['fold', 'repeat'\]"):
        build_model("small_cnn", grayscale="rgb")


def test_grayscale_repeat_needs_one_or_three_channels() -> None:
    with pytest.raises(ModelError, match=r"'repeat' needs in_channels 1 or 3, got 2"):
        build_model("small_cnn", in_channels=2, grayscale="repeat")


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_trainable_blocks_leaves_last_block_and_head_trainable() -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model("densenet121", norm="groupnorm", trainable_blocks=1)
    images, labels = _batch(2)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = _trainable(model)

    # Execute
    assert ModuleValidator.validate(model, strict=True) == []
    _dp_step(model, images, labels)

    # Assert
    trainable = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"features.denseblock4", "features.norm5", "classifier.weight", "classifier.bias"}
    assert "features.conv0.weight" in frozen and "features.denseblock3.denselayer1.conv1.weight" in frozen
    assert _changed(before, model)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


@pytest.mark.parametrize(
    ("name", "norm", "blocks", "expected"),
    [
        ("resnet18", "groupnorm", 0, {"fc"}),
        ("alexnet", "groupnorm", 1, {"classifier.1", "classifier.4", "classifier.6"}),
        (
            "alexnet",
            "groupnorm",
            2,
            {"features.6", "features.8", "features.10", "classifier.1", "classifier.4", "classifier.6"},
        ),
        ("efficientnet_b0", "frozen_bn", 1, {"features.8.0", "classifier.1"}),
        ("inception_v3", "groupnorm", 1, {"Mixed_7c", "fc"}),
    ],
)
def test_trainable_blocks_per_architecture(name: str, norm: str, blocks: int, expected: set[str]) -> None:
    # Execute
    model = build_model(name, norm=norm, trainable_blocks=blocks)

    # Assert: every trainable parameter lies under an expected module, and each expected module has one
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(any(n.startswith(prefix + ".") for prefix in expected) for n in names)
    assert all(any(n.startswith(prefix + ".") for n in names) for prefix in expected)
    assert not any(p.requires_grad for m in model.modules() if isinstance(m, FrozenBatchNorm2d) for p in m.parameters())


def test_trainable_blocks_out_of_range_is_refused() -> None:
    with pytest.raises(ModelError, match=r"trainable_blocks=5 is out of range; it has 4 blocks, so use 0\.\.4"):
        build_model("resnet18", trainable_blocks=5)


def test_input_sizes() -> None:
    # Assert
    assert input_size("inception_v3") == 299
    assert input_size("resnet50") == 224
    assert input_size("small_cnn") == 64
    assert min_input_size("inception_v3") == 75
    assert min_input_size("alexnet") == 63
    with pytest.raises(ModelError, match=r"'lenet' is unknown"):
        input_size("lenet")


@pytest.mark.parametrize("name", ["alexnet", "inception_v3"])
def test_min_input_size_is_tight(name: str) -> None:
    # Prepare
    model = build_model(name).eval()
    side = min_input_size(name)

    # Execute / Assert
    with torch.no_grad():
        assert model(torch.zeros(1, 1, side, side)).shape == (1, 2)
        with pytest.raises(RuntimeError):
            model(torch.zeros(1, 1, side - 1, side - 1))


def test_densenet_torchvision_weights_load_with_frozen_bn(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "densenet121.pth"
    saved = _save_torchvision(path, "densenet121")
    # torchvision's published DenseNet files use legacy names ("norm.1" for "norm1"); write them that way
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in saved.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, path)

    # Execute
    model = build_model("densenet121", in_channels=1, norm="frozen_bn", weights_path=path)

    # Assert
    state = model.state_dict()
    torch.testing.assert_close(state["features.conv0.weight"], saved["features.conv0.weight"].sum(dim=1, keepdim=True))
    key = "features.denseblock2.denselayer3.norm2.running_var"
    torch.testing.assert_close(state[key], saved[key])
    key = "features.transition3.conv.weight"
    torch.testing.assert_close(state[key], saved[key])
    assert state["classifier.weight"].shape == (2, 1024)
    assert isinstance(model.features.norm5, FrozenBatchNorm2d) and not model.features.norm5.training


def test_efficientnet_torchvision_weights_load_into_groupnorm(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "efficientnet_b0.pth"
    saved = _save_torchvision(path, "efficientnet_b0")

    # Execute
    model = build_model("efficientnet_b0", norm="groupnorm", weights_path=path)

    # Assert: BN affine parameters become GN's, statistics dropped, head kept fresh
    state = model.state_dict()
    assert isinstance(model.features[0][1], nn.GroupNorm)
    torch.testing.assert_close(state["features.3.1.block.0.1.weight"], saved["features.3.1.block.0.1.weight"])
    assert "features.0.1.running_mean" not in state
    assert state["classifier.1.weight"].shape == (2, 1280)


def test_weights_of_another_new_architecture_name_the_file(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "mobilenet-large.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), path)

    # Execute / Assert
    with pytest.raises(ModelError, match=r"mobilenet-large\.pth' does not fit model 'mobilenet_v3_small'.*shape"):
        build_model("mobilenet_v3_small", weights_path=path)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("name", ["densenet121", "inception_v3", "mobilenet_v3_small", "efficientnet_b0", "alexnet"])
def test_per_sample_gradients_are_exact(name: str) -> None:
    # Prepare: no randomness in the forward pass (dropout, stochastic depth), so both copies compute the same function
    torch.manual_seed(0)
    dp_model = build_model(name, norm="groupnorm")
    plain_model = build_model(name, norm="groupnorm")
    plain_model.load_state_dict(dp_model.state_dict())
    for module in [*dp_model.modules(), *plain_model.modules()]:
        if isinstance(getattr(module, "p", None), float):
            module.p = 0.0
    images, labels = _batch(2, size=max(IMAGE, min_input_size(name)))

    # Execute: DP-SGD without noise or clipping must equal plain SGD on the mean loss
    _dp_step(dp_model, images, labels, noise=0.0, clip=1e6)
    optimizer = torch.optim.SGD(plain_model.parameters(), lr=0.1)
    nn.functional.cross_entropy(plain_model(images), labels).backward()
    optimizer.step()

    # Assert
    plain_state = plain_model.state_dict()
    for key, dp_value in dp_model.state_dict().items():
        torch.testing.assert_close(dp_value, plain_state[key], atol=1e-5, rtol=1e-4, msg=key)
