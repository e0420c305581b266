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
