"""deploy.policy, deploy.reply_check and deploy.gate without processes: the policy file's rules, the checks before
a task runs and before a reply leaves (on real ClientApp replies), and the gate's wrapped steps with stand-ins for
Flower's."""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.client_app import app
from common.config import load_config
from deploy.audit import AuditLog, verify_audit_log
from deploy.gate import POLICY_ERROR_CODE, GatedTask, _history
from deploy.policy import (
    DEFAULT_ALLOWED_METRICS,
    HospitalPolicy,
    PolicyError,
    PolicyRefused,
    SiteHistory,
    TaskRequest,
    check_task,
    load_policy,
)
from deploy.policy_cli import main
from deploy.reply_check import check_reply
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
        "max_delta": 1e-4,
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
    assert (policy.max_delta, policy.min_subgroup, policy.require_secure_aggregation) == (1e-4, 10, False)
    assert main(["check", str(path)]) == 0


_OK = f'approved-app-hashes = ["{HASH}"]\naudit-log = "/x"'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('audit-log = "/x"', "'approved-app-hashes' = None is invalid"),
        ('approved-app-hashes = ["ABC"]\naudit-log = "/x"', "SHA-256 hex digests"),
        (f'approved-app-hashes = ["{HASH}"]', "'audit-log' = None is invalid"),
        (f"{_OK}\nmin-noise-multiplier = -1", "'min-noise-multiplier'"),
        (f"{_OK}\nmax-rounds-per-run = 2.5", "whole number"),
        (f"{_OK}\nmax-epsilon = true", "'max-epsilon' = True"),
        (f"{_OK}\nmax-epsilon = 8.0", "'max-delta' = None is invalid: a max-epsilon needs the delta"),
        (f"{_OK}\nmax-delta = 1.5", "'max-delta' = 1.5 is invalid"),
        (f"{_OK}\nmax_epsilon = 1", r"unknown key\(s\) \['max_epsilon'\]"),
        (f"{_OK}\nallow-central-dp = true\nmin-noise-multiplier = 1", "cannot be combined"),
        (f"{_OK}\nallow-central-dp = true\nmax-epsilon = 1\nmax-delta = 1e-5", "cannot be combined"),
        (f"{_OK}\nrequire-secure-aggregation = 1", "'require-secure-aggregation' = 1"),
        ("approved-app-hashes = [", "cannot be read"),
    ],
)
def test_a_broken_policy_file_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=message) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


# --- before a task runs -------------------------------------------------------------------------------------------


def _train(policy: HospitalPolicy, *, app_hash: str = HASH, history: SiteHistory | None = None, **run: object):
    request = TaskRequest(app_hash=app_hash, run_config=_run_config(**run), trains=True)
    check_task(policy, request, history or SiteHistory())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"app_hash": "cd" * 32}, f"app bundle sha256 {'cd' * 32} is not approved"),
        ({"history": SiteHistory(rounds_trained=3)}, "has trained 3 round"),
        ({"history": SiteHistory(epsilon_spent=8.0)}, "has spent epsilon 8"),
        ({"history": SiteHistory(epsilon_spent=math.nan)}, "has spent epsilon nan"),
        ({"privacy.noise_multiplier": 0.9}, "privacy.noise_multiplier = 0.9 is below the hospital's policy minimum 1"),
        ({"privacy.mode": "none"}, "trains without differential privacy"),
        ({"privacy.mode": "central"}, "adds the noise on the server"),
        ({"privacy.target_epsilon": 9.0}, "target_epsilon = 9 is above"),
        ({"privacy.delta": 0.01}, "privacy.delta = 0.01 is above the hospital's policy maximum 0.0001"),
        ({"strategy.num_rounds": 4}, "plans strategy.num_rounds = 4"),
    ],
)
def test_a_task_past_the_policy_is_refused_with_its_reason(tmp_path: Path, changes: dict, reason: str) -> None:
    with pytest.raises(PolicyRefused, match=reason):
        _train(_policy(tmp_path), **changes)


def test_a_task_within_the_policy_passes_and_other_messages_skip_the_training_checks(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    _train(policy, history=SiteHistory(rounds_trained=2, epsilon_spent=7.9))
    _train(policy, **{"privacy.target_epsilon": 4.0, "privacy.noise_multiplier": 0.1})  # noise checked afterwards
    query = TaskRequest(app_hash=HASH, run_config=_run_config(**{"privacy.mode": "none"}))
    check_task(policy, query, SiteHistory(rounds_trained=99, epsilon_spent=99.0))
    with pytest.raises(PolicyRefused, match="not approved"):  # but every message needs an approved bundle
        check_task(policy, TaskRequest(app_hash="cd" * 32, run_config={}), SiteHistory())
    _train(_policy(tmp_path, allow_central_dp=True, min_noise_multiplier=0.0, max_epsilon=None),
           **{"privacy.mode": "central"})  # fmt: skip


def test_secure_aggregation_can_be_required(tmp_path: Path) -> None:
    policy = _policy(tmp_path, require_secure_aggregation=True)
    with pytest.raises(PolicyRefused, match="only under secure aggregation"):
        _train(policy, **{"federation.num_sites": 3})
    _train(policy, **{"federation.num_sites": 3, "secure_aggregation.enabled": True})


def test_evaluations_are_counted_by_the_models_they_score(tmp_path: Path) -> None:
    policy = _policy(tmp_path, max_evaluations_per_run=5)
    study = TaskRequest(app_hash=HASH, run_config=_run_config(), models_scored=3)
    check_task(policy, study, SiteHistory(models_scored=2))
    with pytest.raises(PolicyRefused, match=r"has had 3 model.* asks for 3 more; .* at most 5 per run"):
        check_task(policy, study, SiteHistory(models_scored=3))
    with pytest.raises(PolicyRefused, match=r"study\.min_subgroup = 1 is below the hospital's policy minimum 10"):
        check_task(policy, TaskRequest(app_hash=HASH, run_config=_run_config(**{"study.min_subgroup": 1}),
                                       models_scored=1), SiteHistory())  # fmt: skip


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
    with pytest.raises(PolicyRefused, match="epsilon reported is above the hospital's policy maximum 1e-06"):
        check_reply(_policy(tmp_path, max_epsilon=1e-6), trained.content, trains=True)
    with pytest.raises(PolicyRefused, match="model arrays in a reply that is not a training one"):
        check_reply(policy, trained.content, trains=False)
    with pytest.raises(PolicyRefused, match="would send the model unmasked; the policy requires SecAgg"):
        check_reply(_policy(tmp_path, max_epsilon=1e6, require_secure_aggregation=True), trained.content, trains=True)


@pytest.mark.usefixtures("flower_identity")
def test_a_model_without_finite_privacy_figures_or_an_unknown_record_is_withheld(tmp_path: Path) -> None:
    arrays = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    policy = _policy(tmp_path)

    def reply(**records: Any) -> RecordDict:
        return RecordDict({"arrays": arrays, **records})

    with pytest.raises(PolicyRefused, match=r"without the \(finite\) epsilon it cost"):
        check_reply(policy, reply(metrics=MetricRecord({"num-examples": 3})), trains=True)
    with pytest.raises(PolicyRefused, match=r"without the \(finite\) epsilon it cost"):
        check_reply(policy, reply(metrics=MetricRecord({"epsilon": math.nan, "noise_multiplier": 2.0})), trains=True)
    with pytest.raises(PolicyRefused, match="without the noise multiplier it was trained with"):
        check_reply(policy, reply(metrics=MetricRecord({"epsilon": 1.0})), trains=True)
    with pytest.raises(PolicyRefused, match="without the noise multiplier it was trained with"):
        check_reply(policy, reply(metrics=MetricRecord({"epsilon": 1.0, "noise_multiplier": math.nan})), trains=True)
    with pytest.raises(PolicyRefused, match="noise multiplier reported is below"):
        check_reply(policy, reply(metrics=MetricRecord({"epsilon": 1.0, "noise_multiplier": 0.5})), trains=True)
    # A round sat out trained nothing: its (unchanged) model needs no noise multiplier.
    check_reply(policy, reply(metrics=MetricRecord({"epsilon": 1.0, "sat_out": 1})), trains=True)
    with pytest.raises(PolicyRefused, match="config record 'extra' is not one"):
        check_reply(policy, RecordDict({"extra": ConfigRecord({"x": "patient 123"})}), trains=False)
    with pytest.raises(PolicyRefused, match=r"config record 'site' holds \['pid'\]"):
        check_reply(policy, RecordDict({"site": ConfigRecord({"name": "a", "pid": "123"})}), trains=False)
    with pytest.raises(PolicyRefused, match=r"config record 'fitres.status' holds \['message'\]"):
        check_reply(policy, RecordDict({"fitres.status": ConfigRecord({"code": 0, "message": "x"})}), trains=True)


def test_secagg_replies_are_checked_by_their_own_names() -> None:
    policy = HospitalPolicy(frozenset({HASH}), Path("/unused"), min_noise_multiplier=1.0, max_epsilon=8.0,
                            max_delta=1e-4)  # fmt: skip
    masked = ConfigRecord({"masked_params": [b"\x00" * 8]})  # SecAgg+: the model leaves masked, same rules
    with pytest.raises(PolicyRefused, match=r"without the \(finite\) epsilon it cost"):
        check_reply(policy, RecordDict({"secaggplus_configs": masked}), trains=True)
    with pytest.raises(PolicyRefused, match="config record 'secaggplus_configs' is not one"):
        check_reply(policy, RecordDict({"secaggplus_configs": masked}), trains=False)
    # SecAgg+'s key exchange and unmask steps: train messages without a model; their record leaves, a model not.
    keys = ConfigRecord({"pk1": b"\x01" * 8, "pk2": b"\x02" * 8})
    check_reply(policy, RecordDict({"secaggplus_configs": keys}), trains=False, train_message=True)
    with pytest.raises(PolicyRefused, match=r"'secaggplus_configs' holds \['masked_params'\]"):
        check_reply(policy, RecordDict({"secaggplus_configs": masked}), trains=False, train_message=True)
    legacy = ConfigRecord({"metrics.epsilon": 1.0, "metrics.noise_multiplier": 1.2, "metrics.num-examples": 12,
                           "site.name": "hospital-a"})  # fmt: skip
    check_reply(policy, RecordDict({"secaggplus_configs": masked, "fitres.metrics": legacy}), trains=True)
    legacy["site.pid"] = "123"
    with pytest.raises(PolicyRefused, match=r"'fitres.metrics' holds \['site.pid'\]"):
        check_reply(policy, RecordDict({"secaggplus_configs": masked, "fitres.metrics": legacy}), trains=True)
    del legacy["site.pid"]
    legacy["metrics.patient_age"] = 54.0
    with pytest.raises(PolicyRefused, match=r"metric 'patient_age' in record 'fitres\.metrics'"):
        check_reply(policy, RecordDict({"secaggplus_configs": masked, "fitres.metrics": legacy}), trains=True)


# --- the gate's wrapped steps --------------------------------------------------------------------------------------


def _bundle(marker: str = "approved") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("pyproject.toml", f"# {marker}\n")
        bundle.writestr("fedmammo_probe_pkg/__init__.py", "")
    return buffer.getvalue()


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


def _gated(policy: HospitalPolicy | None, message: Message, fab: bytes, **run: object) -> tuple[Any, ...]:
    flower = _Flower(message, _run_config(**run), fab)
    task = GatedTask(policy, "broken" if policy is None else "")
    return flower, task.pulled(flower.pull), task.install(flower.install), task.push(flower.push)


def _approving(tmp_path: Path, fab: bytes, **changes: Any) -> HospitalPolicy:
    return _policy(tmp_path, approved_app_hashes=frozenset({hashlib.sha256(fab).hexdigest()}), **changes)


@pytest.mark.usefixtures("flower_identity")
def test_the_gate_refuses_before_the_bundle_is_installed_and_logs_it(tmp_path: Path) -> None:
    fab = _bundle("nobody approved this")
    message = Message(content=RecordDict(), message_type="train", dst_node_id=1)
    flower, pull, install, push = _gated(_policy(tmp_path), message, fab)

    pull(None)
    with pytest.raises(PolicyRefused, match=hashlib.sha256(fab).hexdigest()):
        install(fab, skip_prompt=True)
    push(None, Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message), None)

    assert flower.installed == [] and flower.pushed == []  # no content leaves a refused task
    [entry] = AuditLog(tmp_path / "audit.jsonl").entries()
    assert (entry["decision"], entry["run_id"], entry["server"]) == ("refused", 7, "coordinator:8000")


@pytest.mark.usefixtures("flower_identity")
def test_an_admitted_bundle_runs_its_own_packages_not_the_hospitals_imports(tmp_path: Path) -> None:
    import sys
    import types

    fab = _bundle()
    sys.modules["fedmammo_probe_pkg"] = types.ModuleType("fedmammo_probe_pkg")  # as if the gate had imported it
    message = Message(content=RecordDict(), message_type="query", dst_node_id=1)
    flower, pull, install, _ = _gated(_approving(tmp_path, fab), message, fab)
    pull(None)
    install(fab, skip_prompt=True)
    assert flower.installed == [fab] and "fedmammo_probe_pkg" not in sys.modules


@pytest.mark.usefixtures("flower_identity")
def test_the_gate_withholds_a_reply_the_policy_forbids_and_logs_what_would_have_left(tmp_path: Path) -> None:
    fab = _bundle()
    message = Message(content=RecordDict(), message_type="evaluate", dst_node_id=1)
    flower, pull, install, push = _gated(_approving(tmp_path, fab, allowed_metrics=("num-examples",)), message, fab)
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
    admitted, first, second = AuditLog(tmp_path / "audit.jsonl").entries()
    assert admitted["decision"] == "admitted" and admitted["models_scored"] == 1
    assert first["decision"] == "withheld" and first["withheld"]["metrics"]["values"]["auc"] == 0.9
    assert second["decision"] == "sent" and second["sent"]["metrics"]["values"] == {"num-examples": 10}
    assert verify_audit_log(tmp_path / "audit.jsonl") == 3


@pytest.mark.usefixtures("flower_identity")
def test_nothing_leaves_when_the_audit_log_cannot_be_written(tmp_path: Path) -> None:
    fab = _bundle()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the log's folder should be", encoding="utf-8")
    message = Message(content=RecordDict(), message_type="evaluate", dst_node_id=1)
    flower, pull, install, push = _gated(_approving(tmp_path, fab, audit_log=blocked / "audit.jsonl"), message, fab)
    pull(None)

    with pytest.raises(
        PolicyRefused, match=r"could not check this task \((FileExistsError|NotADirectoryError)\); nothing runs$"
    ):
        install(fab, skip_prompt=True)  # the reason names no path
    push(None, Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message), None)
    assert flower.installed == [] and flower.pushed == []


@pytest.mark.usefixtures("flower_identity")
def test_an_unreadable_policy_refuses_every_task_and_sends_nothing(tmp_path: Path) -> None:
    message = Message(content=RecordDict(), message_type="query", dst_node_id=1)
    flower, pull, install, push = _gated(None, message, b"anything")
    pull(None)
    with pytest.raises(PolicyRefused, match="policy cannot be read, so nothing runs"):
        install(b"anything")
    push(None, Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=message), None)
    assert flower.installed == [] and flower.pushed == []


def test_history_counts_admitted_rounds_and_models_and_the_latest_epsilon() -> None:
    entries = [
        {"run_id": 7, "trains": True, "decision": "admitted", "models_scored": 0},
        {"run_id": 7, "trains": True, "decision": "sent", "epsilon": 1.0},
        {"run_id": 7, "trains": True, "decision": "refused"},
        {"run_id": 7, "trains": False, "decision": "admitted", "models_scored": 4},
        {"run_id": 6, "trains": True, "decision": "admitted"},
        {"run_id": 6, "trains": True, "decision": "sent", "epsilon": 2.5},
    ]
    assert _history(entries, 7) == SiteHistory(rounds_trained=1, models_scored=4, epsilon_spent=2.5)


def _admit_one(log: str, fab: bytes, run_config: dict[str, Any], results: Any) -> None:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    policy = HospitalPolicy(frozenset({hashlib.sha256(fab).hexdigest()}), Path(log), max_rounds_per_run=1,
                            min_noise_multiplier=1.0, max_epsilon=8.0, max_delta=1e-4)  # fmt: skip
    message = Message(content=RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(2))})}), message_type="train",
                      dst_node_id=1)  # fmt: skip
    flower = _Flower(message, run_config, fab)
    task = GatedTask(policy)
    task.pulled(flower.pull)(None)
    try:
        task.install(flower.install)(fab)
        results.put("admitted")
    except PolicyRefused:
        results.put("refused")


def test_tasks_arriving_together_cannot_all_pass_a_cap_meant_for_one(tmp_path: Path) -> None:
    """Counting, deciding and writing happen under one lock: of four tasks of one run, one is admitted."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    args = (str(tmp_path / "audit.jsonl"), _bundle(), _run_config(**{"strategy.num_rounds": 1}), results)
    workers = [context.Process(target=_admit_one, args=args) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert sorted(results.get(timeout=5) for _ in workers) == ["admitted", "refused", "refused", "refused"]


def test_the_final_evaluations_fine_tuning_is_held_to_the_privacy_policy(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    run = _run_config(**{"personalization.fine_tune_epochs": 1, "privacy.noise_multiplier": 0.5})
    with pytest.raises(PolicyRefused, match=r"noise_multiplier = 0\.5 is below"):
        check_task(policy, TaskRequest(app_hash=HASH, run_config=run, models_scored=1), SiteHistory())
    check_task(policy, TaskRequest(app_hash=HASH, run_config=_run_config(**{"privacy.noise_multiplier": 0.5}),
                                   models_scored=1), SiteHistory())  # fmt: skip  # no fine-tuning: no training
    with pytest.raises(PolicyRefused, match="fine-tuning's epsilon is above"):
        check_reply(policy, RecordDict({"metrics": MetricRecord({"ft_epsilon": 9.0})}), trains=False)
    check_reply(policy, RecordDict({"metrics": MetricRecord({"ft_epsilon": math.nan, "ft_declined": 1})}), trains=False)
