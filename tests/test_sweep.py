"""Sweeps: Hydra multirun expansion, running the jobs one after another, and the summary across them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from common.errors import ConfigError
from simulations.launcher import SimulationError
from simulations.processes import SimulationInterrupted
from simulations.sweep import MAX_SLUG, SweepJob, expand_sweep, job_folder, run_sweep
from simulations.sweep_summary import CSV_FILE, JSON_FILE, MARKDOWN_FILE, PLOT_FILE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SAFE_NAME = re.compile(r"^\d{2}_[A-Za-z0-9._=-]+$")

# The numbers the fake studies report, per target epsilon ("none": no DP).
STUDY_NUMBERS = {
    "1": {
        "fed": (0.71, 0.61, 0.81),
        "cen": (0.80, 0.70, 0.90),
        "local": (0.60, 0.64),
        "loso": (0.55, 0.65),
        "eps": {"site-0": 0.9, "site-1": 1.0},
        "diff": (0.05, -0.02, 0.12),
    },
    "8": {
        "fed": (0.78, 0.68, 0.88),
        "cen": (0.82, 0.72, 0.92),
        "local": (0.62, 0.66),
        "loso": (0.57, 0.67),
        "eps": {"site-0": 7.5, "site-1": 8.0},
        "diff": (0.10, 0.01, 0.19),
    },
    "none": {
        "fed": (0.85, 0.75, 0.95),
        "cen": (0.88, 0.78, 0.98),
        "local": (0.64, 0.68),
        "loso": (0.59, 0.69),
        "eps": {},
        "diff": (0.20, 0.10, 0.30),
    },
}


def _value(overrides: list[str], key: str) -> str | None:
    found = [text.split("=", 1)[1] for text in overrides if text.split("=", 1)[0] == key]
    return found[-1] if found else None


def _auc(auc: float, low: float | None = None, high: float | None = None) -> dict[str, float | None]:
    return {"auc": auc, "auc_ci_low": low, "auc_ci_high": high, "num_examples": 40}


def _fake_study(overrides: list[str], folder: Path) -> Path:
    """Writes a study.json (schema 1, the parts a sweep reads) with the numbers of `STUDY_NUMBERS`."""
    mode = "none" if _value(overrides, "privacy") == "none" else "local"
    n = STUDY_NUMBERS["none" if mode == "none" else _value(overrides, "privacy.target_epsilon") or "1"]
    sites = ["site-0", "site-1"]
    models = {"federated": {"kind": "federated", "epsilon": n["eps"]}, "centralized": {"kind": "centralized"}}
    matrix = {"federated": {"pooled": _auc(*n["fed"])}, "centralized": {"pooled": _auc(*n["cen"])}}
    for site, local, loso in zip(sites, n["local"], n["loso"], strict=True):
        models[f"local:{site}"] = {"kind": "local"}
        models[f"loso:{site}"] = {"kind": "loso", "held_out": site}
        matrix[f"local:{site}"] = {"pooled": _auc(local)}
        matrix[f"loso:{site}"] = {site: _auc(loso)}
    difference, low, high = n["diff"]
    comparisons = [
        {
            "site": "site-0",
            "a": "federated",
            "b": "local:site-0",
            "difference": difference,
            "ci_low": low,
            "ci_high": high,
        },
        {"site": "site-1", "a": "federated", "b": "local:site-1", "difference": None, "ci_low": None, "ci_high": None},
        {"site": "site-0", "a": "federated", "b": "centralized", "difference": -0.3, "ci_low": -0.4, "ci_high": -0.2},
    ]
    study = {
        "schema": 1,
        "config": {
            "privacy": {"mode": mode, "target_epsilon": float(_value(overrides, "privacy.target_epsilon") or 0)}
        },
        "sites": sites,
        "models": models,
        "matrix": matrix,
        "comparisons": comparisons,
    }
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(study), encoding="utf-8")
    return folder


def _fake_simulation(overrides: list[str], folder: Path) -> Path:
    """Writes a summary.json whose pooled AUC is 0.6 + epsilon / 100 (0.9 without DP)."""
    mode = "none" if _value(overrides, "privacy") == "none" else "local"
    epsilon = 0.0 if mode == "none" else float(_value(overrides, "privacy.target_epsilon") or 1)
    auc = 0.9 if mode == "none" else 0.6 + epsilon / 100
    pooled = {
        "auc": auc,
        "auc_ci_low": auc - 0.1,
        "auc_ci_high": auc + 0.05,
        "sensitivity": 0.5,
        "specificity": 0.9,
        "epsilon": epsilon,
    }
    folder.mkdir(parents=True)
    summary = {"pooled": pooled, "privacy": {"mode": mode, "target_epsilon": epsilon}, "sites": {}}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def _jobs(root: Path) -> list[dict]:
    return json.loads((root / JSON_FILE).read_text(encoding="utf-8"))["jobs"]


# --- expansion ------------------------------------------------------------------------------------------------


def test_expansion_is_the_cartesian_product_in_the_order_given() -> None:
    jobs = expand_sweep(
        ["strategy.num_rounds=3,5", "privacy.target_epsilon=1,4,8", "model=small_cnn,resnet18", "seed=7"]
    )

    assert len(jobs) == 12
    assert jobs[0] == ["strategy.num_rounds=3", "privacy.target_epsilon=1", "model=small_cnn", "seed=7"]
    assert jobs[1] == ["strategy.num_rounds=3", "privacy.target_epsilon=1", "model=resnet18", "seed=7"]
    assert jobs[2] == ["strategy.num_rounds=3", "privacy.target_epsilon=4", "model=small_cnn", "seed=7"]
    assert jobs[-1] == ["strategy.num_rounds=5", "privacy.target_epsilon=8", "model=resnet18", "seed=7"]
    assert len({tuple(job) for job in jobs}) == 12


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("a=range(1,4)", [["a=1"], ["a=2"], ["a=3"]]),
        ("a=choice(x,y)", [["a=x"], ["a=y"]]),
        ("data.cache_dir='a b',c", [["data.cache_dir='a b'"], ["data.cache_dir=c"]]),
        ("x='1,2'", [["x='1,2'"]]),  # quoted: one value, not a sweep
        ("a=[1,2]", [["a=[1,2]"]]),  # a list value, not a sweep
        ("model=glob(*)", [["model=resnet18"], ["model=resnet50"], ["model=small_cnn"]]),
        ("experiment=glob(cdd_3c*,exclude=*dp)", [["experiment=cdd_3c_pretrained"], ["experiment=cdd_3c_scratch"]]),
    ],
)
def test_expansion_follows_hydras_grammar(override: str, expected: list[list[str]]) -> None:
    assert expand_sweep([override]) == expected


def test_expansion_keeps_non_sweep_overrides_as_written() -> None:
    jobs = expand_sweep(["+extra.note=hello", "~data.cache_dir", "privacy=none", "seed=1,2"])

    assert jobs == [
        ["+extra.note=hello", "~data.cache_dir", "privacy=none", "seed=1"],
        ["+extra.note=hello", "~data.cache_dir", "privacy=none", "seed=2"],
    ]


def test_a_repeated_key_keeps_its_first_place_and_last_value_as_basic_sweeper() -> None:
    assert expand_sweep(["seed=1,2", "model=small_cnn", "seed=5"]) == [["seed=5", "model=small_cnn"]]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("privacy.delta=(1", r"(?s)'privacy\.delta=\(1' is invalid: .*extraneous input"),
        ("seed=1,", r"'seed=1,' is invalid"),
        ("seed=interval(0,1)", r"'seed=interval\(0,1\)' cannot be enumerated"),
        ("nothing=glob(*)", r"'nothing=glob\(\*\)' sweeps no values"),
        ("seed=range(3,3)", r"'seed=range\(3,3\)' sweeps no values"),
    ],
)
def test_a_bad_override_is_a_config_error_naming_it(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand_sweep(["model=small_cnn", override])


# --- folders --------------------------------------------------------------------------------------------------


def test_job_folders_are_unique_safe_and_bounded(tmp_path: Path) -> None:
    seen: list[SweepJob] = []

    root = run_sweep(
        ["data.cache_dir='/tmp/a b','x/../y',\"q|*?\"", "+note=" + "long" * 40 + ",b"],
        root=tmp_path / "sweep",
        run_one=_fake_simulation,
        kind="simulate",
        on_job=seen.append,
    )

    names = [job.folder.name for job in seen]
    assert len(names) == 6 and len(set(names)) == 6
    assert all(SAFE_NAME.match(name) for name in names), names
    assert all(job.folder.parent == root and len(job.folder.name) <= MAX_SLUG + 3 for job in seen)
    assert names[0].startswith("00_data.cache_dir=tmp-a-b_note=longlong")
    assert names[4].startswith("04_data.cache_dir=q_note=longlong")
    assert [job.index for job in seen] == list(range(6))
    assert job_folder(root, 3, {}) == root / "03_run"


# --- running and the summary ----------------------------------------------------------------------------------


def test_a_study_sweep_summary_holds_exactly_the_studies_numbers(tmp_path: Path) -> None:
    root = run_sweep(
        ["privacy=local,none", "privacy.target_epsilon=1,8", "seed=3"],
        root=tmp_path / "sweep",
        run_one=_fake_study,
        kind="study",
    )

    jobs = _jobs(root)
    assert [job["status"] for job in jobs] == ["ok"] * 4
    assert [job["swept"] for job in jobs][:2] == [
        {"privacy": "local", "privacy.target_epsilon": "1"},
        {"privacy": "local", "privacy.target_epsilon": "8"},
    ]
    first, no_dp = jobs[0]["figures"], jobs[2]["figures"]
    assert first == {
        "privacy_mode": "local", "epsilon": 1.0, "target_epsilon": 1.0,
        "federated_auc": 0.71, "federated_auc_ci_low": 0.61, "federated_auc_ci_high": 0.81,
        "centralized_auc": 0.80, "centralized_auc_ci_low": 0.70, "centralized_auc_ci_high": 0.90,
        "local_mean_auc": pytest.approx(0.62), "loso_mean_auc": pytest.approx(0.60),
        "fed_minus_local:site-0": 0.05, "fed_minus_local:site-0_ci_low": -0.02, "fed_minus_local:site-0_ci_high": 0.12,
        "fed_minus_local:site-1": None, "fed_minus_local:site-1_ci_low": None, "fed_minus_local:site-1_ci_high": None,
    }  # fmt: skip
    assert jobs[1]["figures"]["epsilon"] == 8.0
    assert no_dp["privacy_mode"] == "none" and no_dp["epsilon"] is None and no_dp["federated_auc"] == 0.85

    with (root / CSV_FILE).open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["federated_auc"] for row in rows] == ["0.71", "0.78", "0.85", "0.85"]
    assert [row["epsilon"] for row in rows] == ["1.0", "8.0", "", ""]
    assert (
        rows[1]["fed_minus_local:site-0_ci_low"] == "0.01"
        and rows[0]["folder"] == "00_privacy=local_privacy.target_epsilon=1"
    )

    markdown = (root / MARKDOWN_FILE).read_text(encoding="utf-8")
    assert (
        "| 0 | ok | local | 1 | local | 1.000 | 1.000 | 0.710 [0.610, 0.810] | 0.800 [0.700, 0.900] | 0.620 | 0.600 |"
        in markdown
    )
    assert "| 0.050 [-0.020, 0.120] | – |" in markdown
    assert "federated − local (site-0)" in markdown
    assert (root / PLOT_FILE).read_bytes().startswith(PNG_MAGIC)


def test_a_simulation_sweep_plots_auc_against_epsilon_with_a_no_dp_reference(tmp_path: Path) -> None:
    root = run_sweep(
        ["privacy=local,none", "privacy.target_epsilon=1,4,8", "model=small_cnn,resnet18"],
        root=tmp_path / "sweep",
        run_one=_fake_simulation,
        kind="simulate",
    )

    jobs = _jobs(root)
    assert len(jobs) == 12 and all(job["status"] == "ok" for job in jobs)
    assert jobs[2]["figures"] == {
        "privacy_mode": "local", "epsilon": 4.0, "auc": 0.64, "auc_ci_low": pytest.approx(0.54),
        "auc_ci_high": pytest.approx(0.69), "sensitivity": 0.5, "specificity": 0.9,
    }  # fmt: skip
    assert "| 2 | ok | local | 4 | small_cnn | local | 4.000 | 0.640 [0.540, 0.690] | 0.500 | 0.900 |" in (
        root / MARKDOWN_FILE
    ).read_text(encoding="utf-8")
    png = (root / PLOT_FILE).read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    def run_one(overrides: list[str], folder: Path) -> Path:
        if "seed=2" in overrides:
            raise SimulationError("the SuperLink stopped; see flwr.log")
        if "seed=3" in overrides:
            folder.mkdir()
            return folder  # finished, but wrote no summary.json
        return _fake_simulation(overrides, folder)

    root = run_sweep(["seed=1,2,3,4"], root=tmp_path / "sweep", run_one=run_one, kind="simulate")

    jobs = _jobs(root)
    assert [job["status"] for job in jobs] == ["ok", "failed", "no result", "ok"]
    assert jobs[1]["error"] == "SimulationError: the SuperLink stopped; see flwr.log" and jobs[1]["figures"] == {}
    assert "summary.json" in jobs[2]["error"]
    markdown = (root / MARKDOWN_FILE).read_text(encoding="utf-8")
    assert (
        "| 1 | failed | 2 | – | – | – | – | – | 01_seed=2 | SimulationError: the SuperLink stopped; see flwr.log |"
        in markdown
    )


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), SimulationInterrupted(2)])
def test_an_interrupt_in_job_2_leaves_a_summary_of_job_1(tmp_path: Path, interrupt: KeyboardInterrupt) -> None:
    def run_one(overrides: list[str], folder: Path) -> Path:
        if "privacy.target_epsilon=4" in overrides:
            raise interrupt
        return _fake_simulation(overrides, folder)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(["privacy.target_epsilon=1,4,8"], root=tmp_path / "sweep", run_one=run_one, kind="simulate")

    root = tmp_path / "sweep"
    jobs = _jobs(root)
    assert [job["status"] for job in jobs] == ["ok", "interrupted", "pending"]
    assert jobs[0]["figures"]["auc"] == 0.61
    assert "| 0 | ok | 1 | local | 1.000 | 0.610 [0.510, 0.660]" in (root / MARKDOWN_FILE).read_text(encoding="utf-8")
    assert (root / PLOT_FILE).read_bytes().startswith(PNG_MAGIC)


def test_an_existing_non_empty_root_is_left_alone_for_root_2(tmp_path: Path) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "keep.txt").write_text("earlier", encoding="utf-8")

    root = run_sweep(["seed=1"], root=tmp_path / "sweep", run_one=_fake_simulation, kind="simulate")

    assert root == (tmp_path / "sweep-2").resolve()
    assert (tmp_path / "sweep" / "keep.txt").read_text(encoding="utf-8") == "earlier"
    assert [job["folder"] for job in _jobs(root)] == ["00_run"]  # nothing swept


def test_an_unknown_kind_or_bad_override_is_refused_before_anything_runs(tmp_path: Path) -> None:
    def run_one(overrides: list[str], folder: Path) -> Path:
        raise AssertionError("no job may run")

    with pytest.raises(ConfigError, match="sweep kind 'train' is invalid"):
        run_sweep(["seed=1,2"], root=tmp_path / "a", run_one=run_one, kind="train")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"'seed=\(' is invalid"):
        run_sweep(["seed=("], root=tmp_path / "b", run_one=run_one, kind="study")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_study_without_recorded_epsilon_or_trained_model_plots_no_point(tmp_path: Path) -> None:
    from simulations.sweep_summary import read_figures

    study = {
        "config": {"privacy": {"mode": "local", "target_epsilon": 4.0}},
        "models": {"federated": {"epsilon": {}, "trained": False}},
        "matrix": {"federated": {"pooled": {"auc": 0.5}}},
    }
    (tmp_path / "study.json").write_text(json.dumps(study), encoding="utf-8")

    status, _, figures = read_figures("study", tmp_path)

    assert status == "ok"
    assert figures["epsilon"] is None and figures["target_epsilon"] == 4.0  # a plan is not a spending
    assert figures["federated_auc"] is None  # an untrained model's AUC is no result
