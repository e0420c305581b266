"""Differential privacy for local training: Opacus wrapping, budgets, and an accountant history that persists.

Each name below imports its submodule on first use (`common.lazy_exports`): importing ``common.privacy.noise_seed``
does not pull in Opacus (about 1 s), which the launcher and a ServerApp without central DP never need.
"""

from common.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "common.privacy.accounting": (
            "HISTORY_KEYS",
            "History",
            "compute_epsilon",
            "history_from_lists",
            "history_to_lists",
        ),
        "common.privacy.batches": ("MODES_WITHOUT_EMPTY_BATCHES", "empty_batch_step", "physical_batches"),
        "common.privacy.budget": ("noise_multiplier_for_budget", "planned_sampling", "privacy_for_budget"),
        "common.privacy.declines": ("SPENT_FIELD", "SPENT_TEMPLATE", "parse_spent"),
        "common.privacy.engine": (
            "PrivateTraining",
            "grad_sample_mode_guard",
            "make_private",
            "make_private_training",
            "new_privacy_engine",
        ),
    },
)
