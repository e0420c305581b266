"""Exam-level scores: views grouped into breasts and exams, the max/mean/learned rules, and their federated figures."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from sklearn.metrics import roc_auc_score

from client.client_app import app
from client.exam_scores import empty_exam_figures, figures_of
from common import wire
from common.config import load_config
from common.errors import ConfigError
from common.metrics import NUM_SCORE_BINS, ScoreHistogram, ViewScore, exam_scores, group_breasts, several_views
from server.exam_pooling import pool_exam_metrics
from server.report import RunDirectory, build_report
from server.report.exam_section import render_exam_section
from server.strategy import build_strategy
from server.summary import build_summary
from tests.test_client_app import _config, _context, _message

# --- grouping -------------------------------------------------------------------------------------------------


def test_images_group_by_study_and_side_and_images_without_either_stand_alone() -> None:
    # Prepare: two four-view studies, a study with one unlabelled side, and an image without a study id
    records = [
        ViewScore(0.1, 0, "s1", "L", "CC"), ViewScore(0.2, 0, "s1", "left", "MLO"),
        ViewScore(0.3, 0, "s1", "R", "R-CC"), ViewScore(0.4, 1, "s1", "RIGHT", "mediolateral oblique"),
        ViewScore(0.5, 0, "s2", "L", "CC"), ViewScore(0.6, 0, "s2", "", "MLO"), ViewScore(0.7, 0, "s2", " ", ""),
        ViewScore(0.8, 1, "", "L", "CC"),
    ]  # fmt: skip

    # Execute
    breasts = group_breasts(records)
    result = exam_scores(records, "max")

    # Assert: s1 has two breasts of two views; s2's images without a side are breasts of their own
    assert breasts == [
        ("s1", "L", [0, 1]), ("s1", "R", [2, 3]), ("s2", "L", [4]), ("s2", None, [5]), ("s2", None, [6]),
        ("image 7", "L", [7]),
    ]  # fmt: skip
    assert [b.views for b in result.breasts][:2] == [("CC", "MLO"), ("CC", "MLO")]
    assert result.breasts[4].views == (None,)
    assert [(e.study, e.breasts, e.num_images) for e in result.exams] == [
        ("s1", (0, 1), 4), ("s2", (2, 3, 4), 3), ("image 7", (5,), 1),
    ]  # fmt: skip
    assert result.several_views and several_views(records)
    assert not several_views([ViewScore(0.1, 0, "", "L", "CC"), ViewScore(0.2, 0, "", "L", "MLO")])


def test_max_and_mean_rules_and_the_worst_label_per_breast_and_exam() -> None:
    records = [
        ViewScore(0.2, 0, "s1", "L", "CC"), ViewScore(0.6, 0, "s1", "L", "MLO"),
        ViewScore(0.1, 0, "s1", "R", "CC"), ViewScore(0.9, 1, "s1", "R", "MLO"),
        ViewScore(0.4, 0, "s2", "L", "CC"), ViewScore(0.3, 0, "s2", "R", "CC"),
    ]  # fmt: skip

    highest, average = exam_scores(records, "max"), exam_scores(records, "mean")

    assert [b.score for b in highest.breasts] == pytest.approx([0.6, 0.9, 0.4, 0.3])
    assert [e.score for e in highest.exams] == pytest.approx([0.9, 0.4])
    assert [b.score for b in average.breasts] == pytest.approx([0.4, 0.5, 0.4, 0.3])
    assert [e.score for e in average.exams] == pytest.approx([0.45, 0.35])  # (0.4 + 0.5) / 2, (0.4 + 0.3) / 2
    assert [b.label for b in highest.breasts] == [0, 1, 0, 0] and [e.label for e in highest.exams] == [1, 0]
    labels, scores = highest.level("exam")
    assert labels.tolist() == [1, 0] and scores.tolist() == pytest.approx([0.9, 0.4])
    assert highest.auc("exam") == 1.0 and highest.auc("breast") == 1.0
    unlabelled = exam_scores([ViewScore(0.3, None, "s", "L", "CC"), ViewScore(0.5, 0, "s", "L", "MLO")])
    assert unlabelled.breasts[0].label is None and math.isnan(unlabelled.auc("breast"))  # predict: no labels


def test_an_unknown_rule_or_a_score_outside_0_1_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'evaluation.exam_rule' = 'median' is invalid: it must be one of"):
        exam_scores([ViewScore(0.5)], "median")
    with pytest.raises(ValueError, match=r"finite probabilities in \[0, 1\]"):
        exam_scores([ViewScore(1.5)], "max")


# --- the learned rule -----------------------------------------------------------------------------------------


def _two_view_breasts(n: int, seed: int) -> list[ViewScore]:
    """Breasts where the mean tells more than the max: a cancer lifts both views moderately, while a benign breast
    often has one view scored high (an overlapping structure) and the other low."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        label = i % 2
        first, second = rng.uniform(0.45, 0.65, 2) if label else (rng.uniform(0.0, 0.15), rng.uniform(0.3, 0.95))
        records += [ViewScore(first, label, f"s{i}", "L", "CC"), ViewScore(second, label, f"s{i}", "L", "MLO")]
    return records


def test_the_learned_rule_beats_max_where_the_views_mean_tells_more() -> None:
    validation, test = _two_view_breasts(80, seed=1), _two_view_breasts(80, seed=2)

    learned = exam_scores(test, "learned", validation=validation)
    highest = exam_scores(test, "max")

    assert learned.rule.name == "learned" and not learned.rule.fell_back
    assert learned.auc("breast") >= highest.auc("breast") + 0.2  # max: about 0.5 here; learned: about 1
    assert all(0.0 <= b.score <= 1.0 for b in learned.breasts)


def test_the_learned_rule_falls_back_to_max_on_a_single_class_or_too_small_validation_split(
    caplog: pytest.LogCaptureFixture,
) -> None:
    test = _two_view_breasts(20, seed=3)
    benign_only = [r for r in _two_view_breasts(40, seed=4) if r.label == 0]

    one_class = exam_scores(test, "learned", validation=benign_only)
    too_few = exam_scores(test, "learned", validation=_two_view_breasts(4, seed=5))

    highest = exam_scores(test, "max")
    for result in (one_class, too_few):
        assert result.rule.name == "max" and result.rule.requested == "learned" and result.rule.fell_back
        assert [b.score for b in result.breasts] == [b.score for b in highest.breasts]
    assert "all of one class (0)" in one_class.rule.note and "fewer than the 10" in too_few.rule.note
    assert "evaluation.exam_rule=learned falls back to max" in caplog.text


# --- pooled across sites --------------------------------------------------------------------------------------


def test_the_pooled_breast_and_exam_auc_from_histograms_matches_sklearn_on_the_concatenated_scores() -> None:
    # Prepare: two sites' four-view exams with scores that rank cancers higher, but not perfectly
    rng = np.random.default_rng(0)
    sites = []
    for site in range(2):
        records = []
        for study in range(60):
            cancer_side = rng.choice(["L", "R", None], p=[0.2, 0.2, 0.6])
            for side in ("L", "R"):
                label = int(side == cancer_side)
                for view in ("CC", "MLO"):
                    score = float(np.clip(rng.normal(0.3 + 0.25 * label, 0.15), 0.0, 1.0))
                    records.append(ViewScore(score, label, f"{site}-{study}", side, view))
        sites.append(exam_scores(records, "max"))

    # Execute
    pooled = pool_exam_metrics([figures_of(result) for result in sites])

    # Assert: equal to the exact AUC up to the histogram's bin width (pairs tied in a bin count 1/2)
    for level, prefix in (("breast", wire.BREAST_PREFIX), ("exam", wire.EXAM_PREFIX)):
        labels = np.concatenate([r.level(level)[0] for r in sites])
        scores = np.concatenate([r.level(level)[1] for r in sites])
        assert pooled[wire.exam_key(prefix, "auc")] == pytest.approx(roc_auc_score(labels, scores), abs=0.01)
        assert pooled[wire.exam_key(prefix, "num_cases")] == labels.size
        assert pooled[wire.exam_key(prefix, "num_positives")] == int(labels.sum())
    assert pooled[wire.exam_key(wire.EXAM_PREFIX, "num_cases")] == 120 and pooled[wire.EXAM_RULE_FALLBACK] == 0
    assert figures_of(sites[0])[wire.exam_key(wire.BREAST_PREFIX, "auc")] == sites[0].auc("breast")  # site: exact


def test_sites_without_several_views_add_nothing_to_the_pooled_row() -> None:
    empty = {wire.exam_key(p, "hist_neg"): [0] * NUM_SCORE_BINS for p in (wire.BREAST_PREFIX, wire.EXAM_PREFIX)}
    empty |= {wire.exam_key(p, "hist_pos"): [0] * NUM_SCORE_BINS for p in (wire.BREAST_PREFIX, wire.EXAM_PREFIX)}

    assert pool_exam_metrics([empty, empty]) == {}
    assert pool_exam_metrics([{wire.NUM_EXAMPLES: 3}]) == {}  # a reply from before exam figures existed


# --- a site's evaluate reply ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation_without_study_ids(tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny phantom sites with every manifest's study_id blanked (each image is then its own study)."""
    root = tmp_path_factory.mktemp("no_study_ids") / "phantoms"
    shutil.copytree(tiny_federation, root, ignore=shutil.ignore_patterns(".cache", "privacy_ledger.json*"))
    for manifest in sorted(root.glob("site_*/manifest.csv")):
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns, rows = list(reader.fieldnames or []), list(reader)
        with manifest.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows({**row, "study_id": ""} for row in rows)
    return root


def _evaluate(data_dir: Path, tmp_path: Path, **overrides: object) -> MetricRecord:
    config = _config(data_dir, tmp_path, **overrides)
    reply = app(_message("evaluate", config, 1), _context(config))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply.content[wire.METRICS_KEY]


@pytest.mark.usefixtures("flower_identity")
def test_a_phantom_sites_evaluate_reply_carries_breast_and_exam_figures(tiny_federation: Path, tmp_path: Path) -> None:
    metrics = _evaluate(tiny_federation, tmp_path)

    images = metrics[wire.NUM_EXAMPLES]
    breasts, exams = (metrics[wire.exam_key(p, "num_cases")] for p in (wire.BREAST_PREFIX, wire.EXAM_PREFIX))
    assert images == 2 * breasts == 4 * exams > 0  # phantom patients: four views, two per breast
    for prefix in (wire.BREAST_PREFIX, wire.EXAM_PREFIX):
        negatives, positives = metrics[wire.exam_key(prefix, "hist_neg")], metrics[wire.exam_key(prefix, "hist_pos")]
        assert len(negatives) == len(positives) == NUM_SCORE_BINS  # fixed size, never one entry per breast
        assert sum(positives) == metrics[wire.exam_key(prefix, "num_positives")]
        assert sum(negatives) + sum(positives) == metrics[wire.exam_key(prefix, "num_cases")]
        assert isinstance(metrics[wire.exam_key(prefix, "auc")], float)
    assert set(wire.exam_keys()) <= set(metrics.keys()) and metrics[wire.EXAM_RULE_FALLBACK] == 0


@pytest.mark.usefixtures("flower_identity")
def test_a_manifest_without_study_ids_gives_no_exam_figures_but_the_same_keys(
    federation_without_study_ids: Path, tmp_path: Path
) -> None:
    metrics = _evaluate(federation_without_study_ids, tmp_path)

    assert set(wire.exam_keys()) <= set(metrics.keys())  # Flower's FedAvg needs every reply to hold the same keys
    for prefix in (wire.BREAST_PREFIX, wire.EXAM_PREFIX):
        assert metrics[wire.exam_key(prefix, "num_cases")] == 0 and math.isnan(metrics[wire.exam_key(prefix, "auc")])
        assert sum(metrics[wire.exam_key(prefix, "hist_neg")]) + sum(metrics[wire.exam_key(prefix, "hist_pos")]) == 0
    assert metrics[wire.NUM_EXAMPLES] > 0


@pytest.mark.usefixtures("flower_identity")
def test_the_learned_rule_scores_the_validation_split_once(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: count the model evaluations of one evaluate request
    import client.task

    calls: list[int] = []
    original = client.task.evaluate
    monkeypatch.setattr(client.task, "evaluate", lambda *a, **k: calls.append(len(a[1])) or original(*a, **k))

    metrics = _evaluate(tiny_federation, tmp_path, **{"evaluation.exam_rule": "learned"})

    # Assert: validation (for the rule and the threshold) and test, each once; a tiny split falls back to max
    assert len(calls) == 2 and metrics[wire.EXAM_RULE_FALLBACK] == 1
    assert metrics[wire.exam_key(wire.BREAST_PREFIX, "num_cases")] > 0


# --- the server's rows, summary and report --------------------------------------------------------------------


def _reply(site: str, figures: dict) -> Message:
    query = Message(content=RecordDict({wire.CONFIG_KEY: ConfigRecord()}), message_type="evaluate", dst_node_id=1)
    labels, scores = np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.6])
    hist = ScoreHistogram.from_scores(labels, scores).to_lists()
    metrics = {wire.NUM_EXAMPLES: 4, wire.LOSS: 0.5, "auc": 1.0, wire.SCORE_HIST_NEG: hist["negatives"],
               wire.SCORE_HIST_POS: hist["positives"], **figures}  # fmt: skip
    content = RecordDict({wire.METRICS_KEY: MetricRecord(metrics), wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site})})
    return Message(content=content, reply_to=query)


@pytest.mark.usefixtures("flower_identity")
def test_rows_summary_and_report_carry_per_site_and_pooled_exam_figures(tmp_path: Path) -> None:
    # Prepare: two sites with four-view exams, one without studies of several views
    config = load_config({"federation.num_sites": 3, "strategy.min_nodes": 1, "evaluation.exam_rule": "mean"})
    results = [exam_scores(_two_view_breasts(20, seed=s), "mean") for s in (6, 7)]
    run_dir = RunDirectory(tmp_path / "run")
    strategy = build_strategy(config, run_dir)
    # Execute
    replies = [_reply("a", figures_of(results[0])), _reply("b", figures_of(results[1])),
               _reply("c", empty_exam_figures())]  # fmt: skip
    strategy.aggregate_evaluate(1, replies)
    rows = run_dir.read_metrics()
    summary = build_summary(config, rows, duration_s=1.0)
    run_dir.write_summary(summary)
    html = build_report(run_dir.path).read_text(encoding="utf-8")

    # Assert
    by_site = {row["site"]: row for row in rows}
    assert by_site["a"]["breast_auc"] == pytest.approx(results[0].auc("breast"))
    assert "breast_hist_neg" not in by_site["a"]  # histograms stay out of metrics.jsonl
    assert by_site["pooled"]["breast_num_cases"] == 40 and by_site["pooled"]["exam_num_cases"] == 40
    assert 0.0 <= by_site["pooled"]["exam_auc"] <= 1.0 and by_site["c"]["breast_num_cases"] == 0
    assert summary["exam_rule"] == "mean" and summary["pooled"]["exam_auc"] == by_site["pooled"]["exam_auc"]
    assert summary["sites"]["b"]["breast_num_cases"] == 20
    assert "Exam-level results" in html and "<b>mean</b>" in html
    section = html.split("Exam-level results")[1].split("</table>")[0]
    assert "<td>a</td>" in section and "<td>pooled</td>" in section and "<td>c</td>" not in section


def test_the_report_has_no_exam_section_without_exam_figures() -> None:
    assert render_exam_section({"a": {"auc": 0.8, "breast_num_cases": 0}, "pooled": {"auc": 0.8}}, "max") == ""
    assert render_exam_section({"a": {"auc": 0.8}}, "max") == ""  # a run folder from before exam figures
