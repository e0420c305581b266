"""Renders report.html: one self-contained page (inline CSS, relative image links), every text escaped."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from server.report.final_round import NOT_IN_FINAL_ROUND, ROUND, final_round, sites_in_final_round
from server.report.plots import site_order

__all__ = ["auc_cell", "fmt", "html_table", "render_page"]

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6rem 0;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}th{background:#f2f4f7}
td:first-child,th:first-child{text-align:left}tr.pooled td{font-weight:600;background:#f8f8f0}
table.settings td{text-align:left}.note{color:#555;font-size:.9rem}.warn{color:#a33}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9rem}
.howto{background:#f6f8fa;border-left:4px solid #4a7ab5;padding:.6rem 1rem}
h3{font-size:1.05rem;margin-top:1.4rem}.cm{display:inline-block;vertical-align:top;margin:0 1.5rem .8rem 0}
.cm p{margin:.2rem 0}table.confusion td{padding:0}
table.confusion td:first-child,table.confusion td:last-child{padding:.3rem .6rem}
.cm-cell{display:block;padding:.3rem .6rem;background:rgb(74 122 181/calc(var(--share)*65%))}
"""

_RESULT_COLUMNS = (
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("f1", "F1"),
    ("balanced_accuracy", "Balanced accuracy"),
    ("sensitivity_at_specificity", "Sensitivity at target specificity"),
)

_HOW_TO_READ = """
<p><b>AUC</b> (area under the ROC curve) is the chance that the model scores a randomly chosen malignant
case above a randomly chosen benign one: 0.5 is guessing, 1.0 is perfect. The interval in brackets is a
bootstrap 95% confidence interval; a wide interval means the test set was too small to be sure.</p>
<p><b>Sensitivity</b> is the share of malignant cases the model flags; <b>specificity</b> the share of benign
cases it clears. Both are read at {threshold}; <b>PPV</b> / <b>NPV</b> are the share of
flagged / cleared cases that really are malignant / benign, and depend on how common cancer is in each test set.
"Sensitivity at target specificity" is the best sensitivity reachable while keeping specificity at least
{target}, closer to how a screening programme would set its recall rate. "pooled" treats all sites' test
images as one population (computed from score histograms; no image or score left any hospital).</p>
<p><b>ε (epsilon)</b> measures how much the trained model could reveal about any one patient in a site's
training data (differential privacy): <b>smaller ε means stronger privacy</b>; it only grows as rounds
are added. The guarantee holds except with probability <b>δ (delta)</b>, which should be much smaller than
one over the number of patients. Without differential privacy there is no such guarantee. Under <b>central</b>
DP the server adds the noise instead: ε then bounds what the model reveals about a whole site's data, and is the
same for every site, but the server itself saw each site's un-noised update.</p>
<p>n/a means a value is undefined for that test set (for example AUC when a site has only benign cases).</p>
"""

_HOW_TO_READ_CLASSES = """
<p><b>More than two classes</b> ({names}): the results table, the per-round table and the ROC plot above are about
<b>{last} versus all other classes</b>, scored by the model's probability of {last}; "malignant" and "benign"
in the text above then mean {last} and not {last}. The per-class section gives each class against the rest.</p>
"""


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ints as is, floats to ``digits`` decimals, NaN/missing as "n/a", ∞ as "∞"."""
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else ("on" if value else "off")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        return f"{value:.{digits}f}"
    return escape(str(value)) if value != "" else "n/a"


def auc_cell(entry: Mapping[str, Any]) -> str:
    """``auc (low–high)`` from an entry's ``auc``, ``auc_ci_low`` and ``auc_ci_high`` (a site, or one class)."""
    auc, low, high = (fmt(entry.get(k)) for k in ("auc", "auc_ci_low", "auc_ci_high"))
    return f"{auc} ({low}–{high})" if "n/a" not in (low, high) else f"{auc} (CI n/a)"


def html_table(headers: Sequence[str], rows: Sequence[tuple[str, Sequence[str]]], css: str = "") -> str:
    """A table of ``(row css class, cells)``; headers are escaped here, cells must already be escaped HTML."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{escape(cls)}">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" for cls, cells in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _results_table(results: Mapping[str, Mapping[str, Any]], privacy_enabled: bool) -> str:
    """The final results per site and pooled; a Round column (and a warning row class) when rounds differ."""
    mixed = any(NOT_IN_FINAL_ROUND in entry for entry in results.values())
    headers = [
        "Site",
        *(["Round"] if mixed else []),
        "Test images",
        "Positives",
        "AUC (95% CI)",
        "Threshold",
        *(t for _, t in _RESULT_COLUMNS),
        "ε at end",
    ]
    rows = []
    for site in site_order(list(results)):
        entry = results[site]
        epsilon = fmt(entry.get("epsilon"), 2) if privacy_enabled else "off"
        cells = [
            escape(site),
            *([fmt(entry.get(ROUND))] if mixed else []),
            fmt(entry.get("num_examples")),
            fmt(entry.get("num_positives")),
            auc_cell(entry),
            fmt(entry.get("threshold")),
            *(fmt(entry.get(key)) for key, _ in _RESULT_COLUMNS),
            epsilon,
        ]
        rows.append(("pooled" if site == "pooled" else "warn" if NOT_IN_FINAL_ROUND in entry else "", cells))
    return html_table(headers, rows)


def _final_round_note(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Which sites' figures are not from the final round and why, and what the pooled row covers; "" if none."""
    behind = {site: entry[NOT_IN_FINAL_ROUND] for site, entry in results.items() if NOT_IN_FINAL_ROUND in entry}
    if not behind:
        return ""
    last = final_round(results)
    pooled = ", ".join(escape(site) for site in site_order(sites_in_final_round(results))) or "no site"
    items = "".join(f"<li>{escape(site)}: {escape(str(why))}</li>" for site, why in behind.items())
    return (
        f'<p class="warn">Not every site\'s figures are from the final round ({last}); the Round column says '
        f"which round each row is from. The pooled row is round {last} over {pooled} only.</p>"
        f'<ul class="warn">{items}</ul>'
    )


def _round_table(rows: Sequence[Mapping[str, Any]]) -> str:
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        if "error" in row:
            continue
        entry = merged.setdefault((int(row["round"]), str(row["site"])), {})
        if row.get("phase") == "train":
            entry.update(train_loss=row.get("train_loss"), epsilon=row.get("epsilon"), sat_out=row.get("sat_out"))
        else:
            entry.update({k: row.get(k) for k in ("loss", "auc", "sensitivity", "specificity")})
    if not merged:
        return '<p class="note">No rounds were recorded (metrics.jsonl is missing or empty).</p>'
    order = {site: i for i, site in enumerate(site_order([site for _, site in merged]))}
    table_rows = []
    for round_, site in sorted(merged, key=lambda key: (key[0], order[key[1]])):
        entry = merged[(round_, site)]
        loss = "sat out" if entry.get("sat_out") else fmt(entry.get("train_loss"))  # a patch round without marks
        cells = [str(round_), escape(site), loss, fmt(entry.get("epsilon"), 2)]
        cells += [fmt(entry.get(k)) for k in ("loss", "auc", "sensitivity", "specificity")]
        table_rows.append(("pooled" if site == "pooled" else "", cells))
    headers = ["Round", "Site", "Train loss", "ε", "Test loss", "AUC", "Sensitivity", "Specificity"]
    return html_table(headers, table_rows)


def render_page(
    *,
    title: str,
    settings: Sequence[tuple[str, str]],
    results: Mapping[str, Mapping[str, Any]],
    privacy_enabled: bool,
    plots: Sequence[tuple[str, str]],
    notes: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]],
    threshold: str,
    target_specificity: float,
    class_names: Sequence[str] = (),
    class_section: str = "",
    personalization_section: str = "",
    exam_section: str = "",
    card_section: str = "",
    localization_section: str = "",
) -> str:
    """The whole report page as a string.

    ``settings`` are ``(name, formatted value)`` pairs; ``plots`` are ``(file name, caption)`` pairs linked
    relatively, so the folder can be moved or zipped; ``notes`` say what is missing and why (no ROC data,
    privacy off, ...). A site whose figures are older than the final round (`server.report.final_round`) gets
    a Round column and a warning saying why. Every text is HTML-escaped here (a run folder's files are input a
    reader may have edited), except ``class_section`` and ``personalization_section``, HTML that
    `server.report.class_section` and `server.report.personalization_section` already escaped (as is
    ``exam_section``, `server.report.exam_section`'s). ``class_names``
    (more than two classes) say which class the headline results are about.
    """
    settings_rows = [("", [escape(name), escape(value)]) for name, value in settings]
    parts = [
        f"<h1>{escape(title)}</h1>",
        '<p class="note">Federated training of a breast-cancer classifier; only model weights, aggregate metrics '
        "and privacy figures left the hospitals.</p>",
        "<h2>Run settings</h2>",
        html_table(["Setting", "Value"], settings_rows, css="settings"),
        "<h2>Final results of the global model</h2>",
        _results_table(results, privacy_enabled)
        if results
        else '<p class="note">No final results (summary.json is missing and no round was evaluated).</p>',
    ]
    if note := _final_round_note(results):
        parts.insert(-1, note)
    if class_names:
        last, others = escape(class_names[-1]), ", ".join(escape(n) for n in class_names[:-1])
        note = f"<b>{last}</b> vs the rest ({others}): the score is the model's probability of {last}."
        parts.insert(-1, f'<p class="note">{note}</p>')
    if exam_section:
        parts.append(exam_section)
    if localization_section:  # `server.report.localization_section`'s, already escaped: next to the AUCs above
        parts.append(localization_section)
    if class_section:
        parts.append(class_section)
    if personalization_section:
        parts.append(personalization_section)
    parts.append(card_section)  # `server.report.card_section`'s, already escaped; "" without a model card
    skipped = [f for f in failures if f.get("skipped")]  # the round as a whole (strategy.min_nodes), no one site
    declined = [f for f in failures if f.get("declined")]
    failed = [f for f in failures if not f.get("declined") and not f.get("skipped")]
    for title, entries in (
        ("Rounds skipped (too few sites)", skipped),
        ("Rounds declined by a site's privacy ceiling", declined),
        ("Failed site replies", failed),
    ):
        if entries:
            items = "".join(
                f"<li>round {escape(str(f.get('round')))}, {escape(str(f.get('phase')))}"
                + ("" if f.get("skipped") else f", site {escape(str(f.get('site')))}")
                + f": {escape(str(f.get('error')))}</li>"
                for f in entries
            )
            parts.append(f'<h2>{escape(title)}</h2><ul class="warn">{items}</ul>')
    how_to = _HOW_TO_READ.format(threshold=escape(threshold), target=escape(str(target_specificity)))
    if class_names:
        names = ", ".join(escape(n) for n in class_names)
        how_to += _HOW_TO_READ_CLASSES.format(names=names, last=escape(class_names[-1]))
    parts.append(f'<h2>How to read this</h2><div class="howto">{how_to}</div>')
    parts.append("<h2>Plots</h2>")
    parts += [f'<p class="note">{escape(note)}</p>' for note in notes]
    parts += [
        f'<figure><a href="{escape(name)}"><img src="{escape(name)}" alt="{escape(caption)}"></a>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
        for name, caption in plots
    ]
    parts += ["<h2>Per-round results</h2>", _round_table(rows)]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
