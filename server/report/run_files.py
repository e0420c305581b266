"""The run directory's files (config.yaml, metrics.jsonl, roc.json, summary.json): NaN-safe writers and readers.

``metrics.jsonl`` holds one JSON object per line, appended as rounds finish (see `METRICS_SCHEMA`).
JSON has no NaN or infinity: NaN is written as ``null`` and ±infinity as the strings ``"Infinity"`` /
``"-Infinity"``; the readers turn them back into floats, so ``null`` is reserved for NaN.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import FedMammoError
from common.metrics import ScoreHistogram
from server.report.json_safe import from_json_safe, to_json_safe
from server.report.metrics_rows import METRICS_SCHEMA, PHASES, POOLED_SITE, check_row

__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "METRICS_SCHEMA",
    "PHASES",
    "POOLED_SITE",
    "REPORT_FILE",
    "ROC_FILE",
    "SUMMARY_FILE",
    "RocData",
    "RunDirectory",
    "RunFolderError",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
ROC_FILE = "roc.json"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
CHECKPOINTS_DIR = "checkpoints"


class RunFolderError(FedMammoError, ValueError):
    """A run folder is missing, holds no run, or one of its files cannot be read; the message names it."""


def _write_atomic(path: Path, text: str) -> Path:
    """Write via a temporary file and rename, so a crash never leaves a half-written file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _histogram(lists: Mapping[str, Any]) -> ScoreHistogram:
    return ScoreHistogram.from_lists(lists["negatives"], lists["positives"])


@dataclass(frozen=True)
class RocData:
    """Contents of ``roc.json``: the final evaluated round's score histograms per site and pooled.

    ``class_sites`` / ``class_pooled`` hold each class's one-vs-rest histogram (class index order); they are
    empty for a binary model and for runs recorded before per-class results existed.
    """

    round: int
    sites: dict[str, ScoreHistogram]
    pooled: ScoreHistogram
    class_sites: dict[str, tuple[ScoreHistogram, ...]] = field(default_factory=dict)
    class_pooled: tuple[ScoreHistogram, ...] = ()


class RunDirectory:
    """One run's output folder; every file the report needs is written and read back here.

    The report is built from these files alone, so it can be rebuilt offline from a copied folder.
    ``create=False`` only reads (and writes into) a folder that exists: a reader pointed at a mistyped path
    must not create it.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        if create:
            self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise RunFolderError(f"run folder {self.path} does not exist; pass the folder that holds {METRICS_FILE}")

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        """``config.yaml``: the resolved configuration of the run."""
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``: one row per round, phase and site (`METRICS_SCHEMA`)."""
        return self.path / METRICS_FILE

    @property
    def roc_path(self) -> Path:
        """``roc.json``: final round's score histograms."""
        return self.path / ROC_FILE

    @property
    def summary_path(self) -> Path:
        """``summary.json``: final per-site and pooled results, privacy settings, duration."""
        return self.path / SUMMARY_FILE

    @property
    def report_path(self) -> Path:
        """``report.html``: the human-readable report."""
        return self.path / REPORT_FILE

    @property
    def checkpoints_dir(self) -> Path:
        """``checkpoints/``: model weights saved during the run."""
        return self.path / CHECKPOINTS_DIR

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write the resolved nested config as YAML (so a run can be repeated from its own folder)."""
        text = yaml.safe_dump(to_json_safe(config), sort_keys=False, default_flow_style=False)
        return _write_atomic(self.config_path, text)

    def read_config(self) -> dict[str, Any] | None:
        """The resolved config, or None when the run wrote none.

        Raises
        ------
        RunFolderError
            If ``config.yaml`` is not YAML holding a mapping (or cannot be read).
        """
        if not self.config_path.exists():
            return None
        try:
            config = yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise RunFolderError(f"{self.config_path} cannot be read as YAML: {_one_line(exc)}") from exc
        if not isinstance(config, dict):
            kind = type(config).__name__
            raise RunFolderError(f"{self.config_path} must hold a mapping of config sections, got {kind}")
        return config

    def append_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append rows to ``metrics.jsonl`` and flush to disk, so a crash keeps every finished round.

        Raises
        ------
        ValueError
            If a row lacks an int ``round``, a ``phase`` in `PHASES` or a ``site`` name (nothing is written then).
        """
        rows = list(rows)
        for row in rows:
            check_row(row)
        lines = "".join(json.dumps(to_json_safe(row), allow_nan=False) + "\n" for row in rows)
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """All rows of ``metrics.jsonl``, nulls back to NaN; [] if absent.

        A line that is not valid JSON (one cut short by a crash), or not a row of `METRICS_SCHEMA`, is skipped
        with a warning naming it.

        Raises
        ------
        RunFolderError
            If the file cannot be read as UTF-8 text.
        """
        if not self.metrics_path.exists():
            return []
        try:
            text = self.metrics_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{self.metrics_path} cannot be read: {_one_line(exc)}") from exc
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:  # e.g. a line cut short by a crash
                logger.warning("%s line %d is not valid JSON (%s); skipped", self.metrics_path, number, exc.msg)
                continue
            try:
                check_row(row if isinstance(row, dict) else {})
            except ValueError as exc:
                logger.warning("%s line %d is not a metrics row (%s); skipped", self.metrics_path, number, exc)
                continue
            rows.append(from_json_safe(row))
        return rows

    def write_roc(
        self,
        round: int,
        site_histograms: Mapping[str, ScoreHistogram],
        class_histograms: Mapping[str, Sequence[ScoreHistogram]] | None = None,
    ) -> Path:
        """Write each site's score histograms of ``round`` and their sum (pooled) to ``roc.json``.

        ``class_histograms`` (more than two classes) adds each site's one-vs-rest histogram per class, under
        ``classes``, and their per-class sums under ``pooled_classes``.

        Raises
        ------
        ValueError
            If there are no sites, the sites' bin counts differ, or sites hold different numbers of classes.
        """
        if not site_histograms:
            raise ValueError("write_roc needs at least one site's ScoreHistogram, got none")
        payload: dict[str, Any] = {
            "round": int(round),
            "sites": {str(site): h.to_lists() for site, h in site_histograms.items()},
            "pooled": ScoreHistogram.pooled(list(site_histograms.values())).to_lists(),
        }
        if class_histograms:
            per_site = {str(site): list(hs) for site, hs in class_histograms.items()}
            if len({len(hs) for hs in per_site.values()}) > 1:
                raise ValueError("write_roc: every site must hold one histogram per class, and as many classes")
            payload["classes"] = {site: [h.to_lists() for h in hs] for site, hs in per_site.items()}
            by_class = zip(*per_site.values(), strict=True)
            payload["pooled_classes"] = [ScoreHistogram.pooled(hs).to_lists() for hs in by_class]
        return _write_atomic(self.roc_path, json.dumps(payload, allow_nan=False) + "\n")

    def read_roc(self) -> RocData | None:
        """The histograms of ``roc.json``, or None when no round was evaluated."""
        if not self.roc_path.exists():
            return None
        payload = json.loads(self.roc_path.read_text(encoding="utf-8"))
        sites = {site: _histogram(h) for site, h in payload["sites"].items()}
        pooled = _histogram(payload["pooled"])
        class_sites = {site: tuple(map(_histogram, hs)) for site, hs in (payload.get("classes") or {}).items()}
        class_pooled = tuple(map(_histogram, payload.get("pooled_classes") or ()))
        return RocData(
            round=int(payload["round"]), sites=sites, pooled=pooled, class_sites=class_sites, class_pooled=class_pooled
        )

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` (NaN as null), pretty-printed for people who open it."""
        return _write_atomic(self.summary_path, json.dumps(to_json_safe(summary), indent=2, allow_nan=False) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        """``summary.json`` with nulls back to NaN, or None when the run did not finish.

        Raises
        ------
        RunFolderError
            If ``summary.json`` is not a JSON object (or cannot be read).
        """
        if not self.summary_path.exists():
            return None
        try:
            summary = json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunFolderError(f"{self.summary_path} cannot be read as JSON: {_one_line(exc)}") from exc
        if not isinstance(summary, dict):
            raise RunFolderError(f"{self.summary_path} must hold a JSON object, got {type(summary).__name__}")
        return from_json_safe(summary)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML's errors span several)."""
    return " ".join(str(exc).split())
