"""The model zoo: DP-compatible networks by name (`build_model`), with local pretrained weights and their cards."""

from common.models.adapters import GRAYSCALE_MODES
from common.models.norm import NORM_POLICIES, FrozenBatchNorm2d
from common.models.norm_layers import model_norm_state_names, norm_state_names
from common.models.registry import available_models, build_model, input_size, min_input_size
from common.models.weights import adapt_input_conv
from common.models.weights_card import CARD_FORMAT_VERSION, card_path, check_weights_card, read_card, write_card

__all__ = [
    "CARD_FORMAT_VERSION",
    "GRAYSCALE_MODES",
    "NORM_POLICIES",
    "FrozenBatchNorm2d",
    "adapt_input_conv",
    "available_models",
    "build_model",
    "card_path",
    "check_weights_card",
    "input_size",
    "min_input_size",
    "model_norm_state_names",
    "norm_state_names",
    "read_card",
    "write_card",
]
