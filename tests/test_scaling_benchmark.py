"""The scaling benchmark's pure parts: splitting a round's time, the table, memory parsing (no timed run)."""

from __future__ import annotations

from typing import Any

import pytest

from simulations.benchmarks.proc_memory import process_memory_kb
from simulations.benchmarks.scaling import COLUMNS, format_table, growth, split_round, summarize


def _rows() -> list[dict[str, Any]]:
    """Round 1 ends at t=100, round 2 at t=110; in round 2 two sites train 2 s each and evaluate 0.5 s each."""
    rows: list[dict[str, Any]] = [
        {"round": 1, "phase": "evaluate", "site": "pooled", "time": 100.0},
        {"round": 2, "phase": "evaluate", "site": "pooled", "time": 110.0},
        {"round": 2, "phase": "train", "site": "pooled", "time": 105.0},
    ]
    for site in ("site-0", "site-1"):
        rows.append({"round": 2, "phase": "train", "site": site, "time": 105.0, "seconds": 2.0})
        rows.append({"round": 2, "phase": "evaluate", "site": site, "time": 110.0, "seconds": 0.5})
    return rows


def _call(name: str, start: float, seconds: float, pid: int = 1) -> dict[str, Any]:
    return {"event": "call", "name": name, "start": start, "end": start + seconds, "pid": pid}


def _events() -> list[dict[str, Any]]:
    """Two actors (pids 11, 12), each running one train and one evaluate message; Ray adds 0.25 s per message."""
    events = [_call("strategy.aggregate_train", 104.5, 0.3), _call("strategy.aggregate_evaluate", 109.8, 0.1)]
    for pid, offset in ((11, 0.0), (12, 0.1)):
        events.append(_call("ClientApp.__call__", 100.5 + offset, 2.5, pid))  # 2 s training + 0.5 s other
        events.append(_call("ClientApp.__call__", 105.5 + offset, 0.75, pid))  # 0.5 s scoring + 0.25 s
        events.append(_call("RayBackend.process_message", 100.4 + offset, 2.75))
        events.append(_call("RayBackend.process_message", 105.4 + offset, 1.0))
    events.append(_call("ClientApp.__call__", 95.0, 9.0, 13))  # round 1's: outside the window
    return events


def test_split_round_divides_site_side_seconds_by_the_lanes_and_keeps_the_rest() -> None:
    # Execute
    split = split_round(2, _rows(), _events())
    # Assert: wall 10 s; 2 lanes; train 4/2, evaluate 1/2, client other (6.5 - 5)/2, transport (7.5 - 6.5)/2
    assert split["wall_s"] == pytest.approx(10.0)
    assert split["lanes"] == 2 and split["sites"] == 2 and split["messages"] == 4
    assert split["train_s"] == pytest.approx(2.0)
    assert split["evaluate_s"] == pytest.approx(0.5)
    assert split["client_other_s"] == pytest.approx(0.75)
    assert split["transport_s"] == pytest.approx(0.5)
    assert split["server_s"] == pytest.approx(0.4)
    assert sum(split[key] for key in COLUMNS) == pytest.approx(split["wall_s"])
    assert split["outside_share"] == pytest.approx(1 - 2.5 / 10)


def test_split_round_without_a_trace_counts_one_lane_and_leaves_the_rest_unsplit() -> None:
    # Execute: no events (tracing failed): the site figures still come from the rows
    split = split_round(2, _rows(), [])
    # Assert
    assert split["lanes"] == 1 and split["train_s"] == pytest.approx(4.0) and split["evaluate_s"] == pytest.approx(1.0)
    assert split["client_other_s"] == split["transport_s"] == split["server_s"] == 0.0
    assert split["rest_s"] == pytest.approx(5.0)


def test_summarize_takes_medians_over_rounds_and_growth_compares_with_the_first_size() -> None:
    # Prepare
    splits = [
        {"wall_s": w, "lanes": 1, "outside_share": 0.1, **dict.fromkeys(COLUMNS, 1.0)} for w in (10.0, 12.0, 30.0)
    ]
    # Execute
    small = summarize(3, splits, {"peak_pss_mib": 2000.0})
    large = summarize(30, [{**s, "wall_s": s["wall_s"] * 9} for s in splits], {"peak_pss_mib": 2500.0})
    rows = growth([small, large])
    # Assert
    assert small["wall_s"] == 12.0 and small["wall_min_s"] == 10.0 and small["rounds_measured"] == 3
    assert small["peak_pss_mib"] == 2000.0
    assert rows[1]["wall_factor"] == pytest.approx(9.0) and rows[1]["sites_factor"] == pytest.approx(10.0)


def test_format_table_has_a_line_per_size_with_growth_and_memory() -> None:
    # Prepare
    row = {"num_sites": 3, "lanes": 1, "wall_s": 4.0, "wall_min_s": 3.5, "outside_share": 0.05, "peak_pss_mib": 2048.0}
    table = [{**row, **dict.fromkeys(COLUMNS, 0.5)}, {**row, **dict.fromkeys(COLUMNS, 0.5), "num_sites": 30,
                                                        "wall_s": 40.0}]  # fmt: skip
    # Execute
    text = format_table(table)
    # Assert
    lines = text.splitlines()
    assert len(lines) == 3 and "round s" in lines[0]
    assert "x10.00/x10.0" in lines[2] and "2048 MiB" in lines[1] and "5.0%" in lines[1]


def test_process_memory_reads_rss_and_pss_from_smaps_rollup() -> None:
    # Prepare
    text = "55d0-7ffe ---p 00000000 00:00 0  [rollup]\nRss:              204800 kB\nPss:              102400 kB\n"
    # Execute / Assert
    assert process_memory_kb(text) == (204800, 102400)
    assert process_memory_kb("") == (0, 0)
