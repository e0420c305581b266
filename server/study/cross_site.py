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
from common.metrics import NUM_SCORE_BINS, PairedDifference
from common.study_wire import ModelScores, model_scores_from_flat, pair_from_flat
from server.study.arms import CENTRALIZED, FEDERATED

__all__ = ["MESSAGE_BUDGET_BYTES", "SiteEvaluation", "chunk_models", "evaluate_across_sites", "models_for_site",
           "pairs_for_site"]  # fmt: skip

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


MESSAGE_BUDGET_BYTES = 200 * 1024 * 1024
"""Most model bytes one evaluate message carries; more models go in further messages (gRPC caps a message)."""


def chunk_models(keys: list[str], sizes: dict[str, int], budget: int = MESSAGE_BUDGET_BYTES) -> list[list[str]]:
    """Split a site's models into messages of at most ``budget`` bytes, the federated model in each (every
    comparison pairs it with another model, and a pair must be scored on the same images in one request)."""
    anchor = [FEDERATED] if FEDERATED in keys else []
    others = [key for key in keys if key != FEDERATED]
    chunks: list[list[str]] = []
    current, used = list(anchor), sum(sizes[k] for k in anchor)
    for key in others:
        if len(current) > len(anchor) and used + sizes[key] > budget:
            chunks.append(current)
            current, used = list(anchor), sum(sizes[k] for k in anchor)
        current.append(key)
        used += sizes[key]
    return [*chunks, current] if len(current) > len(anchor) or not chunks else chunks


def _request(
    keys: list[str], site_pairs: list[tuple[str, str, str]], models: dict[str, ArrayRecord]
) -> tuple[RecordDict, list[tuple[str, str, str]]]:
    pairs = [pair for pair in site_pairs if pair[0] in keys and pair[1] in keys]
    index = {key: i for i, key in enumerate(keys)}
    config = ConfigRecord({wire.study_pair_key(j): f"{index[a]},{index[b]}" for j, (a, b, _) in enumerate(pairs)})
    content = RecordDict(
        {wire.CONFIG_KEY: config, **{wire.study_model_key(i): models[key] for i, key in enumerate(keys)}}
    )
    return content, pairs


def _parse(site: str, reply: Message, keys: list[str], pairs: list[tuple[str, str, str]]) -> SiteEvaluation:
    if reply.has_error():
        return SiteEvaluation(site, error=reply.error.reason)
    records = reply.content.metric_records
    try:
        scored = {key: model_scores_from_flat(records[wire.study_model_key(i)]) for i, key in enumerate(keys)}
        differences: list[PairedDifference] = [
            pair_from_flat(records[wire.study_pair_key(j)]) for j in range(len(pairs))
        ]
        if any(scores.histogram.bins != NUM_SCORE_BINS for scores in scored.values()):
            raise ValueError(f"a score histogram does not have {NUM_SCORE_BINS} bins")
    except (KeyError, ValueError, TypeError) as exc:  # a reply that is not what was asked for fails this site only
        return SiteEvaluation(site, error=f"{site}: malformed study reply ({type(exc).__name__}: {exc})")
    rows = [
        {"site": site, "a": a, "b": b, "label": label, **d.to_dict()}
        for (a, b, label), d in zip(pairs, differences, strict=True)
    ]
    seconds = float(records[wire.METRICS_KEY].get(wire.SECONDS, 0.0)) if wire.METRICS_KEY in records else 0.0
    return SiteEvaluation(site, scored, rows, seconds=seconds)


def _merge(into: SiteEvaluation | None, part: SiteEvaluation) -> SiteEvaluation:
    """One site's answers to several messages as one; its first error stands for the site."""
    if into is None:
        return part
    if into.error or part.error:
        return SiteEvaluation(into.site, error=into.error or part.error)
    models = {**part.models, **into.models}  # the federated model, scored in each message, keeps its first figures
    return SiteEvaluation(into.site, models, into.pairs + part.pairs, seconds=into.seconds + part.seconds)


def evaluate_across_sites(
    grid: Grid, sites: dict[str, int], models: dict[str, ArrayRecord], *, timeout_s: float
) -> dict[str, SiteEvaluation]:
    """Send each site its models (in as few messages as `MESSAGE_BUDGET_BYTES` allows, all sites at once per
    message round); return each site's evaluation, or why it failed.

    ``timeout_s`` bounds one message round; each site scores every model of a message on its whole test split.
    """
    sizes = {key: int(record.count_bytes()) for key, record in models.items()}
    plans = {site: chunk_models(models_for_site(site, models), sizes) for site in sites}
    by_node = {node: site for site, node in sites.items()}
    results: dict[str, SiteEvaluation] = {}
    for step in range(max(len(chunks) for chunks in plans.values()) if plans else 0):
        requests = {
            site: (chunks[step], *_request(chunks[step], pairs_for_site(site, models_for_site(site, models)), models))
            for site, chunks in plans.items()
            if step < len(chunks) and not (site in results and results[site].error)
        }
        messages = [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=sites[site])
            for site, (_, content, _) in requests.items()
        ]
        answered: set[str] = set()
        for reply in grid.send_and_receive(messages, timeout=timeout_s):
            site = by_node.get(reply.metadata.src_node_id)
            if site in requests and site not in answered:
                keys, _, pairs = requests[site]
                results[site] = _merge(results.get(site), _parse(site, reply, keys, pairs))
                answered.add(site)
        for site in set(requests) - answered:
            results[site] = SiteEvaluation(site, error=f"{site}: no answer within {timeout_s:.0f}s")
    for site, result in results.items():
        if result.error:
            logger.warning("study evaluation at %s failed: %s", site, result.error)
    return results
