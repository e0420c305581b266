"""The hospital's gate with real processes: three TLS SuperNodes in process isolation, each with its own
`deploy.hospital_exec` and policy, run the real app; the audit logs and the policy's refusals are checked.

The gate reads its policy file for every task, so the tests rewrite a hospital's policy between runs instead of
restarting its node (the hospital_exec validates the file once, at start).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.app_hash import app_hash
from deploy.audit import AuditLog, verify_audit_log
from deploy.pki import create_node_key
from tests.integration.harness import (
    BIN,
    CONNECTION,
    SuperLink,
    free_port,
    needs_flower,
    node_statuses,
    register,
    run_config,
    superlink_fixture,
    wait_for_status,
)

superlink = superlink_fixture

HOSPITALS = ("hospital-a", "hospital-b", "hospital-c")
RUN_LIMIT_S = 300.0


def _policy(folder: Path, approved: str, **limits: object) -> Path:
    """Write one hospital's policy (the defaults: generous limits, the default allowed metrics)."""
    values = {"max-rounds-per-run": 5, "min-noise-multiplier": 0.5, "max-epsilon": 1000.0, "max-delta": 1e-4, **limits}
    lines = [f'approved-app-hashes = ["{approved}"]', f'audit-log = "{folder / "audit.jsonl"}"',
             'server = "127.0.0.1 (test SuperLink)"'] + [f"{k} = {v}" for k, v in values.items()]  # fmt: skip
    path = folder / "policy.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def app_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's files as Flower bundles them, frozen: edits to the working tree during the tests change neither
    what is submitted nor its approved hash."""
    import io
    import shutil
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    from simulations.launcher import APP_DIR

    folder = tmp_path_factory.mktemp("app") / "fedmammo"
    zipfile.ZipFile(io.BytesIO(build_fab_from_disk(Path(APP_DIR)))).extractall(folder)
    shutil.rmtree(folder / ".info")  # the bundle's own manifest, which building again adds back
    return folder


@pytest.fixture(scope="module")
def gated_hospitals(
    superlink: SuperLink, app_snapshot: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Path]]:
    """Three registered SuperNodes (``--isolation process``), each with a hospital_exec and a policy: name -> folder."""
    from simulations.phantoms import generate_federation

    approved = app_hash(app_snapshot)
    data = tmp_path_factory.mktemp("gated")
    manifests = generate_federation(data, num_sites=3, images_per_site=24, seed=5, matrix_scale=0.25)
    folders = {}
    for name, manifest in zip(HOSPITALS, manifests, strict=True):
        folder = data / name
        folder.mkdir()
        create_node_key(folder, name)
        node_id = register(superlink, folder / f"{name}.pub")
        port = free_port()
        config = f'manifest="{manifest}" site-name="{name}" cache-dir="{folder / "cache"}"'
        _, log = superlink.supernode(
            name,
            "--root-certificates", str(superlink.pki / "ca.crt"),
            "--auth-supernode-private-key", str(folder / name),
            "--node-config", config,
            "--isolation", "process",
            runtime_port=port,
        )  # fmt: skip
        policy = _policy(folder, approved)
        gate = [str(BIN / "python"), "-m", "deploy.hospital_exec", "--policy", str(policy)]
        gate += ["--runtime-api-address", f"127.0.0.1:{port}", "--insecure"]
        gate_log = folder / "hospital_exec.log"
        with gate_log.open("wb") as out:
            process = superlink.children.start(
                gate, stdout=out, stderr=subprocess.STDOUT, env=superlink.env, cwd=superlink.home
            )
        wait_for_status(superlink, node_id, "online", log)
        deadline = time.monotonic() + 30
        while "hospital gate:" not in gate_log.read_text(errors="replace"):  # it validated the policy and runs
            assert process.poll() is None and time.monotonic() < deadline, gate_log.read_text(errors="replace")
            time.sleep(0.2)
        folders[name] = folder
    yield folders
    for node_id, status in node_statuses(superlink).items():  # leave no node to a later module's runs
        if status != "unregistered":
            superlink.flwr("supernode", "unregister", node_id, CONNECTION)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


@needs_flower
def test_approved_app_runs_and_every_reply_is_on_the_hospitals_audit_log(
    superlink: SuperLink, gated_hospitals: dict[str, Path], app_snapshot: Path
) -> None:
    from deploy.submit import submit

    approved = app_hash(app_snapshot)
    run_dir = superlink.home / "runs" / "gated-ok"
    started = time.monotonic()
    done = submit(
        app_snapshot,
        CONNECTION,
        run_config=run_config(superlink.home / "ok.toml", run_dir),
        env=superlink.env,
        timeout_s=RUN_LIMIT_S,
    )
    seconds = time.monotonic() - started

    assert done.status.status == "finished:completed"
    assert not [r for r in _rows(run_dir) if "error" in r], _rows(run_dir)
    for name, folder in gated_hospitals.items():
        log = folder / "audit.jsonl"
        assert verify_audit_log(log) >= 4
        entries = [e for e in AuditLog(log).entries() if e["run_id"] == done.run_id]
        # Every message: admitted (before the bundle ran), then sent (what left), one after the other per task.
        assert sorted(e["decision"] for e in entries) == ["admitted"] * (len(entries) // 2) + ["sent"] * (
            len(entries) // 2
        ), entries
        entries = [e for e in entries if e["decision"] == "sent"]
        assert all(e["app_hash"] == approved and e["server"] == "127.0.0.1 (test SuperLink)" for e in entries)
        trained = [e for e in entries if e["trains"]]
        assert [e["round"] for e in trained] == [1, 2], name
        for entry in trained:  # what left: the model's arrays by shape and size, the metrics, epsilon
            arrays = entry["sent"]["arrays"]
            assert arrays["kind"] == "arrays" and arrays["bytes"] > 0
            assert all(a["shape"] and a["dtype"] for a in arrays["arrays"])
            metrics = entry["sent"]["metrics"]["values"]
            assert metrics["epsilon"] == entry["epsilon"] > 0 and metrics["num-examples"] > 0
            assert entry["sent"]["site"]["values"]["name"] == name
        evaluated = [e for e in entries if e["message_type"] == "evaluate"]
        assert evaluated and all("auc" in e["sent"]["metrics"]["values"] for e in evaluated)
        assert not any("arrays" in e["sent"] for e in evaluated)  # no weights leave in an evaluation reply
    sys.stderr.write(f"gated deployed run: two rounds on three hospitals in {seconds:.1f} s\n")


@needs_flower
def test_policy_refusals_reach_the_server_with_their_reasons(
    superlink: SuperLink, gated_hospitals: dict[str, Path], app_snapshot: Path
) -> None:
    from deploy.submit import submit

    approved = app_hash(app_snapshot)
    folders = gated_hospitals
    _policy(folders["hospital-b"], "a" * 64)  # another bundle than the one the server ships
    _policy(folders["hospital-c"], approved, **{"min-noise-multiplier": 3.0})  # the run's 2.0 is too little
    try:
        run_dir = superlink.home / "runs" / "gated-refusals"
        overrides = {"strategy.num_rounds": 1, "strategy.min_nodes": 1}
        config = run_config(superlink.home / "refusals.toml", run_dir, overrides)
        done = submit(app_snapshot, CONNECTION, run_config=config, env=superlink.env, timeout_s=RUN_LIMIT_S)
    finally:
        for name in ("hospital-b", "hospital-c"):
            _policy(folders[name], approved)

    assert done.status.status == "finished:completed"  # hospital-a trained; the others said no, and why
    errors = " | ".join(r["error"] for r in _rows(run_dir) if r["phase"] == "train" and "error" in r)
    assert "is not approved by this hospital's policy" in errors, errors
    assert "privacy.noise_multiplier = 2 is below the hospital's policy minimum 3" in errors, errors

    def decisions(name: str) -> list[tuple[str, str]]:
        entries = AuditLog(folders[name] / "audit.jsonl").entries()
        return [(e["decision"], e.get("reason", "")) for e in entries
                if e["run_id"] == done.run_id and e["trains"] and e["decision"] != "admitted"]  # fmt: skip

    assert [d for d, _ in decisions("hospital-a")] == ["sent"]
    [(decision, reason)] = decisions("hospital-b")
    assert decision == "refused" and "a" * 64 not in reason and approved in reason  # it names what it was sent
    [(decision, reason)] = decisions("hospital-c")
    assert decision == "refused" and "below the hospital's policy minimum" in reason
    for folder in folders.values():
        verify_audit_log(folder / "audit.jsonl")


@needs_flower
def test_a_secagg_round_through_the_gates_sends_only_masked_models(
    superlink: SuperLink, gated_hospitals: dict[str, Path], app_snapshot: Path
) -> None:
    """SecAgg+ deployed: every SecAgg+ step passes each hospital's gate, and no model leaves unmasked."""
    from deploy.submit import submit

    approved = app_hash(app_snapshot)
    for folder in gated_hospitals.values():
        _policy(folder, approved)
    run_dir = superlink.home / "runs" / "gated-secagg"
    overrides = {"strategy.num_rounds": 1, "secure_aggregation.enabled": True, "secure_aggregation.timeout_s": 120.0}
    config = run_config(superlink.home / "secagg.toml", run_dir, overrides)

    done = submit(app_snapshot, CONNECTION, run_config=config, env=superlink.env, timeout_s=RUN_LIMIT_S)

    assert done.status.status == "finished:completed"
    rows = _rows(run_dir)
    assert not [r for r in rows if "error" in r], rows
    assert {r["site"] for r in rows if r["phase"] == "train" and r["site"] != "pooled"} == set(HOSPITALS)
    for name, folder in gated_hospitals.items():
        entries = [e for e in AuditLog(folder / "audit.jsonl").entries() if e["run_id"] == done.run_id]
        assert [e["decision"] for e in entries if e["message_type"] == "train"].count("admitted") == 4
        train = [e for e in entries if e["message_type"] == "train" and e["decision"] != "admitted"]
        assert [e["decision"] for e in train] == ["sent"] * 4, (name, train)  # setup, keys, masked model, unmask
        stages = [e["sent"]["secaggplus_configs"]["values"] for e in train]
        assert sorted(stages[0]) == ["pk1", "pk2"]  # setup: the public keys only
        [masked] = [e for e in train if e["trains"]]  # the one step that trained: its model left masked only
        assert masked["sent"]["secaggplus_configs"]["values"]["masked_params"]["bytes"]
        assert masked["epsilon"] > 0
        assert all(not a["arrays"] for e in train for k, a in e["sent"].items() if a.get("kind") == "arrays")
