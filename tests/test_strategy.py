"""The recording FedAvg: per-site rows, pooled rows from summed histograms, failed sites recorded not fatal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common import wire
from common.config import load_config
from common.metrics import ScoreHistogram, histogram_auc
from server.report import RunDirectory
from server.strategy import build_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")


def _query(kind: str) -> Message:
    return Message(content=RecordDict({wire.CONFIG_KEY: ConfigRecord()}), message_type=kind, dst_node_id=1)


def _train_reply(site: str, weight: float, n: int, epsilon: float) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord({"w": torch.full((3,), weight)}),
            wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: weight, wire.EPSILON: epsilon}),
            wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site}),
        }
    )
    return Message(content=content, reply_to=_query("train"))


def _eval_reply(site: str, labels: list[int], scores: list[float]) -> Message:
    hist = ScoreHistogram.from_scores(np.array(labels), np.array(scores)).to_lists()
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: len(labels),
            wire.LOSS: 0.5,
            "auc": 0.1,
            wire.SCORE_HIST_NEG: hist["negatives"],
            wire.SCORE_HIST_POS: hist["positives"],
        }
    )
    content = RecordDict({wire.METRICS_KEY: metrics, wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site})})
    return Message(content=content, reply_to=_query("evaluate"))


def _strategy(tmp_path: Path, **overrides: object):
    run_dir = RunDirectory(tmp_path / "run")
    values = {"federation.num_sites": 2, "strategy.min_nodes": 1, **overrides}  # recording, not the quorum
    return build_strategy(load_config(values), run_dir), run_dir


def test_train_rows_per_site_and_weighted_average(tmp_path: Path) -> None:
    strategy, run_dir = _strategy(tmp_path)

    arrays, _ = strategy.aggregate_train(1, [_train_reply("a", 1.0, 10, 0.5), _train_reply("b", 4.0, 30, 0.9)])

    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, 3.25))  # (1*10 + 4*30) / 40
    rows = run_dir.read_metrics()
    assert [(r["site"], r["num_examples"]) for r in rows] == [("a", 10), ("b", 30), ("pooled", 40)]
    assert rows[-1]["epsilon"] == pytest.approx(0.9)  # the weakest guarantee, not the mean
    assert rows[-1]["train_loss"] == pytest.approx(3.25)
    assert (run_dir.path / "checkpoints" / "global_latest.pt").is_file()


def test_pooled_auc_comes_from_summed_histograms(tmp_path: Path) -> None:
    strategy, run_dir = _strategy(tmp_path)
    site_a = ([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    site_b = ([0, 1, 1], [0.2, 0.8, 0.95])

    pooled = strategy.aggregate_evaluate(1, [_eval_reply("a", *site_a), _eval_reply("b", *site_b)])

    expected = histogram_auc(
        ScoreHistogram.from_scores(np.array(site_a[0] + site_b[0]), np.array(site_a[1] + site_b[1]))
    )
    assert pooled["auc"] == pytest.approx(expected)
    rows = {r["site"]: r for r in run_dir.read_metrics()}
    assert rows["a"]["auc"] == 0.1 and "score_hist_neg" not in rows["a"]  # histograms stay out of the jsonl
    assert rows["pooled"]["num_examples"] == 7
    assert set(strategy.latest_histograms) == {"a", "b"}


def test_a_failed_site_is_recorded_and_skipped(tmp_path: Path) -> None:
    strategy, run_dir = _strategy(tmp_path)
    failed = Message(Error(code=0, reason="manifest missing"), reply_to=_query("train"))

    arrays, _ = strategy.aggregate_train(1, [_train_reply("a", 2.0, 5, 0.1), failed])

    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, 2.0))
    errors = [r for r in run_dir.read_metrics() if "error" in r]
    assert len(errors) == 1 and errors[0]["error"] == "manifest missing"


def test_pooled_sensitivity_sums_the_sites_own_calls(tmp_path: Path) -> None:
    """Sites call cases at their own validation-chosen thresholds; pooling must not re-read them at 0.5."""
    strategy, _ = _strategy(tmp_path)
    a, b = _eval_reply("a", [0, 1], [0.1, 0.2]), _eval_reply("b", [0, 1, 1], [0.1, 0.2, 0.3])
    a.content[wire.METRICS_KEY].update({"tp": 1, "fp": 0, "tn": 1, "fn": 0})
    b.content[wire.METRICS_KEY].update({"tp": 1, "fp": 1, "tn": 0, "fn": 1})

    pooled = strategy.aggregate_evaluate(1, [a, b])

    assert pooled["sensitivity"] == pytest.approx(2 / 3) and pooled["specificity"] == pytest.approx(1 / 2)
    assert (pooled["tp"], pooled["fp"], pooled["tn"], pooled["fn"]) == (2, 1, 1, 1)


def test_a_declined_round_is_marked_apart_from_failures(tmp_path: Path) -> None:
    strategy, run_dir = _strategy(tmp_path)
    declined = Message(
        Error(code=2, reason="site-1: PrivacyBudgetExceeded: declined: ... above its ceiling max-epsilon=8"),
        reply_to=_query("train"),
    )
    broken = Message(Error(code=2, reason="site-2: ManifestError: no manifest"), reply_to=_query("train"))

    strategy.aggregate_train(3, [_train_reply("a", 1.0, 5, 0.2), declined, broken])

    rows = [r for r in run_dir.read_metrics() if "error" in r]
    assert [r["declined"] for r in rows] == [True, False]


def test_summary_takes_each_sites_last_successful_round() -> None:
    from server.summary import build_summary

    rows = [
        {"round": 1, "phase": "evaluate", "site": "a", "auc": 0.6},
        {"round": 2, "phase": "evaluate", "site": "a", "auc": 0.8},
        {"round": 3, "phase": "evaluate", "site": "a", "error": "site-a: DicomError"},
        {"round": 2, "phase": "train", "site": "a", "epsilon": 2.5},
        {"round": 2, "phase": "evaluate", "site": "pooled", "auc": 0.7},
    ]

    summary = build_summary(load_config({}), rows, duration_s=1.0)

    assert summary["sites"]["a"]["auc"] == 0.8 and summary["sites"]["a"]["epsilon"] == 2.5
    assert summary["pooled"]["auc"] == 0.7 and len(summary["failures"]) == 1


def _three_class_reply(site: str, seed: int, n: int) -> tuple[Message, np.ndarray, np.ndarray]:
    """A 3-class site's evaluate reply as client_app builds it, with the labels and probabilities behind it."""
    from common.metrics import ClassEvaluation

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    reply = _eval_reply(site, (labels == 2).astype(int).tolist(), probs[:, 2].tolist())
    reply.content[wire.METRICS_KEY].update(ClassEvaluation.from_predictions(labels, probs, bootstrap=0).to_flat())
    return reply, labels, probs


def test_three_class_pooling_sums_per_class_histograms_and_confusion_matrices(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    from common.metrics import ClassEvaluation, class_key

    # Prepare
    strategy, run_dir = _strategy(tmp_path)
    (a, la, pa), (b, lb, pb) = _three_class_reply("a", 1, 80), _three_class_reply("b", 2, 120)

    # Execute
    pooled = strategy.aggregate_evaluate(1, [a, b])

    # Assert
    labels, probs = np.concatenate([la, lb]), np.concatenate([pa, pb])
    expected = roc_auc_score(labels, probs, multi_class="ovr", average=None)
    for c in range(3):
        assert pooled[class_key("auc", c)] == pytest.approx(expected[c], abs=0.01)
        assert pooled[class_key("num_cases", c)] == int((labels == c).sum())
    assert pooled["macro_auc"] == pytest.approx(expected.mean(), abs=0.01)
    site_matrices = [ClassEvaluation.from_flat(r.content[wire.METRICS_KEY]).confusion for r in (a, b)]
    rows = {r["site"]: r for r in run_dir.read_metrics()}
    assert rows["pooled"][wire.CONFUSION_MATRIX] == (site_matrices[0] + site_matrices[1]).tolist()
    assert rows["a"][wire.CONFUSION_MATRIX] == site_matrices[0].tolist()  # K x K, nested, in every row
    assert not any(key.startswith("class_hist") for row in rows.values() for key in row)  # histograms stay out
    assert [h.num_positives for h in strategy.latest_class_histograms["b"]] == np.bincount(lb, minlength=3).tolist()


def test_three_class_summary_nests_per_class_results_by_name() -> None:
    from server.summary import build_summary

    rows = [
        {"round": 1, "phase": "evaluate", "site": site, "auc": 0.7, "num_classes": 3, "macro_auc": 0.6,
         **{f"{m}_class{c}": 0.5 + c / 10 for c in range(3) for m in ("auc", "auc_ci_low", "auc_ci_high")},
         **{f"num_cases_class{c}": 10 + c for c in range(3)},
         wire.CONFUSION_MATRIX: [[5, 3, 2], [1, 8, 2], [0, 2, 10]]}
        for site in ("a", "pooled")
    ]  # fmt: skip
    config = load_config({"model.num_classes": 3, "model.class_names": "normal,benign,cancer"})

    summary = build_summary(config, rows, duration_s=1.0)

    assert summary["classes"] == ["normal", "benign", "cancer"] and summary["num_classes"] == 3
    for entry in (summary["sites"]["a"], summary["pooled"]):
        assert list(entry["per_class"]) == ["normal", "benign", "cancer"]
        assert entry["per_class"]["cancer"] == {"auc": 0.7, "auc_ci_low": 0.7, "auc_ci_high": 0.7, "num_cases": 12}
        assert entry["macro_auc"] == 0.6 and entry[wire.CONFUSION_MATRIX][2] == [0, 2, 10]
        assert "auc_class0" not in entry and "num_classes" not in entry and entry["auc"] == 0.7


def _declined_reply(site: str, history: list[tuple[float, float, int]]) -> Message:
    """A decline as the site's train handler sends it: the ledger's epsilon in the reason's fixed form."""
    from client.budget import declined_with_spending
    from common.errors import PrivacyBudgetExceeded

    declined = declined_with_spending(PrivacyBudgetExceeded("declined: ..."), history, load_config({}).privacy)
    return Message(Error(code=2, reason=f"{site}: PrivacyBudgetExceeded: {declined}"), reply_to=_query("train"))


def test_a_declined_site_is_recorded_with_its_ledgers_epsilon_and_counts_in_the_pooled_one(tmp_path: Path) -> None:
    # Prepare: site b's ledger has spent more than site a reports
    from common.privacy import compute_epsilon

    history = [(0.8, 0.25, 40)]
    spent = compute_epsilon(history, delta=1e-4)
    strategy, run_dir = _strategy(tmp_path)

    # Execute
    strategy.aggregate_train(2, [_train_reply("a", 1.0, 5, 0.2), _declined_reply("site-1", history)])

    # Assert
    rows = run_dir.read_metrics()
    declined = next(r for r in rows if r.get("declined"))
    assert declined[wire.EPSILON] == pytest.approx(spent) and spent > 0.2
    assert next(r for r in rows if r["site"] == "pooled")[wire.EPSILON] == pytest.approx(spent)


def test_the_summary_reports_the_ledgers_epsilon_of_a_site_that_declined_every_round() -> None:
    from server.summary import build_summary

    rows = [
        {"round": 1, "phase": "train", "site": "a", wire.EPSILON: 1.0},
        {"round": 1, "phase": "train", "site": "b", "declined": True, "error": "...", wire.EPSILON: 2.17},
        {"round": 2, "phase": "train", "site": "a", wire.EPSILON: 1.5},
        {"round": 2, "phase": "train", "site": "b", "declined": True, "error": "...", wire.EPSILON: 2.17},
        {"round": 2, "phase": "train", "site": "c", "declined": False, "error": "non-finite", wire.EPSILON: 9.0},
        {"round": 2, "phase": "evaluate", "site": "b", "auc": 0.7},
    ]

    summary = build_summary(load_config({}), rows, duration_s=1.0)

    assert summary["sites"]["b"]["epsilon"] == 2.17 and summary["pooled"]["epsilon"] == 2.17
    assert summary["sites"]["a"]["epsilon"] == 1.5


# --- dropouts: the SuperLink's reply for a node whose heartbeat expired, and a node that never answers ------------


def _dropout_round(strategy, server_round: int, answering: dict[int, str], unavailable: int | None = None):
    """Configure a train round for nodes 11, 12, 13 and push it as a grid does (which sets the message ids); the
    nodes in ``answering`` reply under their site names, ``unavailable`` gets the SuperLink's own error reply."""
    from unittest.mock import Mock

    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message
    from flwr.serverapp import Grid

    grid = Mock(spec=Grid)
    grid.get_node_ids.return_value = [11, 12, 13]
    queries = list(strategy.configure_train(server_round, ArrayRecord({"w": torch.zeros(3)}), ConfigRecord(), grid))
    for query in queries:
        query.metadata.__dict__["_message_id"] = query.object_id  # what HttpGrid.push_messages does
    by_node = {q.metadata.dst_node_id: q for q in queries}
    replies = []
    for node, site in answering.items():
        reply = _train_reply(site, 1.0, 10, 0.1)
        replies.append(Message(content=reply.content, reply_to=by_node[node]))
    if unavailable is not None:
        replies.append(create_message_error_unavailable_res_message(by_node[unavailable].metadata, "node_unavail"))
    return strategy.aggregate_train(server_round, replies)


def _three_node_strategy(tmp_path: Path):
    config = load_config({"federation.num_sites": 3, "strategy.min_nodes": 2, "strategy.round_timeout_s": 90})
    run_dir = RunDirectory(tmp_path / "run")
    return build_strategy(config, run_dir), run_dir


def test_a_node_the_superlink_reports_unavailable_is_recorded_under_its_site_name(tmp_path: Path) -> None:
    strategy, run_dir = _three_node_strategy(tmp_path)
    _dropout_round(strategy, 1, {11: "a", 12: "b", 13: "c"})

    arrays, _ = _dropout_round(strategy, 2, {11: "a", 12: "b"}, unavailable=13)  # sent by node 1, the SuperLink

    assert arrays is not None
    rows = [r for r in run_dir.read_metrics() if r["round"] == 2]
    assert [(r["site"], r["num_examples"]) for r in rows if "error" not in r] == [("a", 10), ("b", 10), ("pooled", 20)]
    (failure,) = [r for r in rows if "error" in r]
    assert failure["site"] == "c" and "Node Unavailable" in failure["error"] and failure["declined"] is False


def test_a_node_that_never_answers_is_recorded_with_the_round_timeout(tmp_path: Path) -> None:
    strategy, run_dir = _three_node_strategy(tmp_path)
    _dropout_round(strategy, 1, {11: "a", 12: "b", 13: "c"})

    arrays, _ = _dropout_round(strategy, 2, {11: "a", 12: "b"})

    assert arrays is not None
    (failure,) = [r for r in run_dir.read_metrics() if "error" in r]
    assert (failure["round"], failure["phase"], failure["site"]) == (2, "train", "c")
    assert failure["error"] == "no reply within strategy.round_timeout_s = 90 s; left out of round 2"


def test_a_round_below_the_minimum_is_skipped_and_recorded(tmp_path: Path) -> None:
    """One usable reply of the two strategy.min_nodes requires: no model is published, and the row says why."""
    strategy, run_dir = _strategy(tmp_path, **{"strategy.min_nodes": 2})
    failed = Message(Error(code=0, reason="manifest missing"), reply_to=_query("train"))

    arrays, pooled = strategy.aggregate_train(3, [_train_reply("a", 2.0, 5, 0.1), failed])

    assert arrays is None and pooled is None  # the global model stays as it was
    rows = run_dir.read_metrics()
    [skipped] = [r for r in rows if r.get("skipped")]
    assert skipped["round"] == 3 and skipped["site"] == "pooled"
    assert skipped["error"] == "round skipped: 1 usable training reply; strategy.min_nodes is 2"
    assert len([r for r in rows if "error" in r and not r.get("skipped")]) == 1  # the failed site, as before
    assert [r["site"] for r in rows if "error" not in r] == ["a"]  # the site that trained still has its row


class _Grid:
    """Only what the quorum wait reads: the connected nodes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def test_too_few_connected_sites_skip_the_round_after_the_timeout(tmp_path: Path, monkeypatch) -> None:
    from server import round_quorum

    now = [0.0]
    monkeypatch.setattr(round_quorum.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(round_quorum.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    strategy, run_dir = _strategy(tmp_path, **{"strategy.round_timeout_s": 30.0, "strategy.min_nodes": 2})
    arrays = ArrayRecord({"w": torch.zeros(3)})

    assert list(strategy.configure_train(4, arrays, ConfigRecord(), _Grid([7]))) == []
    assert now[0] == pytest.approx(30.0)  # it waited the round's timeout, no longer
    assert strategy.aggregate_train(4, []) == (None, None)
    assert list(strategy.configure_evaluate(4, arrays, ConfigRecord(), _Grid([7]))) == []
    assert strategy.aggregate_evaluate(4, []) is None

    rows = run_dir.read_metrics()
    assert [(r["phase"], r["error"]) for r in rows] == [
        (phase, "round skipped: 1 site(s) connected after 30 s (strategy.round_timeout_s); strategy.min_nodes is 2")
        for phase in ("train", "evaluate")
    ]
    assert len(list(strategy.configure_train(5, arrays, ConfigRecord(), _Grid([7, 8])))) == 2  # both back: round 5 runs
