"""The report's per-class section (more than two classes): one-vs-rest AUC per site and pooled, confusion matrices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from common.metrics import MACRO_AUC
from server.report.class_results import class_results, confusion_matrix
from server.report.page import auc_cell, fmt, html_table
from server.report.plots import site_order

__all__ = ["render_class_section"]

_EXPLAIN = (
    "Each class against all the others (one vs rest), scored by the model's probability of that class; "
    "the macro AUC is their unweighted mean (n/a when a class is missing from a site's test split). Pooled "
    "values come from summed per-class score histograms, so no image's score left its hospital."
)
_CONFUSION_EXPLAIN = (
    "Rows are the true class, columns the class the model gave the highest probability (argmax, no threshold: "
    "unlike sensitivity and specificity above, which use each site's decision threshold for {last}). Each "
    "cell shows the count and its share of the row; the shading follows that share. Recall is the diagonal "
    "share, the sensitivity for that class. Pooled is the sum of the sites' matrices."
)


def _auc_table(results: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    headers = ["Site", f"Test images ({' / '.join(names)})", *(f"{n} AUC (95% CI)" for n in names), "Macro AUC"]
    rows = []
    for site in site_order(list(results)):
        per_class = class_results(results[site], names)
        if not per_class:
            continue
        cases = " / ".join(fmt(c.get("num_cases")) for c in per_class)
        cells = [escape(site), cases, *(auc_cell(c) for c in per_class), fmt(results[site].get(MACRO_AUC))]
        rows.append(("pooled" if site == "pooled" else "", cells))
    return html_table(headers, rows)


def _confusion_table(site: str, matrix: list[list[int]], names: Sequence[str]) -> str:
    labels = [names[i] if i < len(names) else f"class_{i}" for i in range(len(matrix))]
    rows = []
    for true_index, row in enumerate(matrix):
        total = sum(row)
        cells = [f"<b>{escape(labels[true_index])}</b>"]
        for count in row:
            share = count / total if total else 0.0
            text = f"{count} ({share:.0%})" if total else str(count)
            cells.append(f'<span class="cm-cell" style="--share:{share:.3f}">{text}</span>')
        cells.append(fmt(row[true_index] / total if total else float("nan")))
        rows.append(("", cells))
    table = html_table(["true \\ predicted", *labels, "Recall"], rows, css="confusion")
    return f'<div class="cm"><p><b>{escape(site)}</b></p>{table}</div>'


def render_class_section(results: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> str:
    """HTML of the per-class AUC table and each site's and the pooled confusion matrix; "" when there are none.

    ``names`` are the class names in index order; the last one is the headline class of the rest of the report.
    """
    if not any(class_results(entry, names) for entry in results.values()):
        return ""
    last = escape(names[-1]) if names else "the last class"
    parts = [
        "<h2>Per-class results (each class vs the rest)</h2>",
        f'<p class="note">{escape(_EXPLAIN)}</p>',
        _auc_table(results, names),
    ]
    matrices = [(site, m) for site in site_order(list(results)) if (m := confusion_matrix(results[site]))]
    if matrices:
        parts += [
            "<h3>Confusion matrices (argmax prediction)</h3>",
            f'<p class="note">{escape(_CONFUSION_EXPLAIN).format(last=last)}</p>',
            '<div class="cm-grid">' + "".join(_confusion_table(site, m, names) for site, m in matrices) + "</div>",
        ]
    return "\n".join(parts)
