"""Per-subgroup metrics (view, laterality, density, vendor, age band) over fixed vocabularies, per site and pooled.

Subgroup values leave the hospital as record keys, so they come only from the fixed vocabularies below, never
from a free text of a manifest or DICOM header (which could carry a name, a serial number or a site's own
code). A group with fewer than ``min_count`` images is reported by its size alone: a metric of a handful of
images is noise, and could single out patients.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.metrics.binary import binary_metrics
from common.metrics.core import DEFAULT_THRESHOLD, check_binary_inputs
from common.metrics.histogram import ScoreHistogram, histogram_metrics
from common.metrics.subgroup_vocab import (
    AGE_BANDS,
    DENSITY_GROUPS,
    LATERALITY_GROUPS,
    SUBGROUP_ATTRIBUTES,
    SUBGROUP_VOCABULARIES,
    VENDOR_GROUPS,
    VIEW_GROUPS,
    age_band,
    density_group,
    laterality_group,
    vendor_group,
    view_group,
)

__all__ = [
    "AGE_BANDS",
    "DENSITY_GROUPS",
    "LATERALITY_GROUPS",
    "SUBGROUP_ATTRIBUTES",
    "SUBGROUP_METRIC_KEYS",
    "SUBGROUP_VOCABULARIES",
    "VENDOR_GROUPS",
    "VIEW_GROUPS",
    "SubgroupReport",
    "age_band",
    "density_group",
    "laterality_group",
    "pooled_subgroup_metrics",
    "subgroup_key",
    "subgroup_metrics",
    "subgroups_from_flat",
    "subgroups_to_flat",
    "vendor_group",
    "view_group",
]

SUBGROUP_METRIC_KEYS: tuple[str, ...] = (
    "num_examples", "num_positives", "num_negatives", "auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity",
)  # fmt: skip
"""Entries of a reported group; a group under ``min_count`` has only ``num_examples`` and ``too_small``."""


def subgroup_key(attribute: str, value: str) -> str:
    """Flat key stem of one subgroup, e.g. ``subgroup_key("view", "CC") == "view=CC"``."""
    return f"{attribute}={value}"


@dataclass(frozen=True)
class SubgroupReport:
    """What a site sends about its subgroups.

    ``metrics[attribute][value]`` holds `SUBGROUP_METRIC_KEYS`, or only ``num_examples`` and ``too_small``
    for a group under ``min_count``. ``histograms[(attribute, value)]`` is the score histogram of each
    reported group (never of a too-small one), so the server can pool a subgroup across sites.
    """

    metrics: dict[str, dict[str, dict[str, Any]]]
    histograms: dict[tuple[str, str], ScoreHistogram]


def _check_min_count(min_count: int) -> None:
    if min_count < 1:
        raise ValueError(f"min_count = {min_count} is invalid: it must be at least 1 image per reported subgroup")


def _check_groups(groups: Mapping[str, Sequence[str | None]], n: int) -> dict[str, list[str | None]]:
    checked = {}
    for attribute, values in groups.items():
        if attribute not in SUBGROUP_VOCABULARIES:
            raise ValueError(f"groups has attribute {attribute!r}; it must be one of {SUBGROUP_ATTRIBUTES}")
        values = list(values)
        if len(values) != n:
            raise ValueError(f"groups[{attribute!r}] has {len(values)} values; it needs one per image ({n})")
        allowed = SUBGROUP_VOCABULARIES[attribute]
        bad = sorted({str(v)[:40] for v in values if v is not None and v not in allowed})
        if bad:
            raise ValueError(
                f"groups[{attribute!r}] holds {bad[:3]}, outside its fixed vocabulary {allowed}; map raw texts "
                f"with the {attribute} functions of common.metrics.subgroups first"
            )
        checked[attribute] = values
    return checked


def _withheld(sizes: Mapping[str, int], total: int, min_count: int) -> set[str]:
    """The groups of one attribute to hold back: those under ``min_count``, and then the smallest others until the
    images outside every reported group number 0 or at least ``min_count``.

    Why the second step: the site also sends its whole test split's histogram, so the whole minus the reported
    groups is a group too. With 37 left and 3 right images, reporting "left" alone would give away the 3 right
    ones by subtraction (complementary suppression, as statistical offices practise it).
    """
    held = {value for value, n in sizes.items() if n < min_count}
    reported = sorted((n, value) for value, n in sizes.items() if value not in held)
    while reported and 0 < total - sum(n for n, _ in reported) < min_count:
        held.add(reported.pop(0)[1])
    return held


def subgroup_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Mapping[str, Sequence[str | None]],
    *,
    min_count: int,
    threshold: float = DEFAULT_THRESHOLD,
    resamples: int = 1000,
    seed: int = 0,
) -> SubgroupReport:
    """One site's metrics per subgroup value, in vocabulary order.

    Parameters
    ----------
    labels, scores
        True labels (0/1) and probabilities of malignancy in [0, 1], one per image.
    groups
        Per attribute of `SUBGROUP_ATTRIBUTES`, one vocabulary value or None (unknown) per image. An attribute
        whose values are all None is left out; None values are left out of their attribute.
    min_count
        Smallest group reported with metrics; smaller ones get only ``num_examples`` and ``too_small``. So that no
        small group can be recovered by subtracting reported groups from the whole split (whose histogram a site
        sends too), the images outside every reported group of an attribute (small groups and unknown values)
        must be none or at least ``min_count``; the smallest reported groups are held back until they are, and
        marked ``withheld`` besides ``too_small``.
    threshold
        Operating point of sensitivity and specificity.
    resamples, seed
        Bootstrap of the AUC CI (see `bootstrap_auc_ci`).

    Raises
    ------
    ValueError
        For malformed input: labels/scores (see `check_binary_inputs`), a score outside [0, 1], an unknown
        attribute, a value outside its vocabulary, a length mismatch, or ``min_count < 1``.
    """
    _check_min_count(min_count)
    labels, scores = check_binary_inputs(labels, scores)
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(f"scores must be probabilities in [0, 1], got range [{scores.min():.4g}, {scores.max():.4g}]")
    checked = _check_groups(groups, labels.size)
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    histograms: dict[tuple[str, str], ScoreHistogram] = {}
    for attribute in SUBGROUP_ATTRIBUTES:
        values = np.array([v or "" for v in checked.get(attribute, [])], dtype=object)
        sizes = {v: int((values == v).sum()) for v in SUBGROUP_VOCABULARIES[attribute] if (values == v).any()}
        if sizes:
            metrics[attribute] = {}
        withheld = _withheld(sizes, labels.size, min_count)
        for value, n in sizes.items():
            if value in withheld:
                metrics[attribute][value] = {"num_examples": n, "too_small": True}
                if n >= min_count:  # held back so that a smaller group cannot be had by subtraction
                    metrics[attribute][value]["withheld"] = True
                continue
            mask = values == value
            result = binary_metrics(labels[mask], scores[mask], threshold=threshold, bootstrap=resamples, seed=seed)
            metrics[attribute][value] = {"num_examples": n, **{k: result[k] for k in SUBGROUP_METRIC_KEYS[1:]}}
            histograms[(attribute, value)] = ScoreHistogram.from_scores(labels[mask], scores[mask])
    return SubgroupReport(metrics, histograms)


def pooled_subgroup_metrics(
    reports: Iterable[SubgroupReport],
    *,
    min_count: int,
    threshold: float = DEFAULT_THRESHOLD,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, Any]]]:
    """All sites' subgroups as one population, from their summed histograms (AUC exact up to the bin width).

    Sites never send the histogram of a group under their ``min_count``, so a pooled subgroup holds only the
    sites where it reached the minimum: a vendor with a few images at each of many sites may be missing or
    small in the pool. Each pooled group says so: ``num_withheld`` counts the images the other sites kept
    back, and a reported group also has ``num_sites`` pooled. A pooled group under ``min_count`` (or with no
    site's histogram) gets only ``num_examples`` (images pooled), ``too_small`` and ``num_withheld``, no metric.
    Sensitivity and specificity are read at ``threshold`` rounded to a bin edge (0.5 is one: exact).

    Raises
    ------
    ValueError
        If ``min_count < 1`` or sites' histograms differ in their number of bins.
    """
    _check_min_count(min_count)
    reports = list(reports)
    found = {(a, v) for r in reports for a, group in r.metrics.items() for v in group} | {
        key for r in reports for key in r.histograms
    }
    pooled: dict[str, dict[str, dict[str, Any]]] = {}
    for attribute in SUBGROUP_ATTRIBUTES:
        for value in (v for v in SUBGROUP_VOCABULARIES[attribute] if (attribute, v) in found):
            parts = [r.histograms[(attribute, value)] for r in reports if (attribute, value) in r.histograms]
            withheld = sum(
                int(r.metrics[attribute][value]["num_examples"])
                for r in reports
                if (attribute, value) not in r.histograms and value in r.metrics.get(attribute, {})
            )
            total = ScoreHistogram.pooled(parts) if parts else None
            n = total.num_negatives + total.num_positives if total else 0
            if total is None or n < min_count:
                pooled.setdefault(attribute, {})[value] = {
                    "num_examples": n,
                    "too_small": True,
                    "num_withheld": withheld,
                }
                continue
            result = histogram_metrics(total, threshold=threshold, bootstrap=resamples, seed=seed)
            entry = {"num_examples": n, **{k: result[k] for k in SUBGROUP_METRIC_KEYS[1:]}}
            pooled.setdefault(attribute, {})[value] = {**entry, "num_sites": len(parts), "num_withheld": withheld}
    return pooled


_INT_FIELDS = ("num_examples", "num_positives", "num_negatives")
_FLOAT_FIELDS = SUBGROUP_METRIC_KEYS[3:]
_TOO_SMALL, _WITHHELD, _NEG, _POS = "too_small", "withheld", "neg", "pos"


def subgroups_to_flat(report: SubgroupReport, prefix: str) -> dict[str, int | float | list[int]]:
    """Flat entries for a Flower MetricRecord: ``f"{prefix}view=CC.auc"``, ``....neg``/``....pos`` count lists.

    Keys are safe because values come from the fixed vocabularies. ``too_small`` is sent as 1.
    """
    flat: dict[str, int | float | list[int]] = {}
    for attribute, group in report.metrics.items():
        for value, entry in group.items():
            stem = f"{prefix}{subgroup_key(attribute, value)}."
            flat[f"{stem}num_examples"] = int(entry["num_examples"])
            if entry.get(_TOO_SMALL):
                flat[f"{stem}{_TOO_SMALL}"] = 1
                if entry.get(_WITHHELD):
                    flat[f"{stem}{_WITHHELD}"] = 1
                continue
            flat.update({f"{stem}{k}": int(entry[k]) for k in _INT_FIELDS[1:]})
            flat.update({f"{stem}{k}": float(entry[k]) for k in _FLOAT_FIELDS})
            histogram = report.histograms[(attribute, value)]
            flat[f"{stem}{_NEG}"], flat[f"{stem}{_POS}"] = histogram.negatives.tolist(), histogram.positives.tolist()
    return flat


def subgroups_from_flat(prefix: str, record: Mapping[str, Any]) -> SubgroupReport:
    """Undo `subgroups_to_flat`; keys without a known ``attribute=`` after ``prefix`` are not subgroup entries.

    Raises
    ------
    ValueError
        If a value is outside its vocabulary, a field is unknown, or a histogram list is missing.
    """
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    for key, item in record.items():
        stem, _, field = key[len(prefix) :].rpartition(".") if key.startswith(prefix) else ("", "", "")
        attribute, _, value = stem.partition("=")
        if attribute not in SUBGROUP_VOCABULARIES or not value:
            continue
        if value not in SUBGROUP_VOCABULARIES[attribute] or field not in (
            *SUBGROUP_METRIC_KEYS,
            _TOO_SMALL,
            _WITHHELD,
            _NEG,
            _POS,
        ):
            raise ValueError(f"record key {key!r} is not a subgroup entry: value or field outside the vocabulary")
        fields.setdefault((attribute, value), {})[field] = item
    metrics: dict[str, dict[str, dict[str, Any]]] = {}
    histograms: dict[tuple[str, str], ScoreHistogram] = {}
    for attribute in SUBGROUP_ATTRIBUTES:
        for value in (v for v in SUBGROUP_VOCABULARIES[attribute] if (attribute, v) in fields):
            got = fields[(attribute, value)]
            if got.get(_TOO_SMALL):
                small: dict[str, Any] = {"num_examples": int(got["num_examples"]), _TOO_SMALL: True}
                metrics.setdefault(attribute, {})[value] = small | ({_WITHHELD: True} if got.get(_WITHHELD) else {})
                continue
            try:
                histograms[(attribute, value)] = ScoreHistogram.from_lists(got[_NEG], got[_POS])
                entry = {k: int(got[k]) for k in _INT_FIELDS} | {k: float(got[k]) for k in _FLOAT_FIELDS}
            except KeyError as exc:
                raise ValueError(f"subgroup {subgroup_key(attribute, value)!r} lacks its entry {exc}") from exc
            metrics.setdefault(attribute, {})[value] = {k: entry[k] for k in SUBGROUP_METRIC_KEYS}
    return SubgroupReport(metrics, histograms)
