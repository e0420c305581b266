"""The last round's fine-tuning of the global model at a site (``personalization.fine_tune_epochs``), scored too."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from client.budget import SiteBudget
from client.ledger import PrivacyLedger
from client.site import SiteSpec
from client.task import evaluate_on_site, train_on_site
from common import wire
from common.config import AppConfig
from common.errors import PrivacyBudgetExceeded
from common.metrics import METRIC_KEYS
from common.privacy import compute_epsilon

__all__ = ["FINE_TUNED_FIGURES", "fine_tune_on_site", "fine_tune_round", "fine_tunes"]

logger = logging.getLogger(__name__)

FINE_TUNED_FIGURES: tuple[str, ...] = (wire.LOSS, wire.THRESHOLD, *wire.CONFUSION_KEYS, *METRIC_KEYS)
"""The evaluation figures also reported for the fine-tuned model, each as ``ft_<figure>`` (`wire.fine_tuned_key`):
the headline ones (the last class against the rest). Always all of them, NaN when declined: Flower's FedAvg refuses
a round whose evaluation replies do not all hold the same metric names."""


def fine_tune_round(config: AppConfig) -> int:
    """The round whose evaluation fine-tunes: the last one, so the privacy it costs is spent once per run."""
    return config.strategy.num_rounds


def fine_tunes(config: AppConfig, server_round: int) -> bool:
    """Whether the evaluation of ``server_round`` fine-tunes the global model at the site (the last round only).

    Only the last round's, because fine-tuning under local DP spends privacy: every evaluation would cost each site
    another ``fine_tune_epochs`` of DP-SGD per round for figures about models nobody keeps, where the last one
    measures the model the run ends with.
    """
    return config.personalization.fine_tune_epochs > 0 and server_round == fine_tune_round(config)


def fine_tune_on_site(
    site: SiteSpec,
    config: AppConfig,
    state_dict: dict[str, torch.Tensor],
    *,
    ledger_path: Path,
    budget: SiteBudget | None,
) -> dict[str, float | int]:
    """Fine-tune a copy of ``state_dict`` on the site's training split, score it on the test split, and return the
    ``ft_`` figures that go into the evaluate reply beside the global model's.

    The fine-tuning is a training round in every respect that concerns privacy: the same `train_on_site` (DP-SGD
    under local privacy, the run's noise), the site's limits checked before it starts, and its steps written to the
    site's privacy ledger under the ledger's lock. A fine-tuning the site's limits decline is no failure of the
    evaluation: ``ft_declined`` is 1 and the figures are NaN. The fine-tuned weights are discarded here; only the
    figures leave. Its seed is that of the round after the last, so its batches differ from the last round's.
    """
    started = time.perf_counter()
    epochs = config.personalization.fine_tune_epochs
    with PrivacyLedger.locked(ledger_path) as ledger:
        try:
            result = train_on_site(
                site, config, state_dict, ledger.history, fine_tune_round(config) + 1, budget=budget, epochs=epochs
            )
        except PrivacyBudgetExceeded as declined:
            logger.warning("site %s: fine-tuning declined: %s", site.name, declined.public_reason)
            spent = ledger.history
            figures: dict[str, float | int] = {wire.fine_tuned_key(k): math.nan for k in FINE_TUNED_FIGURES}
            return {**figures, **_spending(config, spent), **_record(declined=True, epochs=epochs, started=started)}
        ledger.record(result.history)
    outcome = evaluate_on_site(site, config, result.state_dict)
    values = {wire.LOSS: outcome.loss, wire.THRESHOLD: outcome.threshold, **outcome.confusion, **outcome.metrics}
    figures = {wire.fine_tuned_key(k): values[k] for k in FINE_TUNED_FIGURES}
    logger.info("site %s: global model fine-tuned for %d epoch(s): test AUC %.3f", site.name, epochs,
                float(values.get("auc", math.nan)))  # fmt: skip
    return {**figures, **_spending(config, result.history), **_record(declined=False, epochs=epochs, started=started)}


def _spending(config: AppConfig, history: list[tuple[float, float, int]]) -> dict[str, float]:
    """``ft_epsilon``: the site's cumulative epsilon after the fine-tuning (its ledger's), under local DP only."""
    if not config.privacy.local:
        return {}
    privacy = config.privacy
    spent = compute_epsilon(history, delta=privacy.delta, accountant=privacy.accountant) if history else 0.0
    return {wire.fine_tuned_key(wire.EPSILON): spent}


def _record(*, declined: bool, epochs: int, started: float) -> dict[str, float | int]:
    return {
        wire.FINE_TUNE_DECLINED: int(declined),
        wire.FINE_TUNE_EPOCHS: epochs,
        wire.fine_tuned_key(wire.SECONDS): time.perf_counter() - started,
    }
