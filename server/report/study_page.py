"""Builds study.html and its PNGs from a study folder's study.json (what `fedmammo study` writes)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from common.errors import FedMammoError
from server.report.page import fmt, html_table
from server.report.study_plots import (
    COMPARISON_PLOT,
    LOSO_PLOT,
    MATRIX_PLOT,
    RELIABILITY_PLOT,
    STUDY_ROC_PLOT,
    finite,
    mapping,
    plot_comparisons,
    plot_loso,
    plot_reliability,
    plot_study_matrix,
    plot_study_roc,
)
from server.report.study_sections import (
    answer_paragraphs,
    calibration_table,
    comparison_table,
    failures_table,
    loso_table,
    matrix_table,
    subgroup_table,
    training_table,
)

__all__ = ["STUDY_FILE", "STUDY_REPORT", "STUDY_SCHEMA", "StudyFolderError", "build_study_report", "read_study"]

logger = logging.getLogger(__name__)

STUDY_FILE = "study.json"
STUDY_REPORT = "study.html"
STUDY_SCHEMA = 1
"""The study.json schema this module reads (runs/study_schema.md)."""

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .55rem;text-align:right}th{background:#f2f4f7;vertical-align:bottom}
td:first-child,th:first-child{text-align:left}tr.pooled td{font-weight:600;background:#f8f8f0}
tr.warn td{color:#a33}table.figures td{white-space:nowrap}table.text td,table.text th{text-align:left}
.note{color:#555;font-size:.9rem}.ci{color:#555;font-size:.85em}.answer{margin:.4rem 0}
.disclaimer{background:#fff8e6;border-left:4px solid #d9a400;padding:.6rem 1rem}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.9rem}
pre{background:#f6f8fa;padding:.6rem;overflow-x:auto;font-size:.85rem}
"""

_DISCLAIMER = (
    "This is research software, not a medical device: these figures describe models trained in a study and must "
    "not guide the care of any patient. All arms (local-only, centralized, federated) were scored on the same test "
    "images at each site, so the differences between arms are paired: they are more precise than comparing the "
    "arms' separate confidence intervals would suggest. No image or per-image score left any site; pooled figures "
    "come from binned score histograms."
)

_PlotFn = Callable[[Mapping[str, Any], Path], Path | None]


class StudyFolderError(FedMammoError, ValueError):
    """A study folder or its study.json is missing, unreadable or of an unsupported schema; the message names it."""


def read_study(study_dir: str | Path) -> dict[str, Any]:
    """Read and check ``study_dir/study.json``.

    Raises
    ------
    StudyFolderError
        If the folder or the file is missing, the file is not a JSON object, its ``schema`` is not
        `STUDY_SCHEMA`, or its ``sites``, ``models`` or ``matrix`` have the wrong type (every problem listed).
    """
    folder = Path(study_dir)
    path = folder / STUDY_FILE
    if not folder.is_dir():
        raise StudyFolderError(f"{folder} is not a study folder: it does not exist; run `fedmammo study` first")
    if not path.is_file():
        raise StudyFolderError(f"{path} does not exist: a study folder holds {STUDY_FILE}, written by `fedmammo study`")
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyFolderError(f"{path} cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise StudyFolderError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); rerun `fedmammo study`"
        ) from exc
    if not isinstance(study, dict):
        raise StudyFolderError(f"{path} must hold a JSON object, got {type(study).__name__}")
    schema = study.get("schema")
    if isinstance(schema, bool) or schema != STUDY_SCHEMA:
        raise StudyFolderError(
            f"{path}: 'schema' = {schema!r} is not supported; this fedmammo reads study.json schema {STUDY_SCHEMA} "
            "(build the report with the fedmammo version that wrote the study)"
        )
    problems = []
    sites = study.get("sites")
    if not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        problems.append(f"'sites' must be a list of site names, got {sites!r:.80}")
    problems += [f"{key!r} must be an object" for key in ("models", "matrix") if not isinstance(study.get(key), dict)]
    if problems:
        raise StudyFolderError(f"{path} does not follow study.json schema {STUDY_SCHEMA}: " + "; ".join(problems))
    return study


_FIGURES: dict[str, tuple[_PlotFn, str, str]] = {
    COMPARISON_PLOT: (
        plot_comparisons,
        "Differences in AUC per site: federated minus local-only and federated minus centralized, with 95% CIs; "
        "right of the dashed line favours federated.",
        "No comparisons to plot.",
    ),
    MATRIX_PLOT: (
        plot_study_matrix,
        "AUC of every model (rows) on every site's test split (columns); red boxes mark a local model on its own site.",
        "No cross-site results to plot.",
    ),
    LOSO_PLOT: (
        plot_loso,
        "Left: AUC on each site of the federated model and of the model federated without that site. Right: the "
        "paired drop (federated − held out) with its 95% CI.",
        "No leave-one-site-out models to plot.",
    ),
    RELIABILITY_PLOT: (
        plot_reliability,
        "Reliability of the federated model: the observed rate of the positive class against the mean predicted "
        "probability per bin (grey bars: images per bin); points on the diagonal are well calibrated. Pooled: "
        "from binned score histograms.",
        "No calibration results to plot.",
    ),
    STUDY_ROC_PLOT: (
        plot_study_roc,
        "ROC curves of the federated model per site and pooled, drawn from binned score histograms; dots mark the "
        "operating point (each site's threshold, chosen on its validation split). The pooled dot sums the sites' "
        "calls, each at its own threshold, so it can lie off the pooled curve. AUC: exact at sites, binned for pooled.",
        "No score histograms to plot.",
    ),
}


def _figure(folder: Path, name: str, study: Mapping[str, Any]) -> str:
    """Draw one plot into ``folder`` and return its figure; or say why there is none (and delete a stale copy)."""
    draw, caption, missing = _FIGURES[name]
    path = folder / name
    if draw(study, path) is None:
        path.unlink(missing_ok=True)
        return f'<p class="note">{escape(missing)}</p>'
    return (
        f'<figure><a href="{escape(name)}"><img src="{escape(name)}" alt="{escape(caption)}"></a>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _wrap(table: str) -> str:
    return f'<div class="scroll">{table}</div>'


def _about(study: Mapping[str, Any]) -> str:
    versions = mapping(study.get("versions"))
    rows = [("", [escape(str(name)), escape(str(value))]) for name, value in versions.items()]
    config = json.dumps(study.get("config", {}), indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return (
        html_table(["Package", "Version"], rows) if rows else '<p class="note">No versions recorded.</p>'
    ) + f"<details><summary>Configuration of the study</summary><pre>{escape(config)}</pre></details>"


def render_study_page(study: Mapping[str, Any], folder: Path) -> str:
    """The whole study page as a string; draws its plots into ``folder`` on the way."""
    title = f"fedmammo study: {study.get('title') or 'untitled'}"
    positive = escape(str(study.get("positive_class") or "malignant"))
    seconds = finite(study.get("wall_time_s"))
    figure = lambda name: _figure(folder, name, study)  # noqa: E731
    parts = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="note">Created {escape(str(study.get("created", "n/a")))}; took '
        f"{fmt(seconds, 0) if seconds is not None else 'n/a'} s. The score is the model's probability of {positive} "
        "(against all other classes); AUC is the chance that a randomly chosen case of that class is scored above a "
        "randomly chosen other case (0.5 is guessing, 1.0 perfect).</p>",
        f'<p class="disclaimer">{escape(_DISCLAIMER)}</p>',
        "<h2>The answer, site by site</h2>",
        answer_paragraphs(study),
        "<h2>Comparison of the three ways to train</h2>",
        '<p class="note">Each row is one site\'s test split (pooled: all of them together, from histograms). '
        "Local-only: the model that site trained alone; centralized: one model trained on all sites' data in one "
        "place; federated: trained across sites without moving data. Differences are paired bootstrap 95% CIs.</p>",
        _wrap(comparison_table(study)),
        figure(COMPARISON_PLOT),
        "<h2>Does a model travel? The cross-site matrix</h2>",
        figure(MATRIX_PLOT),
        _wrap(matrix_table(study)),
        "<h2>Leave one site out: how does the federation do on a hospital it never saw?</h2>",
        _wrap(loso_table(study)),
        figure(LOSO_PLOT),
        "<h2>Calibration: do the predicted probabilities match how often cancer was found?</h2>",
        '<p class="note">Brier score (mean squared error of the probability; lower is better) and ECE (expected '
        "calibration error: the average gap between predicted and observed rates; lower is better). Pooled "
        "calibration is computed from binned score histograms, not from per-image scores.</p>",
        _wrap(calibration_table(study)),
        figure(RELIABILITY_PLOT),
        "<h2>Subgroups (federated model)</h2>",
        _wrap(subgroup_table(study, minimum=study.get("min_subgroup"))),
        "<h2>ROC curves of the federated model</h2>",
        figure(STUDY_ROC_PLOT),
        "<h2>How each model was trained</h2>",
        _wrap(training_table(study)),
        "<h2>Failures and declined rounds</h2>",
        _wrap(failures_table(study)),
        "<h2>Configuration and versions</h2>",
        _about(study),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def build_study_report(study_dir: Path) -> Path:
    """Draw the study's plots and write ``study.html`` into ``study_dir`` from its study.json; return its path.

    The page is self-contained (inline CSS, PNGs linked relatively next to it, no scripts), so the folder can be
    moved or zipped. Every text from study.json is HTML-escaped; null figures read "n/a".

    Raises
    ------
    StudyFolderError
        If ``study_dir`` or its study.json is missing, unreadable, not JSON or of an unsupported schema.
    """
    folder = Path(study_dir)
    study = read_study(folder)
    path = folder / STUDY_REPORT
    path.write_text(render_study_page(study, folder), encoding="utf-8")
    logger.info("wrote %s", path)
    return path
