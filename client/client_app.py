"""The hospital's Flower ClientApp: adapters that unpack a Message, call client.task, and pack the reply."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.budget import declined_with_spending, site_budget
from client.fine_tune import fine_tune_on_site, fine_tunes
from client.ledger import PrivacyLedger
from client.ledger_rounds import RoundRelease, release_digest
from client.local_layers import LocalLayers
from client.localization import localizes
from client.safe_reply import reply_with_error_on_failure
from client.secure_aggregation import secure_aggregation_mod
from client.site import resolve_site, study_ledger
from client.study_scores import score_models_on_site
from client.task import SatOut, evaluate_on_site, train_on_site
from common import wire
from common.config import load_config
from common.errors import PrivacyBudgetExceeded
from common.study_wire import model_scores_to_flat, pair_to_flat

__all__ = ["app"]

app = ClientApp()


def _server_round(msg: Message) -> int:
    config = msg.content.get(wire.CONFIG_KEY)
    return int(config.get(wire.SERVER_ROUND, 0)) if config is not None else 0


def _message_config(msg: Message) -> ConfigRecord:
    return msg.content.get(wire.CONFIG_KEY) or ConfigRecord()


def _run_key(msg: Message) -> str:
    return str(_message_config(msg).get(wire.RUN_KEY, ""))


def _site_record(site_name: str, pooled: bool) -> ConfigRecord:
    return ConfigRecord({wire.SITE_NAME: site_name, **({wire.SITE_POOLED: 1} if pooled else {})})


@app.train(mods=[secure_aggregation_mod])
@reply_with_error_on_failure
def train(msg: Message, context: Context) -> Message:
    """Train the received global weights on this site; reply with weights and scalar metrics only.

    Under ``secure_aggregation.enabled`` Flower's SecAgg+ steps reach this handler through `secure_aggregation_mod`,
    which sends the masked update instead of the weights. Under ``personalization.fedbn`` the site's normalization
    layers stay on its disk (`client.local_layers`) and the reply holds the other weights only.
    """
    config = load_config(context.run_config)
    site = resolve_site(context.node_config, config)
    # A broken limits file fails closed; the pooled node (simulation only) holds no site's own limits.
    budget = site_budget(context.node_config, None if site.pooled else site.manifest.parent)
    # A study's models each charge their own ledger in simulation; a real SuperNode always charges its one.
    ledger_path = study_ledger(site, context.node_config, config, str(_message_config(msg).get(wire.STUDY_ARM, "")))
    # personalization.fedbn: the site trains with its own normalization layers, which never leave it.
    local = LocalLayers.for_site(site, config, _run_key(msg), context.run_id)
    received = msg.content[wire.ARRAYS_KEY].to_torch_state_dict()
    # The site's disk, not node state, is the record of spent privacy. Its lock is held from the budget check
    # to the write, so a second training on this site (another node, run or retry) waits and sees this one's steps.
    # The run key (the same when the run resumes) lets the ledger tell a round trained again (`client.ledger_rounds`).
    run_key, server_round = str(_message_config(msg).get(wire.RUN_KEY, "")), _server_round(msg)
    seeded = not config.privacy.secure_mode  # the DP noise is seeded by round: a re-run reproduces the update
    with PrivacyLedger.locked(ledger_path) as ledger:
        start = ledger.history_for(run_key, server_round, seeded=seeded)
        try:
            result = train_on_site(
                site,
                config,
                local.personalized(received, through_round=server_round - 1) if local else received,
                start,
                server_round,
                budget=budget,
                proximal_mu=float(_message_config(msg).get(wire.PROXIMAL_MU, 0.0)),  # sent by FedProx only
            )
        except PrivacyBudgetExceeded as declined:  # the server records the ledger's epsilon from the reason
            raise declined_with_spending(declined, ledger.history, config.privacy) from declined
        sat_out = isinstance(result, SatOut)
        if not sat_out:  # a round sat out spent nothing: the ledger is not even rewritten
            digest = release_digest(result.state_dict, result.num_examples, result.train_loss)
            ledger.record(result.history, base=start, release=RoundRelease(run_key, server_round, seeded, digest))
    # The noise this round's DP-SGD used (derived from the site's own data under privacy.target_epsilon).
    noise = result.history[-1][0] if config.privacy.local and not sat_out and result.history else None
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: result.num_examples,
            wire.TRAIN_LOSS: result.train_loss,
            wire.NUM_STEPS: result.num_steps,
            wire.SECONDS: result.seconds,
            # Only DP-SGD gives this site a guarantee of its own; under central DP the server accounts for all.
            **({wire.EPSILON: result.epsilon} if config.privacy.local else {}),
            **({wire.NOISE_MULTIPLIER: noise} if noise is not None else {}),
            **({wire.SAT_OUT: 1} if sat_out else {}),
        }
    )
    content = RecordDict(
        {
            wire.ARRAYS_KEY: ArrayRecord(local.keep(result.state_dict, server_round) if local else result.state_dict),
            wire.METRICS_KEY: metrics,
            wire.SITE_KEY: _site_record(site.name, site.pooled),
        }
    )
    return Message(content=content, reply_to=msg)


@app.query()
@reply_with_error_on_failure
def query(msg: Message, context: Context) -> Message:
    """Tell the server which site this node serves (a study maps its models onto nodes with it); nothing else."""
    config = load_config(context.run_config)
    site = resolve_site(context.node_config, config)
    asked = str(_message_config(msg).get(wire.STUDY_QUERY, ""))
    if asked != wire.STUDY_DESCRIBE:
        raise ValueError(f"unknown query {asked!r}: this site answers only {wire.STUDY_DESCRIBE!r}")
    return Message(content=RecordDict({wire.SITE_KEY: _site_record(site.name, site.pooled)}), reply_to=msg)


def _study_evaluate(msg: Message, context: Context) -> Message:
    """Score every model of a study request on the test split; reply with per-model figures and paired differences."""
    config = load_config(context.run_config)
    site = resolve_site(context.node_config, config)
    asked = _message_config(msg)
    models = []
    while wire.study_model_key(len(models)) in msg.content.array_records:
        models.append(msg.content.array_records[wire.study_model_key(len(models))].to_torch_state_dict())
    pairs = []
    while wire.study_pair_key(len(pairs)) in asked:
        first, second = str(asked[wire.study_pair_key(len(pairs))]).split(",")
        pairs.append((int(first), int(second)))
    scores = score_models_on_site(site, config, models, pairs)
    content = RecordDict(
        {
            wire.METRICS_KEY: MetricRecord({wire.NUM_EXAMPLES: scores.num_examples, wire.SECONDS: scores.seconds}),
            wire.SITE_KEY: _site_record(site.name, site.pooled),
            **{wire.study_model_key(i): MetricRecord(model_scores_to_flat(m)) for i, m in enumerate(scores.models)},
            **{wire.study_pair_key(j): MetricRecord(pair_to_flat(p)) for j, p in enumerate(scores.pairs)},
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
@reply_with_error_on_failure
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received weights on this site's test split; reply with metrics and score histograms (counts).

    A study's request (models under ``study-model.<i>``) is scored by `_study_evaluate` instead. Under
    ``personalization.fedbn`` the model scored has the site's own normalization layers; with
    ``personalization.fine_tune_epochs`` the last round's reply adds the ``ft_`` figures of a fine-tuned copy.
    """
    if wire.study_model_key(0) in msg.content.array_records:
        return _study_evaluate(msg, context)
    config = load_config(context.run_config)
    site = resolve_site(context.node_config, config)
    received = msg.content[wire.ARRAYS_KEY].to_torch_state_dict()
    local = LocalLayers.for_site(site, config, _run_key(msg), context.run_id)  # FedBN: the site's own norms
    weights = local.personalized(received, through_round=_server_round(msg)) if local else received
    # The final round under evaluation.localization adds the Grad-CAM counts, made on the data loaded for the scores.
    outcome = evaluate_on_site(site, config, weights, localize=localizes(config, _server_round(msg)))
    fine_tuned: dict[str, float | int] = {}
    if fine_tunes(config, _server_round(msg)):  # the last round: a fine-tuned copy too, charged like a training round
        budget = site_budget(context.node_config, None if site.pooled else site.manifest.parent)
        fine_tuned = fine_tune_on_site(site, config, weights, ledger_path=site.ledger, budget=budget)
    hist = outcome.histogram.to_lists()
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: outcome.num_examples,
            wire.LOSS: outcome.loss,
            wire.SECONDS: outcome.seconds,
            wire.THRESHOLD: outcome.threshold,
            **outcome.confusion,
            **outcome.metrics,
            wire.SCORE_HIST_NEG: hist["negatives"],
            wire.SCORE_HIST_POS: hist["positives"],
            # K > 2: per-class scalars, one fixed-size histogram per class and the K x K confusion counts.
            **(outcome.classes.to_flat() if outcome.classes is not None else {}),
            **outcome.exam,  # breast- and exam-level AUCs, counts and fixed-size histograms (`client.exam_scores`)
            **fine_tuned,
            **outcome.localization,  # the final round under evaluation.localization: pointing-game and IoU counts
            **outcome.counts,  # images, patients and cases per class and split, for the model card
        }
    )
    content = RecordDict({wire.METRICS_KEY: metrics, wire.SITE_KEY: _site_record(site.name, site.pooled)})
    return Message(content=content, reply_to=msg)
