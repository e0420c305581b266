"""Tests for server.report: NaN-safe run files, and plots plus report.html built from them alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.metrics import METRIC_KEYS, ScoreHistogram, binary_metrics, histogram_metrics
from server.report import (
    EPSILON_PLOT,
    LOSS_PLOT,
    METRICS_PLOT,
    POOLED_SITE,
    ROC_PLOT,
    RunDirectory,
    build_report,
)
from server.report.plots import plot_metrics_per_round, plot_roc_per_site

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL_SITE = "<script>alert(1)</script>"
SITES = ("hospital-a", EVIL_SITE)


def _site_data(index: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    labels = rng.integers(0, 2, n)
    return labels, np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)


def _write_fake_run(path: Path, *, privacy: bool = True) -> RunDirectory:
    """Two sites, three rounds, one NaN metric, final histograms and a summary: what the server writes."""
    run = RunDirectory(path)
    run.write_config({"model": {"name": "small_cnn"}, "strategy": {"num_rounds": 3}, "privacy": {"enabled": privacy}})
    histograms = {}
    for round_ in (1, 2, 3):
        rows = []
        for index, site in enumerate(SITES):
            labels, scores = _site_data(index)
            metrics = binary_metrics(labels, scores, bootstrap=100)
            if round_ == 2 and index == 1:
                metrics["auc"] = float("nan")
            epsilon = 0.8 * round_ + index if privacy else 0.0
            rows.append({"round": round_, "phase": "train", "site": site, "num_examples": 100,
                         "train_loss": 0.7 - 0.1 * round_, "epsilon": epsilon, "seconds": 1.5})  # fmt: skip
            rows.append(
                {"round": round_, "phase": "evaluate", "site": site, "num_examples": 40, "loss": 0.6, **metrics}
            )
            histograms[site] = ScoreHistogram.from_scores(labels, scores)
        pooled = histograms[SITES[0]] + histograms[SITES[1]]
        rows.append({"round": round_, "phase": "train", "site": POOLED_SITE, "num_examples": 200,
                     "train_loss": 0.65 - 0.1 * round_, "epsilon": 0.8 * round_ + 1 if privacy else 0.0})  # fmt: skip
        rows.append({"round": round_, "phase": "evaluate", "site": POOLED_SITE, "num_examples": 80, "loss": 0.6,
                     **histogram_metrics(pooled, bootstrap=100)})  # fmt: skip
        run.append_metrics(rows)
    run.write_roc(3, histograms)
    last = {r["site"]: r for r in run.read_metrics() if r["phase"] == "evaluate" and r["round"] == 3}
    run.write_summary(
        {
            "num_rounds": 3,
            "model": "small_cnn",
            "sites": {s: {**last[s], "epsilon": 2.4 + i if privacy else 0.0} for i, s in enumerate(SITES)},
            "pooled": {**last[POOLED_SITE], "epsilon": 3.4 if privacy else 0.0},
            "duration_s": 12.5,
            "privacy": {"enabled": privacy, "delta": 1e-5, "noise_multiplier": 1.1, "max_grad_norm": 1.0},
        }
    )
    return run


@pytest.fixture
def fake_run(tmp_path: Path) -> RunDirectory:
    return _write_fake_run(tmp_path / "run")


def test_run_directory_creates_folder_and_checkpoints(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "new" / "run")

    assert run.checkpoints_dir.is_dir()
    assert run.metrics_path.name == "metrics.jsonl" and run.summary_path.parent == run.path


def test_metrics_nan_is_written_as_null_and_read_back_as_nan(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)

    run.append_metrics([{"round": 1, "phase": "evaluate", "site": "a", "auc": float("nan"), "num_examples": 3}])
    run.append_metrics([{"round": 1, "phase": "train", "site": "a", "epsilon": math.inf, "num_examples": np.int64(9)}])
    lines = run.metrics_path.read_text().splitlines()
    rows = run.read_metrics()

    assert '"auc": null' in lines[0] and "NaN" not in lines[0]
    assert json.loads(lines[1])["epsilon"] == "Infinity"
    assert math.isnan(rows[0]["auc"]) and rows[0]["num_examples"] == 3
    assert rows[1]["epsilon"] == math.inf and rows[1]["num_examples"] == 9


def test_append_keeps_earlier_lines_and_skips_a_truncated_one(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.append_metrics([{"round": 1, "phase": "train", "site": "a", "train_loss": 0.5}])
    run.append_metrics([{"round": 2, "phase": "train", "site": "a", "train_loss": 0.4}])
    with run.metrics_path.open("a") as handle:
        handle.write('{"round": 3, "pha')  # a crash mid-write

    rows = run.read_metrics()

    assert [r["round"] for r in rows] == [1, 2]


def test_append_refuses_rows_without_round_phase_or_site(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)

    with pytest.raises(ValueError, match="'phase' = 'fit' must be one of"):
        run.append_metrics([{"round": 1, "phase": "fit", "site": "a"}])
    assert run.read_metrics() == []


def test_summary_and_roc_round_trip(fake_run: RunDirectory) -> None:
    summary = fake_run.read_summary()
    roc = fake_run.read_roc()

    assert summary is not None and summary["num_rounds"] == 3 and summary["privacy"]["delta"] == 1e-5
    assert set(summary["sites"]) == set(SITES)
    assert roc is not None and roc.round == 3 and set(roc.sites) == set(SITES)
    assert roc.pooled == roc.sites[SITES[0]] + roc.sites[SITES[1]]
    assert fake_run.read_config()["model"]["name"] == "small_cnn"


def test_summary_nan_round_trip(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)

    run.write_summary({"pooled": {"auc": float("nan"), "epsilon": 1.5}, "model": "resnet18"})

    assert json.loads(run.summary_path.read_text())["pooled"]["auc"] is None
    assert math.isnan(run.read_summary()["pooled"]["auc"])


def test_write_roc_refuses_no_sites(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one site"):
        RunDirectory(tmp_path).write_roc(1, {})


def test_build_report_writes_plots_and_html(fake_run: RunDirectory) -> None:
    report = build_report(fake_run.path)

    html_text = report.read_text()
    for name in (ROC_PLOT, METRICS_PLOT, EPSILON_PLOT, LOSS_PLOT):
        data = (fake_run.path / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
        assert f'src="{name}"' in html_text
    summary = fake_run.read_summary()
    assert f"{summary['pooled']['auc']:.3f}" in html_text
    assert "hospital-a" in html_text and "epsilon" in html_text.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<script>" not in html_text
    assert "<td>n/a</td>" in html_text.split("Per-round results")[1]  # the NaN AUC of round 2


def test_build_report_without_privacy_or_roc_says_so(tmp_path: Path) -> None:
    run = _write_fake_run(tmp_path / "run", privacy=False)
    (run.path / EPSILON_PLOT).write_bytes(b"stale")
    run.roc_path.unlink()

    html_text = build_report(run.path).read_text()

    assert "no ROC data" in html_text.replace("No ROC data", "no ROC data")
    assert "Differential privacy was off" in html_text
    assert not (run.path / EPSILON_PLOT).exists() and not (run.path / ROC_PLOT).exists()
    assert (run.path / METRICS_PLOT).exists()


def test_build_report_from_metrics_alone(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "crashed")
    labels, scores = _site_data(0)
    run.append_metrics([{"round": 1, "phase": "evaluate", "site": "a", **binary_metrics(labels, scores)}])

    html_text = build_report(run.path).read_text()

    assert f"{binary_metrics(labels, scores)['auc']:.3f}" in html_text
    assert set(binary_metrics(labels, scores)) == set(METRIC_KEYS)


def test_build_report_refuses_a_missing_folder_without_creating_it(tmp_path: Path) -> None:
    from server.report import RunFolderError

    with pytest.raises(RunFolderError, match="does not exist"):
        build_report(tmp_path / "typo" / "run")
    assert not (tmp_path / "typo").exists()


def test_plots_accept_site_names_that_look_like_matplotlib_math(tmp_path: Path) -> None:
    site = "St. Mary's $x_1$ unit"
    labels, scores = _site_data(1)
    hist = ScoreHistogram.from_scores(labels, scores)
    rows = [{"round": 1, "phase": "evaluate", "site": site, **binary_metrics(labels, scores, bootstrap=0)}]

    roc = plot_roc_per_site({site: hist}, hist, tmp_path / "roc.png")
    per_round = plot_metrics_per_round(rows, tmp_path / "metrics.png")

    assert roc.read_bytes().startswith(PNG_SIGNATURE) and per_round.read_bytes().startswith(PNG_SIGNATURE)


def test_roc_legend_labels_take_the_tables_auc_and_fall_back_to_the_histogram() -> None:
    from common.metrics import histogram_auc
    from server.report.plots import roc_labels

    labels, scores = _site_data(0)
    hist = ScoreHistogram.from_scores(labels, scores)
    one_class = ScoreHistogram.from_scores(np.zeros(5, dtype=int), np.linspace(0.1, 0.9, 5))

    legend = roc_labels({"a": hist, "b": hist, "c": one_class}, {"a": 0.891, "b": float("nan")})

    assert legend == {
        "a": "a (AUC 0.891)",
        "b": f"b (AUC {histogram_auc(hist):.3f})",
        "c": "c (AUC n/a: one class only)",
    }


def test_the_roc_legend_shows_the_results_tables_auc(fake_run: RunDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.report.builder as builder
    from common.metrics import histogram_auc
    from server.report.plots import ROC_NOTE, roc_labels

    seen: dict[str, float] = {}

    def spy(*args, aucs=None, **kwargs):
        seen.update(aucs or {})
        return plot_roc_per_site(*args, aucs=aucs, **kwargs)

    monkeypatch.setattr(builder, "plot_roc_per_site", spy)
    summary, roc = fake_run.read_summary(), fake_run.read_roc()

    html_text = build_report(fake_run.path).read_text()
    legend = roc_labels({**roc.sites, POOLED_SITE: roc.pooled}, seen)

    table = {**summary["sites"], POOLED_SITE: summary["pooled"]}
    assert seen == {site: entry["auc"] for site, entry in table.items()}
    for site, entry in table.items():
        assert f"(AUC {entry['auc']:.3f})" in legend[site] and f"{entry['auc']:.3f}" in html_text
    binned = histogram_auc(roc.sites["hospital-a"])  # differs from the exact 0.954 in the third decimal
    assert f"{binned:.3f}" != f"{table['hospital-a']['auc']:.3f}" and f"{binned:.3f}" not in legend["hospital-a"]
    assert "Curves drawn from binned score histograms; AUC as in the table." in html_text
    assert ROC_NOTE == "curves drawn from binned score histograms; AUC as in the table"


def test_a_site_whose_figures_are_older_than_the_roc_keeps_its_curves_auc() -> None:
    from server.report.plots import legend_aucs

    results = {"a": {"round": 3, "auc": 0.9}, "b": {"round": 2, "auc": 0.7}, POOLED_SITE: {"round": 3, "auc": 0.8}}

    headline, per_class = legend_aucs(results, 3)

    assert headline == {"a": 0.9, POOLED_SITE: 0.8} and per_class == []


def test_report_says_how_the_decision_threshold_was_chosen(tmp_path: Path) -> None:
    from server.report import RunDirectory, build_report

    val_run = RunDirectory(tmp_path / "val")
    val_run.write_config({"evaluation": {"operating_point": "val_specificity", "target_specificity": 0.9}})
    fixed_run = RunDirectory(tmp_path / "fixed")
    fixed_run.write_config({"evaluation": {"operating_point": "fixed", "threshold": 0.3}})

    val_html = build_report(val_run.path).read_text()
    fixed_html = build_report(fixed_run.path).read_text()

    assert "chose on its own validation split" in val_html
    assert "a fixed score threshold of 0.3" in fixed_html


def test_declined_rounds_are_listed_apart_from_failures(tmp_path: Path) -> None:
    from server.report import RunDirectory, build_report

    run = RunDirectory(tmp_path / "run")
    run.append_metrics(
        [
            {
                "round": 2,
                "phase": "train",
                "site": "site-1",
                "declined": True,
                "error": "site-1: PrivacyBudgetExceeded",
            },
            {"round": 2, "phase": "train", "site": "site-2", "declined": False, "error": "site-2: ManifestError"},
        ]
    )

    html_text = build_report(run.path).read_text()

    declined_at = html_text.index("declined by a site&#x27;s privacy ceiling")
    failed_at = html_text.index("Failed site replies")
    assert html_text.index("PrivacyBudgetExceeded") > declined_at and html_text.index("ManifestError") > failed_at


def test_a_skipped_round_is_listed_as_the_rounds_not_a_sites(tmp_path: Path) -> None:
    from server.report import RunDirectory, build_report
    from server.round_quorum import skipped_row

    run = RunDirectory(tmp_path / "run")
    run.append_metrics([skipped_row(3, "train", "pooled", "1 usable training reply; strategy.min_nodes is 2")])

    html_text = build_report(run.path).read_text()

    skipped_at = html_text.index("Rounds skipped (too few sites)")
    assert "<li>round 3, train: round skipped: 1 usable training reply; strategy.min_nodes is 2</li>" in html_text
    assert html_text.index("round skipped") > skipped_at and "site pooled" not in html_text


CLASSES = ("normal", "benign", "malignant")


def _write_three_class_run(path: Path) -> RunDirectory:
    """A finished 3-class run as the server writes it: flat per-class rows, nested summary, per-class roc.json."""
    from common import wire
    from common.config import load_config
    from common.metrics import ClassEvaluation
    from server.summary import build_summary

    run = RunDirectory(path)
    run.write_config({"model": {"name": "small_cnn", "num_classes": 3, "class_names": ""}})
    evaluations, rows = {}, []
    for index, site in enumerate(SITES):
        rng = np.random.default_rng(index)
        labels = rng.integers(0, 3, 60)
        logits = rng.normal(size=(60, 3))
        logits[np.arange(60), labels] += 1.5
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        evaluations[site] = ClassEvaluation.from_predictions(labels, probs, bootstrap=50)
        headline = binary_metrics((labels == 2).astype(int), probs[:, 2], bootstrap=50)
        rows.append({"round": 1, "phase": "evaluate", "site": site, "num_examples": 60, **headline})
    pooled = ClassEvaluation.pooled(list(evaluations.values()), bootstrap=50)
    malignant = evaluations[SITES[0]].histograms[2] + evaluations[SITES[1]].histograms[2]
    rows.append({"round": 1, "phase": "evaluate", "site": POOLED_SITE, "num_examples": 120,
                 **histogram_metrics(malignant)})  # fmt: skip
    for row, evaluation in zip(rows, [*evaluations.values(), pooled], strict=True):
        row.update({k: v for k, v in evaluation.to_flat().items() if not isinstance(v, list)})
        row[wire.CONFUSION_MATRIX] = evaluation.confusion.tolist()
    run.append_metrics(rows)
    run.write_roc(
        1, {s: e.histograms[2] for s, e in evaluations.items()}, {s: e.histograms for s, e in evaluations.items()}
    )
    config = load_config({"model.num_classes": 3, "privacy.mode": "none"})
    run.write_summary(build_summary(config, run.read_metrics(), duration_s=3.0))
    return run


def test_a_three_class_run_reports_per_class_auc_confusion_matrices_and_per_class_roc(tmp_path: Path) -> None:
    from server.report.plots import CLASS_ROC_PLOT

    run = _write_three_class_run(tmp_path / "run")
    summary = run.read_summary()
    roc = run.read_roc()

    html_text = build_report(run.path).read_text()

    assert roc is not None and len(roc.class_pooled) == 3 and set(roc.class_sites) == set(SITES)
    assert roc.class_pooled[0] == roc.class_sites[SITES[0]][0] + roc.class_sites[SITES[1]][0]
    section = html_text.split("Per-class results (each class vs the rest)")[1].split("How to read")[0]
    for name in CLASSES:
        assert f"{name} AUC (95% CI)" in section
        pooled_auc = summary["pooled"]["per_class"][name]["auc"]
        assert f"{pooled_auc:.3f}" in section
    assert f"{summary['pooled']['macro_auc']:.3f}" in section
    assert section.count('<table class="confusion">') == 3  # two sites and pooled
    pooled_matrix = summary["pooled"]["confusion_matrix"]
    assert f"{pooled_matrix[2][2]} (" in section.split("<b>pooled</b>")[1]
    assert "&lt;script&gt;" in section and "<script>" not in html_text
    assert (
        "<b>malignant</b> vs the rest (normal, benign)" in html_text
        and "malignant versus all other classes" in html_text
    )
    assert (run.path / CLASS_ROC_PLOT).read_bytes().startswith(PNG_SIGNATURE)
    assert f'src="{CLASS_ROC_PLOT}"' in html_text
    assert "AUC as in the per-class table" in html_text


def test_the_per_class_roc_legends_show_the_per_class_tables_auc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.report.builder as builder
    from server.report.plots import plot_roc_per_class

    run = _write_three_class_run(tmp_path / "run")
    summary = run.read_summary()
    seen: list = []

    def spy(*args, aucs=(), **kwargs):
        seen.extend(aucs)
        return plot_roc_per_class(*args, aucs=aucs, **kwargs)

    monkeypatch.setattr(builder, "plot_roc_per_class", spy)

    build_report(run.path)

    assert len(seen) == len(CLASSES)
    for index, name in enumerate(CLASSES):
        assert seen[index][POOLED_SITE] == summary["pooled"]["per_class"][name]["auc"]
        assert seen[index][SITES[0]] == summary["sites"][SITES[0]]["per_class"][name]["auc"]


def test_a_binary_run_has_no_per_class_section_and_old_run_folders_still_render(fake_run: RunDirectory) -> None:
    from server.report.plots import CLASS_ROC_PLOT

    html_text = build_report(fake_run.path).read_text()  # the fake run's files predate per-class results

    assert "Per-class results" not in html_text and "vs the rest" not in html_text
    assert not (fake_run.path / CLASS_ROC_PLOT).exists()


def test_a_three_class_report_from_metrics_alone_reads_the_flat_rows(tmp_path: Path) -> None:
    run = _write_three_class_run(tmp_path / "run")
    run.summary_path.unlink()
    run.roc_path.unlink()

    html_text = build_report(run.path).read_text()

    assert "Per-class results" in html_text and html_text.count('<table class="confusion">') == 3
    assert "benign AUC (95% CI)" in html_text  # names from the run's config when summary.json is missing


def test_every_config_value_the_report_shows_is_escaped(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    run.write_config(
        {
            "model": {"name": "<img src=x onerror=alert(1)>"},
            "evaluation": {"operating_point": "fixed", "threshold": "<script>alert(1)</script>"},
            "privacy": {"mode": "<b>local</b>", "delta": "<i>tiny</i>"},
        }
    )

    html_text = build_report(run.path).read_text()

    assert "<script>" not in html_text and "<img" not in html_text and "<b>local" not in html_text
    assert "a fixed score threshold of &lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "&lt;img src=x onerror=alert(1)&gt;" in html_text


def _late_failure_rows() -> list[dict]:
    """Sites a and b in round 1; in round 2 b's evaluation failed, so round 2's pooled row is a alone."""
    labels, scores = _site_data(0)
    metrics = binary_metrics(labels, scores, bootstrap=0)
    return [
        {"round": 1, "phase": "evaluate", "site": "a", "num_examples": 40, **metrics},
        {"round": 1, "phase": "evaluate", "site": "b", "num_examples": 40, **metrics, "auc": 0.91},
        {"round": 1, "phase": "evaluate", "site": POOLED_SITE, "num_examples": 80, **metrics},
        {"round": 2, "phase": "evaluate", "site": "a", "num_examples": 40, **metrics, "auc": 0.62},
        {"round": 2, "phase": "evaluate", "site": "b", "error": "b: DicomError: unreadable"},
        {"round": 2, "phase": "evaluate", "site": POOLED_SITE, "num_examples": 40, **metrics, "auc": 0.62},
    ]


@pytest.mark.parametrize("with_summary", [True, False])
def test_a_site_that_failed_after_round_1_is_shown_with_its_round_and_why(tmp_path: Path, with_summary: bool) -> None:
    from common.config import load_config
    from server.summary import build_summary

    run = RunDirectory(tmp_path / "run")
    run.append_metrics(_late_failure_rows())
    if with_summary:
        run.write_summary(build_summary(load_config({"strategy.num_rounds": 2}), run.read_metrics(), duration_s=1.0))

    html_text = build_report(run.path).read_text()

    final = html_text.split("Final results of the global model")[1].split("How to read")[0]
    assert "<th>Round</th>" in final
    assert '<tr class="warn"><td>b</td><td>1</td><td>40</td>' in final and "<td>a</td><td>2</td>" in final
    assert "final round (2)" in final and "The pooled row is round 2 over a only." in final
    assert "b: figures from round 1, its last evaluation; round 2 evaluate: b: DicomError: unreadable" in final


def test_a_run_whose_sites_all_finished_has_no_round_column(fake_run: RunDirectory) -> None:
    final = build_report(fake_run.path).read_text().split("Final results of the global model")[1].split("How to")[0]

    assert "<th>Round</th>" not in final and "final round" not in final


def _declined_late_rows() -> list[dict]:
    """Site b spent 3.0 in round 1, then declined round 2 (its ledger's 3.0 on the declined row); a spent 1.5."""
    labels, scores = _site_data(0)
    metrics = binary_metrics(labels, scores, bootstrap=0)
    rows = []
    for site, epsilon in (("a", 1.0), ("b", 3.0)):
        rows.append({"round": 1, "phase": "train", "site": site, "num_examples": 40, "epsilon": epsilon})
        rows.append({"round": 1, "phase": "evaluate", "site": site, "num_examples": 40, **metrics})
    rows.append({"round": 1, "phase": "train", "site": POOLED_SITE, "num_examples": 80, "epsilon": 3.0})
    rows.append({"round": 1, "phase": "evaluate", "site": POOLED_SITE, "num_examples": 80, **metrics})
    rows.append({"round": 2, "phase": "train", "site": "a", "num_examples": 40, "epsilon": 1.5})
    rows.append({"round": 2, "phase": "train", "site": "b", "declined": True, "error": "b: declined", "epsilon": 3.0})
    rows.append({"round": 2, "phase": "train", "site": POOLED_SITE, "num_examples": 40, "epsilon": 1.5})
    return rows


def _epsilon_cells(html_text: str) -> dict[str, str]:
    """The "ε at end" cell (the last) of each row of the final results table, by site."""
    import re

    final = html_text.split("Final results of the global model")[1].split("How to read")[0]
    return {
        site: cells[-1]
        for site, cells in (
            (re.search(r"<td>(?:<b>)?([^<]*)", row).group(1), re.findall(r"<td>([^<]*)</td>", row))
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", final, flags=re.S)
            if "<td>" in row
        )
    }


@pytest.mark.parametrize("with_summary", [True, False])
def test_a_site_that_declined_late_rounds_shows_its_ledgers_epsilon_with_or_without_summary(
    tmp_path: Path, with_summary: bool
) -> None:
    # Prepare: an interrupted run has no summary.json; the report then reads metrics.jsonl alone
    from common.config import load_config
    from server.summary import build_summary

    run = RunDirectory(tmp_path / "run")
    run.write_config({"privacy": {"mode": "local"}})
    run.append_metrics(_declined_late_rows())
    summary = build_summary(load_config({"strategy.num_rounds": 2}), run.read_metrics(), duration_s=1.0)
    if with_summary:
        run.write_summary(summary)
    # Execute
    cells = _epsilon_cells(build_report(run.path).read_text())
    # Assert: the same figures as summary.json: b spent 3.0, and the pooled row is the worst site
    assert summary["sites"]["b"]["epsilon"] == 3.0 and summary["pooled"]["epsilon"] == 3.0
    assert cells["a"] == "1.50" and cells["b"] == "3.00" and cells[POOLED_SITE] == "3.00"


def test_a_round_a_site_sat_out_reads_sat_out_in_the_round_table(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "patched")
    labels, scores = _site_data(0)
    run.append_metrics(
        [
            {"round": 1, "phase": "train", "site": "a", "num_examples": 0, "epsilon": 0.0, "sat_out": "no lesion mark"},
            {"round": 1, "phase": "train", "site": "b", "num_examples": 20, "train_loss": 0.4321, "epsilon": 1.0},
            {"round": 1, "phase": "evaluate", "site": "a", **binary_metrics(labels, scores)},
        ]
    )

    html_text = build_report(run.path).read_text()

    assert html_text.count("sat out") == 1 and "0.432" in html_text
