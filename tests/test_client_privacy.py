"""A site's privacy promises through the ClientApp's train handler: concurrent rounds, the site's own accountant,
limits that fail closed, a tampered ledger, and the ledger's epsilon carried by a decline."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import shutil
import threading
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.budget import LIMITS_FILE_NAME, site_budget, site_epsilon
from client.client_app import app
from client.ledger import PrivacyLedger
from common import wire
from common.config import AppConfig, load_config
from common.models import build_model
from common.privacy import compute_epsilon, parse_spent

pytestmark = pytest.mark.usefixtures("flower_identity")


def _config(data_dir: Path, tmp_path: Path, **overrides: object) -> AppConfig:
    values = {
        "federation.data_dir": str(data_dir),
        "federation.num_sites": 2,
        "data.image_size": 32,
        "data.cache_dir": str(tmp_path / "cache"),
        "model.name": "small_cnn",
        "training.batch_size": 8,
        "training.local_epochs": 1,
        "privacy.mode": "local",
        "privacy.noise_multiplier": 1.0,
    }
    values.update(overrides)
    return load_config(values)


def _context(config: AppConfig, **node_config: object) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 2, **node_config},
        state=RecordDict(),
        run_config=config.to_flat(),
    )


def _message(config: AppConfig, server_round: int = 1) -> Message:
    model = build_model(config.model.name, num_classes=config.model.num_classes, in_channels=1, norm=config.model.norm)
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord(model.state_dict()),
            wire.CONFIG_KEY: ConfigRecord({wire.SERVER_ROUND: server_round}),
        }
    )
    return Message(content=content, message_type="train", dst_node_id=1)


def _one_round(config: AppConfig, ledger: Path) -> list[tuple[float, float, int]]:
    """Train one round on a ledger of its own (which also fills the image cache); its history is one round's steps."""
    reply = app(_message(config), _context(config, ledger=str(ledger)))
    assert not reply.has_error(), reply.error.reason
    return PrivacyLedger.open(ledger).history


def _train_in_a_race(flat_config: dict, node_config: dict, start, meet, results) -> None:
    """A second SuperNode process on the same site: the train handler, meeting the other one as training starts."""
    from flwr.supercore.task_identity import TaskIdentity

    import client.client_app as client_app

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    original = client_app.train_on_site

    def meeting_first(*args: object, **kwargs: object):
        # Both trainings are past their budget checks here, unless one of them holds the ledger's lock.
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait(timeout=3)
        return original(*args, **kwargs)

    client_app.train_on_site = meeting_first
    config = load_config(flat_config)
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config=flat_config)
    message = _message(config, 2)
    start.wait(timeout=300)
    reply = client_app.app(message, context)
    results.put(reply.error.reason if reply.has_error() else "trained")


def test_two_concurrent_rounds_that_together_pass_the_ceiling_train_only_one(
    tiny_federation: Path, tmp_path: Path
) -> None:
    # Prepare: a ceiling one round fits under and two do not (read as the site reads it)
    config = _config(tiny_federation, tmp_path)
    one = _one_round(config, tmp_path / "warm_up.json")
    two = [(noise, rate, 2 * steps) for noise, rate, steps in one]
    ceiling = (site_epsilon(site_budget({}), one) + site_epsilon(site_budget({}), two)) / 2
    ledger = tmp_path / "ledger.json"
    node_config = {"partition-id": 0, "num-partitions": 2, "ledger": str(ledger), "max-epsilon": ceiling}
    context = multiprocessing.get_context("spawn")  # the children train with torch: no fork
    start, meet, results = context.Barrier(2), context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_train_in_a_race, args=(config.to_flat(), node_config, start, meet, results))
        for _ in range(2)
    ]

    # Execute
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=300) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)

    # Assert: exactly one trained, the other declined, and the ledger holds exactly the one round
    assert outcomes[1] == "trained", outcomes
    assert "PrivacyBudgetExceeded" in outcomes[0] and "above its ceiling" in outcomes[0], outcomes
    assert PrivacyLedger.open(ledger).history == one


@pytest.mark.parametrize(
    "run",
    [
        {"privacy.accountant": "prv", "privacy.delta": 1e-5},  # the site's delta: only the accountant differs
        {"privacy.delta": 0.5},
    ],
)
def test_the_run_config_cannot_loosen_the_sites_ceiling(tiny_federation: Path, tmp_path: Path, run: dict) -> None:
    # Prepare: a ceiling this round passes as the run would read it, but not as the site reads it
    config = _config(tiny_federation, tmp_path, **run)
    one = _one_round(config, tmp_path / "warm_up.json")
    laxer = compute_epsilon(one, delta=config.privacy.delta, accountant=config.privacy.accountant)
    strict = site_epsilon(site_budget({}), one)
    assert laxer < strict

    # Execute
    reply = app(
        _message(config), _context(config, ledger=str(tmp_path / "l.json"), **{"max-epsilon": (laxer + strict) / 2})
    )

    # Assert
    assert reply.has_error() and "PrivacyBudgetExceeded" in reply.error.reason
    assert not (tmp_path / "l.json").exists() or PrivacyLedger.open(tmp_path / "l.json").history == []


def test_a_limits_file_that_is_a_folder_stops_the_site_with_the_reason(tiny_federation: Path, tmp_path: Path) -> None:
    # Prepare: a copy of the site, whose privacy_limits.toml is a folder
    site = tmp_path / "site"
    shutil.copytree(tiny_federation / "site_0", site, ignore=shutil.ignore_patterns(".cache", "privacy_ledger*"))
    (site / LIMITS_FILE_NAME).mkdir()
    config = _config(tiny_federation, tmp_path)

    # Execute
    reply = app(
        _message(config), _context(config, manifest=str(site / "manifest.csv"), ledger=str(tmp_path / "l.json"))
    )

    # Assert: no training, and the server is told why (without the path)
    assert reply.has_error() and "privacy limits file" in reply.error.reason
    assert str(site) not in reply.error.reason
    assert not (tmp_path / "l.json").exists()


def test_a_ledger_edited_to_spend_less_stops_the_site(tiny_federation: Path, tmp_path: Path) -> None:
    # Prepare: a round, then a hand edit that halves the recorded steps
    config = _config(tiny_federation, tmp_path)
    ledger = tmp_path / "l.json"
    _one_round(config, ledger)
    data = json.loads(ledger.read_text())
    data["history"]["num_steps"] = [max(1, steps // 2) for steps in data["history"]["num_steps"]]
    ledger.write_text(json.dumps(data))

    # Execute
    reply = app(_message(config, 2), _context(config, ledger=str(ledger)))

    # Assert
    assert reply.has_error() and "tampered" in reply.error.reason and str(tmp_path) not in reply.error.reason


def test_a_declined_round_carries_the_ledgers_epsilon(tiny_federation: Path, tmp_path: Path) -> None:
    # Prepare: a site that spent one round, then a ceiling below its next round
    config = _config(tiny_federation, tmp_path)
    ledger = tmp_path / "l.json"
    spent = compute_epsilon(_one_round(config, ledger), delta=config.privacy.delta)

    # Execute
    reply = app(_message(config, 2), _context(config, ledger=str(ledger), **{"max-epsilon": spent * 1.01}))

    # Assert: the figure a trained round would have reported, in the form the server reads
    assert reply.has_error() and "PrivacyBudgetExceeded" in reply.error.reason
    assert parse_spent(reply.error.reason) == pytest.approx(spent, rel=1e-12)
