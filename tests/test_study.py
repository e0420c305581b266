"""The study's parts without a SuperLink: its models, node views, ledgers, site replies and the study record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.client_app import app
from client.site import POOLED_SITE_NAME, SiteSpec, resolve_site, study_ledger
from client.task import load_site_data
from common import wire
from common.config import AppConfig, load_config
from common.errors import ConfigError
from common.metrics import (
    NUM_SCORE_BINS,
    PairedDifference,
    ScoreHistogram,
    binary_metrics,
    calibration_from_scores,
    subgroup_metrics,
)
from common.models import build_model
from common.study_wire import ModelScores, model_scores_from_flat, model_scores_to_flat
from server.study.arms import ArmResult, StudyArm, plan_arms
from server.study.cross_site import SiteEvaluation, models_for_site, pairs_for_site
from server.study.nodes import SiteNodes, SubsetGrid
from server.study.results import assemble_study
from simulations.launcher import simulated_nodes


def _nodes(pooled: int | None = 99) -> SiteNodes:
    return SiteNodes(sites={"a": 1, "b": 2, "c": 3}, pooled=pooled)


def test_plan_arms_orders_models_and_gives_each_its_nodes() -> None:
    arms = plan_arms(("local", "centralized", "federated", "loso"), _nodes())

    assert [a.key for a in arms] == ["local:a", "local:b", "local:c", "centralized", "federated", "loso:a", "loso:b",
                                     "loso:c"]  # fmt: skip
    by_key = {a.key: a for a in arms}
    assert by_key["local:b"].node_ids == (2,)
    assert by_key["centralized"].node_ids == (99,) and by_key["centralized"].trained_on == ("a", "b", "c")
    assert by_key["federated"].node_ids == (1, 2, 3)
    assert by_key["loso:a"].node_ids == (2, 3) and by_key["loso:a"].held_out == "a"


def test_plan_arms_leaves_out_what_cannot_be_trained() -> None:
    without_pool = plan_arms(("centralized", "federated"), _nodes(pooled=None))
    one_site = plan_arms(("loso", "federated"), SiteNodes(sites={"a": 1}))

    assert [a.key for a in without_pool] == ["federated"]
    assert [a.key for a in one_site] == ["federated"]


def test_each_site_scores_the_shared_models_and_only_its_own_leave_out_model() -> None:
    models = dict.fromkeys(["local:a", "local:b", "centralized", "federated", "loso:a", "loso:b"], ArrayRecord())

    assert models_for_site("a", models) == ["local:a", "local:b", "centralized", "federated", "loso:a"]
    assert [(a, b) for a, b, _ in pairs_for_site("a", models_for_site("a", models))] == [
        ("federated", "local:a"),
        ("federated", "centralized"),
        ("federated", "loso:a"),
    ]
    assert pairs_for_site("a", ["local:a", "local:b"]) == []  # nothing to compare without the federated model


class _FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        self.sent = list(messages)
        return []


@pytest.mark.usefixtures("flower_identity")
def test_subset_grid_shows_only_its_connected_nodes_and_sends_through_the_grid() -> None:
    grid = _FakeGrid([1, 2, 3])
    subset = SubsetGrid(grid, [3, 1, 7])  # type: ignore[arg-type]

    assert list(subset.get_node_ids()) == [3, 1]  # node 7 is not connected
    subset.send_and_receive([Message(RecordDict(), dst_node_id=3, message_type="train")], timeout=1)
    assert [m.metadata.dst_node_id for m in grid.sent] == [3]


def test_a_deployed_node_charges_its_one_ledger_whatever_the_server_calls_the_model(tmp_path: Path) -> None:
    config = load_config({"output.run_dir": str(tmp_path / "run")})
    site = SiteSpec("h", tmp_path / "m.csv", None, 0, tmp_path / "privacy_ledger.json")

    deployed = study_ledger(site, {"manifest": str(tmp_path / "m.csv")}, config, "local:h-fresh-ledger")
    named = study_ledger(site, {"partition-id": 0, "ledger": str(site.ledger)}, config, "local:h")
    simulated = study_ledger(site, {"partition-id": 0}, config, "local:h")
    plain = study_ledger(site, {"partition-id": 0}, config, "")

    assert deployed == site.ledger and plain == site.ledger and named == site.ledger
    assert simulated == tmp_path / "run" / "ledgers" / "local_h" / "h.json" and simulated.parent.is_dir()


def test_study_config_refuses_unknown_arms() -> None:
    with pytest.raises(ConfigError, match=r"study\.arms.*local, centralized, federated, loso"):
        load_config({"study.arms": "local,pooled"})


def test_the_launcher_adds_the_pooled_node_only_for_a_centralized_study() -> None:
    assert simulated_nodes(load_config({"federation.num_sites": 3})) == 3
    assert simulated_nodes(load_config({"federation.num_sites": 3, "study.enabled": True})) == 4
    assert simulated_nodes(load_config({"federation.num_sites": 3, "study.enabled": True, "study.arms": "loso"})) == 3


def test_the_pooled_node_trains_on_every_sites_own_training_split(tiny_federation: Path, tmp_path: Path) -> None:
    config = load_config(
        {"federation.data_dir": str(tiny_federation), "federation.num_sites": 2, "data.image_size": 32,
         "data.cache_dir": str(tmp_path / "cache"), "study.enabled": True, "output.run_dir": str(tmp_path / "r")}
    )  # fmt: skip
    pooled = resolve_site({"partition-id": 2}, config)
    sites = [resolve_site({"partition-id": i}, config) for i in range(2)]

    data = load_site_data(pooled, config)
    parts = [load_site_data(site, config) for site in sites]

    assert pooled.name == POOLED_SITE_NAME and pooled.pooled
    assert [m.name for m in pooled.members] == ["site-0", "site-1"]
    for split in ("train", "val", "test"):
        assert len(getattr(data, split)) == sum(len(getattr(part, split)) for part in parts)
    assert data.train.labels.tolist() == [v for part in parts for v in part.train.labels.tolist()]
    with pytest.raises(Exception, match="manifest"):  # without a study, partition 2 is a third, absent site
        resolve_site({"partition-id": 2}, load_config({**config.to_flat(), "study.enabled": False}))


def _scores(
    seed: int, n: int = 60, shift: float = 1.0, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, ModelScores]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * labels)))
    views = ["CC" if i % 2 else "MLO" for i in range(n)]
    return (
        labels,
        scores,
        ModelScores(
            metrics=binary_metrics(labels, scores, bootstrap=20, threshold=threshold),
            threshold=threshold,
            histogram=ScoreHistogram.from_scores(labels, scores),
            calibration=calibration_from_scores(labels, scores),
            subgroups=subgroup_metrics(labels, scores, {"view": views}, min_count=5, resamples=20, threshold=threshold),
        ),
    )


def test_model_scores_survive_the_wire() -> None:
    _, _, sent = _scores(0)

    got = model_scores_from_flat(model_scores_to_flat(sent))

    assert got.metrics["auc"] == pytest.approx(sent.metrics["auc"])
    assert np.array_equal(got.histogram.positives, sent.histogram.positives)
    assert got.calibration.brier == pytest.approx(sent.calibration.brier)
    assert got.subgroups.metrics["view"]["CC"]["auc"] == pytest.approx(sent.subgroups.metrics["view"]["CC"]["auc"])


def test_study_record_pools_histograms_and_keeps_site_figures_exact(tmp_path: Path) -> None:
    config = load_config({"study.bootstrap": 20, "study.min_subgroup": 5})
    arm = StudyArm("federated", "federated", "federated", ("a", "b"), (1, 2))
    loso = StudyArm("loso:a", "loso", "federated without a", ("b",), (2,), "a")
    results = [ArmResult(arm, ArrayRecord(), True, 1.0, 2), ArmResult(loso, ArrayRecord(), True, 1.0, 2)]
    (la, sa, a), (lb, sb, b), (_, _, held) = _scores(1, threshold=0.7), _scores(2, n=40), _scores(3)
    pair = PairedDifference(0.1, -0.05, 0.2, 60, "paired bootstrap")
    evaluations = {
        "a": SiteEvaluation("a", {"federated": a, "loso:a": held}, [{"site": "a", "a": "federated", "b": "loso:a",
                                                                       "label": "x", **pair.to_dict()}]),
        "b": SiteEvaluation("b", {"federated": b}),
        "c": SiteEvaluation("c", error="c: no answer within 5s"),
    }  # fmt: skip

    study = assemble_study(config, ["a", "b", "c"], results, evaluations, wall_time_s=3.0)

    pooled = study["matrix"]["federated"]["pooled"]
    assert pooled["num_examples"] == 100 and pooled["exact"] is False
    assert study["matrix"]["federated"]["a"]["auc"] == pytest.approx(a.metrics["auc"])  # the site's exact figure
    both = np.concatenate([la, lb]), np.concatenate([sa, sb])
    assert pooled["auc"] == pytest.approx(binary_metrics(*both, bootstrap=0)["auc"], abs=0.02)  # binned
    # Pooled sensitivity counts each site's calls at its own threshold (0.7 and 0.5): the calls on the raw scores.
    calls = np.concatenate([sa >= 0.7, sb >= 0.5])
    assert pooled["sensitivity"] == pytest.approx((calls & (both[0] == 1)).sum() / both[0].sum())
    cc = np.array([i % 2 == 1 for i in range(60)] + [i % 2 == 1 for i in range(40)])  # the views _scores draws
    pooled_cc = study["subgroups"]["federated"]["pooled"]["view"]["CC"]
    assert pooled_cc["sensitivity"] == pytest.approx((calls & cc & (both[0] == 1)).sum() / (cc & (both[0] == 1)).sum())
    assert set(study["matrix"]["loso:a"]) == {"a"} and study["held_out_pooled"]["num_examples"] == 60
    assert sum(b["count"] for b in study["calibration"]["federated"]["pooled"]["bins"]) == 100
    assert study["subgroups"]["federated"]["pooled"]["view"]["CC"]["num_examples"] == 50
    assert study["comparisons"][0]["difference"] == pytest.approx(0.1)
    assert [f["site"] for f in study["failures"]] == ["c"]


def _study_context(config: AppConfig, partition: int = 0) -> Context:
    return Context(run_id=1, node_id=partition + 1, node_config={"partition-id": partition, "num-partitions": 2},
                   state=RecordDict(), run_config=config.to_flat())  # fmt: skip


@pytest.mark.usefixtures("flower_identity")
def test_a_site_answers_a_study_request_with_figures_only(tiny_federation: Path, tmp_path: Path) -> None:
    config = load_config(
        {"federation.data_dir": str(tiny_federation), "federation.num_sites": 2, "data.image_size": 32,
         "data.cache_dir": str(tmp_path / "cache"), "model.name": "small_cnn", "study.enabled": True,
         "study.min_subgroup": 2, "study.bootstrap": 20, "output.run_dir": str(tmp_path / "run")}
    )  # fmt: skip
    models = [build_model("small_cnn", num_classes=2, in_channels=1, norm="groupnorm") for _ in range(2)]
    content = RecordDict(
        {
            wire.CONFIG_KEY: ConfigRecord({wire.study_pair_key(0): "0,1"}),
            **{wire.study_model_key(i): ArrayRecord(m.state_dict()) for i, m in enumerate(models)},
        }
    )

    reply = app(Message(content, dst_node_id=1, message_type="evaluate"), _study_context(config))
    described = app(
        Message(RecordDict({wire.CONFIG_KEY: ConfigRecord({wire.STUDY_QUERY: wire.STUDY_DESCRIBE})}), dst_node_id=1,
                message_type="query"),
        _study_context(config),
    )  # fmt: skip

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    records = reply.content.metric_records
    assert set(records) == {wire.METRICS_KEY, wire.study_model_key(0), wire.study_model_key(1), wire.study_pair_key(0)}
    num_test = int(records[wire.METRICS_KEY][wire.NUM_EXAMPLES])
    for record in records.values():
        for key, value in record.items():
            if isinstance(value, list):  # fixed-size bins: score histograms or reliability bins, never per image
                assert len(value) in (NUM_SCORE_BINS, config.study.calibration_bins), key
                assert len(value) != num_test, key
    assert not reply.content.array_records  # models go to the site, never back
    assert dict(described.content.config_records[wire.SITE_KEY]) == {wire.SITE_NAME: "site-0"}
    assert dict(records[wire.study_pair_key(0)])["num_examples"] == num_test


def test_a_central_dp_study_refuses_one_node_models() -> None:
    with pytest.raises(ConfigError, match=r"study\.arms.*privacy\.mode=central"):
        load_config({"study.enabled": True, "privacy.mode": "central"})

    config = load_config({"study.enabled": True, "privacy.mode": "central", "study.arms": "federated,loso"})
    assert config.study.arm_names == ("federated", "loso")


def test_big_models_travel_in_several_messages_each_with_the_federated_model() -> None:
    from server.study.cross_site import chunk_models

    keys = ["local:a", "local:b", "centralized", "federated", "loso:a"]
    sizes = dict.fromkeys(keys, 100)

    one = chunk_models(keys, sizes, budget=10_000)
    several = chunk_models(keys, sizes, budget=250)

    assert one == [["federated", "local:a", "local:b", "centralized", "loso:a"]]
    assert all(chunk[0] == "federated" and sum(sizes[k] for k in chunk) <= 250 for chunk in several)
    assert sorted({k for chunk in several for k in chunk}) == sorted(keys) and len(several) == 4
    assert chunk_models(["federated"], {"federated": 5}) == [["federated"]]
    assert chunk_models(["local:a"], {"local:a": 5}) == [["local:a"]]


def test_subgroups_come_from_the_manifest_else_the_dicom_header(tiny_federation: Path, tmp_path: Path) -> None:
    import csv
    import shutil

    from client.study_scores import subgroup_attributes
    from common.data import SiteImages

    site_dir = tmp_path / "site"
    shutil.copytree(tiny_federation / "site_0", site_dir, ignore=shutil.ignore_patterns(".cache", "privacy_*"))
    with (site_dir / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:  # the manifest keeps density, loses age and view: the header's Patient's Age and view fill in
        row["age"], row["view"] = "", ""
    with (site_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [2, 3, 4]
    split = SiteImages([np.zeros((4, 4), np.uint16)] * 3, [0, 0, 0], 4, row_numbers=lines)
    site = SiteSpec("s", site_dir / "manifest.csv", None, 0, tmp_path / "l.json")

    groups = subgroup_attributes(site, split)

    assert groups["view"] == [Path(rows[n - 2]["image_path"]).stem.split("_")[-1] for n in lines]  # P0001_L_CC
    assert all(band in ("40-49", "50-59", "60-69", "70+") for band in groups["age_band"])  # from '0NNY'
    assert groups["density"] == [rows[n - 2]["density"] for n in lines]
    assert groups["vendor"] == ["other"] * 3  # "Phantom Imaging Co." is no real vendor
