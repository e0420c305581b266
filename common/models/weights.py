"""Load a torchvision-format state dict into a registry model, adapting what legitimately differs."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from common.errors import ModelError

__all__ = ["adapt_input_conv", "load_weights"]

logger = logging.getLogger(__name__)

_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
_SHOWN = 5
# torchvision's published DenseNet files predate a renaming ("norm.1" -> "norm1"); torchvision remaps on load.
_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def adapt_input_conv(weight: Tensor, in_channels: int) -> Tensor:
    """Fit a first-conv kernel trained on RGB to ``in_channels`` inputs.

    A grey image fed to an RGB network is the same image on all three channels, so summing the RGB
    kernels gives a 1-channel kernel with exactly the pretrained response. Other counts tile the RGB
    kernels and rescale by ``3 / in_channels`` (as timm's ``adapt_input_conv`` does).

    Parameters
    ----------
    weight : Tensor
        Kernel of shape (out, c, kh, kw).
    in_channels : int
        Input channels of the model.

    Returns
    -------
    Tensor
        Kernel of shape (out, in_channels, kh, kw), or ``weight`` unchanged when it already fits or is
        not a 3-channel kernel (the caller then reports the shape mismatch).
    """
    channels = weight.shape[1]
    if channels == in_channels or channels != 3:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_channels / 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    if not path.is_file():
        raise ModelError(
            f"weights file '{path}' does not exist; fix model.weights_path (a torchvision-format .pth state "
            "dict on this machine, nothing is downloaded) or leave it empty to start from random weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise ModelError(f"weights file '{path}' could not be read as a PyTorch state dict: {exc}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelError(
            f"weights file '{path}' holds a {type(state).__name__}, not a state dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    return state


def _first(items: list[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def load_weights(model: nn.Module, path: str | Path, *, name: str, head: str | None = None) -> None:
    """Load ``path`` into ``model`` in place, refusing weights of another architecture.

    Adapts exactly four known differences and nothing else: torchvision's legacy DenseNet key names
    (``denselayer1.norm.1.weight``) are renamed as torchvision itself does; the first conv is folded to the model's
    input channels (`adapt_input_conv`); a classification head whose shape differs (ImageNet's 1000
    classes) is left at its fresh initialisation; BatchNorm running statistics are dropped where the
    model uses GroupNorm (BN weight/bias become the GN affine weight/bias under the same keys).

    Parameters
    ----------
    model : nn.Module
        A freshly built registry model.
    path : str or Path
        A torchvision-format state dict, or a checkpoint of this very model.
    name : str
        Registry name, used in error messages.
    head : str or None
        Dotted module name of the classification head (``"fc"``, ``"classifier.6"``...); its weight and bias
        may differ in shape. ``None`` means the last ``nn.Linear`` in the model.

    Raises
    ------
    ModelError
        If the file is missing or unreadable, or any other key is missing, unexpected or of the wrong shape;
        the message names the file and the first offending keys.
    """
    path = Path(path).expanduser()
    source = {_DENSENET_LEGACY_KEY.sub(r"\1\2", key): value for key, value in _read_state_dict(path).items()}
    target = model.state_dict()
    modules = dict(model.named_modules())
    first_conv = next((n for n, m in modules.items() if isinstance(m, nn.Conv2d)), None)
    if head is None:
        head = next((n for n, m in reversed(modules.items()) if isinstance(m, nn.Linear)), None)

    adapted: dict[str, Tensor] = {}
    unexpected: list[str] = []
    mismatched: list[str] = []
    for key, value in source.items():
        owner, _, leaf = key.rpartition(".")
        if key not in target:
            if leaf in _BN_STATS and isinstance(modules.get(owner), nn.GroupNorm):
                continue
            unexpected.append(key)
            continue
        if owner == first_conv and leaf == "weight":
            value = adapt_input_conv(value, target[key].shape[1])
        if value.shape != target[key].shape:
            if owner == head:
                logger.info("weights '%s': head '%s' has shape %s, kept freshly initialised", path, key, value.shape)
                continue
            mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(target[key].shape)}")
            continue
        adapted[key] = value
    missing = [
        k for k in target if k not in source and k.rpartition(".")[0] != head and not k.endswith("num_batches_tracked")
    ]
    if unexpected or missing or mismatched:
        problems = [
            f"{label} ({len(keys)}): {_first(keys)}"
            for label, keys in (
                ("unexpected keys", unexpected),
                ("missing keys", missing),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        raise ModelError(
            f"weights file '{path}' does not fit model '{name}': {'; '.join(problems)}. "
            f"Fix: give weights of the same architecture (torchvision '{name}' or a fedmammo checkpoint of it)"
        )
    model.load_state_dict(adapted, strict=False)
    logger.info("loaded %d tensors from '%s' into '%s'", len(adapted), path, name)
