"""The ClientApp through Flower's own call path: what a hospital sends, and epsilon accounting across rounds."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.client_app import app
from client.ledger import PrivacyLedger
from common import wire
from common.config import AppConfig, load_config
from common.metrics import NUM_SCORE_BINS
from common.models import build_model
from common.privacy import compute_epsilon
from tests.test_ledger import refuse_writes_in

pytestmark = pytest.mark.usefixtures("flower_identity")

_EXAM_LISTS = {key for key in wire.exam_keys() if key.endswith(("hist_neg", "hist_pos"))}
"""The breast- and exam-level score histograms of an evaluate reply (`client.exam_scores`)."""


def _config(data_dir: Path, tmp_path: Path, **overrides: object) -> AppConfig:
    values = {
        "federation.data_dir": str(data_dir),
        "federation.num_sites": 2,
        "data.image_size": 32,
        "data.cache_dir": str(tmp_path / "cache"),
        "model.name": "small_cnn",
        "training.batch_size": 8,
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.0,
    }
    values.update(overrides)
    return load_config(values)


def _context(config: AppConfig, partition: int = 0, **node_config: object) -> Context:
    """A simulated node; its privacy ledger sits in the test's own folder unless ``ledger`` is given."""
    node_config.setdefault("ledger", str(Path(config.data.cache_dir).parent / f"ledger_{partition}.json"))
    return Context(
        run_id=1,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": 2, **node_config},
        state=RecordDict(),
        run_config=config.to_flat(),
    )


def _message(kind: str, config: AppConfig, server_round: int) -> Message:
    model = build_model(config.model.name, num_classes=config.model.num_classes, in_channels=1, norm=config.model.norm)
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord(model.state_dict()),
            wire.CONFIG_KEY: ConfigRecord({wire.SERVER_ROUND: server_round}),
        }
    )
    return Message(content=content, message_type=kind, dst_node_id=1)


def _assert_only_arrays_and_scalars(reply: Message, allowed_lists: set[str], num_classes: int = 2) -> None:
    content = reply.content
    for record in content.metric_records.values():
        for key, value in record.items():
            if isinstance(value, list):
                assert key in allowed_lists, f"unexpected list metric {key}"
                # fixed-size aggregates, never one entry per image: score bins, or K x K confusion counts
                assert len(value) == (num_classes**2 if key == wire.CONFUSION_MATRIX else NUM_SCORE_BINS)
            else:
                assert isinstance(value, (int, float)), key
    for record in content.config_records.values():
        assert set(record.keys()) == {wire.SITE_NAME}
        assert record[wire.SITE_NAME] == "site-0"  # a site name, not a file path or patient id


def test_train_reply_holds_weights_and_scalar_metrics_only(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)
    query = _message("train", config, 1)

    reply = app(query, _context(config))

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.array_records) == {wire.ARRAYS_KEY}
    assert set(reply.content[wire.ARRAYS_KEY].keys()) == set(query.content[wire.ARRAYS_KEY].keys())
    metrics = reply.content[wire.METRICS_KEY]
    assert set(metrics.keys()) == {
        wire.NUM_EXAMPLES, wire.TRAIN_LOSS, wire.NUM_STEPS, wire.EPSILON, wire.NOISE_MULTIPLIER, wire.SECONDS
    }  # fmt: skip
    assert metrics[wire.NUM_EXAMPLES] > 0 and metrics[wire.EPSILON] > 0
    assert metrics[wire.NOISE_MULTIPLIER] == config.privacy.noise_multiplier
    _assert_only_arrays_and_scalars(reply, allowed_lists=set())


def test_epsilon_accumulates_across_rounds_and_replays_from_the_ledger(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)
    context = _context(config)

    first = app(_message("train", config, 1), context).content[wire.METRICS_KEY][wire.EPSILON]
    second = app(_message("train", config, 2), context).content[wire.METRICS_KEY][wire.EPSILON]

    assert 0 < first < second
    history = PrivacyLedger.open(tmp_path / "ledger_0.json").history
    assert compute_epsilon(history, delta=config.privacy.delta) == pytest.approx(second, rel=1e-9)


def test_the_ledger_survives_a_restart_and_a_new_run(tiny_federation: Path, tmp_path: Path) -> None:
    """A new node state (restarted SuperNode, next run) starts from the spent epsilon, not from zero."""
    config = _config(tiny_federation, tmp_path)
    before = app(_message("train", config, 1), _context(config)).content[wire.METRICS_KEY][wire.EPSILON]

    after_restart = app(_message("train", config, 1), _context(config)).content[wire.METRICS_KEY][wire.EPSILON]

    assert after_restart > before > 0


def test_a_site_declines_a_round_past_its_own_ceiling(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)
    first = app(_message("train", config, 1), _context(config)).content[wire.METRICS_KEY][wire.EPSILON]
    ledger_before = (tmp_path / "ledger_0.json").read_text()

    reply = app(_message("train", config, 2), _context(config, **{"max-epsilon": first * 1.01}))

    assert reply.has_error()
    assert reply.error.reason.startswith("site-0: PrivacyBudgetExceeded: declined: this round would bring")
    assert (tmp_path / "ledger_0.json").read_text() == ledger_before  # nothing spent on a declined round


def test_a_site_with_a_limit_declines_a_run_without_dp(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path, **{"privacy.mode": "none"})

    reply = app(_message("train", config, 1), _context(config, **{"min-noise-multiplier": 0.8}))

    assert reply.has_error() and "differential privacy off" in reply.error.reason


def test_an_unreadable_ledger_stops_training(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)
    (tmp_path / "ledger_0.json").write_text("{not json")

    reply = app(_message("train", config, 1), _context(config))

    assert reply.has_error() and "ConfigError: the site's privacy ledger is unreadable" in reply.error.reason


def test_a_ledger_in_a_read_only_folder_is_refused_naming_the_key(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the ledger on a data mount the SuperNode may read but not write
    config = _config(tiny_federation, tmp_path)
    (tmp_path / "mount").mkdir()
    refuse_writes_in(tmp_path / "mount", monkeypatch, errno.EROFS)

    # Execute
    reply = app(_message("train", config, 1), _context(config, ledger=str(tmp_path / "mount" / "l.json")))

    # Assert: the key and the rule, not "unexpected PermissionError", and no path
    assert reply.has_error() and "ConfigError: the site's privacy ledger cannot be written" in reply.error.reason
    assert "node config 'ledger'" in reply.error.reason and "point ledger= at a writable place" in reply.error.reason
    assert str(tmp_path) not in reply.error.reason


def test_a_ledger_under_a_missing_folder_is_refused_and_the_folder_not_created(
    tiny_federation: Path, tmp_path: Path
) -> None:
    config = _config(tiny_federation, tmp_path)

    reply = app(_message("train", config, 1), _context(config, ledger=str(tmp_path / "gone" / "l.json")))

    assert reply.has_error() and "ConfigError: the folder of the site's privacy ledger does not exist" in (
        reply.error.reason
    )
    assert "node config 'ledger'" in reply.error.reason and not (tmp_path / "gone").exists()


def test_a_deleted_ledger_stops_training_while_its_lock_file_remembers_it(
    tiny_federation: Path, tmp_path: Path
) -> None:
    # Prepare: a site that has spent, whose ledger file is then deleted (its lock file stays)
    config = _config(tiny_federation, tmp_path)
    PrivacyLedger.open(tmp_path / "ledger_0.json").record([(1.0, 0.25, 8)])
    (tmp_path / "ledger_0.json").unlink()

    # Execute
    reply = app(_message("train", config, 1), _context(config))

    # Assert: no fresh start from zero
    assert reply.has_error() and "ConfigError: the site's privacy ledger is missing although" in reply.error.reason
    assert not (tmp_path / "ledger_0.json").exists()


@pytest.mark.parametrize("mode", ["none", "central"])
def test_without_local_dp_a_site_claims_no_epsilon(tiny_federation: Path, tmp_path: Path, mode: str) -> None:
    """No DP-SGD, no site guarantee: an epsilon of 0 would read as perfect privacy (central ε is the server's)."""
    config = _config(tiny_federation, tmp_path, **{"privacy.mode": mode})

    reply = app(_message("train", config, 1), _context(config))

    assert not reply.has_error()
    assert wire.EPSILON not in reply.content[wire.METRICS_KEY]


def test_evaluate_reply_holds_metrics_and_fixed_size_histograms(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)

    reply = app(_message("evaluate", config, 1), _context(config))

    assert not reply.content.array_records
    metrics = reply.content[wire.METRICS_KEY]
    n = metrics[wire.NUM_EXAMPLES]
    assert sum(metrics[wire.SCORE_HIST_NEG]) + sum(metrics[wire.SCORE_HIST_POS]) == n
    assert {"auc", "sensitivity", "specificity"} <= set(metrics.keys())
    assert wire.NUM_CLASSES not in metrics and "macro_auc" not in metrics  # a binary reply is as it always was
    _assert_only_arrays_and_scalars(reply, allowed_lists={wire.SCORE_HIST_NEG, wire.SCORE_HIST_POS, *_EXAM_LISTS})


def test_a_three_class_evaluate_reply_adds_per_class_histograms_and_confusion_counts_only(
    tiny_three_class_federation: Path, tmp_path: Path
) -> None:
    config = _config(tiny_three_class_federation, tmp_path, **{"model.num_classes": 3})

    reply = app(_message("evaluate", config, 1), _context(config))

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content[wire.METRICS_KEY]
    n = metrics[wire.NUM_EXAMPLES]
    assert metrics[wire.NUM_CLASSES] == 3 and sum(metrics[wire.CONFUSION_MATRIX]) == n
    class_lists = {key for c in range(3) for key in wire.class_hist_keys(c)}
    for c in range(3):
        negatives, positives = wire.class_hist_keys(c)
        assert sum(metrics[negatives]) + sum(metrics[positives]) == n
    assert metrics[wire.SCORE_HIST_POS] == metrics[wire.class_hist_keys(2)[1]]  # headline: the last class vs rest
    assert {"auc_class0", "auc_ci_low_class1", "num_cases_class2", "macro_auc"} <= set(metrics.keys())
    allowed = {wire.SCORE_HIST_NEG, wire.SCORE_HIST_POS, wire.CONFUSION_MATRIX, *class_lists, *_EXAM_LISTS}
    _assert_only_arrays_and_scalars(reply, allowed_lists=allowed, num_classes=3)


def test_a_site_without_data_replies_with_an_error_not_a_crash(tmp_path: Path) -> None:
    config = _config(tmp_path / "empty", tmp_path)

    reply = app(_message("train", config, 1), _context(config))

    assert reply.has_error()
    assert reply.error.reason.startswith("site-0: ManifestError: this simulated site has no manifest")
    assert "fedmammo phantoms" in reply.error.reason
    assert str(tmp_path) not in reply.error.reason  # no hospital file paths cross the wire


def test_an_unexpected_exception_sends_only_its_type(tmp_path: Path) -> None:
    # Prepare: a handler failing with a library error whose text holds a path with a patient's name
    from flwr.app import Context, Message, RecordDict

    from client.safe_reply import reply_with_error_on_failure

    def handler(msg: Message, context: Context) -> Message:
        raise FileExistsError(17, "File exists", "/tmp/site/MRN0012345_DOE_JANE")

    guarded = reply_with_error_on_failure(handler)
    message = Message(content=RecordDict(), dst_node_id=1, message_type="train")
    context = Context(run_id=1, node_id=1, node_config={"site-name": "hosp-a"}, state=RecordDict(), run_config={})
    # Execute
    reply = guarded(message, context)
    # Assert
    assert reply.has_error() and reply.error.reason.startswith("hosp-a: unexpected FileExistsError")
    assert "MRN" not in reply.error.reason and "/tmp" not in reply.error.reason
