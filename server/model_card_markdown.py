"""The human-readable Markdown of a model card, rendered from the card's JSON alone (`render_markdown`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

__all__ = ["render_markdown"]

_KIND_TEXT = {
    "federated-global-model": "the global model of a federated training run (fedmammo)",
    "study-arm-model": "one model of a fedmammo cross-site generalization study",
}
_RESULT_COLUMNS = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("ppv", "PPV"), ("npv", "NPV"),
                   ("threshold", "Threshold"))  # fmt: skip
_OPTIONAL_COLUMNS = (("breast_auc", "Breast AUC"), ("exam_auc", "Exam AUC"),
                     ("loc_hit_rate", "Pointing-game hit rate"), ("loc_mean_iou", "Mean box IoU"))  # fmt: skip
"""Figures a run has only with studies of several views or lesion marks: a column when some entry holds one."""


def _cell(value: Any, digits: int = 3) -> str:
    """A table cell: numbers rounded, None/NaN as n/a, text with its pipes escaped and on one line."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** (-digits) or value == 0 else f"{value:.2g}"
    text = str(value).replace("\r", " ").replace("\n", " ").replace("|", "\\|").replace("<", "&lt;")
    return text or "n/a"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _section(card: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = card.get(key)
    return value if isinstance(value, Mapping) else {}


def _model(card: Mapping[str, Any]) -> list[str]:
    model, data = _section(card, "model"), _section(card, "data")
    names = model.get("class_names") or []
    size = data.get("image_size")
    seed = _section(card, "config").get("seed")
    spacing = _cell(data.get("pixel_spacing_mm")) if data.get("pixel_spacing_mm") else "each file's own"
    rows = [
        ("Architecture", _cell(model.get("name"))),
        ("Normalization", _cell(model.get("norm"))),
        ("Classes (by index)", _cell(", ".join(f"{i} {n}" for i, n in enumerate(names)))
         + (f"; headline: {_cell(names[-1])} against the rest" if names else "")),
        ("Input", f"{_cell(model.get('in_channels'))} channel, {_cell(size)} x {_cell(size)} pixels"),
        ("Preprocessing version", _cell(data.get("preprocess_version"))),
        ("Pixel spacing (mm)", spacing),
        ("Presentation intent", _cell(data.get("presentation_intent"))),
        ("Initial weights", _cell(model.get("initial_weights") or f"random initialisation (seed {seed})")),
    ]  # fmt: skip
    return ["## Model", "", *_table(["", ""], [list(row) for row in rows])]


def _limits(card: Mapping[str, Any]) -> list[str]:
    lines = ["## Intended use and limits", "", f"**{_cell(card.get('intended_use'))}**", "", "Known limits:", ""]
    return lines + [f"- {_cell(text)}" for text in card.get("limitations") or []] + [""]


def _training(card: Mapping[str, Any]) -> list[str]:
    training = _section(card, "training")
    params = ", ".join(f"{k} {_cell(v)}" for k, v in (training.get("strategy_parameters") or {}).items())
    personal = training.get("personalization") if isinstance(training.get("personalization"), Mapping) else {}
    kinds = [k for k, on in (("FedBN", personal.get("fedbn")), ("fine-tuning", personal.get("fine_tune_epochs"))) if on]
    rows = [
        ("Rounds", f"{_cell(training.get('rounds_planned'))} planned; final round "
         f"{_cell(training.get('final_round'))}"
         + ("" if training.get("trained", True) else "; no round produced a model: these are the initial weights")),
        ("Strategy", _cell(training.get("strategy")) + (f" ({params})" if params else "")),
        ("Local training", f"{_cell(training.get('local_epochs'))} epoch(s) a round, batch "
         f"{_cell(training.get('batch_size'))}, learning rate {_cell(training.get('learning_rate'))} "
         f"({_cell(training.get('optimizer'))}), class weights {_cell(training.get('class_weights'))}"),
        ("Personalization", ", ".join(kinds) + (f": {_cell(personal['note'])}" if personal.get("note") else "")
         if kinds else "none"),
        ("Secure aggregation", _cell(training.get("secure_aggregation"))),
        ("Duration", f"{_cell(training.get('duration_s'), 0)} s"),
    ]  # fmt: skip
    arm = training.get("arm") if isinstance(training.get("arm"), Mapping) else None
    if arm:
        rows.insert(
            0,
            ("Study model", f"{_cell(arm.get('label'))} (trained on {_cell(', '.join(arm.get('trained_on') or []))})"),
        )
    return ["## Training", "", *_table(["", ""], [list(row) for row in rows])]


def _counts(entry: Mapping[str, Any], split: str) -> str:
    images, patients = entry.get("images"), entry.get("patients")
    if not isinstance(images, Mapping):
        return "n/a"
    who = f" ({_cell(patients.get(split))} patient(s))" if isinstance(patients, Mapping) else ""
    return f"{_cell(images.get(split))}{who}"


def _balance(entry: Mapping[str, Any], split: str) -> str:
    labels = entry.get("labels")
    if not isinstance(labels, Mapping) or not isinstance(labels.get(split), Mapping):
        return "n/a"
    return ", ".join(f"{_cell(name)} {_cell(n)}" for name, n in labels[split].items())


def _sites(card: Mapping[str, Any]) -> list[str]:
    sites, pooled = _section(card, "sites"), _section(card, "pooled")
    role = any("trained_on" in entry for entry in sites.values())
    headers = ["Site", *(["Role"] if role else []), "Train images", "Val images", "Test images",
               "Train cases per class", "Test cases per class", "ε", "δ"]  # fmt: skip
    rows = []
    totals = [("**all sites**", pooled)] if isinstance(pooled.get("images"), Mapping) else []
    for site, entry in [*((_cell(site), entry) for site, entry in sites.items()), *totals]:
        cells = [site, *([("trained on" if entry.get("trained_on") else "scored only")] if role else [])]
        cells += [_counts(entry, s) for s in ("train", "val", "test")]
        cells += [
            _balance(entry, "train"),
            _balance(entry, "test"),
            _cell(entry.get("epsilon"), 2),
            _cell(entry.get("delta")),
        ]
        rows.append(cells)
    note = "No identifiers: counts only, under the names the sites chose."
    return ["## Training sites", "", note, "", *(_table(headers, rows) if rows else ["No site is recorded.", ""])]


def _privacy(card: Mapping[str, Any]) -> list[str]:
    privacy = _section(card, "privacy")
    if privacy.get("mode") == "none":
        return ["## Privacy", "", "Differential privacy was **off**: there is no privacy guarantee.", ""]
    keys = ("mode", "guarantee", "noise_multiplier", "target_epsilon", "max_grad_norm", "central_clipping",
            "update_clip_norm", "delta", "accountant", "epsilon_central")  # fmt: skip
    rows = [[key, _cell(privacy[key])] for key in keys if key in privacy and not isinstance(privacy[key], Mapping)]
    if isinstance(privacy.get("noise_multiplier"), Mapping):
        rows.append(
            ["noise_multiplier", ", ".join(f"{_cell(s)} {_cell(v)}" for s, v in privacy["noise_multiplier"].items())]
        )
    per_site = privacy.get("epsilon_per_site") or {}
    rows.append(["epsilon per site", ", ".join(f"{_cell(s)} {_cell(v, 2)}" for s, v in per_site.items()) or "n/a"])
    return ["## Privacy", "", "Smaller ε is more private; the guarantee fails with probability at most δ.", "",
            *_table(["", ""], rows)]  # fmt: skip


def _auc(metrics: Mapping[str, Any]) -> str:
    auc, low, high = (_cell(metrics.get(k)) for k in ("auc", "auc_ci_low", "auc_ci_high"))
    return f"{auc} ({low}-{high})" if "n/a" not in (low, high) else f"{auc} (CI n/a)"


def _results(card: Mapping[str, Any]) -> list[str]:
    entries = [(str(site), entry) for site, entry in _section(card, "sites").items()]
    pooled = _section(card, "pooled")
    entries += [("**pooled**", pooled)] if pooled.get("metrics") else []
    figures = [entry["metrics"] for _, entry in entries if isinstance(entry.get("metrics"), Mapping)]
    columns = [*_RESULT_COLUMNS, *(c for c in _OPTIONAL_COLUMNS if any(f.get(c[0]) is not None for f in figures))]
    headers = ["Site", "Round", "Test images", "Positives", "AUC (95% CI)", *(t for _, t in columns)]
    rows = []
    for site, entry in entries:
        metrics = entry.get("metrics") if isinstance(entry.get("metrics"), Mapping) else {}
        if not metrics:
            continue
        cells = [site if site == "**pooled**" else _cell(site), _cell(entry.get("round")),
                 _cell(metrics.get("num_examples")), _cell(metrics.get("num_positives")), _auc(metrics)]  # fmt: skip
        rows.append(cells + [_cell(metrics.get(key)) for key, _ in columns])
    text = ("Each site scored the model on its own test split; pooled treats all sites' test images as one population "
            "(from summed score histograms). The 95% intervals are bootstrap intervals.")  # fmt: skip
    return ["## Results", "", text, "", *(_table(headers, rows) if rows else ["No evaluation is recorded.", ""])]


def render_markdown(card: Mapping[str, Any]) -> str:
    """The Markdown of ``card`` (a written weights card): what the file is, before anyone trusts it.

    Sections: model, intended use and limits, training, training sites, privacy, results with confidence
    intervals, libraries, the weights' SHA-256 and the whole config (collapsed). Every value comes from ``card``.
    """
    weights = _section(card, "weights")
    name = _cell(weights.get("file") or "model")
    kind = _KIND_TEXT.get(str(card.get("kind")), _cell(card.get("kind")))
    lines = [f"# Model card: {name}", "", f"{name} is {kind}. Card written {_cell(card.get('created'))}.", ""]
    lines += _model(card) + _limits(card) + _training(card) + _sites(card) + _privacy(card) + _results(card)
    libraries = [[_cell(k), _cell(v)] for k, v in _section(card, "libraries").items()]
    lines += ["## Libraries", "", *_table(["Library", "Version"], libraries)]
    lines += [
        "## Weights", "", f"- File: `{name}`, {_cell(weights.get('bytes'))} bytes",
        f"- SHA-256: `{_cell(weights.get('sha256'))}`", "",
        f"Check it with `sha256sum {name}`. A run given this file as `model.weights_path` refuses it when the bytes "
        "differ from this card (the JSON beside it), or when its model name or normalization differ.", "",
    ]  # fmt: skip
    config = yaml.safe_dump(dict(_section(card, "config")), sort_keys=False, default_flow_style=False)
    lines += ["## Configuration", "", "<details><summary>The run's whole configuration</summary>", "", "```yaml",
              config.rstrip(), "```", "", "</details>", ""]  # fmt: skip
    return "\n".join(lines)
