"""Resume: checkpoints, strategy state, the round offset, the sites' ledgers, and a stopped federation continued."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    Strategy,
)

from client.ledger import PrivacyLedger
from client.ledger_rounds import RoundRelease, release_digest
from common import wire
from common.config import load_config
from common.errors import ConfigError, PrivacyBudgetExceeded
from server.checkpoint import CHECKPOINT_FILE, RunCheckpoint, capture_rng, load_checkpoint, save_checkpoint
from server.checkpointed_rounds import CheckpointedRounds
from server.report import RunDirectory
from server.resume import check_same_run, restore, resume_point, rewind_record
from server.strategy_state import capture_state, restore_state

# --- checkpoint files ---------------------------------------------------------------------------------------------


def _checkpoint(**changes: Any) -> RunCheckpoint:
    values: dict[str, Any] = {
        "run_key": "k1",
        "round": 2,
        "evaluated": True,
        "arrays": ArrayRecord({"w": Array(np.arange(4, dtype=np.float32))}),
        "released": True,
        "strategy": {"parts": {}, "problems": []},
        "rng": capture_rng(),
        "elapsed_s": 12.5,
    }
    return RunCheckpoint(**{**values, **changes})


def test_a_checkpoint_round_trips_exactly(tmp_path: Path) -> None:
    saved = _checkpoint()

    save_checkpoint(tmp_path, saved)
    loaded = load_checkpoint(tmp_path)

    assert (loaded.run_key, loaded.round, loaded.evaluated, loaded.released) == ("k1", 2, True, True)
    np.testing.assert_array_equal(loaded.arrays["w"].numpy(), np.arange(4, dtype=np.float32))
    assert loaded.rng is not None and loaded.rng["python"] == saved.rng["python"]  # type: ignore[index]
    assert loaded.elapsed_s == 12.5 and not list(tmp_path.glob(".resume-*"))  # no temporary file left behind


def test_a_folder_without_a_checkpoint_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'output.resume_from'.*holds no checkpoint.*save_checkpoints=false"):
        load_checkpoint(tmp_path / "checkpoints")


def test_an_unreadable_checkpoint_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")

    with pytest.raises(ConfigError, match=r"checkpoint .*resume\.pt cannot be read"):
        load_checkpoint(tmp_path)


def test_resuming_a_missing_folder_is_refused(tmp_path: Path) -> None:
    config = load_config({"output.resume_from": str(tmp_path / "nowhere")})

    with pytest.raises(ConfigError, match=r"'output.resume_from' = .*nowhere.*no such folder"):
        resume_point(config)


def test_a_config_that_changes_the_run_is_refused_naming_each_key(tmp_path: Path) -> None:
    stored = load_config({"privacy.noise_multiplier": 2.0, "strategy.num_rounds": 2})
    longer = load_config({"privacy.noise_multiplier": 2.0, "strategy.num_rounds": 5, "output.resume_from": "x"})
    other = load_config({"privacy.noise_multiplier": 1.0, "seed": 7})

    check_same_run(stored, longer, source=tmp_path / "config.yaml")  # more rounds: the same run, continued
    with pytest.raises(ConfigError, match=r"'privacy.noise_multiplier' = 2.0 there, 1.0 now; 'seed' = 42 there, 7 now"):
        check_same_run(stored, other, source=tmp_path / "config.yaml")


def test_a_resumed_run_cannot_end_before_the_rounds_it_has_trained() -> None:
    stopped = _checkpoint(round=3, evaluated=False)  # round 3 trained, not yet evaluated
    rounds = CheckpointedRounds(FedAvg(), initial=stopped.arrays, folder=None, seeded=False, resumed=stopped)

    assert rounds.rounds_left(3) == 1 and rounds.offset == 2  # round 3's evaluation is left
    with pytest.raises(ConfigError, match=r"'strategy.num_rounds' = 2 is below the 3 round\(s\) this run has"):
        rounds.rounds_left(2)


def test_rewinding_keeps_the_rounds_done_and_a_trained_round_s_train_rows(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    rows = [{"round": r, "phase": p, "site": "a"} for r in (1, 2, 3) for p in ("train", "evaluate")]
    run.append_metrics(rows)
    run.write_summary({"done": True})
    with run.metrics_path.open("a") as handle:
        handle.write('{"round": 3, "pha')  # cut short by the stop

    dropped = rewind_record(run, _checkpoint(round=2, evaluated=False))

    assert [(r["round"], r["phase"]) for r in run.read_metrics()] == [(1, "train"), (1, "evaluate"), (2, "train")]
    assert dropped == 4 and not run.summary_path.exists()


def test_simulate_resume_continues_the_run_s_own_config_and_refuses_other_changes(tmp_path: Path) -> None:
    from simulations.resume_run import resumed_simulation, split_resume

    run = RunDirectory(tmp_path / "run")
    run.write_config(load_config({"strategy.num_rounds": 2, "seed": 5}).to_nested())

    folder, rest = split_resume([f"resume={run.path}", "strategy.num_rounds=4", "simulation.cpus_per_site=1"])
    config, resources = resumed_simulation(folder, rest)  # type: ignore[arg-type]

    assert (config.seed, config.strategy.num_rounds, resources.cpus_per_site) == (5, 4, 1)
    assert config.output.resume_from == config.output.run_dir == str(run.path.resolve())
    with pytest.raises(ConfigError, match=r"'model.name=resnet18' cannot be given with 'resume='"):
        resumed_simulation(run.path, ["model.name=resnet18"])


# --- strategy state -----------------------------------------------------------------------------------------------


class _Unknown(Strategy):
    def __init__(self) -> None:
        self.memory = [1]

    def configure_train(self, *args: Any) -> list:  # pragma: no cover - never run
        return []

    def aggregate_train(self, *args: Any) -> tuple:  # pragma: no cover
        return None, None

    def configure_evaluate(self, *args: Any) -> list:  # pragma: no cover
        return []

    def aggregate_evaluate(self, *args: Any) -> None:  # pragma: no cover
        return None

    def summary(self) -> None:  # pragma: no cover
        return None


class _NoisyFedAvg(FedAvg):
    """A subclass that keeps state of its own, which FedAvg's description does not name."""

    def __init__(self) -> None:
        super().__init__()
        self.velocity = 0.0


@pytest.mark.parametrize("strategy", [_Unknown(), _NoisyFedAvg()], ids=["unknown class", "unknown attribute"])
def test_a_strategy_whose_state_is_unknown_cannot_be_resumed(strategy: Strategy) -> None:
    saved = capture_state(strategy)

    assert saved["problems"]
    with pytest.raises(ConfigError, match=r"cannot be resumed: strategy .*server.strategy_state"):
        restore_state(strategy, saved, source="resume.pt")


def test_a_differently_built_strategy_is_refused() -> None:
    saved = capture_state(FedAdam())

    with pytest.raises(ConfigError, match=r"built as .*FedAdam.*this config builds .*FedAvg"):
        restore_state(FedAvg(), saved, source="resume.pt")


def test_the_central_dp_accountant_is_restored_in_place_and_stays_shared() -> None:
    from flwr.serverapp import GaussianPrivacyEvent

    from server.central_dp import wrap_with_central_dp

    config = load_config({"privacy.mode": "central", "model.norm": "groupnorm", "federation.num_sites": 2})
    first = wrap_with_central_dp(FedAvg(), config, 2)
    first.accountant.compose(GaussianPrivacyEvent(1.0, 2, 2), count=3)
    saved = capture_state(first)
    again = wrap_with_central_dp(FedAvg(), config, 2)

    restore_state(again, saved, source="resume.pt")

    assert again.accountant.num_releases == 3 and again.strategy.accountant is again.accountant  # type: ignore[attr-defined]


# --- the round loop, with a FedAdam whose moments must survive ----------------------------------------------------


class _Grid:
    """Two nodes answering deterministically: a node's update depends on the weights, the round and the node."""

    def __init__(self, stop_at: tuple[int, str] | None = None) -> None:
        self.stop_at = stop_at
        self.seen: list[tuple[str, int]] = []

    def get_node_ids(self) -> list[int]:
        return [1, 2]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            server_round = int(msg.content[wire.CONFIG_KEY][wire.SERVER_ROUND])
            phase = "train" if msg.metadata.message_type.startswith("train") else "evaluate"
            if (server_round, phase) == self.stop_at:
                raise KeyboardInterrupt  # the server process stops here
            if (phase, server_round) not in self.seen[-1:]:
                self.seen.append((phase, server_round))
            weights = msg.content[wire.ARRAYS_KEY]["w"].numpy()
            trained = weights * 0.5 + 0.1 * msg.metadata.dst_node_id + 0.01 * server_round
            content = RecordDict({wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: msg.metadata.dst_node_id})})
            if phase == "train":
                content[wire.ARRAYS_KEY] = ArrayRecord({"w": Array(trained.astype(np.float32))})
            replies.append(Message(content=content, reply_to=msg))
        return replies


KEYS = {"arrayrecord_key": wire.ARRAYS_KEY, "configrecord_key": wire.CONFIG_KEY}
BUILDERS: dict[str, Callable[[], Strategy]] = {
    "FedAdam": lambda: FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, **KEYS),
    "FedAvgM": lambda: FedAvgM(server_learning_rate=0.5, server_momentum=0.9, **KEYS),
    # Flower's central-DP noise comes from numpy's global generator: the resumed run must draw the same.
    "central DP": lambda: DifferentialPrivacyServerSideFixedClipping(FedAvg(**KEYS), 0.5, 0.3, 2),
}


def _run(
    grid: _Grid, folder: Path, num_rounds: int, build: Callable[[], Strategy], resumed: RunCheckpoint | None = None
) -> CheckpointedRounds:
    strategy = build()
    np.random.seed(0)  # as a simulation seeds it; a resumed run's generator is then put back by `restore`
    if resumed is not None:
        restore(strategy, resumed, seeded=True, source=folder / CHECKPOINT_FILE)
    initial = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
    rounds = CheckpointedRounds(strategy, initial=initial, folder=folder, seeded=True, resumed=resumed)
    rounds.start(
        grid=grid,  # type: ignore[arg-type]
        initial_arrays=rounds.arrays,
        num_rounds=rounds.rounds_left(num_rounds),
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
    )
    return rounds


@pytest.mark.usefixtures("flower_identity")
@pytest.mark.parametrize("builder", BUILDERS)
@pytest.mark.parametrize(
    ("stop_at", "sent_after_stop"),
    [
        ((3, "train"), [("train", 3), ("evaluate", 3), ("train", 4), ("evaluate", 4)]),
        ((3, "evaluate"), [("evaluate", 3), ("train", 4), ("evaluate", 4)]),  # round 3's aggregate is kept
    ],
    ids=["stopped while training", "stopped between training and evaluation"],
)
def test_a_stopped_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, builder: str, stop_at: tuple[int, str], sent_after_stop: list[tuple[str, int]]
) -> None:
    whole = _run(_Grid(), tmp_path / "whole", 4, BUILDERS[builder])
    stopped = _Grid(stop_at=stop_at)
    with pytest.raises(KeyboardInterrupt):
        _run(stopped, tmp_path / "stopped", 4, BUILDERS[builder])

    checkpoint = load_checkpoint(tmp_path / "stopped")
    resumed_grid = _Grid()
    resumed = _run(resumed_grid, tmp_path / "stopped", 4, BUILDERS[builder], resumed=checkpoint)

    assert resumed_grid.seen == sent_after_stop  # the run's own round numbers reach the sites
    np.testing.assert_array_equal(resumed.arrays["w"].numpy(), whole.arrays["w"].numpy())
    final = load_checkpoint(tmp_path / "stopped")
    assert (final.round, final.evaluated, final.run_key) == (4, True, checkpoint.run_key)


# --- the sites' ledgers -------------------------------------------------------------------------------------------


ROUND_STEPS = [(1.0, 0.25, 8)]


def _train_round(path: Path, run: str, server_round: int, weights: float, *, seeded: bool = True) -> list:
    """One round on one site as the train handler records it; returns the history it trained from."""
    with PrivacyLedger.locked(path) as ledger:
        start = ledger.history_for(run, server_round, seeded=seeded)
        digest = release_digest({"w": torch.full((2,), weights)}, 10, 0.5)
        ledger.record([*start, *ROUND_STEPS], base=start, release=RoundRelease(run, server_round, seeded, digest))
    return start


def test_a_round_trained_again_identically_is_charged_once(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    _train_round(path, "run-a", 1, 0.1)
    _train_round(path, "run-a", 2, 0.2)

    start = _train_round(path, "run-a", 2, 0.2)  # the resumed run sends round 2 again: the same update

    ledger = PrivacyLedger.open(path)
    assert start == [(1.0, 0.25, 8)]  # it trained from round 1's spending only, as the first attempt did
    assert [(e.run, e.round) for e in ledger.rounds] == [("run-a", 1), ("run-a", 2)]
    assert ledger.history == [(1.0, 0.25, 16)]


def test_a_round_trained_again_differently_under_seeded_noise_is_declined(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    _train_round(path, "run-a", 1, 0.1)

    with pytest.raises(PrivacyBudgetExceeded, match="released a different update") as caught:
        _train_round(path, "run-a", 1, 0.9)

    assert "round 1 of this run" in caught.value.public_reason and "run-a" not in caught.value.public_reason
    assert PrivacyLedger.open(path).history == [(1.0, 0.25, 8)]


def test_under_secure_noise_a_round_trained_again_is_a_second_release(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    _train_round(path, "run-a", 1, 0.1, seeded=False)

    start = _train_round(path, "run-a", 1, 0.3, seeded=False)

    ledger = PrivacyLedger.open(path)
    assert start == [(1.0, 0.25, 8)]  # its budget check counted the first release
    assert [(e.run, e.round) for e in ledger.rounds] == [("run-a", 1), ("run-a", 1)]
    assert ledger.history == [(1.0, 0.25, 16)]


def test_another_run_s_round_is_charged_and_a_version_2_ledger_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    PrivacyLedger.open(path).record(ROUND_STEPS)
    data = json.loads(path.read_text())
    data.pop("rounds")
    data["version"] = 2  # as fedmammo wrote ledgers before they knew runs and rounds (its checksum: history only)
    from client.ledger import _checksum

    data["checksum"] = _checksum(data["history"], None, 2)
    path.write_text(json.dumps(data))

    _train_round(path, "run-b", 1, 0.1)

    ledger = PrivacyLedger.open(path)
    assert ledger.history == [(1.0, 0.25, 16)] and [(e.run, e.round) for e in ledger.rounds] == [("run-b", 1)]
    assert json.loads(path.read_text())["version"] == 3


def test_a_ledger_whose_rounds_claim_steps_its_history_lacks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    _train_round(path, "run-a", 1, 0.1)
    data = json.loads(path.read_text())
    data["rounds"][0]["history"]["num_steps"] = [80]
    from client.ledger import _checksum

    data["checksum"] = _checksum(data["history"], data["rounds"])
    path.write_text(json.dumps(data))

    with pytest.raises(ConfigError, match="is inconsistent: its rounds hold steps its history does not"):
        PrivacyLedger.open(path)


# --- a stopped federation, continued through the launcher ---------------------------------------------------------


def _comparable(rows: list[dict[str, Any]]) -> list[str]:
    """Metrics rows without wall-clock figures, as sorted JSON (sites answer in any order; NaN equals NaN)."""
    return sorted(
        json.dumps({k: v for k, v in row.items() if k not in ("time", "seconds")}, sort_keys=True) for row in rows
    )


def _ledgers(data: Path) -> dict[str, PrivacyLedger]:
    return {site.name: PrivacyLedger.open(site / "privacy_ledger.json") for site in sorted(data.glob("site_*"))}


def _fresh_copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("privacy_ledger.json*"))
    return target


def test_a_run_stopped_after_round_2_and_resumed_ends_as_the_uninterrupted_run(
    tiny_federation: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from simulations.launcher import run_simulation
    from simulations.resume_run import resumed_simulation
    from tests.test_simulation_e2e import tiny_config

    # Prepare: the same federation twice, each with fresh ledgers
    whole_data = _fresh_copy(tiny_federation, tmp_path_factory.mktemp("whole") / "phantoms")
    stopped_data = _fresh_copy(tiny_federation, tmp_path_factory.mktemp("stopped") / "phantoms")
    # Localization runs in the planned final round only, which the stopped run (2 rounds planned) reached early.
    whole = run_simulation(
        tiny_config(whole_data, strategy__num_rounds=3, evaluation__localization=False),
        tmp_path_factory.mktemp("whole_run"),
    )
    stopped = run_simulation(
        tiny_config(stopped_data, strategy__num_rounds=2, evaluation__localization=False),
        tmp_path_factory.mktemp("stop_run"),
    )
    after_round_2 = (stopped / "checkpoints" / CHECKPOINT_FILE).read_bytes()

    # Execute: continue it to round 3, as `fedmammo simulate resume=RUN_DIR strategy.num_rounds=3` does
    config, _ = resumed_simulation(stopped, ["strategy.num_rounds=3"])
    assert run_simulation(config, stopped) == stopped

    # Assert: the same weights, rows and spending as the run that never stopped, one ledger entry per round
    def weights(run: Path) -> dict[str, torch.Tensor]:
        return torch.load(run / "global_model.pt", weights_only=True)

    expected = weights(whole)
    assert all(torch.equal(weights(stopped)[k], v) for k, v in expected.items())
    whole_rows = _comparable(RunDirectory(whole).read_metrics())
    assert _comparable(RunDirectory(stopped).read_metrics()) == whole_rows
    assert json.loads((stopped / "summary.json").read_text())["num_rounds"] == 3
    for name, ledger in _ledgers(stopped_data).items():
        assert [e.round for e in ledger.rounds] == [1, 2, 3] and len({e.run for e in ledger.rounds}) == 1
        assert ledger.history == _ledgers(whole_data)[name].history

    # Execute again: as if it had stopped during round 3's training, after the sites recorded the round
    (stopped / "checkpoints" / CHECKPOINT_FILE).write_bytes(after_round_2)
    run_simulation(config, stopped)

    # Assert: round 3 ran again, was recognised by every site's ledger, and changed nothing
    assert all(torch.equal(weights(stopped)[k], v) for k, v in expected.items())
    assert _comparable(RunDirectory(stopped).read_metrics()) == whole_rows
    for name, ledger in _ledgers(stopped_data).items():
        assert [e.round for e in ledger.rounds] == [1, 2, 3]
        assert ledger.history == _ledgers(whole_data)[name].history
