"""A per-round progress display for a simulation, fed by the run directory's metrics.jsonl as it grows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["RoundProgress"]


class RoundProgress:
    """Advances one step per finished round, showing the pooled test AUC and the largest epsilon so far.

    It reads only new bytes of ``metrics.jsonl`` on each ``poll()``, so calling it on every log line is cheap.
    """

    def __init__(self, metrics_path: Path, num_rounds: int, console: Console | None = None) -> None:
        self._path = metrics_path
        self._offset = 0
        self._epsilon = 0.0
        self._progress = Progress(
            TextColumn("[bold]federated rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
        )
        self._task = self._progress.add_task("starting sites...", total=num_rounds)

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.poll()
        self._progress.stop()

    def poll(self, _line: str | None = None) -> None:
        """Read rows appended since the last call and update the display."""
        if not self._path.is_file():
            return
        with self._path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            row = json.loads(line)
            if row.get("site") != "pooled":
                continue
            if row.get("phase") == "train":
                self._epsilon = max(self._epsilon, float(row.get("epsilon") or 0.0))
            elif row.get("phase") == "evaluate":
                auc = row.get("auc")
                auc_text = "n/a" if auc is None or math.isnan(auc) else f"{auc:.3f}"
                self._progress.update(
                    self._task,
                    completed=row["round"],
                    description=f"round {row['round']}: pooled AUC {auc_text}, max ε {self._epsilon:.2f}",
                )
