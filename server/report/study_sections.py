"""The tables and plain-language answers of study.html, built from study.json's contents; every text escaped."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from server.report.page import auc_cell, fmt, html_table
from server.report.study_plots import (
    POOLED,
    comparison,
    entry,
    finite,
    mapping,
    matrix_models,
    study_sites,
)

__all__ = [
    "answer_paragraphs",
    "calibration_table",
    "comparison_table",
    "failures_table",
    "loso_table",
    "matrix_table",
    "signed",
    "subgroup_table",
    "training_table",
]

_DASH = "—"


def signed(value: Any) -> str:
    """A difference with its sign, to 3 decimals, with a true minus sign: ``+0.050``, ``−0.020``; n/a when null."""
    number = finite(value)
    return "n/a" if number is None else f"{number:+.3f}".replace("-", "−")


def _difference(item: Mapping[str, Any]) -> str:
    """``+0.050 (−0.020 to +0.120)``: a paired difference with its 95% CI; n/a when it could not be measured."""
    if finite(item.get("difference")) is None:
        return "n/a"
    low, high = signed(item.get("ci_low")), signed(item.get("ci_high"))
    return f"{signed(item['difference'])} ({low} to {high})" if "n/a" not in (low, high) else signed(item["difference"])


def _stacked(cell: str) -> str:
    """A figure with its interval below it (``0.852<br>(0.700–0.964)``), so a wide table fits the page."""
    value, sep, interval = cell.partition(" (")
    return f'{value}<br><span class="ci">({interval}</span>' if sep else cell


def _label(study: Mapping[str, Any], model: str) -> str:
    """A model's display label (escaped), marked when it was never trained (its initial weights were scored)."""
    info = mapping(mapping(study.get("models")).get(model))
    untrained = " (untrained: every round failed)" if info.get("trained") is False else ""
    return escape(str(info.get("label") or model) + untrained)


def _verdict(item: Mapping[str, Any]) -> str:
    low, high = finite(item.get("ci_low")), finite(item.get("ci_high"))
    if low is not None and low > 0:
        return "the whole interval lies above zero, so federating helped there."
    if high is not None and high < 0:
        return "the whole interval lies below zero, so training alone did better there."
    return "the interval includes zero, so this study cannot tell whether federating helped there."


def answer_paragraphs(study: Mapping[str, Any]) -> str:
    """One plain-language paragraph per site: what federating changed against training alone and pooled data."""
    paragraphs = []
    for site in study_sites(study):
        name, local = escape(site), comparison(study, site, f"local:{site}")
        if finite(local.get("difference")) is None:
            text = (f"At {name}, the effect of federating on AUC <b>could not be measured</b> (its test split has "
                    "one class only, too few images, or the local model is missing).")  # fmt: skip
        else:
            low, high = signed(local.get("ci_low")), signed(local.get("ci_high"))
            text = (f"Federating changed AUC at {name} by <b>{signed(local['difference'])}</b> (95% CI {low} to "
                    f"{high}) compared with training alone on {name}'s own data; {_verdict(local)}")  # fmt: skip
        central = comparison(study, site, "centralized")
        if finite(central.get("difference")) is not None:
            text += (" Against a model trained on all sites' data pooled in one place, the federated model's AUC "
                     f"there differed by {_difference(central)}.")  # fmt: skip
        paragraphs.append(f'<p class="answer">{text}</p>')
    if len(paragraphs) > 1:  # several 95% intervals: one of twenty may exclude zero by chance alone
        paragraphs.append(
            f'<p class="note">Each interval is a 95% interval for its own site, with no correction for looking at '
            f"{len(paragraphs)} sites at once: by chance alone, one interval in twenty excludes zero.</p>"
        )
    return "\n".join(paragraphs) or '<p class="note">The study lists no sites.</p>'


def comparison_table(study: Mapping[str, Any]) -> str:
    """Per site and pooled: each arm's AUC (CI) and the paired differences federated − local / − centralized."""
    headers = ["Test site", "Test images (malignant)", "Local-only own model AUC (95% CI)", "Centralized AUC (95% CI)",
               "Federated AUC (95% CI)", "Federated − local (95% CI)", "Federated − centralized (95% CI)"]  # fmt: skip
    rows = []
    for site in (*study_sites(study), POOLED):
        federated = entry(study, "federated", site)
        local = entry(study, f"local:{site}", site) if site != POOLED else {}
        cells = [
            escape(site),
            f"{fmt(federated.get('num_examples'))} ({fmt(federated.get('num_positives'))})",
            _DASH if site == POOLED else auc_cell(local) if local else "n/a",
            auc_cell(entry(study, "centralized", site)) if entry(study, "centralized", site) else "n/a",
            auc_cell(federated) if federated else "n/a",
            _DASH if site == POOLED else _difference(comparison(study, site, f"local:{site}")),
            _difference(comparison(study, site, "centralized")),
        ]
        rows.append(("pooled" if site == POOLED else "", [*cells[:2], *(_stacked(c) for c in cells[2:])]))
    return html_table(headers, rows, css="figures")


def matrix_table(study: Mapping[str, Any]) -> str:
    """The cross-site matrix as a table: each model's AUC (CI) on each site and pooled; own-site cells bold."""
    columns = [*study_sites(study), POOLED]
    rows = []
    for model in matrix_models(study):
        cells = [_label(study, model)]
        for site in columns:
            item = entry(study, model, site)
            text = auc_cell(item) if item else "n/a"
            cells.append(f"<b>{text}</b>" if model == f"local:{site}" else text)
        rows.append(("", cells))
    if not rows:
        return '<p class="note">The study holds no cross-site results.</p>'
    return html_table(["Model \\ test site", *columns], rows, css="figures")


def loso_table(study: Mapping[str, Any]) -> str:
    """Per held-out site: the federated model's AUC there, the LOSO model's, and the paired drop."""
    rows = []
    for site in study_sites(study):
        key = f"loso:{site}"
        if key not in mapping(study.get("models")) and key not in mapping(study.get("matrix")):
            continue
        federated, loso = entry(study, "federated", site), entry(study, key, site)
        drop = _difference(comparison(study, site, key))
        rows.append(("", [escape(site), auc_cell(federated) if federated else "n/a",
                          auc_cell(loso) if loso else "n/a", drop]))  # fmt: skip
    if not rows:
        return '<p class="note">No leave-one-site-out models in this study (they need at least two sites).</p>'
    if held_out := mapping(study.get("held_out_pooled")):
        federated = entry(study, "federated", POOLED)
        rows.append(("pooled", ["pooled (each site scored by the model that never saw it)",
                                auc_cell(federated) if federated else "n/a", auc_cell(held_out), _DASH]))  # fmt: skip
    headers = ["Held-out site", "Federated AUC there (95% CI)", "AUC without the site (95% CI)",
               "Drop: federated − held out (95% CI)"]  # fmt: skip
    return html_table(headers, rows, css="figures")


def calibration_table(study: Mapping[str, Any]) -> str:
    """Brier score and ECE of each model on each site and pooled (calibration, else the matrix entry)."""
    columns = [*study_sites(study), POOLED]
    calibration = mapping(study.get("calibration"))
    models = [m for m in mapping(study.get("models")) if m in calibration] or list(calibration)
    rows = []
    for model in models:
        cells = [_label(study, model)]
        for site in columns:
            item, fallback = mapping(mapping(calibration.get(model)).get(site)), entry(study, model, site)
            brier, ece = (item.get(k, fallback.get(k)) for k in ("brier", "ece"))
            cells.append(f"{fmt(finite(brier))} / {fmt(finite(ece))}")
        rows.append(("", cells))
    if not rows:
        return '<p class="note">The study holds no calibration results.</p>'
    return html_table(["Model", *(f"{site}: Brier / ECE" for site in columns)], rows, css="figures")


def subgroup_table(study: Mapping[str, Any], model: str = "federated", minimum: Any = None) -> str:
    """``model``'s results per site (and pooled) per subgroup; groups too small to score show no figure."""
    subgroups = mapping(mapping(study.get("subgroups")).get(model))
    rows = []
    for site in (*study_sites(study), POOLED):
        for attribute, groups in mapping(subgroups.get(site)).items():
            for value, item in mapping(groups).items():
                item = mapping(item)
                start = [escape(site), escape(str(attribute)), escape(str(value))]
                if item.get("too_small") or finite(item.get("num_examples")) is None:
                    why = "held back" if item.get("withheld") else "too small"
                    small = f"{why} (n={fmt(item.get('num_examples'))})"
                    rows.append(("pooled" if site == POOLED else "", [*start, small, *([_DASH] * 4)]))
                    continue
                withheld = finite(item.get("num_withheld"))
                figures = [fmt(item.get(k)) for k in ("num_examples", "num_positives")]
                figures[0] += f" (+{withheld:.0f} withheld)" if withheld else ""
                metrics = [fmt(finite(item.get(k))) for k in ("sensitivity", "specificity")]
                rows.append(("pooled" if site == POOLED else "", [*start, *figures, auc_cell(item), *metrics]))
    if not rows:
        return '<p class="note">The study holds no subgroup results (the sites\' data has no such fields).</p>'
    headers = ["Test site", "Attribute", "Group", "Test images", "Malignant", "AUC (95% CI)", "Sensitivity",
               "Specificity"]  # fmt: skip
    note = f" with fewer than {fmt(minimum)} test images" if finite(minimum) is not None else " too small"
    return (f'<p class="note">Groups{note} are not scored: any figure from them would be noise. A site keeps such '
            "a group's scores to itself, so a pooled group covers only the sites where it was large enough "
            '("withheld": the images the other sites kept back). "Held back": a large group the site did not '
            "report because the whole test split minus it would give away a small group.</p>"
            + html_table(headers, rows, css="figures"))  # fmt: skip


def _epsilon(info: Mapping[str, Any]) -> str:
    if not isinstance(info.get("epsilon"), Mapping):
        return "n/a"
    spent = info["epsilon"]
    if not spent:
        return "no DP"
    return ", ".join(f"{escape(str(site))} {fmt(finite(value), 2)}" for site, value in spent.items())


def training_table(study: Mapping[str, Any]) -> str:
    """How each model was trained: kind, sites, rounds, seconds and the privacy spent per site."""
    rows = []
    for model, info in mapping(study.get("models")).items():
        info = mapping(info)
        trained_on = info.get("trained_on") if isinstance(info.get("trained_on"), list) else []
        flag = info.get("trained")
        trained = (
            "yes"
            if flag is True
            else "no: every round failed, its initial weights were scored"
            if flag is False
            else "n/a"
        )
        cells = [escape(str(info.get("label") or model)), escape(str(info.get("kind", "n/a"))),
                 escape(", ".join(str(s) for s in trained_on) or "n/a"), fmt(info.get("rounds")),
                 fmt(finite(info.get("seconds")), 1), _epsilon(info), escape(trained)]  # fmt: skip
        rows.append(("warn" if info.get("trained") is False else "", cells))
    if not rows:
        return '<p class="note">The study lists no models.</p>'
    return html_table(["Model", "Kind", "Trained on", "Rounds", "Seconds", "ε per site", "Trained"], rows, css="text")


def failures_table(study: Mapping[str, Any]) -> str:
    """Failed and declined rounds of every model, or a sentence saying there were none."""
    if not isinstance(study.get("failures"), list):
        return '<p class="note">The study does not record its failures.</p>'
    failures = [mapping(f) for f in study["failures"] if isinstance(f, Mapping)]
    if not failures:
        return "<p>None: every round of every model succeeded.</p>"
    text = lambda value: _DASH if value is None else escape(str(value))  # noqa: E731
    rows = [
        ("warn", [text(f.get("stage")), _DASH if f.get("model") is None else _label(study, str(f["model"])),
                  text(f.get("site")), text(f.get("round")), "declined" if f.get("declined") else "failed",
                  text(f.get("error"))])
        for f in failures
    ]  # fmt: skip
    return html_table(["Stage", "Model", "Site", "Round", "Outcome", "Reason"], rows, css="text")
