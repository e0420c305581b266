"""The row format of metrics.jsonl: its schema, and the check every row passes when written and when read back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["METRICS_SCHEMA", "PHASES", "POOLED_SITE", "check_row"]

POOLED_SITE = "pooled"
"""The ``site`` of rows holding all sites as one population."""
PHASES = ("train", "evaluate")

METRICS_SCHEMA = """\
metrics.jsonl: one JSON object per line, {"round": int, "phase": "train" | "evaluate", "site": str, ...numbers}.
  train rows:    num_examples, train_loss, epsilon (cumulative over the site's rounds), seconds.
  evaluate rows: num_examples, loss, and every key of common.metrics.METRIC_KEYS (auc, auc_ci_low, ...), about
                 the last class vs the rest; with more than two classes also num_classes, macro_auc,
                 auc/auc_ci_low/auc_ci_high/num_cases_class<c> per class (one vs rest) and confusion_matrix
                 (K lists of K counts: row = true class, column = argmax prediction).
                 Exam level (evaluation.exam_rule): breast_/exam_ auc, num_cases, num_positives, num_negatives
                 and exam_rule_fallback (0 counts and null AUC without studies of several views; the pooled row
                 has them only when some site counted a breast).
                 A site's data as counts, for the model card: data_<split>_images, data_<split>_patients and
                 data_<split>_label_<c> for split train, val and test (not in the pooled row).
                 Localization (evaluation.localization, final round only): the counts loc_images, loc_hits,
                 loc_iou_sum, loc_iou10, loc_iou30, loc_baseline_bright_hits, loc_baseline_centre_hits,
                 loc_baseline_chance_sum, loc_flat_maps, loc_failed; the pooled row sums them and adds loc_hit_rate
                 (with loc_hit_rate_ci_low/high, Wilson 95%), loc_mean_iou and the baselines' rates.
  site "pooled": all sites as one population (evaluate: metrics from summed score histograms;
                 train: example-weighted mean loss, largest epsilon of any site).
  sat-out train rows: a site that trained on nothing (the patch stage, without lesion marks): num_examples 0,
                 num_steps 0, "sat_out": str (why), epsilon (its ledger's, unchanged); left out of the average and
                 of the pooled row's examples, and not a failure (no "error").
  failed replies: {"round", "phase", "site", "time", "declined": bool, "error": str}, no metrics; a declined
                 train reply ("declined": true, a site's privacy ceiling) also carries epsilon: what the site's
                 ledger has spent (cumulative), which counts towards its final epsilon.
  NaN is null, +/-infinity is "Infinity"/"-Infinity"."""


def check_row(row: Mapping[str, Any]) -> None:
    """Raise ValueError naming every way ``row`` is not a metrics row (int round, known phase, site name)."""
    problems = []
    if not isinstance(row.get("round"), (int, np.integer)) or isinstance(row.get("round"), bool):
        problems.append(f"'round' = {row.get('round')!r} must be an int")
    if row.get("phase") not in PHASES:
        problems.append(f"'phase' = {row.get('phase')!r} must be one of {PHASES}")
    if not isinstance(row.get("site"), str) or not row.get("site"):
        problems.append(f"'site' = {row.get('site')!r} must be a non-empty string")
    if problems:
        raise ValueError(f"metrics row {dict(row)!r} is invalid: {'; '.join(problems)} (see METRICS_SCHEMA)")
