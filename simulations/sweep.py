"""Expands Hydra multirun overrides into jobs, as Hydra's BasicSweeper does, and runs them one after another."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, OverrideParseException

from common.errors import ConfigError, FedMammoError
from server.report.run_folder import claim_run_dir
from simulations.hydra_config import CONF_DIR
from simulations.sweep_summary import FAILED, INTERRUPTED, JobOutcome, read_figures, write_summary

__all__ = ["MAX_SLUG", "SweepJob", "expand_sweep", "job_folder", "run_sweep"]

logger = logging.getLogger(__name__)

MAX_SLUG = 80
"""Longest folder-name slug; a longer one is cut and ends in a hash of the whole, so it stays recognisable."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")

SweepKind = Literal["study", "simulate"]


@dataclass
class SweepJob:
    """One configuration of a sweep: its Hydra overrides and the folder its run or study is asked to write.

    ``swept`` holds only the keys the sweep varies (key as given, value as Hydra renders it), in the order given.
    """

    index: int
    overrides: list[str]
    folder: Path
    swept: dict[str, str] = field(default_factory=dict)


def expand_sweep(overrides: Sequence[str], *, config_dir: Path = CONF_DIR) -> list[list[str]]:
    """Every job of a Hydra multirun, as Hydra's ``BasicSweeper`` makes them: the cartesian product in the order given.

    Sweeps are Hydra's grammar: ``a=1,2``, ``a=choice(1,2)``, ``a=range(1,4)``, ``model=glob(*)`` (the options
    of a config group in ``config_dir``). A key given twice keeps its first place and its last value (as
    BasicSweeper's ordered mapping). Overrides that sweep nothing pass through as written.

    Raises
    ------
    ConfigError
        For an override Hydra cannot parse, a sweep it cannot enumerate (``interval``) or one with no values;
        the message names the override and carries Hydra's.
    """
    return [jobs for jobs, _ in _plan(overrides, config_dir)]


def _plan(overrides: Sequence[str], config_dir: Path) -> list[tuple[list[str], dict[str, str]]]:
    """Each job's overrides with its swept ``key -> value``."""
    choices: dict[str, list[tuple[str, str | None]]] = {}  # key -> [(override, swept value or None)]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            parsed = parser.parse_overrides(list(overrides))
        except OverrideParseException as exc:
            raise ConfigError(f"sweep override {exc.override!r} is invalid: {exc.message}") from exc
        for override in parsed:
            key, text = override.get_key_element(), override.input_line or ""
            if not override.is_sweep_override():
                choices[key] = [(text, None)]
                continue
            if not override.is_discrete_sweep():
                raise ConfigError(f"sweep override {text!r} cannot be enumerated: only choice, range and glob sweep")
            try:
                values = list(override.sweep_string_iterator())
            except HydraException as exc:
                raise ConfigError(f"sweep override {text!r} cannot be expanded: {exc}") from exc
            if not values:
                raise ConfigError(
                    f"sweep override {text!r} sweeps no values (an empty range, or a glob that matches "
                    "no option of that config group)"
                )
            choices[key] = [(f"{key}={value}", value) for value in values]
    plans = []
    for combination in itertools.product(*choices.values()):
        swept = {key: value for key, (_, value) in zip(choices, combination, strict=True) if value is not None}
        plans.append(([text for text, _ in combination], swept))
    return plans


def job_folder(root: Path, index: int, swept: dict[str, str]) -> Path:
    """``<root>/<index:02d>_<slug>``: the slug joins the swept ``key=value`` pairs, safe on any file system.

    Characters other than letters, digits, ``. _ = -`` become ``-``; a slug longer than `MAX_SLUG` is cut and
    ends in a short hash of the whole one. Without swept keys the slug is ``run``. The index keeps names unique.
    """
    pairs = [f"{_safe(key)}={_safe(value)}" for key, value in swept.items()]
    slug = "_".join(pairs) or "run"
    if len(slug) > MAX_SLUG:
        digest = hashlib.sha1(slug.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[: MAX_SLUG - 9].rstrip('-.')}-{digest}"
    return root / f"{index:02d}_{slug}"


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-.") or "-"


def run_sweep(
    overrides: Sequence[str],
    *,
    root: Path,
    run_one: Callable[[list[str], Path], Path],
    kind: SweepKind,
    on_job: Callable[[SweepJob], None] | None = None,
    config_dir: Path = CONF_DIR,
) -> Path:
    """Run every job of a sweep one after another into ``root`` and keep a summary across them there.

    ``run_one(job_overrides, folder)`` runs one study (``kind="study"``) or one simulation (``"simulate"``),
    asked to write into ``folder`` (the caller passes it on, e.g. as ``output.run_dir``), and returns the folder
    it wrote (its ``study.json`` or ``summary.json`` is read from there). ``on_job`` is called before each job.

    ``root`` is claimed as a run folder is (`claim_run_dir`): when it exists and is not empty, ``root-2``,
    ``-3``, ... is taken instead; the folder used is returned. A job raising a `FedMammoError` (a
    ``SimulationError`` too) is recorded as failed with its message and the sweep goes on. After every job the
    summary (``sweep.json``, ``sweep_summary.csv``, ``sweep_summary.md``, ``privacy_utility.png``) is rewritten,
    so a stopped sweep still has one: a ``KeyboardInterrupt`` (a ``SimulationInterrupted`` too), or any other
    exception, is recorded for its job and propagates.

    Raises
    ------
    ConfigError
        For an invalid override (see `expand_sweep`), an unknown ``kind``, or a root that cannot be claimed.
    """
    if kind not in ("study", "simulate"):
        raise ConfigError(f"sweep kind {kind!r} is invalid: it must be 'study' or 'simulate'")
    plans = _plan(overrides, config_dir)
    root = claim_run_dir(root)
    jobs = [SweepJob(i, job, job_folder(root, i, swept), swept) for i, (job, swept) in enumerate(plans)]
    outcomes = [JobOutcome(job.index, list(job.overrides), dict(job.swept), job.folder) for job in jobs]
    swept_keys = list(dict.fromkeys(key for job in jobs for key in job.swept))
    logger.info("sweep of %d %s job(s) into %s", len(jobs), kind, root)
    write_summary(root, kind, swept_keys, outcomes)
    for job, outcome in zip(jobs, outcomes, strict=True):
        if on_job is not None:
            on_job(job)
        try:
            outcome.folder = Path(run_one(list(job.overrides), job.folder))
        except FedMammoError as exc:
            outcome.status, outcome.error = FAILED, f"{type(exc).__name__}: {exc}"
            logger.warning("sweep job %d failed, going on: %s", job.index, exc)
        except BaseException as exc:
            status = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
            outcome.status, outcome.error = status, f"{type(exc).__name__}: {exc}"
            write_summary(root, kind, swept_keys, outcomes)
            raise
        else:
            outcome.status, outcome.error, outcome.figures = read_figures(kind, outcome.folder)
        write_summary(root, kind, swept_keys, outcomes)
    failed = sum(outcome.status != "ok" for outcome in outcomes)
    logger.info("sweep done: %d of %d job(s) ok; summary in %s", len(outcomes) - failed, len(outcomes), root)
    return root
