"""Continue a stopped run from its folder: check the config, load the checkpoint, restore, rewind the record.

The run continues in its own folder, under its own run key, from its last checkpoint (`server.checkpoint`); its
``metrics.jsonl`` keeps the rows of the rounds done and gets the others appended, so the final summary and report
cover every round. `server.checkpointed_rounds` runs the rounds left.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from common.config import AppConfig, load_config
from common.errors import ConfigError
from server.checkpoint import CHECKPOINT_FILE, RunCheckpoint, load_checkpoint, restore_rng
from server.checkpointed_rounds import CheckpointedRounds
from server.report import RunDirectory
from server.strategy_state import restore_state

__all__ = [
    "RESUMABLE_KEYS",
    "check_same_run",
    "checkpointed_rounds",
    "restore",
    "resume_point",
    "rewind_record",
]

logger = logging.getLogger(__name__)

RESUMABLE_KEYS = frozenset(
    {
        "strategy.num_rounds",
        "strategy.round_timeout_s",
        "secure_aggregation.timeout_s",
        "training.device",
        "output.run_dir",
        "output.resume_from",
        "output.save_checkpoints",
    }
)
"""The only config keys a resumed run may change: how long it runs and waits, where it computes and writes.
(A longer plan under ``privacy.target_epsilon`` derives smaller noise for the rounds left; the ledgers count it.)"""


def check_same_run(stored: AppConfig, config: AppConfig, *, source: Path) -> None:
    """Refuse to resume under a config that differs from the run's own in any key outside `RESUMABLE_KEYS`.

    Raises
    ------
    ConfigError
        Naming every differing key with both values, and ``source`` (the run's ``config.yaml``).
    """
    before, now = stored.to_flat(), config.to_flat()
    changed = sorted(
        key for key in before.keys() | now.keys() if key not in RESUMABLE_KEYS and before.get(key) != now.get(key)
    )
    if changed:
        shown = "; ".join(f"'{key}' = {before.get(key)!r} there, {now.get(key)!r} now" for key in changed)
        raise ConfigError(
            f"config key 'output.resume_from': the run's config ({source}) differs: {shown}; a resumed run continues "
            f"the same run, so only {sorted(RESUMABLE_KEYS)} may change: resume with the run's own values"
        )


def resume_point(config: AppConfig) -> tuple[RunDirectory, RunCheckpoint]:
    """The run folder ``output.resume_from`` names and its last checkpoint, checked against ``config``.

    Raises
    ------
    ConfigError
        If the folder is missing or holds no readable checkpoint or config, or ``config`` differs from the run's in a
        key that may not change (`check_same_run`).
    """
    folder = Path(config.output.resume_from).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(
            f"config key 'output.resume_from' = {config.output.resume_from!r}: no such folder; name the folder of the "
            "run to continue (it holds config.yaml and checkpoints/)"
        )
    run_dir = RunDirectory(folder, create=False)
    stored = run_dir.read_config()
    if stored is None:
        raise ConfigError(f"config key 'output.resume_from': {folder} holds no config.yaml: it is not a run folder")
    check_same_run(load_config(stored), config, source=run_dir.config_path)
    checkpoint = load_checkpoint(run_dir.checkpoints_dir)
    logger.info(
        "resuming %s after round %d%s",
        folder,
        checkpoint.round,
        "" if checkpoint.evaluated else " (trained, not yet evaluated)",
    )
    return run_dir, checkpoint


def restore(strategy: Strategy, checkpoint: RunCheckpoint, *, seeded: bool, source: Path) -> None:
    """Put the checkpoint's strategy state back, and the random generators' states where the run is seeded."""
    restore_state(strategy, checkpoint.strategy, source=str(source))
    if seeded and checkpoint.rng is not None:
        restore_rng(checkpoint.rng)
    elif seeded:
        logger.warning("the checkpoint holds no random state: the rounds left draw other noise than the first run's")


def _kept(row: object, checkpoint: RunCheckpoint) -> bool:
    if not isinstance(row, dict) or not isinstance(row.get("round"), int):
        return False
    last = checkpoint.round
    return row["round"] < last or (row["round"] == last and (checkpoint.evaluated or row.get("phase") == "train"))


def rewind_record(run_dir: RunDirectory, checkpoint: RunCheckpoint) -> int:
    """Drop what the run recorded after its checkpoint (rows of a round it will run again, a final summary and
    report), so the continued run appends to a record of exactly the rounds done; return the rows dropped."""
    for path in (run_dir.summary_path, run_dir.report_path, run_dir.roc_path):
        path.unlink(missing_ok=True)  # rebuilt when the run ends
    if not run_dir.metrics_path.exists():
        return 0
    lines = [
        line for line in run_dir.metrics_path.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()
    ]
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the stop
            continue
        if _kept(row, checkpoint):
            kept.append(line if line.endswith("\n") else line + "\n")
    temporary = run_dir.metrics_path.with_name(f".{run_dir.metrics_path.name}.tmp")
    temporary.write_text("".join(kept), encoding="utf-8")
    os.replace(temporary, run_dir.metrics_path)
    if len(kept) < len(lines):
        logger.info("dropped %d metrics row(s) recorded after the checkpoint", len(lines) - len(kept))
    return len(lines) - len(kept)


def checkpointed_rounds(
    strategy: Strategy,
    run_dir: RunDirectory,
    config: AppConfig,
    initial: ArrayRecord,
    *,
    seeded: bool,
    resumed: RunCheckpoint | None = None,
) -> CheckpointedRounds:
    """The run's rounds around ``strategy``: a new run saves its round-0 checkpoint now; a resumed one gets its
    strategy state (and, when ``seeded``, random state) back and its record rewound to the checkpoint.

    Call it last before ``start``: the random state it restores (or saves) must be the one the rounds draw from.
    """
    folder = run_dir.checkpoints_dir if config.output.save_checkpoints else None
    if resumed is not None:
        restore(strategy, resumed, seeded=seeded, source=run_dir.checkpoints_dir / CHECKPOINT_FILE)
        rewind_record(run_dir, resumed)
    rounds = CheckpointedRounds(strategy, initial=initial, folder=folder, seeded=seeded, resumed=resumed)
    if resumed is None:
        rounds.checkpoint(0, evaluated=True)
    return rounds
