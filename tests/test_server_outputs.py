"""What the server writes at the end of a run: the summary's privacy figures and the final weights file."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord

from common.config import load_config
from server.server_app import final_weights
from server.summary import build_summary


def test_pooled_epsilon_is_the_worst_site_even_one_that_declined_late_rounds() -> None:
    # Prepare: site b spent more, then declined round 2 (no train row for it there)
    rows = [
        {"round": 1, "phase": "train", "site": "a", "epsilon": 1.0},
        {"round": 1, "phase": "train", "site": "b", "epsilon": 3.0},
        {"round": 1, "phase": "train", "site": "pooled", "epsilon": 3.0},
        {"round": 2, "phase": "train", "site": "a", "epsilon": 1.5},
        {"round": 2, "phase": "train", "site": "pooled", "epsilon": 1.5},
        {"round": 2, "phase": "train", "site": "b", "error": "declined", "declined": True},
    ]
    # Execute
    summary = build_summary(load_config({}), rows, duration_s=1.0)
    # Assert
    assert summary["sites"]["b"]["epsilon"] == 3.0 and summary["pooled"]["epsilon"] == 3.0


def test_with_a_target_epsilon_the_summary_does_not_claim_one_noise_multiplier() -> None:
    local = build_summary(load_config({"privacy.target_epsilon": 4.0}), [], duration_s=1.0)
    fixed = build_summary(load_config({"privacy.noise_multiplier": 1.3}), [], duration_s=1.0)

    assert local["privacy"]["noise_multiplier"] == "per site, set for ε=4"
    assert local["privacy"]["target_epsilon"] == 4.0
    assert fixed["privacy"]["noise_multiplier"] == 1.3


def test_a_run_that_released_no_model_saves_the_initial_weights() -> None:
    initial = ArrayRecord({"w": torch.ones(2)})

    assert final_weights(ArrayRecord(), initial) is initial
    released = ArrayRecord({"w": torch.zeros(2)})
    assert final_weights(released, initial) is released


def test_a_site_that_failed_after_round_1_is_not_passed_off_as_final() -> None:
    # Prepare: sites a and b evaluated in round 1; in round 2 only a (b failed), so pooled round 2 is a alone
    rows = [
        {"round": 1, "phase": "evaluate", "site": "a", "auc": 0.6, "num_examples": 10},
        {"round": 1, "phase": "evaluate", "site": "b", "auc": 0.9, "num_examples": 10},
        {"round": 1, "phase": "evaluate", "site": "pooled", "auc": 0.7, "num_examples": 20},
        {"round": 2, "phase": "evaluate", "site": "a", "auc": 0.65, "num_examples": 10},
        {"round": 2, "phase": "evaluate", "site": "b", "error": "b: DicomError: unreadable"},
        {"round": 2, "phase": "evaluate", "site": "pooled", "auc": 0.65, "num_examples": 10},
    ]
    # Execute
    summary = build_summary(load_config({"strategy.num_rounds": 2}), rows, duration_s=1.0)
    # Assert
    assert summary["final_round"] == 2
    assert summary["sites"]["a"]["round"] == 2 and "not_in_final_round" not in summary["sites"]["a"]
    assert summary["sites"]["b"]["round"] == 1
    assert summary["sites"]["b"]["not_in_final_round"] == (
        "figures from round 1, its last evaluation; round 2 evaluate: b: DicomError: unreadable"
    )
    assert summary["pooled"]["round"] == 2
