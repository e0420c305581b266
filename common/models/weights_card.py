"""Weights cards: the JSON sidecar (``<weights>.json``) that says what a fedmammo weights file was trained for.

A ``.pth`` state dict does not say which architecture, normalisation or preprocessing it was trained with, and
`load_weights` accepts any file whose tensors fit. A file pretrained with GroupNorm loads key for key into a
``frozen_bn`` model of the same name (BatchNorm statistics aside), and one trained on 64 px images loads into a
512 px run: both train, and both quietly start from weights that mean something else. So what fedmammo writes
(`fedmammo pretrain`) gets a card, and a run that starts from such a file checks the card first: the bytes
must be the ones the card describes (SHA-256), the architecture and normalisation must be the run's, and a
different image size or preprocessing version is logged, as the weights still help there but less.

torchvision's own files have no card; they load as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from common.errors import ModelError

__all__ = [
    "CARD_FORMAT",
    "CARD_FORMAT_VERSION",
    "atomic_write",
    "card_path",
    "check_weights_card",
    "file_sha256",
    "read_card",
    "write_card",
]

logger = logging.getLogger(__name__)

CARD_FORMAT = "fedmammo-weights-card"
"""The ``format`` marker: a ``<weights>.json`` without it belongs to some other tool and is ignored."""
CARD_FORMAT_VERSION = 1
"""Bumped when a field the check relies on changes meaning; a newer card is refused rather than misread."""
CARD_SUFFIX = ".json"

_CHUNK = 1 << 20


def card_path(weights_path: str | Path) -> Path:
    """``resnet18.pth`` -> ``resnet18.pth.json``: the whole file name is kept, so two weights files in one
    folder that differ only in their suffix never share a card."""
    path = Path(weights_path).expanduser()
    return path.with_name(path.name + CARD_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks (a ResNet-101 state dict is 170 MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temp)`` on a temp file beside ``path``, then ``os.replace`` it onto ``path``.

    A reader (a federation starting from the weights) then sees the old file or the new one, never half of one,
    and an interrupted write leaves no debris. The file is made readable by all (0644; mkstemp's are
    owner-only), as weights are meant to be shared.
    """
    path = Path(path).expanduser()
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(handle)
    temp = Path(name)
    try:
        write(temp)
        with temp.open("rb") as written:
            os.fsync(written.fileno())  # the bytes are on disk before the name points at them
        temp.chmod(0o644)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def write_card(weights_path: str | Path, fields: Mapping[str, Any]) -> Path:
    """Write ``weights_path``'s card: ``fields`` plus the format marker and the file's current SHA-256 and size.

    The hash is taken here, from the file on disk, so the card describes exactly the bytes a run will load.
    Write the weights first and the card last: a crash in between leaves a file without a card (which loads
    as a plain state dict) rather than a card describing other bytes.

    Returns
    -------
    Path
        The card (``<weights_path>.json``).
    """
    path = Path(weights_path).expanduser()
    card = {
        "format": CARD_FORMAT,
        "format_version": CARD_FORMAT_VERSION,
        **fields,
        "weights": {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size},
    }
    target = card_path(path)
    text = json.dumps(card, indent=2, allow_nan=False) + "\n"
    atomic_write(target, lambda temp: temp.write_text(text, encoding="utf-8"))
    return target


def read_card(weights_path: str | Path) -> dict[str, Any] | None:
    """The card of ``weights_path``, or None when it has none (or a ``.json`` beside it is another tool's).

    Raises
    ------
    ModelError
        If the card cannot be read or parsed, is from a newer fedmammo, or lacks the fields the check needs:
        a damaged card cannot vouch for its weights (delete it to load the file unchecked).
    """
    path = card_path(weights_path)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"weights card '{path}' of model.weights_path could not be read ({type(exc).__name__}: {exc}); "
            "fix or delete the card (the weights then load unchecked)"
        ) from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        logger.warning("'%s' is not a fedmammo weights card (no format '%s'); ignored", path, CARD_FORMAT)
        return None
    version = card.get("format_version")
    if not isinstance(version, int) or version > CARD_FORMAT_VERSION:
        raise ModelError(
            f"weights card '{path}' has format_version {version!r}; this fedmammo reads up to {CARD_FORMAT_VERSION}. "
            "Upgrade fedmammo, or delete the card to load the weights unchecked"
        )
    missing = [
        key
        for key, section, field in (
            ("weights.sha256", "weights", "sha256"),
            ("model.name", "model", "name"),
            ("model.norm", "model", "norm"),
        )
        if not isinstance(card.get(section), dict) or not isinstance(card[section].get(field), str)
    ]
    if missing:
        raise ModelError(f"weights card '{path}' lacks {', '.join(missing)}; fix or delete the card")
    return card


def check_weights_card(
    weights_path: str | Path,
    *,
    model_name: str,
    norm: str,
    image_size: int | None = None,
) -> dict[str, Any] | None:
    """Check ``weights_path`` against its card before it is loaded; no card means nothing to check.

    Refused (the weights would load, or nearly, but mean something else): bytes whose SHA-256 is not the
    card's, another ``model.name``, another ``model.norm``. Logged as a warning (the weights still transfer,
    less well): another ``data.image_size`` (when the caller knows it) or another preprocessing version.

    Parameters
    ----------
    weights_path : str or Path
        ``model.weights_path``.
    model_name, norm : str
        The run's ``model.name`` and ``model.norm``.
    image_size : int or None
        The run's ``data.image_size``; None skips that comparison.

    Returns
    -------
    dict or None
        The card, or None when the file has none.

    Raises
    ------
    ModelError
        On a hash, model name or norm mismatch, or a damaged card (`read_card`); the message names
        ``model.weights_path``, the card's value and the run's.
    """
    path = Path(weights_path).expanduser()
    card = read_card(path)
    if card is None:
        return None
    where = card_path(path)
    if not path.is_file():
        return card  # load_weights reports the missing file, with its fix
    expected = str(card["weights"]["sha256"]).lower()
    actual = file_sha256(path)
    if actual != expected:
        raise ModelError(
            f"weights file '{path}' (model.weights_path) does not match its card '{where}': SHA-256 {actual}, the "
            f"card records {expected}. The file was changed or replaced after it was written; restore it, "
            "re-run `fedmammo pretrain --force`, or delete the card if the new file is intended"
        )
    for key, value in (("name", model_name), ("norm", norm)):
        recorded = card["model"][key]
        if recorded != value:
            raise ModelError(
                f"model.weights_path '{path}' holds weights for model.{key}={recorded} (its card '{where}'), "
                f"but this run has model.{key}={value}; run with model.{key}={recorded}, or give weights made "
                f"for model.{key}={value}"
            )
    _warn_on_data_mismatch(card, path, image_size)
    recorded_classes = card["model"].get("num_classes")
    logger.info(
        "weights card '%s' checked: %s, %s, %s class(es), SHA-256 matches",
        where,
        model_name,
        norm,
        recorded_classes,
    )
    return card


def _warn_on_data_mismatch(card: Mapping[str, Any], path: Path, image_size: int | None) -> None:
    from common.data import PREPROCESS_VERSION  # lazily: the model zoo does not otherwise need the data path

    data = card.get("data") if isinstance(card.get("data"), Mapping) else {}
    recorded_size = data.get("image_size")
    if image_size is not None and recorded_size is not None and recorded_size != image_size:
        logger.warning(
            "model.weights_path '%s' was trained at data.image_size=%s, this run uses %s: the weights still load, "
            "but features learnt at one scale transfer only partly to another",
            path,
            recorded_size,
            image_size,
        )
    recorded_version = data.get("preprocess_version")
    if recorded_version is not None and recorded_version != PREPROCESS_VERSION:
        logger.warning(
            "model.weights_path '%s' was trained on images preprocessed by %s, this fedmammo preprocesses with %s: "
            "the weights still load, but they saw differently prepared images",
            path,
            recorded_version,
            PREPROCESS_VERSION,
        )
