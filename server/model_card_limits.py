"""A model card's intended use and known limits, in plain sentences, derived from the run where the run says them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from common.config import AppConfig
from server.report.final_round import NOT_IN_FINAL_ROUND

__all__ = ["INTENDED_USE", "SMALL_TEST_IMAGES", "SMALL_TEST_POSITIVES", "WIDE_CI", "limitations"]

INTENDED_USE = (
    "Research software for studying federated learning on mammograms: how hospitals can train a breast-cancer "
    "classifier together without sharing images, and at what privacy cost. It is not a medical device, has not been "
    "cleared or approved by any regulator, and must not be used to diagnose, screen, triage or treat anyone, or to "
    "inform any decision about a patient's care."
)
SMALL_TEST_IMAGES = 100
"""A site test split with fewer images is called small: its figures move by several points with a few cases."""
SMALL_TEST_POSITIVES = 20
"""Fewer positive (last-class) test cases than this is called few: sensitivity then moves by 5 points per case."""
WIDE_CI = 0.2
"""An AUC 95% confidence interval at least this wide is called wide."""

_FIXED = (
    "A score is the model's output for one image, not a diagnosis and not a calibrated probability of cancer: the "
    "share of cancers in these test sets differs from any screening population.",
    "The figures are from these sites' own test splits; performance at another hospital, on another scanner or "
    "vendor, or in another population is unknown until measured there.",
    "Unless a figure says otherwise it is per image, not per breast or per exam.",
)


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _test_sizes(sites: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[int, int | None]]:
    """Each evaluated site's test images and positives (the headline class), from its figures."""
    sizes = {}
    for site, entry in sites.items():
        metrics = entry.get("metrics") or {}
        images = _number(metrics.get("num_examples"))
        if images is not None and images > 0:
            positives = _number(metrics.get("num_positives"))
            sizes[site] = (int(images), int(positives) if positives is not None else None)
    return sizes


def _smallest_test(sites: Mapping[str, Mapping[str, Any]], positive: str) -> list[str]:
    sizes = _test_sizes(sites)
    if not sizes:
        return ["No site's test split scored the final model: the card has no figures to judge it by."]
    site, (images, positives) = min(sizes.items(), key=lambda item: item[1][0])
    cases = f" ({positives} {positive})" if positives is not None else ""
    small = images < SMALL_TEST_IMAGES or (positives is not None and positives < SMALL_TEST_POSITIVES)
    verdict = (
        "a test set this small gives imprecise figures: a few cases more or less move sensitivity and specificity "
        "by several points"
        if small
        else "the other sites' are larger"
    )
    return [f"The smallest test set is {site}'s with {images} image(s){cases}; {verdict}."]


def _intervals(entries: Mapping[str, Mapping[str, Any]], positive: str) -> list[str]:
    """Where the AUC's interval is wide, and where the AUC is undefined (a test split with one class only)."""
    wide, undefined = [], []
    for site, entry in entries.items():
        metrics = entry.get("metrics") or {}
        low, high = _number(metrics.get("auc_ci_low")), _number(metrics.get("auc_ci_high"))
        if low is not None and high is not None and high - low >= WIDE_CI:
            wide.append(f"{site} ({low:.2f}-{high:.2f})")
        elif metrics and _number(metrics.get("auc")) is None:
            undefined.append(site)
    lines = [f"The AUC's 95% confidence interval is wide at {', '.join(wide)}: the true AUC there is uncertain."]
    lines += [f"The AUC is undefined at {', '.join(undefined)}: the test split lacks {positive} or other cases."]
    return [line for line, names in zip(lines, (wide, undefined), strict=True) if names]


def _failures(failures: Sequence[Mapping[str, Any]], sites: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Sites that declined or failed rounds, rounds skipped for too few sites, and sites behind the final round."""
    lines = []
    declined = Counter(str(f.get("site") or "a node") for f in failures if f.get("declined"))
    failed = Counter(str(f.get("site") or "a node") for f in failures if not f.get("declined") and not f.get("skipped"))
    skipped = sorted({f.get("round") for f in failures if f.get("skipped")}, key=str)
    if declined:
        who = ", ".join(f"{site} ({n} time(s))" for site, n in sorted(declined.items()))
        lines.append(f"Sites declined rounds once their privacy ceiling was reached: {who}; they trained less.")
    if failed:
        who = ", ".join(f"{site} ({n} reply(ies))" for site, n in sorted(failed.items()))
        lines.append(f"Sites failed to answer in some rounds: {who}; the model saw less of their data.")
    if skipped:
        lines.append(f"Rounds {', '.join(str(r) for r in skipped)} were skipped: too few sites answered.")
    behind = [f"{site}: {entry[NOT_IN_FINAL_ROUND]}" for site, entry in sites.items() if NOT_IN_FINAL_ROUND in entry]
    if behind:
        lines.append(f"Not every site's figures are of the final model ({'; '.join(behind)}).")
    return lines


def _training(config: AppConfig, *, trained: bool, final_round: Any) -> list[str]:
    lines = []
    if not trained:
        lines.append("No round produced a model: this file holds the initial weights, never trained on any site.")
    elif isinstance(final_round, int) and final_round < config.strategy.num_rounds:
        lines.append(f"The last evaluation was of round {final_round} of {config.strategy.num_rounds} planned.")
    if config.privacy.mode == "none":
        lines.append("Trained without differential privacy: nothing bounds what the weights reveal about a patient.")
    elif config.privacy.central:
        lines.append(
            "Central differential privacy: epsilon bounds what the model reveals about a whole site, but the server "
            "saw each site's un-noised update."
        )
    if config.personalization.fedbn:
        lines.append(
            "Trained with FedBN: each site's own normalization layers stayed at the site, and the sites' figures were "
            "measured with them; this file holds the initial normalization layers, so alone it scores differently."
        )
    if config.personalization.fine_tune_epochs > 0:
        lines.append("The ft_ figures are of each site's fine-tuned copy, which never left the site, not of this file.")
    return lines


def limitations(
    config: AppConfig,
    sites: Mapping[str, Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]] = (),
    *,
    trained: bool = True,
    final_round: Any = None,
    pooled: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> list[str]:
    """Known limits of a model, as plain sentences: the run's own (data, test sizes, failures, privacy) first.

    Parameters
    ----------
    config : AppConfig
        The run's config (synthetic data, image size, privacy mode, personalization).
    sites : Mapping
        The card's ``sites``: per site its ``metrics`` (``num_examples``, ``num_positives``, ``auc_ci_*``) and,
        when it is not from the final round, why.
    failures : Sequence of Mapping
        Failed, declined and skipped rounds (``summary.json``'s ``failures``, or a study model's).
    trained : bool
        False when no round released a model.
    final_round : int or None
        The round the final figures are from.
    pooled : Mapping or None
        The card's ``pooled`` entry (its ``metrics``), checked for a wide interval as the sites are.
    notes : Sequence of str
        More sentences from the caller (a study model trained on one site only, ...).
    """
    size = config.data.image_size
    lines = []
    if config.federation.synthetic:
        lines.append(
            "Trained and tested on synthetic phantom images (federation.synthetic = true), not on mammograms: "
            "its figures say nothing about how it would perform on real patients."
        )
    lines.append(
        f"Images are reduced to {size} x {size} pixels before the model sees them (a mammogram has about 3000 x 4000): "
        "calcifications and fine detail visible at full resolution are lost."
    )
    positive = config.model.class_labels[-1]
    if config.model.num_classes > 2:
        lines.append(f"The headline figures are {positive} against all other classes; see per_class for the rest.")
    lines += _training(config, trained=trained, final_round=final_round)
    scored = {**sites, **({"all sites pooled": pooled} if pooled else {})}
    lines += _smallest_test(sites, positive) + _intervals(scored, positive) + _failures(failures, sites)
    lines += [*notes, *_FIXED]
    missing = sorted(site for site, entry in sites.items() if "images" in entry and entry["images"] is None)
    if missing:
        lines.append(f"Image and patient counts are unknown for {', '.join(missing)}: none was reported to the server.")
    return lines
