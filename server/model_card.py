"""The model card beside a federation's ``global_model.pt``: a weights card (JSON) and Markdown, from the run's record.

The JSON is a `common.models.weights_card` card, so a later run given the file as ``model.weights_path`` checks the
bytes (SHA-256), architecture and normalisation before loading it, and ``fedmammo predict`` reads the preprocessing
from it. It holds counts and figures only: site names as the sites chose them, never a patient identifier or a site's
file path (the sites' counts arrive as `common.wire.data_count_key` entries of their evaluation replies).
"""

from __future__ import annotations

import importlib.metadata
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import wire
from common.config import AppConfig
from common.data import PREPROCESS_VERSION
from common.data.image_pipeline import ImagePipeline
from common.models import card_path, read_card, write_card
from common.models.weights_card import atomic_write
from server.model_card_limits import INTENDED_USE, limitations
from server.model_card_markdown import render_markdown
from server.report.final_round import FINAL_ROUND, NOT_IN_FINAL_ROUND, ROUND
from server.report.json_safe import to_json_safe

__all__ = [
    "CARD_KIND",
    "LIBRARIES",
    "base_fields",
    "federation_card_fields",
    "markdown_path",
    "privacy_fields",
    "strategy_fields",
    "write_model_card",
]

CARD_KIND = "federated-global-model"
LIBRARIES = ("fedmammo", "torch", "torchvision", "opacus", "flwr", "pydicom", "numpy", "captum", "highdicom")
_FEDBN_NOTE = (
    "FedBN: each site's own normalization layers never left it; these weights hold the initial ones, and the sites' "
    "figures were measured with their own"
)
_SITE_KEYS = ("epsilon", ROUND, NOT_IN_FINAL_ROUND)
"""Keys of a summary entry that are about the site's record, not figures of the model."""


def markdown_path(weights_path: str | Path) -> Path:
    """``global_model.pt`` -> ``global_model.pt.md``, beside the JSON card (``global_model.pt.json``)."""
    path = Path(weights_path)
    return path.with_name(path.name + ".md")


def _versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def base_fields(config: AppConfig, kind: str) -> dict[str, Any]:
    """What every fedmammo model card holds: kind, time, architecture, input settings, config, use and libraries.

    ``data`` is what ``fedmammo predict`` must reproduce to score an image as training saw it; ``config`` is the whole
    run config, so ``common.config.load_config(card["config"])`` rebuilds it.
    """
    model = config.model
    initial = Path(model.weights_path).name if model.weights_path else None  # the file's name; never a folder
    return {
        "kind": kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "name": model.name,
            "norm": model.norm,
            "num_classes": model.num_classes,
            "class_names": list(model.class_labels),
            "in_channels": 1,
            "initial_weights": initial,
        },
        "data": {
            "image_size": config.data.image_size,
            "preprocess_version": PREPROCESS_VERSION,
            "pixel_spacing_mm": config.data.pixel_spacing_mm,
            "presentation_intent": config.data.presentation_intent,
            "preprocess_settings": ImagePipeline.from_config(config.data).settings(),
        },
        "config": config.to_nested(),
        "intended_use": INTENDED_USE,
        "libraries": _versions(),
    }


def strategy_fields(config: AppConfig) -> dict[str, Any]:
    """The training plan every model of the run shared: strategy and its parameters, local training, options."""
    strategy, training, personal = config.strategy, config.training, config.personalization
    return {
        "rounds_planned": strategy.num_rounds,
        "strategy": strategy.name,
        "strategy_parameters": {key: getattr(strategy, key) for key in strategy.PARAMETERS[strategy.name]},
        "fraction_train": strategy.fraction_train,
        "min_nodes": strategy.min_nodes,
        "local_epochs": training.local_epochs,
        "batch_size": training.batch_size,
        "learning_rate": training.learning_rate,
        "optimizer": training.optimizer,
        "class_weights": training.class_weights,
        "personalization": {
            "fedbn": personal.fedbn,
            "fine_tune_epochs": personal.fine_tune_epochs,
            **({"note": _FEDBN_NOTE} if personal.fedbn else {}),
        },
        "secure_aggregation": config.secure_aggregation.enabled,
    }


def privacy_fields(
    config: AppConfig, epsilons: Mapping[str, float | None], *, central: float | None, noise: Any
) -> dict[str, Any]:
    """The run's differential privacy: mode, noise, clipping, delta, accountant and the epsilon each site ended with."""
    privacy = config.privacy
    if privacy.mode == "none":
        return {"mode": "none", "guarantee": "none: trained without differential privacy", "epsilon_per_site": {}}
    return {
        "mode": privacy.mode,
        "guarantee": "per image, at each site (DP-SGD)" if privacy.local else "per site, over the whole federation",
        "noise_multiplier": noise,
        "target_epsilon": privacy.target_epsilon,
        "max_grad_norm": privacy.max_grad_norm,
        **(
            {"central_clipping": privacy.central_clipping, "update_clip_norm": privacy.update_clip_norm}
            if privacy.central
            else {}
        ),
        "delta": privacy.delta,
        "accountant": privacy.accountant,
        "epsilon_per_site": dict(epsilons),
        **({"epsilon_central": central} if privacy.central else {}),
    }


def _count(entry: Mapping[str, Any], key: str) -> int | None:
    value = entry.get(key)
    return (
        int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None
    )


def site_counts(entry: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """``images``, ``patients`` and ``labels`` (cases per class name) per split from a site's ``data_*`` entries;
    each None when the site sent no counts (a client from before they were sent)."""
    splits = wire.DATA_SPLITS
    images = {s: _count(entry, wire.data_count_key(s, wire.DATA_IMAGES)) for s in splits}
    if any(value is None for value in images.values()):
        return {"images": None, "patients": None, "labels": None}
    return {
        "images": images,
        "patients": {s: _count(entry, wire.data_count_key(s, wire.DATA_PATIENTS)) for s in splits},
        "labels": {
            s: {n: _count(entry, wire.data_label_key(s, i)) or 0 for i, n in enumerate(class_names)} for s in splits
        },
    }


def _figures(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in _SITE_KEYS and not str(k).startswith(wire.DATA_COUNT_PREFIX)}


def _summed(sites: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, Any] | None:
    """A count summed over the sites (split by split, class by class); None unless every site sent its counts."""
    parts = [entry[key] for entry in sites.values()]
    if not parts or any(part is None for part in parts):
        return None
    if key != "labels":
        return {s: sum(part[s] or 0 for part in parts) for s in wire.DATA_SPLITS}
    return {s: {n: sum(part[s][n] for part in parts) for n in parts[0][s]} for s in wire.DATA_SPLITS}


def federation_card_fields(
    config: AppConfig, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] = (), *, trained: bool = True
) -> dict[str, Any]:
    """The card of a federation's global model, from its config, ``summary.json`` and ``metrics.jsonl`` rows.

    Parameters
    ----------
    config : AppConfig
        The run's config.
    summary : Mapping
        `server.summary.build_summary`'s result (the sites' latest evaluation entries carry their data counts).
    rows : Sequence of Mapping
        The run's metrics rows: each site's noise multiplier when it derived its own (``privacy.target_epsilon``).
    trained : bool
        False when no round released a model, so the file holds the initial weights.
    """
    names = list(config.model.class_labels)
    local_dp, delta = config.privacy.local, config.privacy.delta if config.privacy.mode != "none" else None
    sites: dict[str, dict[str, Any]] = {}
    for site, entry in (summary.get("sites") or {}).items():
        sites[site] = {
            **site_counts(entry, names),
            "epsilon": entry.get("epsilon") if config.privacy.mode != "none" else None,
            "delta": delta,
            ROUND: entry.get(ROUND),
            **({NOT_IN_FINAL_ROUND: entry[NOT_IN_FINAL_ROUND]} if NOT_IN_FINAL_ROUND in entry else {}),
            "metrics": _figures(entry),
        }
    pooled_entry = summary.get("pooled") or {}
    pooled = {
        ROUND: pooled_entry.get(ROUND),
        **{key: _summed(sites, key) for key in ("images", "patients", "labels")},
        "epsilon": pooled_entry.get("epsilon") if config.privacy.mode != "none" else None,
        "metrics": _figures(pooled_entry),
    }
    noise: Any = (summary.get("privacy") or {}).get("noise_multiplier", config.privacy.noise_multiplier)
    derived = {str(r["site"]): r[wire.NOISE_MULTIPLIER] for r in rows if wire.NOISE_MULTIPLIER in r}
    if local_dp and config.privacy.target_epsilon > 0 and derived:
        noise = {site: value for site, value in derived.items() if site in sites}  # each site's latest
    epsilons = {site: entry["epsilon"] for site, entry in sites.items()}
    failures = [dict(f) for f in summary.get("failures") or []]
    training = {
        **strategy_fields(config),
        "final_round": summary.get(FINAL_ROUND),
        "trained": trained,
        "duration_s": summary.get("duration_s"),
    }
    fields = {
        **base_fields(config, CARD_KIND),
        "training": training,
        "sites": sites,
        "pooled": pooled,
        "privacy": privacy_fields(config, epsilons, central=pooled["epsilon"], noise=noise),
    }
    last = summary.get(FINAL_ROUND)
    fields["limitations"] = limitations(config, sites, failures, trained=trained, final_round=last, pooled=pooled)
    return to_json_safe(fields)


def write_model_card(weights_path: str | Path, fields: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``<weights>.json`` (`write_card`: the fields, format marker and the file's SHA-256) and ``<weights>.md``.

    The Markdown is rendered from the card as written, read back, so the two cannot disagree; the weights must be
    saved before (the hash is of the bytes on disk). Returns the two paths.
    """
    write_card(weights_path, to_json_safe(dict(fields)))
    card = read_card(weights_path)
    text = render_markdown(card or {})
    target = atomic_write(markdown_path(weights_path), lambda temp: temp.write_text(text, encoding="utf-8"))
    return card_path(weights_path), target
