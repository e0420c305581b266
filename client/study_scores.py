"""A study's site-side scoring: every model on this site's test split, reduced to figures that may leave the site.

The server of a cross-site study (`server.study`) sends several models in one message; the site scores each on
the same test images and returns, per model, its metrics, score histogram, reliability bins and subgroup figures,
and, per pair of models the server names, the paired AUC difference with its CI. The per-image scores exist only
in this process's memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from client.site import SiteSpec
from client.task import load_site_data, pick_device, score_headline
from common.config import AppConfig
from common.data import SiteData, SiteImages, read_manifest
from common.data.dicom_header import read_header
from common.errors import DicomError
from common.metrics import (
    PairedDifference,
    ScoreHistogram,
    age_band,
    binary_metrics,
    calibration_from_scores,
    density_group,
    laterality_group,
    paired_auc_difference,
    subgroup_metrics,
    vendor_group,
    view_group,
)
from common.study_wire import ModelScores

__all__ = ["StudyScores", "score_models_on_site", "subgroup_attributes"]

logger = logging.getLogger(__name__)

_DICOM_SUFFIXES = (".dcm", ".dicom", "")


@dataclass(frozen=True)
class StudyScores:
    """What a site returns for a study's evaluation request."""

    num_examples: int
    models: list[ModelScores]
    pairs: list[PairedDifference]
    seconds: float


def _header_fields(path: object) -> tuple[str, str, str, str]:
    """Manufacturer, age, view and laterality from a DICOM header; empty strings for other files or bad headers."""
    try:
        header = read_header(path)  # type: ignore[arg-type]
    except DicomError:
        return "", "", "", ""
    return header.manufacturer, header.patient_age, header.view, header.laterality


def subgroup_attributes(site: SiteSpec, test: SiteImages) -> dict[str, list[str | None]]:
    """Each test image's subgroup values (view, laterality, density, vendor, age band), in the split's order.

    The manifest gives view, laterality, density and age; a DICOM header fills what the manifest leaves empty and
    gives the vendor. Values are mapped onto fixed vocabularies (`common.metrics.subgroups`), so no free text from
    a manifest or header can reach the server.
    """
    if test.row_numbers is None:
        return {}
    rows = {row.row_number: row for row in read_manifest(site.manifest)}
    groups: dict[str, list[str | None]] = {a: [] for a in ("view", "laterality", "density", "vendor", "age_band")}
    for line in test.row_numbers:
        row = rows.get(line)
        if row is None:
            for values in groups.values():
                values.append(None)
            continue
        is_dicom = row.image_path.suffix.lower() in _DICOM_SUFFIXES
        vendor, age, view, laterality = _header_fields(row.image_path) if is_dicom else ("", "", "", "")
        groups["view"].append(view_group(row.view or view))
        groups["laterality"].append(laterality_group(row.laterality or laterality))
        groups["density"].append(density_group(row.density))
        groups["vendor"].append(vendor_group(vendor))
        groups["age_band"].append(age_band(row.age or age))
    return {name: values for name, values in groups.items() if any(v is not None for v in values)}


def _score_model(
    config: AppConfig,
    data: SiteData,
    state_dict: dict[str, torch.Tensor],
    attributes: dict[str, list[str | None]],
    device: str,
) -> tuple[ModelScores, np.ndarray, np.ndarray]:
    result, labels, threshold = score_headline(config, data, state_dict, device)
    study = config.study
    metrics = binary_metrics(
        labels,
        result.scores,
        threshold=threshold,
        target_specificity=config.evaluation.target_specificity,
        bootstrap=study.bootstrap,
        seed=config.seed,
    )
    scores = ModelScores(
        metrics=metrics,
        threshold=threshold,
        histogram=ScoreHistogram.from_scores(labels, result.scores),
        calibration=calibration_from_scores(labels, result.scores, bins=study.calibration_bins),
        subgroups=subgroup_metrics(
            labels,
            result.scores,
            attributes,
            min_count=study.min_subgroup,
            threshold=threshold,
            resamples=study.bootstrap,
            seed=config.seed,
        ),
    )
    return scores, labels, result.scores


def score_models_on_site(
    site: SiteSpec,
    config: AppConfig,
    models: list[dict[str, torch.Tensor]],
    pairs: list[tuple[int, int]],
) -> StudyScores:
    """Score each of ``models`` on the site's test split and compare the ``pairs`` (indices into ``models``).

    Raises
    ------
    ValueError
        If a pair names a model index that was not sent.
    """
    started = time.perf_counter()
    bad = [pair for pair in pairs if not all(0 <= i < len(models) for i in pair)]
    if bad:
        raise ValueError(f"study pairs {bad} name models that were not sent ({len(models)} model(s))")
    data = load_site_data(site, config)
    attributes = subgroup_attributes(site, data.test)
    device = pick_device(config.training.device)
    scored = [_score_model(config, data, state_dict, attributes, device) for state_dict in models]
    labels = scored[0][1] if scored else np.zeros(0, dtype=np.int64)
    differences = [
        paired_auc_difference(labels, scored[a][2], scored[b][2], resamples=config.study.bootstrap, seed=config.seed)
        for a, b in pairs
    ]
    logger.info("site %s: scored %d model(s) on %d test image(s)", site.name, len(models), len(labels))
    return StudyScores(
        num_examples=len(labels),
        models=[model for model, _, _ in scored],
        pairs=differences,
        seconds=time.perf_counter() - started,
    )
