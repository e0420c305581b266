"""deploy.policy and deploy.gate without processes: the policy file's rules, the checks before a task runs and
before a reply leaves (on real ClientApp replies), and the gate's wrapped steps with stand-ins for Flower's."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.client_app import app
from common.config import load_config
from deploy.audit import AuditLog, verify_audit_log
from deploy.gate import POLICY_ERROR_CODE, GatedTask
from deploy.policy import (
    DEFAULT_ALLOWED_METRICS,
    HospitalPolicy,
    PolicyError,
    PolicyRefused,
    check_reply,
    check_task,
    load_policy,
    main,
)
from tests.test_client_app import _config, _context, _message

HASH = "ab" * 32


def _policy(tmp_path: Path, **changes: Any) -> HospitalPolicy:
    values: dict[str, Any] = {
        "approved_app_hashes": frozenset({HASH}),
        "audit_log": tmp_path / "audit.jsonl",
        "server": "coordinator:8000",
        "max_rounds_per_run": 3,
        "min_noise_multiplier": 1.0,
        "max_epsilon": 8.0,
    }
    return HospitalPolicy(**{**values, **changes})


def _run_config(**overrides: object) -> dict[str, Any]:
    values = {"privacy.mode": "local", "privacy.noise_multiplier": 1.5, "strategy.num_rounds": 3, **overrides}
    return load_config(values).to_flat()


# --- the policy file ----------------------------------------------------------------------------------------------


def test_the_template_is_a_valid_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["template", "--approve", HASH]) == 0
    path = tmp_path / "policy.toml"
    path.write_text(capsys.readouterr().out, encoding="utf-8")

    policy = load_policy(path)

    assert policy.approved_app_hashes == {HASH} and policy.allowed_metrics == DEFAULT_ALLOWED_METRICS
    assert (policy.max_rounds_per_run, policy.min_noise_multiplier, policy.max_epsilon) == (50, 0.8, 8.0)
    assert main(["check", str(path)]) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('audit-log = "/x"', "'approved-app-hashes' = None is invalid"),
        ('approved-app-hashes = ["ABC"]\naudit-log = "/x"', "SHA-256 hex digests"),
        (f'approved-app-hashes = ["{HASH}"]', "'audit-log' = None is invalid"),
        (f'approved-app-hashes = ["{HASH}"]\naudit-log = "/x"\nmin-noise-multiplier = -1', "'min-noise-multiplier'"),
        (f'approved-app-hashes = ["{HASH}"]\naudit-log = "/x"\nmax-rounds-per-run = 2.5', "whole number"),
        (f'approved-app-hashes = ["{HASH}"]\naudit-log = "/x"\nmax-epsilon = true', "'max-epsilon' = True"),
        (f'approved-app-hashes = ["{HASH}"]\naudit-log = "/x"\nmax_epsilon = 1', r"unknown key\(s\) \['max_epsilon'\]"),
        (f'approved-app-hashes = ["{HASH}"]\naudit-log = "/x"\nallow-central-dp = true\nmin-noise-multiplier = 1',
         "cannot be combined"),
        ("approved-app-hashes = [", "cannot be read"),
    ],
)  # fmt: skip
def test_a_broken_policy_file_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=message) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


# --- before a task runs -------------------------------------------------------------------------------------------


def _check(policy: HospitalPolicy, *, app_hash: str = HASH, rounds: int = 0, spent: float | None = None, **run: object):
    check_task(policy, app_hash=app_hash, run_config=_run_config(**run), trains=True, rounds_trained=rounds,
               epsilon_spent=spent)  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"app_hash": "cd" * 32}, f"app bundle sha256 {'cd' * 32} is not approved"),
        ({"rounds": 3}, "has trained 3 round"),
        ({"spent": 8.0}, "has spent epsilon 8"),
        ({"privacy.noise_multiplier": 0.9}, "privacy.noise_multiplier = 0.9 is below the hospital's policy minimum 1"),
        ({"privacy.mode": "none"}, "trains without differential privacy"),
        ({"privacy.mode": "central"}, "adds the noise on the server"),
        ({"privacy.target_epsilon": 9.0}, "target_epsilon = 9 is above"),
        ({"strategy.num_rounds": 4}, "plans strategy.num_rounds = 4"),
    ],
)
def test_a_task_past_the_policy_is_refused_with_its_reason(tmp_path: Path, changes: dict, reason: str) -> None:
    with pytest.raises(PolicyRefused, match=reason):
        _check(_policy(tmp_path), **changes)


def test_a_task_within_the_policy_passes_and_non_training_messages_skip_the_training_checks(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    _check(policy, rounds=2, spent=7.9)
    _check(policy, **{"privacy.target_epsilon": 4.0, "privacy.noise_multiplier": 0.1})  # noise checked afterwards
    check_task(policy, app_hash=HASH, run_config=_run_config(**{"privacy.mode": "none"}), trains=False,
               rounds_trained=99, epsilon_spent=99.0)  # fmt: skip
    with pytest.raises(PolicyRefused, match="not approved"):  # but every message needs an approved bundle
        check_task(policy, app_hash="cd" * 32, run_config={}, trains=False, rounds_trained=0, epsilon_spent=None)
    _check(_policy(tmp_path, allow_central_dp=True, min_noise_multiplier=0.0), **{"privacy.mode": "central"})


# --- before a reply leaves: real ClientApp replies -----------------------------------------------------------------


@pytest.mark.usefixtures("flower_identity")
def test_real_train_and_evaluate_replies_pass_the_default_policy(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)
    trained = app(_message("train", config, 1), _context(config))
    evaluated = app(_message("evaluate", config, 1), _context(config))
    assert not trained.has_error() and not evaluated.has_error()
    policy = _policy(tmp_path, max_epsilon=1e6)

    check_reply(policy, trained.content, trains=True)
    check_reply(policy, evaluated.content, trains=False)

    without_auc = tuple(m for m in DEFAULT_ALLOWED_METRICS if m != "auc")
    with pytest.raises(PolicyRefused, match="metric 'auc' in record 'metrics' is not in the hospital's allowed"):
        check_reply(_policy(tmp_path, allowed_metrics=without_auc), evaluated.content, trains=False)
    with pytest.raises(PolicyRefused, match=r"epsilon [\d.]+ is above the hospital's policy maximum 1e-06"):
        check_reply(_policy(tmp_path, max_epsilon=1e-6), trained.content, trains=True)
    with pytest.raises(PolicyRefused, match="model arrays in a reply that is not a training one"):
        check_reply(policy, trained.content, trains=False)


@pytest.mark.usefixtures("flower_identity")
def test_a_model_without_its_epsilon_or_an_unknown_record_is_withheld(tmp_path: Path) -> None:
    import numpy as np
    from flwr.app import Array

    arrays = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    policy = _policy(tmp_path)
    with pytest.raises(PolicyRefused, match="without the epsilon it cost"):
        check_reply(policy, RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 3})}), trains=True)
    with pytest.raises(PolicyRefused, match="without the noise multiplier it was trained with"):
        check_reply(policy, RecordDict({"arrays": arrays, "metrics": MetricRecord({"epsilon": 1.0})}), trains=True)
    with pytest.raises(PolicyRefused, match=r"noise multiplier 0\.5 is below"):
        metrics = MetricRecord({"epsilon": 1.0, "noise_multiplier": 0.5})
        check_reply(policy, RecordDict({"arrays": arrays, "metrics": metrics}), trains=True)
    with pytest.raises(PolicyRefused, match="config record 'extra' is not one"):
        check_reply(policy, RecordDict({"extra": ConfigRecord({"x": "patient 123"})}), trains=False)
    masked = ConfigRecord({"masked_params": [b"\x00" * 8]})  # SecAgg+: the model leaves masked, same rules
    with pytest.raises(PolicyRefused, match="without the epsilon it cost"):
        check_reply(policy, RecordDict({"secaggplus_configs": masked}), trains=True)
    legacy = ConfigRecord({"metrics.epsilon": 1.0, "metrics.noise_multiplier": 1.2, "metrics.num-examples": 12,
                           "site.name": "hospital-a"})  # fmt: skip
    check_reply(policy, RecordDict({"secaggplus_configs": masked, "fitres.metrics": legacy}), trains=True)
    legacy["metrics.patient_age"] = 54.0
    with pytest.raises(PolicyRefused, match=r"metric 'patient_age' in record 'fitres\.metrics'"):
        check_reply(policy, RecordDict({"secaggplus_configs": masked, "fitres.metrics": legacy}), trains=True)


# --- the gate's wrapped steps --------------------------------------------------------------------------------------


class _Flower:
    """Stand-ins for the three steps of Flower's task runner the gate wraps."""

    def __init__(self, message: Any, run_config: dict[str, Any], fab: bytes) -> None:
        self.message, self.fab = message, fab
        self.context = SimpleNamespace(run_config=run_config)
        self.run = SimpleNamespace(run_id=7, fab_id="fedmammo/fedmammo", fab_version="0.1")
        self.installed: list[bytes] = []
        self.pushed: list[Any] = []

    def pull(self, client: Any) -> tuple[Any, ...]:
        return self.message, self.context, self.run, SimpleNamespace(content=self.fab)

    def install(self, content: bytes, **_: Any) -> None:
        self.installed.append(content)

    def push(self, client: Any, reply: Any, context: Any) -> None:
        self.pushed.append(reply)


def _steps(task: GatedTask, flower: _Flower) -> tuple[Any, Any, Any]:
    return task.pulled(flower.pull), task.install(flower.install), task.push(flower.push)


@pytest.mark.usefixtures("flower_identity")
def test_the_gate_refuses_before_the_bundle_is_installed_and_logs_it(tmp_path: Path) -> None:
    from flwr.app import Message

    message = Message(content=RecordDict(), message_type="train", dst_node_id=1)
    fab = b"a bundle nobody approved"
    flower = _Flower(message, _run_config(), fab)
    task = GatedTask(_policy(tmp_path))
    pull, install, _ = _steps(task, flower)

    pull(None)
    with pytest.raises(PolicyRefused, match=hashlib.sha256(fab).hexdigest()):
        install(fab, skip_prompt=True)

    assert flower.installed == []
    [entry] = AuditLog(tmp_path / "audit.jsonl").entries()
    assert (entry["decision"], entry["run_id"], entry["server"]) == ("refused", 7, "coordinator:8000")


@pytest.mark.usefixtures("flower_identity")
def test_the_gate_withholds_a_reply_the_policy_forbids_and_logs_what_would_have_left(tmp_path: Path) -> None:
    from flwr.app import Message

    fab = b"the approved bundle"
    policy = _policy(tmp_path, approved_app_hashes=frozenset({hashlib.sha256(fab).hexdigest()}),
                     allowed_metrics=("num-examples",))  # fmt: skip
    message = Message(content=RecordDict(), message_type="evaluate", dst_node_id=1)
    flower = _Flower(message, _run_config(), fab)
    task = GatedTask(policy)
    pull, install, push = _steps(task, flower)
    pull(None)
    install(fab, skip_prompt=True)

    reply = Message(RecordDict({"metrics": MetricRecord({"num-examples": 10, "auc": 0.9})}), reply_to=message)
    push(None, reply, flower.context)
    ok = Message(RecordDict({"metrics": MetricRecord({"num-examples": 10})}), reply_to=message)
    push(None, ok, flower.context)

    withheld, sent = flower.pushed
    assert withheld.has_error() and withheld.error.code == POLICY_ERROR_CODE
    assert "metric 'auc'" in withheld.error.reason and "0.9" not in withheld.error.reason
    assert sent is ok
    first, second = AuditLog(tmp_path / "audit.jsonl").entries()
    assert first["decision"] == "withheld" and first["withheld"]["metrics"]["values"]["auc"] == 0.9
    assert second["decision"] == "sent" and second["sent"]["metrics"]["values"] == {"num-examples": 10}
    assert verify_audit_log(tmp_path / "audit.jsonl") == 2


@pytest.mark.usefixtures("flower_identity")
def test_nothing_leaves_when_the_audit_log_cannot_be_written(tmp_path: Path) -> None:
    from flwr.app import Message

    fab = b"the approved bundle"
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log's folder should be", encoding="utf-8")
    policy = _policy(tmp_path, approved_app_hashes=frozenset({hashlib.sha256(fab).hexdigest()}),
                     audit_log=blocked / "audit.jsonl")  # fmt: skip
    message = Message(content=RecordDict(), message_type="evaluate", dst_node_id=1)
    flower = _Flower(message, _run_config(), fab)
    task = GatedTask(policy)
    pull, install, push = _steps(task, flower)
    pull(None)
    install(fab, skip_prompt=True)

    with pytest.raises(OSError):
        push(None, Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message), None)
    assert flower.pushed == []


@pytest.mark.usefixtures("flower_identity")
def test_an_unreadable_policy_refuses_every_task(tmp_path: Path) -> None:
    from flwr.app import Message

    message = Message(content=RecordDict(), message_type="query", dst_node_id=1)
    flower = _Flower(message, {}, b"anything")
    task = GatedTask(None, broken="policy file /etc/fedmammo/policy.toml cannot be read")
    pull, install, _ = _steps(task, flower)
    pull(None)
    with pytest.raises(PolicyRefused, match="policy cannot be read, so nothing runs"):
        install(b"anything")
    assert flower.installed == []


def test_training_rounds_and_epsilon_are_counted_from_the_audit_log(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"run_id": 7, "trains": True, "decision": "sent", "epsilon": 1.0})
    log.append({"run_id": 7, "trains": True, "decision": "refused"})
    log.append({"run_id": 7, "trains": False, "decision": "sent"})
    log.append({"run_id": 6, "trains": True, "decision": "sent", "epsilon": 2.5})

    log.append({"run_id": 7, "trains": False, "message_type": "evaluate", "decision": "sent"})
    # rounds and evaluations of this run; the site's latest epsilon (any run)
    assert GatedTask(_policy(tmp_path))._history(7) == (1, 1, 2.5)


def test_evaluations_past_the_limit_are_refused(tmp_path: Path) -> None:
    policy = _policy(tmp_path, max_evaluations_per_run=2)
    check_task(policy, app_hash=HASH, run_config={}, trains=False, rounds_trained=0, epsilon_spent=None,
               evaluates=True, evaluations=1)  # fmt: skip
    with pytest.raises(PolicyRefused, match="has had 2 evaluation"):
        check_task(policy, app_hash=HASH, run_config={}, trains=False, rounds_trained=0, epsilon_spent=None,
                   evaluates=True, evaluations=2)  # fmt: skip
