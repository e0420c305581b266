"""The typed configuration schema: one frozen dataclass per section, each validating its own values."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.config.class_weights import explicit_class_weights
from common.errors import ConfigError

__all__ = [
    "MODEL_NAMES",
    "STUDY_ARMS",
    "AppConfig",
    "DataConfig",
    "EvaluationConfig",
    "FederationConfig",
    "ModelConfig",
    "OutputConfig",
    "PersonalizationConfig",
    "PrivacyConfig",
    "SecureAggregationConfig",
    "StrategyConfig",
    "StudyConfig",
    "TrainingConfig",
    "flatten",
    "resolve_class_names",
]


def _check(condition: bool, key: str, value: object, rule: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # nan passes `x >= 0`-style rules as False, inf as True
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: it must be a finite number")
    if not condition:
        raise ConfigError(f"config key '{key}' = {value!r} is invalid: it must be {rule}")


def _check_finite(section: object, prefix: str) -> None:
    """Every float field of a section (and of the sections inside it) must be finite: no rule means nan or inf."""
    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            _check(True, f"{prefix}{f.name}", value, "a finite number")


@dataclass(frozen=True)
class FederationConfig:
    """Which sites take part and where their data lives."""

    num_sites: int = 3
    data_dir: str = "~/.fedmammo/phantoms"
    synthetic: bool = True
    images_per_site: int = 400
    lesion_contrast: float = 12.0

    def __post_init__(self) -> None:
        _check(self.num_sites >= 1, "federation.num_sites", self.num_sites, ">= 1")
        _check(self.lesion_contrast > 0, "federation.lesion_contrast", self.lesion_contrast, "> 0 (phantom difficulty)")
        _check(bool(self.data_dir), "federation.data_dir", self.data_dir, "a folder path")
        _check(
            self.images_per_site >= 8,
            "federation.images_per_site",
            self.images_per_site,
            ">= 8 (a site needs images in train, validation and test)",
        )


@dataclass(frozen=True)
class DataConfig:
    """How images become tensors and how a site's patients are split."""

    image_size: int = 64
    cache_dir: str = ""
    val_fraction: float = 0.15
    test_fraction: float = 0.25
    augment: bool = True
    augment_policy: str = "standard"
    """How strongly training images are augmented when ``augment`` is on: ``standard`` (flip, intensity, shift) or
    ``strong`` (also rotation, zoom and noise; for small real datasets). See `common.data.augment`."""
    pixel_spacing_mm: float = 0.0
    """Physical pixel size (mm) every image is resampled to before cropping; 0 keeps each file's own."""
    presentation_intent: str = "any"
    """Which DICOM (0008,0068) intent a site uses: ``any``, ``for_presentation`` or ``for_processing``."""

    PRESENTATION_INTENTS: ClassVar[tuple[str, ...]] = ("any", "for_presentation", "for_processing")
    AUGMENT_POLICIES: ClassVar[tuple[str, ...]] = ("standard", "strong")

    def __post_init__(self) -> None:
        _check(16 <= self.image_size <= 1024, "data.image_size", self.image_size, "in [16, 1024]")
        _check(0.0 <= self.pixel_spacing_mm <= 5.0, "data.pixel_spacing_mm", self.pixel_spacing_mm, "0 or in (0, 5]")
        _check(
            self.presentation_intent in self.PRESENTATION_INTENTS,
            "data.presentation_intent",
            self.presentation_intent,
            f"one of {self.PRESENTATION_INTENTS}",
        )
        _check(
            self.augment_policy in self.AUGMENT_POLICIES,
            "data.augment_policy",
            self.augment_policy,
            f"one of {self.AUGMENT_POLICIES}",
        )
        _check(0.0 <= self.val_fraction < 0.5, "data.val_fraction", self.val_fraction, "in [0, 0.5)")
        _check(0.0 < self.test_fraction < 0.6, "data.test_fraction", self.test_fraction, "in (0, 0.6)")


MODEL_NAMES: tuple[str, ...] = (
    "alexnet",
    "densenet121",
    "efficientnet_b0",
    "inception_v3",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet101",
    "resnet18",
    "resnet34",
    "resnet50",
    "small_cnn",
    "vgg16",
    "vgg19",
)
"""Names ``model.name`` accepts: the model registry's (`common.models.available_models`; a test keeps the two
equal). Listed here so the config is checked before a run starts without importing torch."""

DEFAULT_CLASS_NAMES: dict[int, tuple[str, ...]] = {
    2: ("benign/normal", "malignant"),
    3: ("normal", "benign", "malignant"),
}
"""Display names when ``model.class_names`` is empty; other class counts get ``class_0, class_1, ...``."""


def resolve_class_names(class_names: str, num_classes: int) -> tuple[str, ...]:
    """The display name of each class index: ``class_names`` split on commas, or the defaults when it is empty.

    A string, not a list, because Flower's run config holds only scalars. Names are for reports only;
    labels stay class indices, and the last class is always the most severe (the headline "vs rest" view).

    Raises
    ------
    ConfigError
        If the number of names differs from ``num_classes``, or a name is empty or repeated.
    """
    if not class_names.strip():
        return DEFAULT_CLASS_NAMES.get(num_classes, tuple(f"class_{i}" for i in range(num_classes)))
    names = tuple(name.strip() for name in class_names.split(","))
    _check(
        len(names) == num_classes,
        "model.class_names",
        class_names,
        f"{num_classes} comma-separated names, one per class index 0..{num_classes - 1} (model.num_classes = "
        f"{num_classes}), or empty for the defaults",
    )
    _check(all(names), "model.class_names", class_names, "comma-separated names without an empty one")
    _check(len(set(names)) == len(names), "model.class_names", class_names, "names that are all different")
    return names


@dataclass(frozen=True)
class ModelConfig:
    """Which network, how it is normalised, where pretrained weights come from, and what its classes are called.

    Class ``i`` of the model is the manifest label ``i``; the last class is the most severe (malignant), and
    its probability is the score every binary metric (AUC, sensitivity, specificity) is read from.
    """

    name: str = "small_cnn"
    norm: str = "groupnorm"
    weights_path: str = ""
    num_classes: int = 2
    class_names: str = ""
    """Comma-separated display names, one per class index (``normal,benign,malignant``); empty = defaults."""

    def __post_init__(self) -> None:
        _check(self.name in MODEL_NAMES, "model.name", self.name, f"one of {', '.join(MODEL_NAMES)}")
        _check(self.norm in ("groupnorm", "frozen_bn"), "model.norm", self.norm, "'groupnorm' or 'frozen_bn'")
        _check(self.num_classes >= 2, "model.num_classes", self.num_classes, ">= 2")
        resolve_class_names(self.class_names, self.num_classes)

    @property
    def class_labels(self) -> tuple[str, ...]:
        """The display name of each class index (see `resolve_class_names`)."""
        return resolve_class_names(self.class_names, self.num_classes)


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy of the federation: per-site DP-SGD (``local``), server-side noise (``central``), or none.

    ``local`` protects each image against everyone outside the hospital, the server included (Opacus
    DP-SGD on each site, accounted per site). ``central`` protects each whole site against anyone who sees the
    global model, but the server sees every site's raw update: Flower's server-side DP wrappers clip each
    site's update to ``update_clip_norm`` (fixed, or adapted towards ``target_clipped_quantile``) and add
    Gaussian noise (``noise_multiplier`` x clip / sites) to the aggregate, accounted once for the federation.
    """

    MODES: ClassVar[tuple[str, ...]] = ("local", "central", "none")
    GRAD_SAMPLE_MODES: ClassVar[tuple[str, ...]] = ("hooks", "ew", "functorch", "ghost", "mixed_ghost")
    """Per-sample gradient implementations ``privacy.grad_sample_mode`` accepts: Opacus' four, and ``mixed_ghost``
    (`common.privacy.mixed_ghost`: Opacus' ghost clipping with per-layer ghost-or-instantiated norms)."""
    CENTRAL_CLIPPING: ClassVar[tuple[str, ...]] = ("fixed", "adaptive")

    mode: str = "local"
    noise_multiplier: float = 2.0
    max_grad_norm: float = 1.0
    delta: float = 1e-4
    accountant: str = "rdp"
    poisson_sampling: bool = True
    target_epsilon: float = 0.0
    """0: train with ``noise_multiplier`` as given; > 0: each site picks the noise that spends exactly this
    epsilon (at ``delta``) over the whole plan (``strategy.num_rounds`` x ``training.local_epochs``)."""
    grad_sample_mode: str = "mixed_ghost"
    secure_mode: bool = False
    central_clipping: str = "fixed"
    """``central`` only: Flower's server-side ``fixed`` or ``adaptive`` (Andrew et al. 2019) update clipping."""
    update_clip_norm: float = 1.0
    """``central`` only: L2 bound of one site's whole model update (the start value when adaptive)."""
    target_clipped_quantile: float = 0.5
    """``central`` adaptive only: the share of site updates the clip norm adapts to clip."""
    clip_norm_lr: float = 0.2
    """``central`` adaptive only: geometric learning rate of the clip norm."""

    @property
    def local(self) -> bool:
        """Whether each site trains with DP-SGD (and keeps a privacy ledger)."""
        return self.mode == "local"

    @property
    def central(self) -> bool:
        """Whether the server clips site updates and noises the aggregate."""
        return self.mode == "central"

    def __post_init__(self) -> None:
        _check(self.mode in self.MODES, "privacy.mode", self.mode, " or ".join(repr(m) for m in self.MODES))
        _check(
            self.central_clipping in self.CENTRAL_CLIPPING,
            "privacy.central_clipping",
            self.central_clipping,
            "'fixed' or 'adaptive'",
        )
        _check(self.update_clip_norm > 0.0, "privacy.update_clip_norm", self.update_clip_norm, "> 0")
        _check(
            0.0 <= self.target_clipped_quantile <= 1.0,
            "privacy.target_clipped_quantile",
            self.target_clipped_quantile,
            "in [0, 1]",
        )
        _check(self.clip_norm_lr > 0.0, "privacy.clip_norm_lr", self.clip_norm_lr, "> 0")
        _check(
            not (self.central and self.noise_multiplier <= 0 and self.target_epsilon <= 0),
            "privacy.noise_multiplier",
            self.noise_multiplier,
            "> 0 with privacy.mode=central (or set privacy.target_epsilon)",
        )
        _check(
            not (self.local and self.noise_multiplier <= 0 and self.target_epsilon <= 0),
            "privacy.noise_multiplier",
            self.noise_multiplier,
            # Un-noised DP-SGD releases each update as it is: epsilon is infinite from the first step, for good.
            "> 0 with privacy.mode=local (or set privacy.target_epsilon, from which each site derives it; "
            "privacy.mode=none trains without DP)",
        )
        _check(self.noise_multiplier >= 0.0, "privacy.noise_multiplier", self.noise_multiplier, ">= 0")
        _check(self.target_epsilon >= 0.0, "privacy.target_epsilon", self.target_epsilon, ">= 0 (0 = off)")
        _check(
            self.grad_sample_mode in self.GRAD_SAMPLE_MODES,
            "privacy.grad_sample_mode",
            self.grad_sample_mode,
            " or ".join(repr(m) for m in self.GRAD_SAMPLE_MODES),
        )
        _check(self.max_grad_norm > 0.0, "privacy.max_grad_norm", self.max_grad_norm, "> 0")
        _check(0.0 < self.delta < 1.0, "privacy.delta", self.delta, "in (0, 1)")
        _check(self.accountant in ("rdp", "prv"), "privacy.accountant", self.accountant, "'rdp' or 'prv'")


@dataclass(frozen=True)
class TrainingConfig:
    """Local optimisation on each site in one round."""

    local_epochs: int = 2
    batch_size: int = 64
    learning_rate: float = 0.5
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    device: str = "auto"
    physical_batch_size: int = 0
    """DP only: largest batch that goes through the model at once (0 = ``batch_size``); a larger logical
    batch is split by Opacus' BatchMemoryManager. Ignored without DP (no gradient accumulation there)."""
    class_weights: str = "none"
    """Per-class loss weights: ``none`` (plain cross-entropy), ``balanced`` (each site weighs class ``c`` by
    ``N / (K n_c)`` from its own training-split counts, K the classes present there) or one positive weight per
    class (``"1,2,4"``). The loss is the mean of weighted per-sample terms, never re-sampling, so Poisson sampling
    stays uniform (`common.loss`)."""
    patch_rounds: int = 0
    """Lesion-aware training (after Shen et al. 2019): the first this many rounds train on one patch per image
    (lesion vs normal tissue, `common.data.patches`) where a site's manifest marks lesions, then whole images;
    a site with no lesion mark in its training split sits those rounds out. 0 = off (whole images throughout)."""
    patch_size: int = 32
    """Side of a patch in pixels of the preprocessed image (smaller than ``data.image_size``)."""
    lesion_patch_share: float = 0.5
    """Probability that an image with a lesion mark gives a lesion patch in a round (else normal tissue)."""

    def __post_init__(self) -> None:
        explicit_class_weights(self.class_weights, None)
        _check(self.patch_rounds >= 0, "training.patch_rounds", self.patch_rounds, ">= 0 (0 = no patch stage)")
        _check(self.patch_size >= 8, "training.patch_size", self.patch_size, ">= 8 pixels")
        _check(
            0.0 < self.lesion_patch_share <= 1.0,
            "training.lesion_patch_share",
            self.lesion_patch_share,
            "in (0, 1] (the probability that an image with a lesion mark gives a lesion patch)",
        )
        _check(
            self.physical_batch_size >= 0,
            "training.physical_batch_size",
            self.physical_batch_size,
            ">= 0 (0 = same as training.batch_size)",
        )
        _check(self.device in ("auto", "cpu", "cuda"), "training.device", self.device, "'auto', 'cpu' or 'cuda'")
        _check(self.local_epochs >= 1, "training.local_epochs", self.local_epochs, ">= 1")
        _check(self.batch_size >= 1, "training.batch_size", self.batch_size, ">= 1")
        _check(self.learning_rate > 0.0, "training.learning_rate", self.learning_rate, "> 0")
        _check(self.optimizer in ("sgd", "adam"), "training.optimizer", self.optimizer, "'sgd' or 'adam'")
        _check(0.0 <= self.momentum < 1.0, "training.momentum", self.momentum, "in [0, 1)")
        _check(self.weight_decay >= 0.0, "training.weight_decay", self.weight_decay, ">= 0")

    def check_patch_stage(self, image_size: int, num_rounds: int, model_name: str = "small_cnn") -> None:
        """The patch stage's rules that involve other sections (only when it is on).

        Raises
        ------
        ConfigError
            If a patch would not be smaller than the image, is smaller than the model's smallest input (alexnet
            needs 63 pixels, inception_v3 75: torch would fail mid-round with an error naming no setting), or no
            whole-image round would follow the patch stage.
        """
        if self.patch_rounds == 0:
            return
        if model_name in MODEL_NAMES:  # an unknown name is reported by the model section
            from common.models.registry import min_input_size  # torch: only when a patch stage is asked for

            smallest = min_input_size(model_name)
            _check(
                self.patch_size >= smallest,
                "training.patch_size",
                self.patch_size,
                f">= {smallest}, the smallest input model.name = {model_name} accepts, when training.patch_rounds > 0",
            )
        _check(
            self.patch_size < image_size,
            "training.patch_size",
            self.patch_size,
            f"smaller than data.image_size = {image_size} when training.patch_rounds > 0",
        )
        _check(
            self.patch_rounds < num_rounds,
            "training.patch_rounds",
            self.patch_rounds,
            f"smaller than strategy.num_rounds = {num_rounds} (whole-image rounds must follow the patch stage), "
            "or 0 for no patch stage",
        )


@dataclass(frozen=True)
class StrategyConfig:
    """Server-side aggregation and round plan: which of Flower's strategies, with its own parameters.

    Each parameter is the keyword argument of the same name of Flower's class (`server.strategies`); the defaults
    are Flower's where they are sensible (FedAvgM's momentum 0 and FedProx's mu 0 would make them plain FedAvg).
    A parameter the chosen strategy does not read must stay at its default: a changed one is an error, never
    silently ignored (one left at its default cannot be told from one not given).
    """

    NAMES: ClassVar[tuple[str, ...]] = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
    PARAMETERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "fedavg": (),
        "fedprox": ("proximal_mu",),
        "fedavgm": ("server_learning_rate", "server_momentum"),
        "fedadam": ("eta", "beta_1", "beta_2", "tau"),
        "fedyogi": ("eta", "beta_1", "beta_2", "tau"),
        "fedadagrad": ("eta", "tau"),  # Flower's FedAdagrad fixes beta_1 = beta_2 = 0
    }
    """The keys each strategy reads (Flower's keyword arguments, same names)."""
    CENTRAL_DP_NAMES: ClassVar[tuple[str, ...]] = ("fedavg", "fedprox")
    """Strategies whose aggregate is FedAvg's weighted mean, the only one Flower's central-DP noise covers."""

    name: str = "fedavg"
    num_rounds: int = 12
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2
    round_timeout_s: float = 3600.0
    proximal_mu: float = 0.01
    """fedprox: each site adds ``proximal_mu / 2 x ||w - w_global||^2`` to its local objective (0 is FedAvg)."""
    server_learning_rate: float = 1.0
    """fedavgm: the server's step along the (momentum-averaged) mean update."""
    server_momentum: float = 0.9
    """fedavgm: the server's momentum (Hsu et al. 2019; Flower's default 0 is FedAvg)."""
    eta: float = 0.1
    """fedadam, fedyogi, fedadagrad: the server's learning rate (Flower's default, but 0.01 for FedYogi, which the
    ``strategy=fedyogi`` Hydra group sets)."""
    beta_1: float = 0.9
    """fedadam, fedyogi: decay of the first moment (the mean update)."""
    beta_2: float = 0.99
    """fedadam, fedyogi: decay of the second moment (the squared mean update)."""
    tau: float = 1e-3
    """fedadam, fedyogi, fedadagrad: the adaptivity floor added to the root of the second moment."""

    def __post_init__(self) -> None:
        _check(self.name in self.NAMES, "strategy.name", self.name, f"one of {', '.join(self.NAMES)}")
        _check(self.num_rounds >= 1, "strategy.num_rounds", self.num_rounds, ">= 1")
        _check(0.0 < self.fraction_train <= 1.0, "strategy.fraction_train", self.fraction_train, "in (0, 1]")
        _check(
            0.0 <= self.fraction_evaluate <= 1.0,
            "strategy.fraction_evaluate",
            self.fraction_evaluate,
            "in [0, 1]",
        )
        _check(self.min_nodes >= 1, "strategy.min_nodes", self.min_nodes, ">= 1")
        _check(self.round_timeout_s > 0, "strategy.round_timeout_s", self.round_timeout_s, "> 0")
        self._check_parameters()

    def _check_parameters(self) -> None:
        """Each strategy parameter's range, then that the strategy reads every parameter changed from its default."""
        fedprox = self.name == "fedprox"
        _check(
            self.proximal_mu > 0 if fedprox else self.proximal_mu >= 0,
            "strategy.proximal_mu",
            self.proximal_mu,
            "> 0 with strategy.name = 'fedprox' (0 is FedAvg: use strategy.name = 'fedavg')" if fedprox else ">= 0",
        )
        _check(self.server_learning_rate > 0, "strategy.server_learning_rate", self.server_learning_rate, "> 0")
        _check(0.0 <= self.server_momentum < 1.0, "strategy.server_momentum", self.server_momentum, "in [0, 1)")
        _check(self.eta > 0, "strategy.eta", self.eta, "> 0")
        _check(0.0 <= self.beta_1 < 1.0, "strategy.beta_1", self.beta_1, "in [0, 1)")
        _check(0.0 <= self.beta_2 < 1.0, "strategy.beta_2", self.beta_2, "in [0, 1)")
        _check(self.tau > 0, "strategy.tau", self.tau, "> 0")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for key in sorted({key for keys in self.PARAMETERS.values() for key in keys} - set(self.PARAMETERS[self.name])):
            readers = [name for name, keys in self.PARAMETERS.items() if key in keys]
            readers_text = " and ".join([", ".join(readers[:-1]), readers[-1]] if len(readers) > 1 else readers)
            _check(
                getattr(self, key) == defaults[key],
                f"strategy.{key}",
                getattr(self, key),
                f"left at its default {defaults[key]!r} with strategy.name = {self.name!r}, which does not use it "
                f"(only {readers_text} do{'es' if len(readers) == 1 else ''})",
            )

    def check_central_dp(self, central: bool) -> None:
        """Refuse a server-side optimizer under ``privacy.mode=central``.

        Why: Flower's central-DP wrappers add the noise to whatever the wrapped strategy returns, i.e. after
        FedAvgM's momentum or FedAdam's per-coordinate scaling, which can move the model further on one site's
        update than the noise (``sigma x clip / sites``) covers, and whose state remembers un-noised updates.
        Flower's fixed-clipping accountant refuses such a strategy itself; the adaptive wrapper would not.

        Raises
        ------
        ConfigError
            If ``central`` and ``name`` is not one of `CENTRAL_DP_NAMES`.
        """
        _check(
            not central or self.name in self.CENTRAL_DP_NAMES,
            "strategy.name",
            self.name,
            f"one of {', '.join(self.CENTRAL_DP_NAMES)} with privacy.mode=central (Flower's central-DP noise is "
            "calibrated for FedAvg's mean, not for a server optimizer's step); use privacy.mode=local (DP-SGD on each "
            "site) with a server-side optimizer",
        )


@dataclass(frozen=True)
class EvaluationConfig:
    """How sensitivity and specificity are read: at which score a case is called malignant."""

    operating_point: str = "val_specificity"
    target_specificity: float = 0.9
    threshold: float = 0.5
    exam_rule: str = "max"
    """How a breast's views (CC, MLO, ...) become one breast score, and a study's breasts one exam score: the
    ``max`` or ``mean`` of the image scores, or ``learned``: a logistic combination fitted on the site's
    validation split (falling back to ``max`` where that split cannot fit one)."""
    localization: bool = True
    """In the final round, score where the global model looked (Grad-CAM pointing game and box IoU) on the
    site's test images that carry a lesion mark."""

    def __post_init__(self) -> None:
        _check(
            self.exam_rule in ("max", "mean", "learned"),
            "evaluation.exam_rule",
            self.exam_rule,
            "'max', 'mean' or 'learned' (a logistic combination fitted on the validation split)",
        )
        _check(
            self.operating_point in ("val_specificity", "fixed"),
            "evaluation.operating_point",
            self.operating_point,
            "'val_specificity' (threshold chosen on the site's validation split) or 'fixed'",
        )
        _check(
            0.0 < self.target_specificity < 1.0,
            "evaluation.target_specificity",
            self.target_specificity,
            "in (0, 1)",
        )
        _check(0.0 < self.threshold < 1.0, "evaluation.threshold", self.threshold, "in (0, 1)")


@dataclass(frozen=True)
class OutputConfig:
    """Where the server writes the run directory, and which stopped run it continues."""

    run_dir: str = "~/.fedmammo/runs/latest"
    save_checkpoints: bool = True
    """Save the global model and the run's checkpoint after each round's training and evaluation (needed to resume)."""
    resume_from: str = ""
    """A stopped run's folder: continue it from its last checkpoint, in that folder (`server.resume`); empty: a new
    run. Only ``strategy.num_rounds``, timeouts, ``training.device`` and ``output.*`` may differ from its config."""


SECAGG_MODULUS = 2**32
"""Flower's SecAgg+ modulus (``SecAggPlusWorkflow.modulus_range``): the masked sum of the sites' quantized values
must stay below it."""


@dataclass(frozen=True)
class SecureAggregationConfig:
    """SecAgg+ (Bell et al. 2020, Flower's implementation): the server learns the sum of the sampled sites' updates,
    never one site's.

    Each site sends its update (local minus global weights), scaled by its weight, clipped to ``clipping_range``,
    quantized to ``quantization_range`` levels and hidden under masks that cancel only in the sum; a site lost while
    training is unmasked from ``reconstruction_threshold`` of its neighbours' key shares (one lost earlier is left
    out). The aggregate equals the plain weighted mean up to the quantization step ``2 x clipping_range /
    quantization_range`` per site, divided by the sites' summed weights (see ``max_weight``). ``num_shares`` and
    ``reconstruction_threshold`` are Flower's: a value in (0, 1] is a fraction (of the sampled sites, of the shares),
    a whole number above that a count.
    """

    enabled: bool = False
    num_shares: float = 1.0
    """How many sites hold shares of each site's keys (itself included): a fraction of the sampled sites, or a count."""
    reconstruction_threshold: float = 0.67
    """How many of those shares unmask a dropped site: a fraction of ``num_shares``, or a count."""
    clipping_range: float = 8.0
    """Each value of a weighted update is clipped to [-clipping_range, clipping_range] before quantization."""
    quantization_range: int = 2**22
    """Integer levels across [-clipping_range, clipping_range]."""
    max_weight: float = 1000.0
    """A site's update enters the sum weighted by its training examples / max_weight (under central DP every site
    weighs 1 / 1). Set it near the largest site's training split: the quantization error grows as the weights
    shrink, and a weight above 1 makes clipping at ``clipping_range`` likelier."""
    timeout_s: float = 600.0
    """Seconds each key-exchange step (setup, share keys, unmask) waits for the sites; training itself waits
    ``strategy.round_timeout_s``."""

    def __post_init__(self) -> None:
        _check(
            0.0 < self.num_shares <= 1.0 or (float(self.num_shares).is_integer() and self.num_shares >= 3),
            "secure_aggregation.num_shares",
            self.num_shares,
            "a fraction of the sampled sites in (0, 1], or a whole number >= 3",
        )
        _check(
            0.0 < self.reconstruction_threshold <= 1.0
            or (float(self.reconstruction_threshold).is_integer() and self.reconstruction_threshold >= 2),
            "secure_aggregation.reconstruction_threshold",
            self.reconstruction_threshold,
            "a fraction of secure_aggregation.num_shares in (0, 1], or a whole number >= 2",
        )
        _check(
            self.num_shares <= 1.0 or self.reconstruction_threshold < self.num_shares,
            "secure_aggregation.reconstruction_threshold",
            self.reconstruction_threshold,
            f"smaller than secure_aggregation.num_shares = {self.num_shares:g}",
        )
        _check(self.clipping_range > 0.0, "secure_aggregation.clipping_range", self.clipping_range, "> 0")
        _check(
            2 <= self.quantization_range < SECAGG_MODULUS,
            "secure_aggregation.quantization_range",
            self.quantization_range,
            f"in [2, {SECAGG_MODULUS}) (Flower's SecAgg+ modulus)",
        )
        _check(self.max_weight > 0.0, "secure_aggregation.max_weight", self.max_weight, "> 0")
        _check(self.timeout_s > 0.0, "secure_aggregation.timeout_s", self.timeout_s, "> 0")

    def max_weight_under(self, central_dp: bool) -> float:
        """The weight that maps to 1 in the secure sum: 1 under central DP (each site weighs 1), else ``max_weight``."""
        return 1.0 if central_dp else self.max_weight

    def check_federation(self, sites_per_round: int, *, study: bool, central_clipping: str | None) -> None:
        """The rules SecAgg+ sets on the rest of the config (only when it is on).

        Raises
        ------
        ConfigError
            If a study is asked for (its one-site arms would be "summed" over one site), fewer than 3 sites train
            each round, the counts ask for more sites than train, the masked sum could overflow Flower's modulus,
            or central DP clips adaptively (the server would have to see each update to count the clipped ones).
        """
        if not self.enabled:
            return
        _check(
            not study,
            "secure_aggregation.enabled",
            self.enabled,
            "false with study.enabled = true (a study trains one-site models, and a sum over one site is its update)",
        )
        _check(
            sites_per_round >= 3,
            "secure_aggregation.enabled",
            self.enabled,
            f"false unless at least 3 sites train each round (federation.num_sites, strategy.fraction_train and "
            f"strategy.min_nodes give {sites_per_round}): SecAgg+ needs 3 to hide each update among the others",
        )
        _check(
            self.num_shares <= 1.0 or self.num_shares <= sites_per_round,
            "secure_aggregation.num_shares",
            self.num_shares,
            f"<= the {sites_per_round} sites that train each round, or a fraction in (0, 1]",
        )
        _check(
            self.reconstruction_threshold <= 1.0 or self.reconstruction_threshold < sites_per_round,
            "secure_aggregation.reconstruction_threshold",
            self.reconstruction_threshold,
            f"< the {sites_per_round} sites that train each round, or a fraction in (0, 1]",
        )
        _check(
            self.quantization_range * sites_per_round < SECAGG_MODULUS,
            "secure_aggregation.quantization_range",
            self.quantization_range,
            f"< {SECAGG_MODULUS} / {sites_per_round} sites per round (their summed values must not overflow "
            "Flower's SecAgg+ modulus)",
        )
        _check(
            central_clipping in (None, "fixed"),
            "privacy.central_clipping",
            central_clipping,
            "'fixed' with secure_aggregation.enabled (each site clips its own update to privacy.update_clip_norm "
            "before masking; adaptive clipping would need the server to see each update)",
        )


STUDY_ARMS: tuple[str, ...] = ("local", "centralized", "federated", "loso")
"""The models a study trains: each site alone, the pooled data, the federation, and the federation without each site."""


@dataclass(frozen=True)
class StudyConfig:
    """A cross-site generalization study (``fedmammo study``): which models to train, how to report them.

    With ``enabled`` the ServerApp trains each arm on the same sites, splits and seeds, then asks every site to
    score every model on its own test split (`server.study`). ``arms`` is comma-separated (run configs hold no
    lists). Subgroups under ``min_subgroup`` test images are reported as too small, never as a number.
    """

    enabled: bool = False
    arms: str = ",".join(STUDY_ARMS)
    min_subgroup: int = 10
    calibration_bins: int = 10
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        unknown = [arm for arm in self.arm_names if arm not in STUDY_ARMS]
        _check(
            not unknown and bool(self.arm_names),
            "study.arms",
            self.arms,
            f"comma-separated arms from {', '.join(STUDY_ARMS)} (at least one)",
        )
        _check(self.min_subgroup >= 1, "study.min_subgroup", self.min_subgroup, ">= 1")
        _check(2 <= self.calibration_bins <= 50, "study.calibration_bins", self.calibration_bins, "in [2, 50]")
        _check(self.bootstrap >= 0, "study.bootstrap", self.bootstrap, ">= 0 (0 skips the CIs)")

    @property
    def arm_names(self) -> tuple[str, ...]:
        """The arms asked for, in the canonical order of `STUDY_ARMS`."""
        asked = {arm.strip() for arm in self.arms.split(",") if arm.strip()}
        return tuple(arm for arm in STUDY_ARMS if arm in asked) + tuple(sorted(asked - set(STUDY_ARMS)))


@dataclass(frozen=True)
class PersonalizationConfig:
    """Models fitted to each site on top of the global one, for sites whose images are shifted (other scanners).

    ``fedbn`` (Li et al. 2021, FedBN): every normalization layer's weights and statistics (`common.models.norm_layers`)
    stay at the site that trained them and never enter a reply; the server averages the other layers only, and each
    site trains and evaluates the shared layers with its own normalization. ``fine_tune_epochs`` > 0: in the last
    round's evaluation each site also fine-tunes a copy of the global model for that many epochs on its own training
    split (DP-SGD under local privacy, charged to its ledger like a round) and reports both models' test figures; the
    fine-tuned model never leaves the site.
    """

    fedbn: bool = False
    fine_tune_epochs: int = 0

    def __post_init__(self) -> None:
        _check(
            self.fine_tune_epochs >= 0,
            "personalization.fine_tune_epochs",
            self.fine_tune_epochs,
            ">= 0 (0 = no fine-tuning; N = N epochs on each site's training split in the last round's evaluation)",
        )

    @property
    def enabled(self) -> bool:
        """Whether any personalization is asked for."""
        return self.fedbn or self.fine_tune_epochs > 0

    def check_study(self, study: bool) -> None:
        """A study trains several models in one run and scores each across sites: neither fits personalization.

        Raises
        ------
        ConfigError
            If personalization is asked for with ``study.enabled``: a FedBN model's local layers would be shared
            by every model of the study at a site, and a study's evaluation has no fine-tuning step.
        """
        _check(
            not (study and self.fedbn),
            "personalization.fedbn",
            self.fedbn,
            "false with study.enabled = true (a study trains several models in one run, and each site would mix "
            "their local normalization layers); compare FedBN with FedAvg as two `fedmammo simulate` runs",
        )
        _check(
            not (study and self.fine_tune_epochs > 0),
            "personalization.fine_tune_epochs",
            self.fine_tune_epochs,
            "0 with study.enabled = true (a study scores its models without fine-tuning them at each site)",
        )


@dataclass(frozen=True)
class AppConfig:
    """Everything one run needs; one instance per entry point, passed down explicitly."""

    seed: int = 42
    federation: FederationConfig = field(default_factory=FederationConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)
    personalization: PersonalizationConfig = field(default_factory=PersonalizationConfig)

    def __post_init__(self) -> None:
        _check_finite(self, "")
        self.secure_aggregation.check_federation(
            self.sites_per_round,
            study=self.study.enabled,
            central_clipping=self.privacy.central_clipping if self.privacy.central else None,
        )
        explicit_class_weights(self.training.class_weights, self.model.num_classes)  # one weight per class
        self.personalization.check_study(self.study.enabled)
        self.training.check_patch_stage(self.data.image_size, self.strategy.num_rounds, self.model.name)
        if self.study.enabled and self.privacy.central:
            # A model trained by one node under Flower's central-DP wrapper gets its noise sigma*C/1, a federation of
            # N sites sigma*C/N, and a "client-level" guarantee for one client protects nobody: no fair comparison.
            one_node = [arm for arm in self.study.arm_names if arm in ("local", "centralized")]
            _check(
                not one_node,
                "study.arms",
                self.study.arms,
                "without local and centralized under privacy.mode=central (a one-node federation gets N times the "
                "federation's noise); use study.arms=federated,loso, or privacy=local for every arm",
            )
        if self.privacy.central:
            # Flower's wrapper noises every array it aggregates: frozen BatchNorm statistics would come back
            # noised (a variance can turn negative); GroupNorm has no statistics to spoil.
            _check(
                self.model.norm == "groupnorm", "model.norm", self.model.norm, "'groupnorm' with privacy.mode=central"
            )
            _check(
                self.privacy.accountant == "rdp",
                "privacy.accountant",
                self.privacy.accountant,
                "'rdp' with privacy.mode=central (Flower's server-side accountant is RDP)",
            )

    @property
    def sites_per_round(self) -> int:
        """How many sites FedAvg samples each round when the whole federation is connected."""
        sites = self.federation.num_sites
        return min(sites, max(int(sites * self.strategy.fraction_train), min(self.strategy.min_nodes, sites)))

    def to_nested(self) -> dict[str, Any]:
        """Plain nested dict (for config.yaml and Hydra)."""
        return dataclasses.asdict(self)

    def to_flat(self) -> dict[str, Any]:
        """Dotted keys, as Flower's run-config holds them."""
        return flatten(self.to_nested())


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping to dotted keys, as Flower's run-config holds them."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
