"""A site's share of one round as plain functions (no Flower), so baselines and tests reuse them unchanged."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from client.budget import SiteBudget, check_round
from client.exam_scores import exam_figures, needs_validation
from client.localization import localization_on_site
from client.noise_secret import site_noise_secret
from client.site import SiteSpec
from client.site_counts import summary_count_metrics
from common.config import AppConfig
from common.data import (
    SPLITS,
    ImagePipeline,
    LesionPatches,
    ManifestRow,
    SiteData,
    SiteImages,
    augmenter,
    load_site,
    read_manifest,
    unknown_labels,
)
from common.errors import ManifestError
from common.file_log import file_log
from common.loss import class_weights_for
from common.metrics import (
    ClassEvaluation,
    ScoreHistogram,
    binary_metrics,
    score_bin_edges,
    threshold_at_specificity,
)
from common.models import build_model
from common.privacy import compute_epsilon, planned_sampling, privacy_for_budget
from common.training import EvalResult, TrainResult, evaluate, train_local

__all__ = [
    "EvaluateOutcome",
    "SatOut",
    "check_labels",
    "evaluate_on_site",
    "headline_labels",
    "in_patch_stage",
    "load_site_data",
    "model_with",
    "operating_threshold",
    "patch_dataset",
    "pick_device",
    "planned_epochs",
    "round_seed",
    "score_headline",
    "train_on_site",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateOutcome:
    """Aggregate results of scoring one split: only these numbers may leave the site."""

    num_examples: int
    loss: float
    metrics: dict[str, float]
    histogram: ScoreHistogram
    threshold: float
    confusion: dict[str, int]
    seconds: float
    classes: ClassEvaluation | None = None
    """Per-class (one vs rest) results, histograms and the argmax confusion matrix; None for a binary model."""
    exam: dict[str, float | int | list[int]] = field(default_factory=dict)
    """Breast- and exam-level AUCs, counts and histograms (`client.exam_scores`, keys `common.wire.exam_keys`)."""
    counts: dict[str, int] = field(default_factory=dict)
    """Images, patients and cases per class of each split, for the model card (`client.site_counts`)."""
    localization: dict[str, int | float] = field(default_factory=dict)
    """Grad-CAM localization counts (`client.localization`, `common.wire.LOCALIZATION_KEYS`) when asked for."""


@dataclass
class SatOut(TrainResult):
    """A round the site sat out (the patch stage, with no lesion mark in its training split).

    It trained nothing: the received weights go back unchanged with ``num_examples`` 0, so the server leaves
    them out of the average; ``history`` is the ledger's as it was (no privacy spent) and ``epsilon`` what it
    already holds.
    """


def in_patch_stage(config: AppConfig, server_round: int) -> bool:
    """Whether ``server_round`` trains on patches (rounds 1 to ``training.patch_rounds``)."""
    return 1 <= server_round <= config.training.patch_rounds


def patch_dataset(site: SiteSpec, config: AppConfig, train: SiteImages, server_round: int) -> LesionPatches | None:
    """This round's patches of the training split, or None when no training image has a lesion mark (sit out).

    The patches' seed is the round's, so every round draws new patches and a seeded run draws the same ones.
    """
    if train.num_lesions == 0:
        logger.info("site %s: round %d is a patch round and no training image has a lesion mark; sitting it out",
                    site.name, server_round)  # fmt: skip
        return None
    patches = LesionPatches(
        train,
        patch_size=config.training.patch_size,
        lesion_share=config.training.lesion_patch_share,
        seed=_site_seed(config, site, server_round),
    )
    logger.info(
        "site %s: round %d trains on %d-pixel patches: %d of %d training image(s) have a lesion mark, %d lesion "
        "patch(es) this round",
        site.name,
        server_round,
        config.training.patch_size,
        patches.num_lesion_images,
        len(patches),
        patches.num_lesion_patches,
    )
    return patches


def _sat_out(config: AppConfig, state_dict: dict[str, torch.Tensor], history: list[tuple[float, float, int]]) -> SatOut:
    privacy = config.privacy
    spent = compute_epsilon(history, delta=privacy.delta, accountant=privacy.accountant) if privacy.local else 0.0
    return SatOut(
        state_dict=state_dict,
        num_examples=0,
        train_loss=math.nan,
        num_steps=0,
        epsilon=spent,
        history=list(history),
    )


def round_seed(base_seed: int, site_index: int, server_round: int, secret: bytes = b"") -> int:
    """A seed that differs per site and per round, reproducible from the run's one seed and the site's ``secret``
    (`client.noise_secret`: a real site's, which the server cannot know; empty in simulation)."""
    digest = hashlib.sha256(f"{base_seed}/{site_index}/{server_round}".encode() + secret).digest()
    return int.from_bytes(digest[:4], "big")


def _site_seed(config: AppConfig, site: SiteSpec, server_round: int) -> int:
    return round_seed(config.seed, site.index, server_round, site_noise_secret(site.ledger) if site.deployed else b"")


def pick_device(setting: str) -> str:
    """Resolve ``training.device``: 'auto' uses CUDA when this node has it."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def check_labels(rows: list[ManifestRow], num_classes: int, manifest: Path) -> None:
    """Refuse a manifest whose labels are not class indices of the run's model, naming every such line.

    Checked on the manifest, before any image is decoded, because a label the model has no output for would
    otherwise surface mid-training as an opaque cross-entropy (or CUDA device-side) error. Not skipped row by
    row either: such labels mean the site's data and the run disagree on the task (a 3-class manifest in a
    binary run), and training on the remaining rows would quietly change it.

    Raises
    ------
    ManifestError
        If any label is ``>= num_classes``; its public reason (which reaches the server) gives the count and the
        rule; the lines and their labels go only to the site's own log, as they tell which images are which.
    """
    bad = unknown_labels(rows, num_classes)
    if not bad:
        return
    # Which lines hold which label says which images are malignant: it stays in the site's own log.
    shown = ", ".join(f"line {row.row_number} label {row.label}" for row in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    file_log().error("manifest %s: labels outside [0, %d): %s%s", manifest, num_classes, shown, more)
    logger.error("%d manifest row(s) have a label outside [0, %d) (the lines are in the site's own log)",
                 len(bad), num_classes)  # fmt: skip
    raise ManifestError(
        f"manifest {manifest} has {len(bad)} row(s) whose 'label' is not a class of this run's model "
        f"(the lines are in the site's log): labels must be class indices in [0, {num_classes}) for "
        f"model.num_classes = {num_classes} (binary: 0/1 with 1 the positive class; three classes: 0 normal, "
        "1 benign, 2 malignant); fix the manifest or run with a matching model.num_classes",
        public="{} manifest row(s) have a 'label' that is not a class of this run's model: labels must be class "
        "indices in [0, {}) for model.num_classes = {}; fix the manifest or run with a matching model.num_classes",
        figures=(len(bad), num_classes, num_classes),
    )


def load_site_data(site: SiteSpec, config: AppConfig) -> SiteData:
    """Decode (or read from the site's cache) and split the site's images; bad files are skipped with reasons.

    Raises
    ------
    ManifestError
        If the manifest is invalid, or a label is not a class index of ``model.num_classes`` (`check_labels`).
    """
    if site.pooled:  # the study's centralized reference: every site's own splits, side by side
        parts = [load_site_data(member, config) for member in site.members]
        return SiteData(
            *(SiteImages.concatenated([getattr(part, name) for part in parts]) for name in ("train", "val", "test")),
            skipped=[item for part in parts for item in part.skipped],
            num_patients={name: sum(part.num_patients.get(name, 0) for part in parts) for name in SPLITS},
            parts=parts,
        )
    check_labels(read_manifest(site.manifest), config.model.num_classes, site.manifest)
    data = load_site(
        site.manifest,
        image_size=config.data.image_size,
        cache_dir=site.cache_dir,
        val_fraction=config.data.val_fraction,
        test_fraction=config.data.test_fraction,
        seed=config.seed,
        pipeline=ImagePipeline.from_config(config.data),  # spacing, presentation intent: the run's data settings
    )
    if data.skipped:
        logger.warning("site %s: %d image(s) skipped (reasons logged above)", site.name, len(data.skipped))
    return data


def model_with(config: AppConfig, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The run's model architecture holding ``state_dict`` (the weights a message brought)."""
    model = build_model(config.model.name, num_classes=config.model.num_classes, in_channels=1, norm=config.model.norm)
    model.load_state_dict(state_dict)
    return model


def train_on_site(
    site: SiteSpec,
    config: AppConfig,
    state_dict: dict[str, torch.Tensor],
    history: list[tuple[float, float, int]],
    server_round: int,
    budget: SiteBudget | None = None,
    epochs: int | None = None,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Fine-tune the global weights on the site's training split, DP-SGD when privacy is on.

    ``history`` is the site's accountant history so far; the result's history includes this round,
    so epsilon is cumulative over the whole federation rather than per round. With
    ``privacy.target_epsilon > 0`` the noise multiplier is derived from the site's own training-set size
    and the whole plan (`planned_epochs`), the same in every round, so a
    site taking part in every round ends the federation at the target epsilon.

    ``training.class_weights=balanced`` weighs the loss by the site's own training-split label counts
    (`common.loss.class_weights_for`); the counts and weights stay on the site.

    Rounds 1 to ``training.patch_rounds`` train on one patch per training image (`common.data.patches`) with the
    same DP-SGD, budget check and class-weight rule (applied to the patches' labels); as the patch dataset has
    one item per image, the sample rate and accounting are those of the whole images. A site with no lesion mark
    in its training split sits those rounds out (:class:`SatOut`): no step, no privacy spent.

    ``epochs`` (default ``training.local_epochs``) is how long this call trains: the last round's fine-tuning
    (`client.fine_tune`) passes ``personalization.fine_tune_epochs``, checked against the site's limits and
    trained with the same noise as a round.

    ``proximal_mu`` is FedProx's weight (the train request's ``proximal-mu``): each step also pulls the weights
    towards the received ones, outside DP-SGD's clipping and noise (`common.training.train_local`).
    """
    epochs = config.training.local_epochs if epochs is None else epochs
    data = load_site_data(site, config)
    dataset: SiteImages | LesionPatches = data.train
    if in_patch_stage(config, server_round):
        patches = patch_dataset(site, config, data.train, server_round)
        if patches is None:
            return _sat_out(config, state_dict, history)
        dataset = patches
    class_weights = class_weights_for(config.training.class_weights, dataset.labels, config.model.num_classes)
    if class_weights is not None:
        shown = ", ".join(f"{w:.3g}" for w in class_weights)
        logger.info(
            "site %s: class weights %s (training.class_weights=%s)", site.name, shown, config.training.class_weights
        )
    model = model_with(config, state_dict)
    privacy = config.privacy
    if privacy.local and privacy.target_epsilon > 0 and len(dataset) > 0:
        privacy = privacy_for_budget(
            privacy,
            num_examples=len(dataset),
            batch_size=config.training.batch_size,
            epochs_total=planned_epochs(config),
        )
        logger.info(
            "site %s: noise multiplier %.4f spends epsilon %.3f over %d round(s)",
            site.name,
            privacy.noise_multiplier,
            privacy.target_epsilon,
            config.strategy.num_rounds,
        )
    if budget is not None:
        sample_rate, steps_per_epoch = planned_sampling(max(len(dataset), 1), config.training.batch_size)
        planned = (privacy.noise_multiplier, sample_rate, steps_per_epoch * epochs)
        check_round(
            budget,
            mode=privacy.mode,
            history=history,
            planned=planned,
            accountant=privacy.accountant,
            poisson_sampling=privacy.poisson_sampling,
        )
    return train_local(
        model,
        dataset,
        training=replace(config.training, local_epochs=epochs),
        privacy=privacy,
        history=history,
        seed=_site_seed(config, site, server_round),
        augment=augmenter(config.data.augment_policy) if config.data.augment else None,
        device=pick_device(config.training.device),
        class_weights=class_weights,
        proximal_mu=proximal_mu,
    )


def planned_epochs(config: AppConfig) -> int:
    """Epochs of DP-SGD a site that takes part in every round runs in the whole run: ``strategy.num_rounds`` x
    ``training.local_epochs``, plus ``personalization.fine_tune_epochs`` (fine-tuning spends privacy too, so a
    ``privacy.target_epsilon`` covers it)."""
    return config.strategy.num_rounds * config.training.local_epochs + config.personalization.fine_tune_epochs


def evaluate_on_site(
    site: SiteSpec,
    config: AppConfig,
    state_dict: dict[str, torch.Tensor],
    split: str = "test",
    *,
    localize: bool = False,
) -> EvaluateOutcome:
    """Score the site's ``split`` and reduce it to metrics, confusion counts and a score histogram.

    The headline metrics and histogram are about the last class against the rest (P(last class) as the score);
    with more than two classes ``classes`` adds each class against the rest and the argmax confusion matrix.
    ``exam`` groups the split's images into breasts and exams by ``evaluation.exam_rule`` (`client.exam_scores`);
    the ``learned`` rule's validation scores are the ones the operating threshold is chosen on (scored once).
    ``counts`` are the site's data counts and, with ``localize`` (the final round, `client.localization.localizes`),
    ``localization`` the split's Grad-CAM counts: both from the data loaded here once, as each load verifies the
    site's whole cache.
    """
    started = time.perf_counter()
    data = load_site_data(site, config)
    device, rule = pick_device(config.training.device), config.evaluation.exam_rule
    manifest = None if site.pooled else site.manifest  # a pooled split has no manifest lines to group by
    val = (
        evaluate(model_with(config, state_dict), data.val, batch_size=config.training.batch_size * 2, device=device)
        if needs_validation(rule, manifest, data.val)
        else None
    )
    result, labels, threshold = score_headline(config, data, state_dict, device, split, val=val)
    metrics = binary_metrics(
        labels,
        result.scores,
        threshold=threshold,
        target_specificity=config.evaluation.target_specificity,
        seed=config.seed,
    )
    called = result.scores >= threshold
    confusion = {
        "tp": int((called & (labels == 1)).sum()),
        "fp": int((called & (labels == 0)).sum()),
        "tn": int((~called & (labels == 0)).sum()),
        "fn": int((~called & (labels == 1)).sum()),
    }
    return EvaluateOutcome(
        num_examples=result.num_examples,
        loss=float(result.loss),
        metrics=metrics,
        histogram=ScoreHistogram.from_scores(labels, result.scores),
        threshold=threshold,
        confusion=confusion,
        seconds=time.perf_counter() - started,
        classes=ClassEvaluation.from_predictions(result.labels, result.probabilities, seed=config.seed)
        if config.model.num_classes > 2
        else None,
        exam=exam_figures(
            manifest,
            rule,
            (getattr(data, split), labels, result.scores),
            (data.val, headline_labels(val.labels, config), val.scores) if val is not None else None,
            seed=config.seed,
        ),
        counts=summary_count_metrics(data.summary(), config.model.num_classes),
        localization=localization_on_site(site, config, model_with(config, state_dict).to(device), data, split)
        if localize
        else {},
    )


def score_headline(
    config: AppConfig,
    data: SiteData,
    state_dict: dict[str, torch.Tensor],
    device: str,
    split: str = "test",
    *,
    val: EvalResult | None = None,
) -> tuple[EvalResult, np.ndarray, float]:
    """Score ``split`` with the received weights: the evaluation, the headline labels (the last, most severe class
    against the rest) and the site's operating threshold (`operating_threshold`, from ``val`` when the caller has
    scored the validation split already). Scores never leave the site."""
    model = model_with(config, state_dict)
    result = evaluate(model, getattr(data, split), batch_size=config.training.batch_size * 2, device=device)
    return result, headline_labels(result.labels, config), operating_threshold(model, data, config, device, val=val)


def headline_labels(labels: np.ndarray, config: AppConfig) -> np.ndarray:
    """The headline labels: 1 for the last (most severe) class, 0 for the others.

    Raises
    ------
    ManifestError
        If a label is no class of the model: counting it as "not the last class" would score an unknown
        label as benign without a word (:func:`check_labels` refuses such a manifest before this point).
    """
    labels = np.asarray(labels)
    outside = int(((labels < 0) | (labels >= config.model.num_classes)).sum())
    if outside:
        raise ManifestError(
            f"{outside} evaluated label(s) are not classes of a {config.model.num_classes}-class model",
            public="{} evaluated label(s) are not classes of this run's {}-class model; none is counted as benign",
            figures=(outside, config.model.num_classes),
        )
    return (labels == config.model.num_classes - 1).astype(np.int64)


def operating_threshold(
    model: torch.nn.Module, data: SiteData, config: AppConfig, device: str, *, val: EvalResult | None = None
) -> float:
    """The site's decision threshold: fixed, or the lowest score-bin edge reaching the target specificity on
    validation.

    Why a bin edge (`common.metrics.score_bin_edges`): the threshold travels to the server, and the lowest
    threshold itself sits just above one validation image's score; raised to the next of the fixed edges it
    tells nothing about any image, still reaches the target specificity (a higher threshold calls fewer cases),
    and agrees with the histograms the server pools. Falls back to the fixed threshold when the validation split
    is empty or has no benign/normal case. ``val`` is the validation split's evaluation when the caller has it.
    """
    rule = config.evaluation
    if rule.operating_point == "fixed" or len(data.val) == 0:
        return rule.threshold
    if val is None:
        val = evaluate(model, data.val, batch_size=config.training.batch_size * 2, device=device)
    chosen = threshold_at_specificity(headline_labels(val.labels, config), val.scores, rule.target_specificity)
    if np.isnan(chosen):
        return rule.threshold
    edges = score_bin_edges()
    return float(edges[min(int(np.searchsorted(edges, chosen, side="left")), edges.size - 1)])
