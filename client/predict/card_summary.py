"""The key lines of a model card, shown before any prediction: what the model is, how it was trained, what for."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["FEDBN_WARNING", "LIMITATION_LINES", "NOT_A_DEVICE", "card_lines", "card_warnings", "is_fedbn"]

_NOT_A_DEVICE_TAIL = "not a medical device: never use it to diagnose, screen or treat anyone"
NOT_A_DEVICE = f"research software, {_NOT_A_DEVICE_TAIL}"
"""Shown whatever the card says, so the line is never missing from a prediction."""
FEDBN_WARNING = (
    "this model was trained with FedBN: each site kept its own normalization layers, and this file holds only the "
    "initial ones, so its scores are not those of the models the card's figures were measured on. Predict with a "
    "site's own model (its normalization layers) where there is one, and do not compare these scores to the card's"
)
"""Said loudly before any score of such a model, and kept in ``predictions.json``'s model section."""
LIMITATION_LINES = 3
"""How many of the card's ``limitations`` the console shows (the rest are in the card and its Markdown)."""


def _section(card: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = card.get(key)
    return value if isinstance(value, Mapping) else {}


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _auc(metrics: Mapping[str, Any]) -> str:
    auc, low, high = (_number(metrics.get(key)) for key in ("auc", "auc_ci_low", "auc_ci_high"))
    return f"{auc} (95% CI {low}-{high})" if "n/a" not in (low, high) else f"{auc} (no CI)"


def _sites(card: Mapping[str, Any]) -> str:
    sites = _section(card, "sites")
    if not sites:
        return "not recorded"
    parts = []
    for name, entry in sites.items():
        images = entry.get("images") if isinstance(entry, Mapping) else None
        train = images.get("train") if isinstance(images, Mapping) else None
        parts.append(f"{name} ({_number(train)} training images)" if train is not None else str(name))
    return f"{len(sites)}: " + ", ".join(parts)


def _privacy(card: Mapping[str, Any]) -> str:
    privacy = _section(card, "privacy")
    mode = privacy.get("mode")
    if not privacy:
        return "not recorded"
    if mode == "none":
        return "off (no differential privacy guarantee)"
    per_site = privacy.get("epsilon_per_site")
    epsilons = (
        ", ".join(f"{site} ε={_number(eps, 2)}" for site, eps in per_site.items())
        if isinstance(per_site, Mapping) and per_site
        else "n/a"
    )
    central = f", central ε={_number(privacy['epsilon_central'], 2)}" if "epsilon_central" in privacy else ""
    return f"{mode} DP, δ={privacy.get('delta', 'n/a')}: {epsilons}{central}"


def _training(card: Mapping[str, Any]) -> str:
    training = _section(card, "training")
    if not training:
        return "not recorded"
    rounds = training.get("final_round", training.get("rounds_planned"))
    planned = training.get("rounds_planned")
    text = f"{training.get('strategy', 'n/a')}, {_number(rounds)} of {_number(planned)} round(s)"
    return text if training.get("trained", True) else text + " (no round produced a model: initial weights)"


def _intended_use(text: str) -> str:
    """The card's intended use in one line: its first sentence, then :data:`NOT_A_DEVICE` (the whole text is in the
    card's Markdown)."""
    first = " ".join(text.split()).split(". ")[0].strip().rstrip(".")
    if not first:
        return NOT_A_DEVICE
    return f"{first}; {_NOT_A_DEVICE_TAIL if 'research' in first.lower() else NOT_A_DEVICE}"


def is_fedbn(card: Mapping[str, Any]) -> bool:
    """Whether the card's run trained with FedBN (``training.personalization.fedbn``, or its config's)."""
    recorded = _section(_section(card, "training"), "personalization").get("fedbn")
    configured = _section(_section(card, "config"), "personalization").get("fedbn")
    return bool(recorded or configured)


def card_warnings(card: Mapping[str, Any], *, hash_matches: bool = True) -> list[str]:
    """What must be said before any score of this model: a file that is not the card's, a FedBN model's own layers."""
    warnings = []
    if not hash_matches:
        warnings.append(
            "this model file is not the one its card describes (SHA-256 differs); --allow-hash-mismatch was given, so "
            "it is used anyway, and the card's description may not be of these weights"
        )
    if is_fedbn(card):
        warnings.append(FEDBN_WARNING)
    return warnings


def _limitations(card: Mapping[str, Any]) -> str:
    lines = [" ".join(str(line).split()) for line in card.get("limitations") or [] if str(line).strip()]
    if not lines:
        return "not recorded"
    shown = "\n".join(f"- {line}" for line in lines[:LIMITATION_LINES])
    rest = len(lines) - LIMITATION_LINES
    return f"{shown}\n(and {rest} more in the card)" if rest > 0 else shown


def card_lines(card: Mapping[str, Any], *, sha256: str = "", hash_matches: bool = True) -> list[tuple[str, str]]:
    """``(label, value)`` lines of ``card`` for the console: a reviewer's first look at a model before its scores.

    Architecture and input settings, the training sites, rounds and strategy, epsilon per site, the pooled AUC with
    its confidence interval, the intended use (always ending with :data:`NOT_A_DEVICE`), the first
    :data:`LIMITATION_LINES` of the card's limitations and the weights' hash; a FedBN model's personalization.
    Values the card lacks show as ``n/a`` or "not recorded" (a card from ``fedmammo pretrain`` has no sites).
    """
    model, data = _section(card, "model"), _section(card, "data")
    names = [str(n) for n in model.get("class_names") or []]
    spacing = data.get("pixel_spacing_mm")
    input_text = (
        f"{data.get('image_size', 'n/a')} x {data.get('image_size', 'n/a')} px, "
        f"{f'{spacing} mm pixels' if spacing else 'each file at its own pixel size'}, "
        f"intent {data.get('presentation_intent', 'n/a')}, {data.get('preprocess_version', 'n/a')}"
    )
    pooled_metrics = _section(_section(card, "pooled"), "metrics")
    weights = _section(card, "weights")
    recorded = str(weights.get("sha256", "n/a"))
    hash_text = (
        f"SHA-256 {recorded} (matches the file)"
        if hash_matches
        else (f"MISMATCH: the file's SHA-256 is {sha256}, the card records {recorded}")
    )
    personal = [("personalization", f"FedBN: {FEDBN_WARNING}")] if is_fedbn(card) else []
    return [
        ("model", f"{model.get('name', 'n/a')} ({model.get('norm', 'n/a')}), classes {', '.join(names) or 'n/a'}"),
        ("input", input_text),
        ("sites", _sites(card)),
        ("training", _training(card)),
        *personal,
        ("privacy", _privacy(card)),
        ("pooled AUC", _auc(pooled_metrics) if pooled_metrics else "not recorded"),
        ("intended use", _intended_use(str(card.get("intended_use") or ""))),
        ("limitations", _limitations(card)),
        ("weights", hash_text),
    ]
