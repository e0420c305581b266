"""The report's exam-level section: per site and pooled, the AUC per breast and per exam and how many were scored."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from common import wire
from server.report.page import fmt, html_table
from server.report.plots import site_order
from server.report.run_files import POOLED_SITE

__all__ = ["exam_rule_of", "render_exam_section"]

_RULE_TEXT = {
    "max": "<b>max</b>: a breast is as suspicious as its most suspicious view (CC or MLO), an exam as its most "
    "suspicious breast",
    "mean": "<b>mean</b>: a breast's score is the mean of its views' scores, an exam's the mean of its breasts' "
    "(a one-sided finding is diluted by the other breast)",
    "learned": "<b>learned</b>: a logistic regression on the max and the mean of a breast's view scores, fitted on "
    "each site's own validation breasts (falling back to max where they are too few or of one class); an exam's "
    "score is the max of its breasts'",
}
_LEVELS = ((wire.BREAST_PREFIX, "Breasts"), (wire.EXAM_PREFIX, "Exams"))


def _count(entry: Mapping[str, Any], prefix: str) -> int:
    value = entry.get(wire.exam_key(prefix, "num_cases"))
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value else 0


def exam_rule_of(summary: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> str:
    """The run's ``evaluation.exam_rule``: from summary.json, else config.yaml, else "max" (the default)."""
    if summary and isinstance(summary.get("exam_rule"), str):
        return str(summary["exam_rule"])
    evaluation = (config or {}).get("evaluation")
    rule = evaluation.get("exam_rule") if isinstance(evaluation, Mapping) else None
    return str(rule) if isinstance(rule, str) else "max"


def render_exam_section(results: Mapping[str, Mapping[str, Any]], rule: str) -> str:
    """HTML (escaped here) for the report, or "" when no site scored a breast (no study with several views).

    ``results`` are the final per-site and pooled entries (summary.json, or the last evaluate rows), holding the
    ``breast_``/``exam_`` figures (`common.wire.exam_keys`) that sites send and `server.exam_pooling` pools.
    """
    shown = [site for site in site_order(list(results)) if _count(results[site], wire.BREAST_PREFIX) > 0]
    if not shown:
        return ""
    headers = ["Site"]
    for _, title in _LEVELS:
        headers += [title, f"{title} with cancer", f"AUC per {title.lower()[:-1]}"]
    headers.append("Images (AUC)")
    rows = []
    for site in shown:
        entry = results[site]
        cells = [escape(site)]
        for prefix, _ in _LEVELS:
            cells += [
                fmt(_count(entry, prefix)),
                fmt(entry.get(wire.exam_key(prefix, "num_positives"))),
                fmt(entry.get(wire.exam_key(prefix, "auc"))),
            ]
        cells.append(f"{fmt(entry.get('num_examples'))} ({fmt(entry.get('auc'))})")
        fell_back = site != POOLED_SITE and bool(entry.get(wire.EXAM_RULE_FALLBACK))
        rows.append(("pooled" if site == POOLED_SITE else "warn" if fell_back else "", cells))
    fallbacks = [s for s in shown if s != POOLED_SITE and results[s].get(wire.EXAM_RULE_FALLBACK)]
    parts = [
        "<h2>Exam-level results</h2>",
        "<p>A radiologist reads an exam (a study: usually four views, left and right CC and MLO), not an image. "
        "Each site grouped its test images by study and laterality into breasts, and breasts into exams; a breast "
        "counts as cancer when any of its images does, an exam when either breast does. Rule "
        f"(<code>evaluation.exam_rule</code>): {_RULE_TEXT.get(rule, escape(rule))}.</p>",
        html_table(headers, rows),
        '<p class="note">Only sites whose test split holds studies with several views are listed. Sites\' AUCs are '
        "exact; the pooled AUCs come from summed per-breast and per-exam score histograms, so no score left a "
        "hospital. With few exams these AUCs are noisy.</p>",
    ]
    if fallbacks:
        names = ", ".join(escape(s) for s in fallbacks)
        parts.append(f'<p class="warn">The learned rule fell back to max at {names}: too few validation breasts, '
                     "or all of one class.</p>")  # fmt: skip
    return "\n".join(parts)
