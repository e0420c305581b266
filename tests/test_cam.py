"""Grad-CAM for every model of the zoo: the layer, the maps' shape and range, where they point, and the hot box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import ModelError
from common.explain import (
    cam_layer,
    class_activation_maps,
    headline_region,
    peak_location,
    scores_and_maps,
    suspicious_box,
)
from common.models import available_models, build_model, min_input_size
from tests.cam_models import bright_detector

EXPECTED_LAYERS = {
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "resnet101": "layer4",
    "inception_v3": "Mixed_7c",
    "densenet121": "features",
    "vgg16": "features.29",
    "vgg19": "features.35",
    "alexnet": "features.11",
    "small_cnn": "features.10",
    "mobilenet_v3_small": "features.12",
    "mobilenet_v3_large": "features.16",
    "efficientnet_b0": "features.8",
}


def test_every_registered_model_has_an_expected_cam_layer() -> None:
    assert sorted(EXPECTED_LAYERS) == available_models()


def test_an_unknown_architecture_is_refused_with_the_known_ones_named() -> None:
    with pytest.raises(ModelError, match=r"no class-activation layer is known for a Sequential model.*ResNet"):
        cam_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))


NO_NORM_LAYERS = ("alexnet", "vgg16", "vgg19")
"""Architectures without norm layers: 'frozen_bn' builds the same model as 'groupnorm'."""


@pytest.mark.parametrize(
    ("name", "norm"),
    [(name, "groupnorm") for name in available_models()]
    + [(name, "frozen_bn") for name in available_models() if name not in NO_NORM_LAYERS],
)
def test_every_architecture_has_its_last_feature_layer_and_per_image_normalised_maps(name: str, norm: str) -> None:
    # Prepare: a model in training mode with some frozen parameters, as a fine-tuning run leaves it
    torch.manual_seed(0)
    model = build_model(name, norm=norm, num_classes=3)
    layer_names = {module: dotted for dotted, module in model.named_modules()}
    first = next(model.parameters())
    first.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    size = max(64, min_input_size(name))
    images = torch.rand(2, 1, size, size)
    # Execute
    probabilities, maps = scores_and_maps(model, images)
    # Assert
    assert layer_names[cam_layer(model)] == EXPECTED_LAYERS[name]
    assert maps.shape == (2, size, size) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and all(m.max() in (0.0, pytest.approx(1.0)) for m in maps)
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("spot", [(10, 50), (44, 12), (30, 30)])
def test_the_map_of_a_brightness_detector_peaks_on_the_bright_spot(spot: tuple[int, int]) -> None:
    # Prepare: dim noise with one bright 5x5 square (off the diagonal, so a transposed map would miss it)
    generator = torch.Generator().manual_seed(1)
    images = 0.1 * torch.rand(1, 1, 64, 64, generator=generator)
    images[0, 0, spot[0] - 2 : spot[0] + 3, spot[1] - 2 : spot[1] + 3] = 1.0
    # Execute
    maps = class_activation_maps(bright_detector(), images)
    # Assert: the peak within one 8-pixel cell of the layer (64 / 8) of the spot
    row, col = peak_location(maps[0])
    assert abs(row - spot[0]) <= 8 and abs(col - spot[1]) <= 8
    r0, c0, r1, c1 = suspicious_box(maps[0])
    assert r0 <= spot[0] < r1 and c0 <= spot[1] < c1


def test_a_class_the_image_speaks_against_has_an_all_zero_map_and_an_unknown_class_is_refused() -> None:
    images = torch.zeros(1, 1, 64, 64)
    images[0, 0, 20:25, 40:45] = 1.0
    maps = class_activation_maps(bright_detector(), images, target_class=0)
    assert maps.shape == (1, 64, 64) and maps.max() == 0.0
    with pytest.raises(ModelError, match="target_class 2 is no class of this 2-class model"):
        class_activation_maps(bright_detector(), images, target_class=2)


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_a_model_wrapped_by_opacus_after_a_dp_step_gives_the_same_maps_and_keeps_no_gradients() -> None:
    # Prepare: one DP-SGD step through Opacus' GradSampleModule, then gradients cleared as the optimizer does
    from opacus import GradSampleModule

    torch.manual_seed(2)
    model = build_model("small_cnn", norm="groupnorm")
    images = torch.rand(4, 1, 32, 32)
    expected = class_activation_maps(model, images[:2])  # no optimizer step follows: the weights stay these
    wrapped = GradSampleModule(model)
    nn.functional.cross_entropy(wrapped(images), torch.tensor([0, 1, 0, 1])).backward()
    for p in wrapped.parameters():
        p.grad, p.grad_sample = None, None
    # Execute
    maps = class_activation_maps(wrapped, images[:2])
    # Assert
    assert np.allclose(maps, expected, atol=1e-6) and wrapped.hooks_enabled
    assert cam_layer(wrapped) is model.features[10]
    assert all(p.grad is None and getattr(p, "grad_sample", None) is None for p in wrapped.parameters())


def test_the_suspicious_box_holds_the_peak_region_only() -> None:
    # Prepare: a strong blob and a weaker, separate one
    heat = np.zeros((40, 50), dtype=np.float32)
    heat[5:10, 30:38] = 1.0
    heat[7, 33] = 1.5
    heat[25:35, 5:15] = 0.8
    # Execute / Assert
    assert peak_location(heat) == (7, 33)
    assert suspicious_box(heat) == (5, 30, 10, 38)
    assert suspicious_box(heat, fraction=0.5) == (5, 30, 10, 38)
    assert suspicious_box(heat, fraction=0.9) == (7, 33, 8, 34)
    assert suspicious_box(np.zeros((4, 6))) == (0, 0, 4, 6)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        suspicious_box(heat, fraction=0)
    with pytest.raises(ValueError, match="non-empty 2-D array"):
        peak_location(np.zeros((2, 2, 2)))


def test_headline_region_ignores_the_padding_and_has_no_box_for_a_flat_map() -> None:
    # Prepare: the map's hottest pixel lies in the padding (rows 0-3), a warmer spot inside the content
    heatmap = np.zeros((16, 16), dtype=np.float32)
    heatmap[1, 1] = 1.0
    heatmap[9:11, 5:7] = 0.5
    # Execute
    region = headline_region(heatmap, content=(4, 0, 16, 16))
    flat = headline_region(np.zeros((16, 16), dtype=np.float32), content=(4, 0, 16, 16))
    # Assert: the peak and box are the content's spot, renormalised; a flat map points nowhere
    assert not region.flat and region.peak == (9, 5) and region.box == (9, 5, 11, 7)
    assert region.cam.max() == pytest.approx(1.0) and region.cam[1, 1] == 0.0
    assert flat.flat and flat.peak is None and flat.box is None and not flat.cam.any()
