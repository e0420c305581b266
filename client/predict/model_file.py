"""Load a model file for prediction: its card, the hash check, the preprocessing it was trained with, the weights."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.config import AppConfig, load_config
from common.data.image_pipeline import ImagePipeline
from common.data.preprocessing import PREPROCESS_VERSION
from common.errors import ConfigError, ModelError
from common.models import build_model, card_path, read_card

__all__ = ["OPACUS_PREFIX", "PredictModel", "load_predict_model"]

logger = logging.getLogger(__name__)

OPACUS_PREFIX = "_module."
"""Opacus' ``GradSampleModule`` prefixes every state-dict key with this; a file saved from the wrapper has them."""

_ABSENT = "(absent)"
"""Shown for a preprocessing setting one side does not record."""

_NO_CARD_HELP = (
    "A card is the JSON file fedmammo writes beside every model it saves (global_model.pt -> global_model.pt.json, "
    "by the server at the end of a federation, or by `fedmammo pretrain`): it records the architecture, the "
    "preprocessing the model was trained with and the weights' SHA-256, without which predict cannot prepare an "
    "image as training did. Use the global_model.pt of a run folder together with its global_model.pt.json"
)


@dataclass(frozen=True)
class PredictModel:
    """A model ready to score images, with everything its card says about how.

    Attributes
    ----------
    path : Path
        The weights file.
    card : dict
        Its card (`common.models.weights_card`), as read.
    config : AppConfig
        The run config recorded in the card (defaults where it records none).
    model : nn.Module
        The network in eval mode, holding the file's weights.
    pipeline : ImagePipeline
        The preprocessing the model was trained with (image size, pixel spacing, presentation intent).
    class_names : tuple of str
        One display name per class index; the last is the headline class.
    sha256 : str
        The file's SHA-256 as computed now.
    hash_matches : bool
        Whether it is the one the card records (False only with ``allow_hash_mismatch``).
    """

    path: Path
    card: dict[str, Any]
    config: AppConfig
    model: nn.Module
    pipeline: ImagePipeline
    class_names: tuple[str, ...]
    sha256: str
    hash_matches: bool

    @property
    def headline_class(self) -> int:
        """The class index whose score and heatmap are shown: the last (malignant in every task of the project)."""
        return len(self.class_names) - 1


def _section(card: Mapping[str, Any], key: str, where: Path) -> Mapping[str, Any]:
    value = card.get(key)
    if not isinstance(value, Mapping):
        raise ModelError(
            f"model card '{where}' has no '{key}' section; it was not written by this fedmammo. {_NO_CARD_HELP}"
        )
    return value


def _read_bytes(path: Path) -> bytes:
    """The whole file, read once: the bytes hashed are the bytes loaded (the file may be replaced in between)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file '{path}' could not be read ({exc})") from exc


def _checked_hash(path: Path, data: bytes, card: Mapping[str, Any], allow_mismatch: bool) -> tuple[str, bool]:
    expected = str(card["weights"]["sha256"]).lower()
    actual = hashlib.sha256(data).hexdigest()
    if actual == expected:
        return actual, True
    where = card_path(path)
    if not allow_mismatch:
        raise ModelError(
            f"model file '{path}' does not match its card '{where}': the file's SHA-256 is {actual}, the card records "
            f"{expected}. The file was changed or replaced after the card was written, so the card's description "
            "(architecture, preprocessing, training sites, results) may not be of these weights. Restore the file the "
            "card describes, or pass --allow-hash-mismatch to predict with it anyway"
        )
    logger.warning(
        "model file '%s' does NOT match its card '%s' (SHA-256 %s, card %s); predicting anyway as "
        "--allow-hash-mismatch asks: the card's description may not be of these weights",
        path,
        where,
        actual,
        expected,
    )
    return actual, False


def _weights(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The state dict in ``data`` (the file's bytes, as hashed), Opacus' ``_module.`` prefixes stripped."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it
        raise ModelError(
            f"model file '{path}' could not be read as a PyTorch state dict ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model file '{path}' holds a {type(state).__name__}, not a state dict of tensors")
    return {(k[len(OPACUS_PREFIX) :] if k.startswith(OPACUS_PREFIX) else k): v for k, v in state.items()}


def _check_settings(pipeline: ImagePipeline, data: Mapping[str, Any], where: Path) -> None:
    """Refuse a card whose recorded ``preprocess_settings`` are not what ``pipeline`` does here, naming the keys.

    The settings (`ImagePipeline.settings`) spell out each step (resampling, orientation, threshold, crop, padding):
    a fedmammo that changed one without a new preprocessing version would otherwise prepare images unlike training's.
    A card without them (written before they were recorded) is checked by its version alone.
    """
    recorded = data.get("preprocess_settings")
    if not isinstance(recorded, Mapping):
        return
    ours = pipeline.settings()
    differing = sorted(key for key in {*recorded, *ours} if recorded.get(key, _ABSENT) != ours.get(key, _ABSENT))
    if differing:
        details = "; ".join(
            f"{key}: card {recorded.get(key, _ABSENT)!r}, here {ours.get(key, _ABSENT)!r}" for key in differing
        )
        raise ModelError(
            f"model card '{where}' records preprocessing settings this fedmammo does not reproduce ({details}), so its "
            "images would not look like the training images. Use the fedmammo version that trained the model, or "
            "retrain it with this one"
        )


def load_predict_model(path: str | Path, *, allow_hash_mismatch: bool = False, device: str = "cpu") -> PredictModel:
    """Read ``path`` and its card, check one against the other, and rebuild the model and its preprocessing.

    The card decides everything: the architecture (``model.name``, ``norm``, ``num_classes``, ``class_names``) and the
    preprocessing (``data.image_size``, ``pixel_spacing_mm``, ``presentation_intent``), so an image is prepared exactly
    as training prepared it. The model is built as ``client.task.model_with`` builds it from a state dict; keys
    saved from an Opacus wrapper (``_module.`` prefixed) load too.

    Parameters
    ----------
    path : str or Path
        The weights file (``global_model.pt``); its card is ``<path>.json``.
    allow_hash_mismatch : bool
        Predict with a file whose SHA-256 is not its card's (logged as a warning) instead of refusing it.
    device : str
        Where the model runs: ``cpu``, ``cuda`` or ``auto`` (CUDA when this machine has it).

    Raises
    ------
    ModelError
        If the file or its card is missing or damaged, the hash differs (unless allowed), the card's preprocessing
        version or settings are not this fedmammo's, or the weights do not fit the card's architecture.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"model file '{path}' does not exist or is not a file; give a run folder's global_model.pt")
    card = read_card(path)
    if card is None:
        raise ModelError(f"model file '{path}' has no card: '{card_path(path)}' is missing. {_NO_CARD_HELP}")
    where = card_path(path)
    data_bytes = _read_bytes(path)
    sha256, matches = _checked_hash(path, data_bytes, card, allow_hash_mismatch)  # is it the file the card describes?
    model_section, data = _section(card, "model", where), _section(card, "data", where)
    version = data.get("preprocess_version")
    if version != PREPROCESS_VERSION:
        raise ModelError(
            f"model card '{where}' says the model was trained on images preprocessed by {version!r}; this fedmammo "
            f"preprocesses with {PREPROCESS_VERSION!r}, so its images would not look like the training images. Use "
            "the fedmammo version that trained the model, or retrain it with this one"
        )
    try:
        config = load_config(card.get("config") or {})
    except ConfigError as exc:
        raise ModelError(f"model card '{where}': its 'config' section is not a valid run config ({exc})") from exc
    try:
        num_classes = int(model_section.get("num_classes", config.model.num_classes))
        model = build_model(
            str(model_section["name"]), num_classes=num_classes, in_channels=1, norm=str(model_section["norm"])
        )
        model.load_state_dict(_weights(path, data_bytes))
        pipeline = ImagePipeline(
            image_size=int(data["image_size"]),
            pixel_spacing_mm=float(data.get("pixel_spacing_mm", 0.0) or 0.0),
            presentation_intent=str(data.get("presentation_intent", "any") or "any"),
        )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"model file '{path}' does not fit its card '{where}' ({type(exc).__name__}: {exc})") from exc
    _check_settings(pipeline, data, where)
    names = tuple(str(n) for n in model_section.get("class_names") or config.model.class_labels)
    if len(names) != num_classes:
        raise ModelError(f"model card '{where}' names {len(names)} classes for a {num_classes}-class model")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return PredictModel(path, dict(card), config, model.to(device).eval(), pipeline, names, sha256, matches)
