"""The run's checkpoint: one file in the run folder's ``checkpoints/`` with all a stopped run needs to continue.

Written (atomically: a temporary file renamed over the last one) before round 1 and after each round's training and
evaluation, so the newest one is always whole. It holds the global model, the strategy's state
(`server.strategy_state`), the random generators' states when the run is seeded, the run key the sites' ledgers
know the run by, the rounds done and the time spent. A checkpoint is a pickle (``torch.save``): load only your own
run folders, as you would run only your own code.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from common.errors import ConfigError

__all__ = ["CHECKPOINT_FILE", "RunCheckpoint", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "resume.pt"
"""In the run folder's ``checkpoints/``, beside ``global_latest.pt`` (the weights alone, for people)."""
_FORMAT = 1


@dataclass(frozen=True)
class RunCheckpoint:
    """Where a run stands: what `save_checkpoint` writes and `load_checkpoint` reads back."""

    run_key: str
    """The run's random id, sent with every train request (`common.wire.RUN_KEY`): a site's ledger knows a round it
    trained before by it (`client.ledger_rounds`)."""
    round: int
    """The last round whose training was aggregated (0: none yet)."""
    evaluated: bool
    """Whether that round was also evaluated; False: it stopped between the round's training and its evaluation."""
    arrays: ArrayRecord
    """The global model as it then stood (the initial one until a round releases one)."""
    released: bool
    """Whether any round so far released a global model (``arrays`` is then the last one released)."""
    strategy: dict[str, Any]
    """`server.strategy_state.capture_state` of the strategy."""
    rng: dict[str, Any] | None
    """`capture_rng`'s states; None where the run is not seeded (a deployment: nothing to replay)."""
    elapsed_s: float
    """Seconds the run has spent in rounds so far, over every process that ran it."""


def capture_rng() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's global generators (Flower's DP noise draws from numpy's)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(states: dict[str, Any]) -> None:
    """Set the global generators to `capture_rng`'s ``states``: the next draws are the ones the run would have made."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])


def save_checkpoint(folder: Path, checkpoint: RunCheckpoint) -> Path:
    """Write ``checkpoint`` to ``folder/resume.pt`` atomically (a crash mid-write leaves the previous one)."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "run_key": checkpoint.run_key,
        "round": checkpoint.round,
        "evaluated": checkpoint.evaluated,
        "arrays": checkpoint.arrays.to_torch_state_dict(),
        "released": checkpoint.released,
        "strategy": checkpoint.strategy,
        "rng": checkpoint.rng,
        "elapsed_s": checkpoint.elapsed_s,
    }
    path = folder / CHECKPOINT_FILE
    handle, temporary = tempfile.mkstemp(prefix=".resume-", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    phase = "evaluated" if checkpoint.evaluated else "trained"
    logger.debug("checkpoint: round %d (%s) in %s", checkpoint.round, phase, path)
    return path


def load_checkpoint(folder: Path) -> RunCheckpoint:
    """The checkpoint in ``folder`` (a run folder's ``checkpoints/``).

    Raises
    ------
    ConfigError
        If there is none (naming ``output.resume_from`` and why there may be none), or it cannot be read.
    """
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise ConfigError(
            f"config key 'output.resume_from': {folder.parent} holds no checkpoint ({path} is missing): it is not a "
            "fedmammo run folder, or its run was started with output.save_checkpoints=false or before runs saved "
            "checkpoints; name the folder of a run that saved them, or start a new run"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"format {found!r}, expected {_FORMAT}")
        return RunCheckpoint(
            run_key=str(payload["run_key"]),
            round=int(payload["round"]),
            evaluated=bool(payload["evaluated"]),
            arrays=ArrayRecord(payload["arrays"]),
            released=bool(payload["released"]),
            strategy=payload["strategy"],
            rng=payload["rng"],
            elapsed_s=float(payload["elapsed_s"]),
        )
    except Exception as exc:  # torch.load raises many kinds (pickle, zip, EOF): each means "not readable"
        raise ConfigError(
            f"config key 'output.resume_from': checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
            "the run cannot continue from it: start a new run"
        ) from exc
