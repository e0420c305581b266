"""The hospital's audit log: one JSON line per message its SuperNode answered, appended, hash-chained, never rewritten.

Every line records when, which server, which run and app bundle (its SHA-256), the policy's decision and, for a
reply that left, what left: each array's name, shape, dtype and size, every metric's name and value, and the
epsilon the site reported. Lines are chained: each holds the SHA-256 of the line before it, so a line changed,
removed or inserted afterwards breaks `verify_audit_log` from that line on. The file is opened for appending only
and locked while a line is written, since each task runs in a process of its own and several may finish together.

    python -m deploy.audit show /var/lib/fedmammo/audit.jsonl [--run-id N]
    python -m deploy.audit verify /var/lib/fedmammo/audit.jsonl
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.errors import FedMammoError

__all__ = ["GENESIS", "AuditLog", "AuditLogError", "describe_content", "main", "verify_audit_log"]

GENESIS = "0" * 64
"""The ``prev`` of the first line."""


class AuditLogError(FedMammoError, ValueError):
    """The audit log cannot be read, or its chain is broken at a named line."""


def _line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _value(value: Any) -> Any:
    """A record value as the log keeps it: numbers and strings in full, lists by value, bytes by size.

    Byte values (SecAgg+ public keys, encrypted shares, masked vectors) are opaque by design: their sizes are what
    can be said about them."""
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    if isinstance(value, list):
        if value and isinstance(value[0], bytes):
            return {"bytes": [len(v) for v in value]}
        return [_value(v) for v in value]
    return value


def describe_content(content: RecordDict) -> dict[str, Any]:
    """What a message carries, for the log: arrays by name, shape, dtype and size; metrics and configs by value."""
    described: dict[str, Any] = {}
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays = [
                {"name": name, "shape": list(array.shape), "dtype": array.dtype, "bytes": len(array.data)}
                for name, array in record.items()
            ]
            described[key] = {"kind": "arrays", "arrays": arrays, "bytes": sum(a["bytes"] for a in arrays)}
        elif isinstance(record, MetricRecord):
            described[key] = {"kind": "metrics", "values": {name: _value(v) for name, v in record.items()}}
        elif isinstance(record, ConfigRecord):
            described[key] = {"kind": "config", "values": {name: _value(v) for name, v in record.items()}}
    return described


def _last_line(handle: Any, chunk: int = 65536) -> bytes:
    """The file's last non-empty line, read backwards from the end: the log grows for years, one line a message."""
    end = handle.seek(0, os.SEEK_END)
    tail = b""
    position = end
    while position > 0:
        step = min(chunk, position)
        position -= step
        handle.seek(position)
        tail = handle.read(step) + tail
        lines = [line for line in tail.split(b"\n") if line.strip()]
        if len(lines) >= 2 or (lines and position == 0):
            return lines[-1]
    return b""


def _parse(path: Path, handle: Any) -> list[dict[str, Any]]:
    handle.seek(0)
    parsed = []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AuditLogError(
                f"audit log {path} line {number} is not JSON ({exc}): move the log aside (keep it) and start a new "
                "one; `python -m deploy.audit verify` on the old one shows the lines before it are intact"
            ) from exc
    return parsed


class AuditLog:
    """An append-only, hash-chained JSON-lines file on the hospital's disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _write(self, handle: Any, entry: Mapping[str, Any]) -> dict[str, Any]:
        last = _last_line(handle)
        prev = _line_hash(last) if last else GENESIS
        written = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), **entry, "prev": prev}
        end = handle.seek(0, os.SEEK_END)
        if end and (handle.seek(end - 1), handle.read(1))[1] != b"\n":
            handle.write(b"\n")  # a line cut short by a crash stays a line of its own; the chain shows it
        handle.write(json.dumps(written, sort_keys=True, allow_nan=True).encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
        return written

    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.fdopen(os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640), "r+b")

    def append(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry (stamped with the UTC time and the previous line's hash); return it as written."""
        with self._open() as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            return self._write(handle, entry)

    def decide(self, decision: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
        """Read every entry, let ``decision`` build the next one from them, append it: all under one lock.

        The gate admits a task this way, so tasks that arrive together cannot all count the same history and
        pass a cap that only one of them should.
        """
        with self._open() as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            return self._write(handle, decision(_parse(self.path, handle)))

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (an absent log has none); read under a shared lock, never half a line."""
        if not self.path.exists():
            return []
        with self.path.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            return _parse(self.path, handle)


def verify_audit_log(path: Path) -> int:
    """Check the hash chain line by line; return the number of lines.

    Raises
    ------
    AuditLogError
        Naming the first line whose ``prev`` does not match the line before it (changed, removed or inserted).
    """
    prev = GENESIS
    count = 0
    with Path(path).open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                claimed = json.loads(line).get("prev")
            except json.JSONDecodeError as exc:
                raise AuditLogError(f"audit log {path} line {number} is not JSON: {exc}") from exc
            if claimed != prev:
                raise AuditLogError(
                    f"audit log {path} line {number}: the chain is broken (it names {claimed!r} as the line before "
                    f"it, which hashes to {prev!r}): a line at or before it was changed, removed or inserted"
                )
            prev = _line_hash(line)
            count += 1
    return count


def _show(entry: Mapping[str, Any]) -> str:
    """One entry in one line a person can scan: when, run, message, decision, what left."""
    left = entry.get("sent") or {}
    parts = []
    for key, record in left.items():
        if record.get("kind") == "arrays":
            parts.append(f"{key}: {len(record['arrays'])} arrays, {record['bytes']} bytes")
        else:
            parts.append(f"{key}: {', '.join(sorted(record.get('values', {})))}")
    epsilon = f" epsilon={entry['epsilon']:.3g}" if isinstance(entry.get("epsilon"), int | float) else ""
    reason = f" ({entry['reason']})" if entry.get("reason") else ""
    return (
        f"{entry.get('time', '?')} run {entry.get('run_id', '?')} {entry.get('message_type', '?')} "
        f"app {str(entry.get('app_hash', '?'))[:12]} from {entry.get('server', '?')}: "
        f"{entry.get('decision', '?')}{reason}{epsilon}" + (f" | sent {'; '.join(parts)}" if parts else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``show`` prints the log one entry per line; ``verify`` checks its hash chain (exit 1 if broken)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.audit", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("show", "verify"))
    parser.add_argument("log", type=Path)
    parser.add_argument("--run-id", type=int, default=None, help="show only this run's entries")
    args = parser.parse_args(argv)
    try:
        if args.action == "verify":
            count = verify_audit_log(args.log)
            with args.log.open("rb") as handle:
                head = _line_hash(_last_line(handle)) if count else GENESIS
            # The chain shows a line changed in place; only a head recorded elsewhere shows a log rewritten whole.
            sys.stdout.write(f"{args.log}: {count} lines, chain intact; head {head} (record it outside this machine)\n")
            return 0
        for entry in AuditLog(args.log).entries():
            if args.run_id is None or entry.get("run_id") == args.run_id:
                sys.stdout.write(f"{_show(entry)}\n")
    except (AuditLogError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
