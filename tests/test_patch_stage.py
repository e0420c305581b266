"""The patch stage end to end: config keys, sites training on patches or sitting out, the server leaving them out."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from client.client_app import app
from client.ledger import PrivacyLedger
from client.site import SiteSpec
from client.task import SatOut, train_on_site
from common import wire
from common.config import AppConfig, load_config
from common.data import LesionPatches, SiteImages
from common.errors import ConfigError
from common.models import build_model
from common.privacy import compute_epsilon, planned_sampling
from server.report import RunDirectory, build_report
from server.strategy import SAT_OUT_PATCH, build_strategy
from server.summary import build_summary

pytestmark = pytest.mark.usefixtures("flower_identity")

LESION_COLUMNS = ("lesion_row", "lesion_col", "lesion_radius_px")


# --- configuration -------------------------------------------------------------------------------------------------


def test_the_patch_stage_is_off_by_default_and_its_keys_travel_in_the_flat_run_config() -> None:
    config = AppConfig()
    assert (config.training.patch_rounds, config.training.patch_size, config.training.lesion_patch_share) == (
        0,
        32,
        0.5,
    )
    flat = load_config(
        {"training.patch_rounds": 2, "training.patch_size": 24, "training.lesion_patch_share": 0.25}
    ).to_flat()
    assert {k: flat[k] for k in flat if k.startswith("training.") and "patch" in k} == {
        "training.patch_rounds": 2,
        "training.patch_size": 24,
        "training.lesion_patch_share": 0.25,
    }
    back = load_config(flat).training  # what a client reads back from Flower's run config
    assert (back.patch_rounds, back.patch_size, back.lesion_patch_share) == (2, 24, 0.25)


@pytest.mark.parametrize(
    ("overrides", "key", "rule"),
    [
        ({"training.patch_rounds": -1}, "training.patch_rounds", ">= 0"),
        ({"training.patch_size": 4}, "training.patch_size", ">= 8"),
        ({"training.lesion_patch_share": 0.0}, "training.lesion_patch_share", r"in \(0, 1\]"),
        ({"training.lesion_patch_share": 1.5}, "training.lesion_patch_share", r"in \(0, 1\]"),
        (
            {"training.patch_rounds": 1, "training.patch_size": 64, "data.image_size": 64},
            "training.patch_size",
            "smaller than data.image_size = 64",
        ),
        (
            {"training.patch_rounds": 3, "strategy.num_rounds": 3},
            "training.patch_rounds",
            "smaller than strategy.num_rounds = 3",
        ),
    ],
)
def test_patch_settings_that_cannot_work_name_the_key_and_the_rule(
    overrides: dict[str, object], key: str, rule: str
) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}' = .* is invalid: it must be {rule}"):
        load_config(overrides)


def test_a_patch_as_large_as_the_image_is_fine_while_the_stage_is_off() -> None:
    assert load_config({"data.image_size": 16}).training.patch_size == 32  # default off: no cross-check


# --- sites ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesion_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom site (24 images of about 50 x 40 pixels) whose manifest marks its lesions."""
    from simulations.phantoms import generate_site

    return generate_site(tmp_path_factory.mktemp("lesions") / "site", site_index=0, num_images=24, seed=7,
                         matrix_scale=0.1)  # fmt: skip


@pytest.fixture(scope="module")
def unmarked_site(lesion_site: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same site with every lesion mark removed from its manifest."""
    root = tmp_path_factory.mktemp("unmarked") / "site"
    shutil.copytree(lesion_site.parent, root, ignore=shutil.ignore_patterns(".cache", "privacy_ledger.json*"))
    manifest = root / "manifest.csv"
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:
        row.update(dict.fromkeys(LESION_COLUMNS, ""))
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _config(tmp_path: Path, **overrides: object) -> AppConfig:
    values: dict[str, object] = {
        "data.image_size": 32,
        "data.cache_dir": str(tmp_path / "cache"),
        "training.batch_size": 4,
        "training.local_epochs": 1,
        "training.patch_rounds": 1,
        "training.patch_size": 16,
        "training.device": "cpu",
        "strategy.num_rounds": 3,
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.0,
    }
    values.update(overrides)
    return load_config(values)


def _site(manifest: Path, tmp_path: Path) -> SiteSpec:
    return SiteSpec("site-0", manifest, tmp_path / "cache", 0, tmp_path / "ledger.json")


def _weights(config: AppConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(config.model.name, num_classes=config.model.num_classes, in_channels=1, norm=config.model.norm)
    return model.state_dict()


def test_patch_rounds_train_on_patches_and_later_rounds_on_whole_images(
    lesion_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: watch what local training is given
    import client.task as task

    seen: list[object] = []
    real = task.train_local

    def spy(model: torch.nn.Module, dataset: object, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(dataset)
        return real(model, dataset, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(task, "train_local", spy)
    config = _config(tmp_path)
    site = _site(lesion_site, tmp_path)
    # Execute
    with caplog.at_level(logging.INFO, logger="client.task"):
        first = train_on_site(site, config, _weights(config), [], 1)
        second = train_on_site(site, config, _weights(config), first.history, 2)
    # Assert: round 1 on one patch per training image, with the whole images' DP sample rate; round 2 whole images
    patches, whole = seen
    assert isinstance(patches, LesionPatches) and isinstance(whole, SiteImages)
    assert len(patches) == len(whole) == first.num_examples == second.num_examples
    assert patches[0][0].shape == (1, 16, 16) and whole[0][0].shape == (1, 32, 32)
    rate, steps = planned_sampling(len(whole), config.training.batch_size)
    assert [(n, q) for n, q, _ in first.history] == [(1.0, rate)] and first.num_steps == steps
    assert [(n, q) for n, q, _ in second.history] == [(1.0, rate)] and second.num_steps == steps
    assert "training image(s) have a lesion mark" in caplog.text
    assert f"{patches.num_lesion_images} of {len(patches)} training image(s)" in caplog.text
    assert str(lesion_site.parent) not in caplog.text and "images/" not in caplog.text


def test_after_the_patch_stage_a_round_trains_exactly_as_without_one(lesion_site: Path, tmp_path: Path) -> None:
    with_stage, without = (
        _config(tmp_path, **{"training.patch_rounds": 1}),
        _config(tmp_path, **{"training.patch_rounds": 0}),
    )
    site = _site(lesion_site, tmp_path)
    a = train_on_site(site, with_stage, _weights(with_stage), [], 2)
    b = train_on_site(site, without, _weights(without), [], 2)
    for key in a.state_dict:
        torch.testing.assert_close(a.state_dict[key], b.state_dict[key], rtol=0, atol=0)
    assert a.history == b.history and a.train_loss == b.train_loss


def test_a_site_without_lesion_marks_sits_out_the_patch_rounds(unmarked_site: Path, tmp_path: Path) -> None:
    config = _config(tmp_path)
    sent = _weights(config)
    result = train_on_site(_site(unmarked_site, tmp_path), config, sent, [(1.0, 0.1, 7)], 1)
    assert isinstance(result, SatOut)
    assert (result.num_examples, result.num_steps, result.history) == (0, 0, [(1.0, 0.1, 7)])
    assert result.epsilon == pytest.approx(compute_epsilon([(1.0, 0.1, 7)], delta=1e-4, accountant="rdp"))
    assert all(torch.equal(result.state_dict[k], sent[k]) for k in sent)


def _context(config: AppConfig, manifest: Path, ledger: Path) -> Context:
    node_config = {"manifest": str(manifest), "site-name": "site-0", "ledger": str(ledger)}
    return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=config.to_flat())


def _train_message(config: AppConfig, server_round: int) -> Message:
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord(_weights(config)),
            wire.CONFIG_KEY: ConfigRecord({wire.SERVER_ROUND: server_round}),
        }
    )
    return Message(content=content, message_type="train", dst_node_id=1)


def test_a_sat_out_reply_spends_nothing_and_leaves_the_ledger_untouched(unmarked_site: Path, tmp_path: Path) -> None:
    # Prepare: a ledger that already holds an earlier run's steps
    config = _config(tmp_path)
    ledger_path = tmp_path / "ledger.json"
    with PrivacyLedger.locked(ledger_path) as ledger:
        ledger.record([(1.0, 0.1, 7)])
    before = (ledger_path.read_bytes(), ledger_path.stat().st_mtime_ns)
    context = _context(config, unmarked_site, ledger_path)
    # Execute: round 1 is a patch round; round 2 trains whole images
    query = _train_message(config, 1)
    reply = app(query, context)
    after_patch_round = (ledger_path.read_bytes(), ledger_path.stat().st_mtime_ns)
    trained = app(_train_message(config, 2), context)
    # Assert
    metrics = reply.content[wire.METRICS_KEY]
    assert metrics[wire.SAT_OUT] == 1 and metrics[wire.NUM_EXAMPLES] == 0 and metrics[wire.NUM_STEPS] == 0
    assert metrics[wire.EPSILON] == pytest.approx(compute_epsilon([(1.0, 0.1, 7)], delta=1e-4, accountant="rdp"))
    sent, back = query.content[wire.ARRAYS_KEY].to_numpy_ndarrays(), reply.content[wire.ARRAYS_KEY].to_numpy_ndarrays()
    assert all(np.array_equal(a, b) for a, b in zip(sent, back, strict=True))
    assert after_patch_round == before
    assert (
        wire.SAT_OUT not in trained.content[wire.METRICS_KEY] and trained.content[wire.METRICS_KEY][wire.NUM_STEPS] > 0
    )
    assert ledger_path.read_bytes() != before[0]


# --- server --------------------------------------------------------------------------------------------------------


def _query(kind: str) -> Message:
    return Message(content=RecordDict({wire.CONFIG_KEY: ConfigRecord()}), message_type=kind, dst_node_id=1)


def _train_reply(site: str, weight: float, n: int, epsilon: float, *, sat_out: bool = False) -> Message:
    metrics = {wire.NUM_EXAMPLES: n, wire.TRAIN_LOSS: float("nan") if sat_out else weight, wire.EPSILON: epsilon}
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord({"w": torch.full((3,), weight)}),
            wire.METRICS_KEY: MetricRecord({**metrics, **({wire.SAT_OUT: 1} if sat_out else {})}),
            wire.SITE_KEY: ConfigRecord({wire.SITE_NAME: site}),
        }
    )
    return Message(content=content, reply_to=_query("train"))


def _strategy(tmp_path: Path, **overrides: object):  # type: ignore[no-untyped-def]
    run_dir = RunDirectory(tmp_path / "run")
    return build_strategy(load_config({"federation.num_sites": 3, **overrides}), run_dir), run_dir


def test_a_reply_of_zero_examples_is_left_out_of_the_average_and_recorded_as_sat_out(tmp_path: Path) -> None:
    strategy, run_dir = _strategy(tmp_path)
    replies = [
        _train_reply("a", 1.0, 10, 0.5),
        _train_reply("b", 4.0, 30, 0.9),
        _train_reply("c", 100.0, 0, 2.0, sat_out=True),
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays["w"].numpy(), np.full(3, 3.25))  # (1*10 + 4*30) / 40: "c" weighs nothing
    rows = {row["site"]: row for row in run_dir.read_metrics()}
    assert rows["c"]["sat_out"] == SAT_OUT_PATCH and rows["c"]["num_examples"] == 0 and "error" not in rows["c"]
    assert "train_loss" not in rows["c"] and rows["c"]["epsilon"] == 2.0
    assert rows["pooled"]["num_examples"] == 40 and rows["pooled"]["train_loss"] == pytest.approx(3.25)
    assert rows["pooled"]["epsilon"] == 2.0  # what the idle site's ledger holds still counts (the worst site)


def test_when_every_site_sat_out_the_global_weights_stay_and_nothing_failed(tmp_path: Path) -> None:
    strategy, run_dir = _strategy(tmp_path, **{"privacy.mode": "none"})
    replies = [_train_reply("a", 1.0, 0, 0.0, sat_out=True), _train_reply("b", 2.0, 0, 0.0, sat_out=True)]

    arrays, pooled = strategy.aggregate_train(1, replies)

    assert arrays is None and pooled is None  # Flower keeps the previous global weights
    rows = run_dir.read_metrics()
    assert [(r["site"], r["sat_out"]) for r in rows] == [("a", SAT_OUT_PATCH), ("b", SAT_OUT_PATCH)]
    assert not (run_dir.path / "checkpoints" / "global_latest.pt").exists()
    summary = build_summary(load_config({"privacy.mode": "none"}), rows, duration_s=1.0)
    assert summary["failures"] == [] and set(summary["sites"]) == {"a", "b"}
    assert build_report(run_dir.path).is_file()  # a row with a text "sat_out" does not trip the report


def test_under_central_dp_a_round_someone_sat_out_is_not_released(tmp_path: Path) -> None:
    from tests.test_central_dp import SIZE, _config, _grid, _reply

    run_dir = RunDirectory(tmp_path / "run")
    strategy = build_strategy(_config(), run_dir)
    queries = list(strategy.configure_train(1, ArrayRecord({"w": torch.zeros(SIZE)}), ConfigRecord(), _grid()))
    update = np.zeros(SIZE)
    update[0] = 1.0
    idle = _reply(queries[1], "site-1", np.zeros(SIZE), 0)  # the global weights sent back: a zero update
    idle.content[wire.METRICS_KEY][wire.SAT_OUT] = 1

    arrays, _ = strategy.aggregate_train(1, [_reply(queries[0], "site-0", update, 5), idle])

    assert arrays is None and strategy.central.accountant.num_releases == 0
    rows = run_dir.read_metrics()
    assert [r["site"] for r in rows if r.get("sat_out")] == ["site-1"] and not any("error" in r for r in rows)


def test_a_patch_smaller_than_the_models_smallest_input_is_refused_naming_both_keys() -> None:
    from common.config import load_config
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"training\.patch_size.*>= 63.*alexnet"):
        load_config({"model": {"name": "alexnet"}, "data": {"image_size": 128}, "training": {"patch_rounds": 2}})
    load_config(
        {"model": {"name": "alexnet"}, "data": {"image_size": 128}, "training": {"patch_rounds": 2, "patch_size": 64}}
    )
