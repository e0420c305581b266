"""Turns the recorded rounds into the run's summary: final per-site and pooled results with epsilon."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from common.config import AppConfig
from common.metrics.localization_counts import localization_figures
from server.report import POOLED_SITE, latest_rows, nest_class_results
from server.report.epsilons import final_epsilons
from server.report.final_round import FINAL_ROUND, mark_final_round

__all__ = ["build_summary"]


def build_summary(config: AppConfig, rows: Sequence[Mapping[str, Any]], *, duration_s: float) -> dict[str, Any]:
    """Final evaluation of the global model per site and pooled, each with the site's cumulative epsilon.

    With more than two classes each entry also holds its per-class results (see `nest_class_results`).
    Each entry keeps the ``round`` its figures are from; a site whose last evaluation is older than the final
    round (it failed or declined later) also says why under ``not_in_final_round``, since the pooled row of the
    final round does not include it (`server.report.final_round`).
    """
    evaluated = latest_rows(rows, "evaluate")
    trained = latest_rows(rows, "train")
    # Central DP gives every site the same (site-level) guarantee; local DP the site's own ledger, the pooled row
    # the worst site's (declined rounds included). The report's fallback without summary.json uses the same rule.
    epsilons = final_epsilons(rows, central=config.privacy.central)
    sites: dict[str, dict[str, Any]] = {}
    for site in sorted(set(evaluated) | set(trained) | set(epsilons)):
        entry = {k: v for k, v in evaluated.get(site, {}).items() if k not in ("phase", "site")}
        entry["epsilon"] = epsilons.get(site, 0.0)
        entry.update(localization_figures(entry))  # the final round's hit rate, CI, mean IoU and baselines, if sent
        sites[site] = entry
    last_round = mark_final_round(sites, rows)
    pooled = sites.pop(POOLED_SITE, {})
    names = config.model.class_labels
    sites = {site: nest_class_results(entry, names) for site, entry in sites.items()}
    pooled = nest_class_results(pooled, names)
    failures = [dict(row) for row in rows if "error" in row]
    return {
        "num_rounds": config.strategy.num_rounds,
        FINAL_ROUND: last_round,  # the round of the pooled row; see each site's "round"
        "model": config.model.name,
        # Headline metrics (auc, sensitivity, ...) are the last class vs the rest; with more than two classes
        # each entry adds per_class (one vs rest, by name), macro_auc and confusion_matrix (row = true class).
        "num_classes": config.model.num_classes,
        "classes": list(names),
        "image_size": config.data.image_size,
        "strategy": config.strategy.name,
        # Views -> breast -> exam; each entry's breast_auc/exam_auc and counts (when its test split had studies
        # of several views) are scored by this rule (`common.metrics.exam`).
        "exam_rule": config.evaluation.exam_rule,
        "sites": sites,
        "pooled": pooled,
        "privacy": {
            "mode": config.privacy.mode,
            # With a target epsilon each site derives its own sigma from its training-set size, so no
            # single figure is true for local DP (central DP: server_app records the sigma it used).
            "noise_multiplier": (
                f"per site, set for ε={config.privacy.target_epsilon:g}"
                if config.privacy.local and config.privacy.target_epsilon > 0
                else config.privacy.noise_multiplier
            ),
            "target_epsilon": config.privacy.target_epsilon,
            "max_grad_norm": config.privacy.max_grad_norm,
            **(
                {
                    "central_clipping": config.privacy.central_clipping,
                    "update_clip_norm": config.privacy.update_clip_norm,
                }
                if config.privacy.central
                else {}
            ),
            "delta": config.privacy.delta,
            "accountant": config.privacy.accountant,
        },
        "failures": failures,
        "duration_s": duration_s,
    }
