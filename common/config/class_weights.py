"""Read ``training.class_weights``: ``none``, ``balanced`` or one positive weight per class, refused by name."""

from __future__ import annotations

import math

from common.errors import ConfigError

__all__ = ["CLASS_WEIGHTS_KEY", "CLASS_WEIGHT_MODES", "explicit_class_weights"]

CLASS_WEIGHTS_KEY = "training.class_weights"
"""The config key, named in every error about it."""

CLASS_WEIGHT_MODES: tuple[str, ...] = ("none", "balanced")
"""The named settings: plain cross-entropy, or weights from each site's own training-split label counts."""


def _refuse(spec: str, rule: str) -> ConfigError:
    return ConfigError(f"config key '{CLASS_WEIGHTS_KEY}' = {spec!r} is invalid: it must be {rule}")


def explicit_class_weights(spec: str, num_classes: int | None) -> tuple[float, ...] | None:
    """The weights an explicit ``training.class_weights`` list gives; None for ``none`` and ``balanced``.

    A comma-separated string (``"1,2,4"``: the weight of class 0, 1, 2), not a list, because Flower's run config
    holds only scalars. ``balanced`` is resolved later, by each site from its own labels, so it has no weights
    here.

    Parameters
    ----------
    spec : str
        The config value.
    num_classes : int or None
        ``model.num_classes``, which an explicit list must match; None checks only the numbers (a
        `TrainingConfig` on its own does not know the model).

    Returns
    -------
    tuple of float or None
        One finite, positive weight per class index, or None for a named mode.

    Raises
    ------
    ConfigError
        Naming ``training.class_weights``, its value and the rule: an unknown word, a part that is not a
        number, a weight that is not finite or not > 0 (a zero weight would silently drop a class from
        training), or a count other than ``model.num_classes``.
    """
    text = spec.strip()
    if text in CLASS_WEIGHT_MODES:
        return None
    modes = " or ".join(repr(mode) for mode in CLASS_WEIGHT_MODES)
    parts = [part.strip() for part in text.split(",")]
    weights: list[float] = []
    for part in parts:
        try:
            weight = float(part)
        except ValueError:
            raise _refuse(
                spec, f"{modes} or comma-separated numbers, one weight per class ({part!r} is not a number)"
            ) from None
        if not math.isfinite(weight) or weight <= 0:
            raise _refuse(spec, f"a list of finite weights > 0 ({part!r} is not)")
        weights.append(weight)
    if num_classes is not None and len(weights) != num_classes:
        raise _refuse(
            spec,
            f"{num_classes} comma-separated weights, one per class index 0..{num_classes - 1} (model.num_classes = "
            f"{num_classes}), or {modes}",
        )
    return tuple(weights)
