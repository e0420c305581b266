"""Synthetic pretraining: train one model centrally on many phantom hospitals, to start real federations from.

Hospitals have little data and no ImageNet weights can be downloaded, but the labels and lesions of phantom
hospitals cost nothing. A model pretrained on many of them, each with its own scanner, starts a federation
(``model.weights_path=...``, loaded by `common.models.load_weights`) from features that already know what a
preprocessed mammogram looks like. Everything here is plain functions, with no Flower: pretraining is central.

Two rules keep the result honest:

* The phantoms are generated with their own seed, ``seed + PRETRAIN_SEED_OFFSET``, never the run seed the demo
  federation uses, so a model pretrained here has not seen a single image that a phantom federation of the same
  config evaluates on. The offset and the seed are recorded in the weights card.
* Images go through `common.data.load_site` with the run's ``ImagePipeline.from_config(config.data)``: the same
  preprocessing, cache and patient splits as federated training, so the weights learn the inputs they will get.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import importlib.metadata
import logging
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from common.config import AppConfig, PrivacyConfig
from common.data import (
    PREPROCESS_VERSION,
    ImagePipeline,
    LesionPatches,
    SiteData,
    augmenter,
    load_site,
    write_manifest,
)
from common.errors import ConfigError
from common.loss import class_weights_for
from common.metrics import binary_metrics
from common.models import build_model, card_path, read_card, write_card
from common.models.weights_card import atomic_write
from common.training import evaluate, resolve_device, train_local
from simulations.datasets.labels import MALIGNANT_VS_REST, TASK_CLASSES, THREE_CLASS, apply_task
from simulations.phantoms import GENERATOR_VERSION, generate_federation, scanner_profile

__all__ = [
    "CARD_KIND",
    "DEFAULT_DATA_DIR",
    "DEFAULT_EPOCHS",
    "DEFAULT_SITES",
    "PRETRAIN_SEED_OFFSET",
    "EpochResult",
    "PretrainResult",
    "check_output",
    "generate_pretraining_phantoms",
    "load_pretraining_data",
    "pretrain",
    "pretrain_seed",
]

logger = logging.getLogger(__name__)

PRETRAIN_SEED_OFFSET = 1_000_000
"""Added to the run seed to get the pretraining phantoms' seed. Demo federations use the run seed itself
(``generate_configured_federation(seed=config.seed)``), and run seeds are small numbers, so the two never meet
unless a run picks a seed a million above another's (the card records both, so that stays checkable)."""

DEFAULT_DATA_DIR = "~/.fedmammo/pretrain_phantoms"
"""Beside, never inside, the demo's ``~/.fedmammo/phantoms``: a phantom site folder made with another seed
would be regenerated in place, and the demo's sites must stay the demo's."""
DEFAULT_SITES = 8
DEFAULT_EPOCHS = 5
CARD_KIND = "fedmammo synthetic pretraining"
SGD_LR_HINT = 0.1
"""Above this plain-SGD learning rate a warning says it is a DP-SGD setting: on 4 x 200 phantoms at 64 px the
default 0.5 stayed at chance (val AUC 0.52 after 15 epochs) where adam at 0.001 reached 0.66 in 10."""
THREE_CLASS_DIR = "three-class"
"""Sub-folder of the pretraining folder holding each site's manifest relabelled 0 normal, 1 benign, 2 malignant."""


@dataclass(frozen=True)
class EpochResult:
    """One epoch of pretraining, as the CLI prints it and the card records it."""

    epoch: int
    """1-based."""
    train_loss: float
    val_loss: float
    val_auc: float
    """AUC of the last class (malignant) against the rest on the pooled validation splits; NaN when undefined."""
    seconds: float
    best: bool = False
    """Whether this epoch's weights are the best so far (the ones kept when it stays so)."""


@dataclass
class PretrainResult:
    """What `pretrain` wrote and how it got there."""

    weights_path: Path
    card_path: Path
    card: dict[str, Any]
    epochs: list[EpochResult] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0

    @property
    def best_val_auc(self) -> float:
        """The kept epoch's validation AUC (NaN when the validation splits could not give one)."""
        return next((e.val_auc for e in self.epochs if e.epoch == self.best_epoch), math.nan)


def pretrain_seed(seed: int) -> int:
    """The pretraining phantoms' seed for run seed ``seed``: never ``seed`` itself (see the module docstring)."""
    return seed + PRETRAIN_SEED_OFFSET


def _check(name: str, value: object, rule: bool, text: str) -> None:
    if not rule:
        raise ConfigError(f"pretrain option {name} = {value!r} is invalid: it must be {text}")


def generate_pretraining_phantoms(
    data_dir: str | Path,
    *,
    num_sites: int,
    images_per_site: int,
    seed: int,
    lesion_contrast: float,
    matrix_scale: float = 1.0,
) -> list[Path]:
    """Write (or reuse) ``num_sites`` phantom hospitals for run seed ``seed``, with the pretraining seed.

    Site ``i`` gets scanner ``i`` (`scanner_profile`), so more sites means more scanners, not more of the same
    three. Sites already on disk with the same arguments are reused, so a second pretraining decodes from cache.

    Returns
    -------
    list of Path
        The site manifests, in site order.
    """
    return generate_federation(
        Path(data_dir).expanduser(),
        num_sites=num_sites,
        images_per_site=images_per_site,
        seed=pretrain_seed(seed),
        lesion_contrast=lesion_contrast,
        matrix_scale=matrix_scale,
    )


def _task(num_classes: int) -> str:
    """The phantom manifests' labels are malignant vs rest; three classes come from their ``finding`` column."""
    if num_classes == 2:
        return MALIGNANT_VS_REST
    if num_classes == 3:
        return THREE_CLASS
    raise ConfigError(
        f"config key 'model.num_classes' = {num_classes} cannot be pretrained on phantoms: their findings are "
        "normal, benign or malignant, so model.num_classes must be 2 (malignant vs rest) or 3 (normal, benign, "
        "malignant)"
    )


def _three_class_manifests(manifests: Sequence[Path], data_dir: Path) -> list[Path]:
    """Each site's manifest relabelled by `apply_task` (three-class), under ``data_dir/three-class/site_i``.

    All sites are relabelled together so a tiny site lacking a finding is no error as long as the whole
    pretraining set has every class. Image paths become absolute (the images stay in the site's folder), and
    every manifest is rewritten atomically on each call, so a regenerated site never pairs with stale labels.
    """
    rows: list[dict[str, object]] = []
    for index, manifest in enumerate(manifests):
        with manifest.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                image = Path(row["image_path"])
                rows.append({**row, "image_path": str(image if image.is_absolute() else manifest.parent / image)})
                rows[-1]["_site"] = index
    relabelled = apply_task(rows, THREE_CLASS, dataset="the pretraining phantoms")
    out: list[Path] = []
    for index in range(len(manifests)):
        target = data_dir / THREE_CLASS_DIR / f"site_{index}" / "manifest.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        site_rows = [row for row in relabelled if row["_site"] == index]
        out.append(atomic_write(target, lambda temp, rows=site_rows: write_manifest(temp, rows)))
    return out


def load_pretraining_data(
    manifests: Sequence[Path],
    config: AppConfig,
    *,
    on_site: Callable[[int, int], None] | None = None,
) -> tuple[Dataset, Dataset, list[SiteData]]:
    """Load every site as federated training would, and pool their train and val splits.

    Returns
    -------
    (train, val, sites)
        The concatenated train splits, the concatenated val splits, and each site's `SiteData`.
    """
    pipeline = ImagePipeline.from_config(config.data)
    sites: list[SiteData] = []
    for index, manifest in enumerate(manifests):
        if on_site is not None:
            on_site(index, len(manifests))
        sites.append(
            load_site(
                manifest,
                image_size=config.data.image_size,
                cache_dir=config.data.cache_dir or None,
                val_fraction=config.data.val_fraction,
                test_fraction=config.data.test_fraction,
                seed=config.seed,
                pipeline=pipeline,
                progress=False,
            )
        )
    return ConcatDataset([s.train for s in sites]), ConcatDataset([s.val for s in sites]), sites


def _patches(sites: Sequence[SiteData], config: AppConfig, seed: int) -> Dataset:
    """One lesion-or-normal-tissue patch per pooled training image, drawn anew for ``seed`` (one per epoch)."""
    return ConcatDataset(
        [
            LesionPatches(
                site.train,
                patch_size=config.training.patch_size,
                lesion_share=config.training.lesion_patch_share,
                seed=seed + index,
            )
            for index, site in enumerate(sites)
        ]
    )


def _val_auc(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> float:
    """Last class vs rest, the federation's headline AUC; NaN when the pooled val splits lack either side."""
    positives = (labels == num_classes - 1).astype(np.int64)
    if len(positives) == 0 or positives.min() == positives.max():
        return math.nan
    return float(binary_metrics(positives, scores, bootstrap=0)["auc"])


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _scanner(site_index: int) -> str:
    profile = scanner_profile(site_index)
    return f"{profile.manufacturer} {profile.model}, {profile.bits_stored}-bit {profile.photometric} {profile.response}"


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is recorded as null."""
    return value if math.isfinite(value) else None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def check_output(out: str | Path, *, force: bool) -> Path:
    """Refuse an output that exists (weights or card) unless ``force``, before hours of training, not after.

    Raises
    ------
    ConfigError
        If ``out`` or its card exists without ``force``, or ``out`` is a folder.
    """
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"pretraining output {path} is a folder; give a file path such as {path / 'pretrained.pth'}")
    existing = [p for p in (path, card_path(path)) if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"pretraining output {existing[0]} already exists; it is never overwritten without --force "
            "(give another --out, or --force to replace the weights and their card)"
        )
    return path


def pretrain(
    config: AppConfig,
    out: str | Path,
    *,
    epochs: int = DEFAULT_EPOCHS,
    num_sites: int = DEFAULT_SITES,
    images_per_site: int | None = None,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    matrix_scale: float = 1.0,
    force: bool = False,
    patch_epochs: int = 0,
    on_stage: Callable[[str], None] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> PretrainResult:
    """Pretrain ``config.model`` on ``num_sites`` phantom hospitals and write its weights and weights card.

    Training is central and without differential privacy (privacy mode none) whatever ``config.privacy``
    says: phantoms are not patients, so there is nobody to protect, and DP noise would only cost accuracy
    that the federation then has to win back. The model, optimiser, batch size, learning rate, class weights
    and augmentation are the config's; each epoch is one `train_local` call (the optimiser state, e.g. Adam's
    moments, starts afresh each epoch), followed by scoring the pooled val splits. The epoch with the best val
    AUC (last class vs rest) is kept; when no epoch has one (a val split without both sides), the lowest val
    loss; without any val image, the last epoch.

    Parameters
    ----------
    config : AppConfig
        The run config (``compose_simulation``): model, data, training, seed, and ``federation.lesion_contrast``
        (the phantoms look like the demo's).
    out : str or Path
        Weights file; its card is ``<out>.json``. Both are written atomically.
    epochs, num_sites : int
        Passes over the pooled train splits; phantom hospitals (one scanner each).
    images_per_site : int or None
        Images per hospital; None is ``config.federation.images_per_site``.
    data_dir : str or Path
        Folder of the pretraining phantoms (reused when already generated). Never the demo's folder.
    matrix_scale : float
        Phantom matrix size factor (1.0 as the demo; smaller for quick trials and tests).
    force : bool
        Replace an existing ``out`` and card.
    patch_epochs : int
        The first this many of the ``epochs`` train on lesion patches (`common.data.LesionPatches`, side
        ``training.patch_size``, share ``training.lesion_patch_share``) instead of whole images, as the federated
        patch stage does: phantoms mark every lesion, so the network first learns what a lesion looks like at
        full resolution. Val AUC is always scored on whole images.
    on_stage, on_epoch : callable, optional
        Progress: a line per stage (generating, loading site i, training), an `EpochResult` per epoch.

    Returns
    -------
    PretrainResult

    Raises
    ------
    ConfigError
        Bad arguments, an existing output without ``force``, ``data_dir`` being the demo federation's folder,
        or ``model.num_classes`` other than 2 or 3.
    ManifestError, DicomError
        If a phantom site cannot be loaded (see `load_site`).
    """
    started = time.perf_counter()
    images_per_site = config.federation.images_per_site if images_per_site is None else images_per_site
    _check("--epochs", epochs, isinstance(epochs, int) and epochs >= 1, "an integer >= 1")
    _check("--sites", num_sites, isinstance(num_sites, int) and num_sites >= 1, "an integer >= 1")
    _check(
        "--images-per-site",
        images_per_site,
        isinstance(images_per_site, int) and images_per_site >= 8,
        ">= 8 (each site needs patients in train, validation and test)",
    )
    task = _task(config.model.num_classes)
    out_path = check_output(out, force=force)
    data_dir = Path(data_dir).expanduser()
    demo_dir = Path(config.federation.data_dir).expanduser()
    if data_dir.resolve() == demo_dir.resolve():
        raise ConfigError(
            f"pretraining data folder {data_dir} is the run's federation.data_dir: its sites would be regenerated "
            f"with the pretraining seed, and the federation would then evaluate on images the model was "
            f"pretrained on; give another --data-dir (default {DEFAULT_DATA_DIR})"
        )
    stage = on_stage or (lambda text: logger.info("%s", text))
    if config.training.optimizer == "sgd" and config.training.learning_rate > SGD_LR_HINT:
        logger.warning(
            "training.learning_rate=%g with plain SGD: the default is tuned for DP-SGD's clipped, noised gradients, "
            "and without DP it tends to collapse to predicting the class prior; consider training.optimizer=adam "
            "training.learning_rate=0.001",
            config.training.learning_rate,
        )
    _check(
        "--patch-epochs",
        patch_epochs,
        isinstance(patch_epochs, int) and 0 <= patch_epochs < epochs,
        "an integer >= 0 and below --epochs (whole-image epochs must follow)",
    )
    if patch_epochs and config.training.patch_size >= config.data.image_size:
        raise ConfigError(
            f"config key 'training.patch_size' = {config.training.patch_size} is invalid with --patch-epochs: it "
            f"must be smaller than data.image_size = {config.data.image_size}"
        )
    phantom_seed = pretrain_seed(config.seed)

    stage(f"generating {num_sites} phantom hospitals ({images_per_site} images each) in {data_dir}")
    manifests = generate_pretraining_phantoms(
        data_dir,
        num_sites=num_sites,
        images_per_site=images_per_site,
        seed=config.seed,
        lesion_contrast=config.federation.lesion_contrast,
        matrix_scale=matrix_scale,
    )
    if task == THREE_CLASS:
        manifests = _three_class_manifests(manifests, data_dir)
    train_set, val_set, sites = load_pretraining_data(
        manifests, config, on_site=lambda i, n: stage(f"loading phantom hospital {i + 1}/{n}")
    )
    train_labels = torch.cat([site.train.labels for site in sites])
    num_classes = config.model.num_classes
    class_weights = class_weights_for(config.training.class_weights, train_labels, num_classes)

    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(phantom_seed)
        model = build_model(
            config.model.name,
            num_classes=num_classes,
            in_channels=1,
            norm=config.model.norm,
            weights_path=config.model.weights_path or None,
            image_size=config.data.image_size,
        )
    training = dataclasses.replace(config.training, local_epochs=1)
    no_dp = PrivacyConfig(mode="none", delta=config.privacy.delta)
    stage(f"training {config.model.name} on {len(train_set)} images, scoring {len(val_set)} val images")
    history: list[EpochResult] = []
    best_state: dict[str, torch.Tensor] | None = None
    best: tuple[int, float, float] | None = None  # (epoch, auc, loss)
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        epoch_set = _patches(sites, config, _epoch_seed(phantom_seed, epoch)) if epoch <= patch_epochs else train_set
        epoch_weights = class_weights
        if epoch <= patch_epochs:  # as the federated patch stage: weights from the patches' own labels
            patch_labels = torch.cat([part.labels for part in epoch_set.datasets])  # type: ignore[attr-defined]
            epoch_weights = class_weights_for(config.training.class_weights, patch_labels, num_classes)
        trained = train_local(
            model,
            epoch_set,
            training=training,
            privacy=no_dp,
            seed=_epoch_seed(phantom_seed, epoch),
            augment=augmenter(config.data.augment_policy) if config.data.augment else None,
            device=config.training.device,
            class_weights=epoch_weights,
        )
        scored = evaluate(model, val_set, batch_size=max(config.training.batch_size, 64), device=config.training.device)
        auc = _val_auc(scored.labels, scored.scores, num_classes)
        if _better(epoch, auc, scored.loss, best):
            best = (epoch, auc, scored.loss)
            best_state = copy.deepcopy(trained.state_dict)
        result = EpochResult(
            epoch=epoch,
            train_loss=trained.train_loss,
            val_loss=scored.loss,
            val_auc=auc,
            seconds=time.perf_counter() - epoch_start,
            best=best is not None and best[0] == epoch,
        )
        history.append(result)
        if on_epoch is not None:
            on_epoch(result)
    assert best is not None and best_state is not None  # epochs >= 1 and _better takes the first epoch
    selection = "val_auc" if math.isfinite(best[1]) else "val_loss" if math.isfinite(best[2]) else "last_epoch"

    stage(f"writing {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    card_file = card_path(out_path)
    card_file.unlink(missing_ok=True)  # with --force: no moment where the old card vouches for new weights
    atomic_write(out_path, lambda temp: torch.save(best_state, temp))
    seconds = time.perf_counter() - started
    fields = _card_fields(
        config,
        task=task,
        phantom_seed=phantom_seed,
        data_dir=data_dir,
        num_sites=num_sites,
        images_per_site=images_per_site,
        matrix_scale=matrix_scale,
        sites=sites,
        history=history,
        best_epoch=best[0],
        selection=selection,
        class_weights=class_weights,
        seconds=seconds,
        patch_epochs=patch_epochs,
    )
    written = write_card(out_path, fields)
    card = read_card(out_path) or {}
    logger.info("pretrained weights %s (card %s), best epoch %d", out_path, written, best[0])
    return PretrainResult(out_path, written, card, history, best[0], seconds)


def _better(epoch: int, auc: float, loss: float, best: tuple[int, float, float] | None) -> bool:
    """Higher val AUC wins; an epoch with an AUC beats one without; then lower val loss; else the later epoch."""
    if best is None:
        return True
    _, best_auc, best_loss = best
    if math.isfinite(auc) or math.isfinite(best_auc):
        return math.isfinite(auc) and (not math.isfinite(best_auc) or auc > best_auc)
    if math.isfinite(loss) or math.isfinite(best_loss):
        return math.isfinite(loss) and (not math.isfinite(best_loss) or loss < best_loss)
    return True


def _card_fields(
    config: AppConfig,
    *,
    task: str,
    phantom_seed: int,
    data_dir: Path,
    num_sites: int,
    images_per_site: int,
    matrix_scale: float,
    sites: Sequence[SiteData],
    history: Sequence[EpochResult],
    best_epoch: int,
    selection: str,
    class_weights: Sequence[float] | None,
    patch_epochs: int,
    seconds: float,
) -> dict[str, Any]:
    """Everything needed to judge, reproduce and safely load the weights (`write_card` adds format and hash)."""
    training = config.training
    return {
        "kind": CARD_KIND,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "name": config.model.name,
            "norm": config.model.norm,
            "num_classes": config.model.num_classes,
            "class_names": list(config.model.class_labels),
            "in_channels": 1,
            "initial_weights": config.model.weights_path or None,
        },
        "data": {
            "image_size": config.data.image_size,
            "preprocess_version": PREPROCESS_VERSION,
            "pixel_spacing_mm": config.data.pixel_spacing_mm,
            "presentation_intent": config.data.presentation_intent,
            "augment": config.data.augment,
            "val_fraction": config.data.val_fraction,
            "test_fraction": config.data.test_fraction,
        },
        "phantoms": {
            "generator_version": GENERATOR_VERSION,
            "seed": phantom_seed,
            "run_seed": config.seed,
            "seed_offset": PRETRAIN_SEED_OFFSET,
            "sites": num_sites,
            "scanners": [_scanner(i) for i in range(num_sites)],
            "images_per_site": images_per_site,
            "lesion_contrast": config.federation.lesion_contrast,
            "matrix_scale": matrix_scale,
            "data_dir": str(data_dir),
            "labels": task,
            "label_classes": list(TASK_CLASSES[task]),
            "train_images": sum(len(s.train) for s in sites),
            "val_images": sum(len(s.val) for s in sites),
            "skipped_images": sum(len(s.skipped) for s in sites),
        },
        "training": {
            "epochs": len(history),
            "patch_epochs": patch_epochs,
            "patch_size": training.patch_size if patch_epochs else None,
            "lesion_patch_share": training.lesion_patch_share if patch_epochs else None,
            "chosen_epoch": best_epoch,
            "selection": selection,
            "val_auc": [_finite(e.val_auc) for e in history],
            "val_loss": [_finite(e.val_loss) for e in history],
            "train_loss": [_finite(e.train_loss) for e in history],
            "epoch_seconds": [round(e.seconds, 3) for e in history],
            "privacy": "none",
            "optimizer": training.optimizer,
            "learning_rate": training.learning_rate,
            "momentum": training.momentum,
            "weight_decay": training.weight_decay,
            "batch_size": training.batch_size,
            "class_weights": training.class_weights,
            "resolved_class_weights": None if class_weights is None else list(class_weights),
            "device": str(resolve_device(training.device)),
        },
        "versions": {
            "fedmammo": _version("fedmammo"),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "seconds": round(seconds, 3),
    }
