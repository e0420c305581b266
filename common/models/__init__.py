"""The model zoo: DP-compatible networks by name (`build_model`), with local pretrained weights."""

from common.models.adapters import GRAYSCALE_MODES
from common.models.norm import NORM_POLICIES, FrozenBatchNorm2d
from common.models.registry import available_models, build_model, input_size, min_input_size
from common.models.weights import adapt_input_conv

__all__ = [
    "GRAYSCALE_MODES",
    "NORM_POLICIES",
    "FrozenBatchNorm2d",
    "adapt_input_conv",
    "available_models",
    "build_model",
    "input_size",
    "min_input_size",
]
