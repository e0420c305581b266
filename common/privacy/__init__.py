"""Differential privacy for local training: Opacus wrapping, budgets, and an accountant history that persists."""

from common.privacy.accounting import (
    HISTORY_KEYS,
    History,
    compute_epsilon,
    history_from_lists,
    history_to_lists,
)
from common.privacy.batches import MODES_WITHOUT_EMPTY_BATCHES, empty_batch_step, physical_batches
from common.privacy.budget import noise_multiplier_for_budget, planned_sampling, privacy_for_budget
from common.privacy.declines import SPENT_FIELD, SPENT_TEMPLATE, parse_spent
from common.privacy.engine import (
    PrivateTraining,
    grad_sample_mode_guard,
    make_private,
    make_private_training,
    new_privacy_engine,
)

__all__ = [
    "HISTORY_KEYS",
    "MODES_WITHOUT_EMPTY_BATCHES",
    "SPENT_FIELD",
    "SPENT_TEMPLATE",
    "History",
    "PrivateTraining",
    "compute_epsilon",
    "empty_batch_step",
    "grad_sample_mode_guard",
    "history_from_lists",
    "history_to_lists",
    "make_private",
    "make_private_training",
    "new_privacy_engine",
    "noise_multiplier_for_budget",
    "parse_spent",
    "physical_batches",
    "planned_sampling",
    "privacy_for_budget",
]
