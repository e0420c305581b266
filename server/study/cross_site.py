"""The cross-site evaluation: every site scores every study model on its own test split, through Flower messages.

Each site gets one evaluate message holding the models it should score (all local models, the centralized and the
federated model, and the leave-one-out model that never saw it) and the pairs to compare on its images. It replies
with figures per model and per pair (`common.study_wire`), never with a score per image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import wire
from common.metrics import PairedDifference
from common.study_wire import ModelScores, model_scores_from_flat, pair_from_flat
from server.study.arms import CENTRALIZED, FEDERATED

__all__ = ["SiteEvaluation", "evaluate_across_sites", "pairs_for_site"]

logger = logging.getLogger(__name__)

PAIR_LABELS = {
    "local": "federated − local",
    "centralized": "federated − centralized",
    "loso": "federated − held out (LOSO drop)",
}


@dataclass
class SiteEvaluation:
    """One site's answer: figures per model key, paired differences, or the reason it failed."""

    site: str
    models: dict[str, ModelScores] = field(default_factory=dict)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def models_for_site(site: str, models: dict[str, ArrayRecord]) -> list[str]:
    """The model keys site ``site`` scores: every model but the leave-one-out models of other sites."""
    return [key for key in models if not (key.startswith("loso:") and key != f"loso:{site}")]


def pairs_for_site(site: str, keys: list[str]) -> list[tuple[str, str, str]]:
    """``(a, b, label)`` comparisons for site ``site``: federated against its local, centralized and LOSO models."""
    if FEDERATED not in keys:
        return []
    others = {"local": f"local:{site}", "centralized": CENTRALIZED, "loso": f"loso:{site}"}
    return [(FEDERATED, key, PAIR_LABELS[kind]) for kind, key in others.items() if key in keys]


def _request(site: str, models: dict[str, ArrayRecord]) -> tuple[RecordDict, list[str], list[tuple[str, str, str]]]:
    keys = models_for_site(site, models)
    pairs = pairs_for_site(site, keys)
    index = {key: i for i, key in enumerate(keys)}
    config = ConfigRecord({wire.study_pair_key(j): f"{index[a]},{index[b]}" for j, (a, b, _) in enumerate(pairs)})
    content = RecordDict(
        {wire.CONFIG_KEY: config, **{wire.study_model_key(i): models[key] for i, key in enumerate(keys)}}
    )
    return content, keys, pairs


def _parse(site: str, reply: Message, keys: list[str], pairs: list[tuple[str, str, str]]) -> SiteEvaluation:
    if reply.has_error():
        return SiteEvaluation(site, error=reply.error.reason)
    records = reply.content.metric_records
    try:
        scored = {key: model_scores_from_flat(records[wire.study_model_key(i)]) for i, key in enumerate(keys)}
        differences: list[PairedDifference] = [
            pair_from_flat(records[wire.study_pair_key(j)]) for j in range(len(pairs))
        ]
    except (KeyError, ValueError, TypeError) as exc:  # a reply that is not what was asked for fails this site only
        return SiteEvaluation(site, error=f"{site}: malformed study reply ({type(exc).__name__}: {exc})")
    rows = [
        {"site": site, "a": a, "b": b, "label": label, **d.to_dict()}
        for (a, b, label), d in zip(pairs, differences, strict=True)
    ]
    seconds = float(records[wire.METRICS_KEY].get(wire.SECONDS, 0.0)) if wire.METRICS_KEY in records else 0.0
    return SiteEvaluation(site, scored, rows, seconds=seconds)


def evaluate_across_sites(
    grid: Grid, sites: dict[str, int], models: dict[str, ArrayRecord], *, timeout_s: float
) -> dict[str, SiteEvaluation]:
    """Send each site its models in one message (all sites at once); return each site's evaluation or failure."""
    requests = {site: _request(site, models) for site in sites}
    messages = {
        site: Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
        for (site, node), (content, _, _) in zip(sites.items(), requests.values(), strict=True)
    }
    by_node = {node: site for site, node in sites.items()}
    replies = grid.send_and_receive(list(messages.values()), timeout=timeout_s)
    results: dict[str, SiteEvaluation] = {}
    for reply in replies:
        site = by_node.get(reply.metadata.src_node_id)
        if site is not None:
            _, keys, pairs = requests[site]
            results[site] = _parse(site, reply, keys, pairs)
    for site in sites:
        if site not in results:
            results[site] = SiteEvaluation(site, error=f"{site}: no answer within {timeout_s:.0f}s")
        if results[site].error:
            logger.warning("study evaluation at %s failed: %s", site, results[site].error)
    return results
