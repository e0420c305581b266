"""The site's data counts for an evaluation reply: images, patients and cases of each class per split, nothing else."""

from __future__ import annotations

from collections.abc import Mapping

from common import wire

__all__ = ["summary_count_metrics"]


def summary_count_metrics(summary: Mapping[str, object], num_classes: int) -> dict[str, int]:
    """The MetricRecord entries (`wire.data_count_key`, `wire.data_label_key`) of a `SiteData.summary`.

    `client.task.evaluate_on_site` makes them from the data it just scored (``EvaluateOutcome.counts``): the same
    splits, skipped images left out, as the figures, and no second load of the site. Every class
    ``0 .. num_classes - 1`` gets an entry in every split, a class the split lacks as 0: a reader then
    sees "no malignant case in val" rather than a missing key. Counts only: no identifier, no path, no per-image
    value, so nothing here says which patient or image is which.

    Parameters
    ----------
    summary : Mapping
        `common.data.SiteData.summary`: ``{split: {"images", "patients", "labels": {"<class>": count}}}``.
    num_classes : int
        ``model.num_classes``.
    """
    counts: dict[str, int] = {}
    for split in wire.DATA_SPLITS:
        entry = summary.get(split)
        entry = entry if isinstance(entry, Mapping) else {}
        labels = entry.get("labels")
        labels = labels if isinstance(labels, Mapping) else {}
        counts[wire.data_count_key(split, wire.DATA_IMAGES)] = int(entry.get("images", 0))  # type: ignore[arg-type]
        counts[wire.data_count_key(split, wire.DATA_PATIENTS)] = int(entry.get("patients", 0))  # type: ignore[arg-type]
        for label in range(num_classes):
            counts[wire.data_label_key(split, label)] = int(labels.get(str(label), 0))  # type: ignore[arg-type]
    return counts
