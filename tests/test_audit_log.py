"""deploy.audit: appended lines, a hash chain that names the first changed line, concurrent writers, the content
description (arrays by shape and size, metrics by value, bytes by size only)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from deploy.audit import GENESIS, AuditLog, AuditLogError, describe_content, main, verify_audit_log


def test_lines_are_appended_and_chained(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    first = log.append({"run_id": 1, "decision": "sent"})
    second = log.append({"run_id": 1, "decision": "refused", "reason": "no"})

    assert first["prev"] == GENESIS and second["prev"] != GENESIS
    assert [e["decision"] for e in log.entries()] == ["sent", "refused"]
    assert verify_audit_log(log.path) == 2
    assert log.path.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(("tamper", "broken_at"), [("change", 3), ("remove", 2), ("insert", 4)])
def test_a_rewritten_log_fails_verification_at_the_line_that_changed(
    tmp_path: Path, tamper: str, broken_at: int
) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for run in range(4):
        log.append({"run_id": run, "epsilon": 1.0 + run})
    lines = log.path.read_text(encoding="utf-8").splitlines()
    if tamper == "change":  # a smaller epsilon than was sent
        lines[1] = lines[1].replace('"epsilon": 2.0', '"epsilon": 0.5')
    elif tamper == "remove":
        del lines[1]
    else:
        lines.insert(2, json.dumps({"run_id": 9, "prev": json.loads(lines[2])["prev"]}))
    log.path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    # The first line whose "prev" no longer matches: the one after a changed or removed line, or the original line
    # after an inserted one (which copied a valid "prev" but cannot fix its successor's).
    with pytest.raises(AuditLogError, match=f"line {broken_at}: the chain is broken"):
        verify_audit_log(log.path)
    assert main(["verify", str(log.path)]) == 1


def _append_many(path: str, worker: int) -> None:
    log = AuditLog(Path(path))
    for i in range(20):
        log.append({"worker": worker, "i": i})


def test_concurrent_writers_keep_the_chain(tmp_path: Path) -> None:
    """Each task is a process of its own: several finishing together must not interleave or fork the chain."""
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert verify_audit_log(path) == 80


def test_content_is_described_by_shape_size_and_value_never_by_bytes(flower_identity: None) -> None:
    content = RecordDict(
        {
            "arrays": ArrayRecord(
                {"conv.weight": Array(np.zeros((4, 1, 3, 3), np.float32)), "fc.bias": Array(np.ones(2))}
            ),
            "metrics": MetricRecord({"epsilon": 1.5, "score_hist_neg": [1, 2, 3]}),
            "secaggplus_configs": ConfigRecord({"stage": "setup", "masked_params": [b"\x00" * 10, b"\x01" * 6]}),
        }
    )
    described = describe_content(content)

    arrays = described["arrays"]
    assert [(a["name"], a["shape"], a["dtype"]) for a in arrays["arrays"]] == [
        ("conv.weight", [4, 1, 3, 3], "float32"),
        ("fc.bias", [2], "float64"),
    ]
    assert arrays["bytes"] == sum(a["bytes"] for a in arrays["arrays"]) and arrays["bytes"] >= 36 * 4 + 16
    assert described["metrics"]["values"] == {"epsilon": 1.5, "score_hist_neg": [1, 2, 3]}
    assert described["secaggplus_configs"]["values"] == {"stage": "setup", "masked_params": {"bytes": [10, 6]}}
    json.dumps(described)  # what the log writes


def test_show_prints_one_line_per_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append({"run_id": 3, "message_type": "train", "app_hash": "ab" * 32, "server": "coord:8000",
                "decision": "sent", "epsilon": 0.42,
                "sent": {"arrays": {"kind": "arrays", "arrays": [{}, {}], "bytes": 100}}})  # fmt: skip
    log.append({"run_id": 4, "decision": "refused", "reason": "not approved"})

    assert main(["show", str(log.path), "--run-id", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    expected = "run 3 train app abababababab from coord:8000: sent epsilon=0.42 | sent arrays: 2 arrays, 100 bytes"
    assert expected in out[0]
