"""Phantom patients: balanced findings per site and the four views (L/R x CC/MLO) of one patient's study."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulations.phantoms.anatomy import make_breast, sample_geometry
from simulations.phantoms.detector import acquire
from simulations.phantoms.lesions import (
    BENIGN_CALCIFICATION_SHARE,
    add_dense_islands,
    place_lesion,
    render_lesion,
    sample_lesion,
    scatter_benign_calcifications,
)
from simulations.phantoms.scanners import ScannerProfile

__all__ = ["VIEWS", "PhantomImage", "patient_findings", "render_patient"]

VIEWS: tuple[tuple[str, str], ...] = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
"""The screening views of one patient, in file order; a site's last patient may keep only the first few."""

_FINDINGS_BLOCK = ("normal",) * 4 + ("benign",) * 3 + ("malignant",) * 3
"""Every block of 10 consecutive patients holds exactly this mix (40/30/30), shuffled per seed and site."""

_STREAM_FINDINGS, _STREAM_PATIENT, _STREAM_AGE = 0, 1, 2


@dataclass(frozen=True)
class PhantomImage:
    """One rendered view: stored pixels plus the manifest facts (lesion in stored pixel coordinates)."""

    laterality: str
    view: str
    pixels: np.ndarray
    finding: str
    lesion: tuple[float, float, float] | None
    density: str = ""
    """The patient's BI-RADS density category (A-D) from the drawn glandular share, for subgroup analyses."""

    @property
    def label(self) -> int:
        """1 for malignant, 0 for benign or normal (the project's default binary task)."""
        return int(self.finding == "malignant")


BIRADS_DENSITY_CUTS: tuple[tuple[float, str], ...] = ((0.25, "A"), (0.45, "B"), (0.65, "C"), (1.01, "D"))
"""Upper bounds of the drawn density (glandular share) per BI-RADS category: about 15/35/32/18 % of patients."""


def birads_density(density: float) -> str:
    """The BI-RADS category (A fatty ... D extremely dense) of a phantom's drawn density."""
    return next(category for bound, category in BIRADS_DENSITY_CUTS if density < bound)


def patient_age(seed: int, site_index: int, patient_index: int) -> int:
    """A screening-age patient's age in years (40-79), on a stream of its own so that pixels do not depend on it.

    Sites differ in age mix (the mean rises by 3 years per site index, modulo four), as hospitals' populations do.
    """
    rng = _rng(seed, site_index, _STREAM_AGE, patient_index)
    return int(np.clip(round(rng.normal(54 + 3 * (site_index % 4), 8)), 40, 79))


def _rng(seed: int, site_index: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(site_index, stream, index)))


def patient_findings(seed: int, site_index: int, num_patients: int) -> list[str]:
    """Patient-level findings of one site: 40 % normal, 30 % benign, 30 % malignant in every block of ten.

    Blocks (rather than independent draws) keep even a small site balanced, and patient ``p``'s
    finding depends only on (seed, site, p // 10), so enlarging a site never relabels its patients.
    """
    findings: list[str] = []
    for block in range((num_patients + len(_FINDINGS_BLOCK) - 1) // len(_FINDINGS_BLOCK)):
        order = _rng(seed, site_index, _STREAM_FINDINGS, block).permutation(len(_FINDINGS_BLOCK))
        findings.extend(_FINDINGS_BLOCK[i] for i in order)
    return findings[:num_patients]


def render_patient(
    *,
    seed: int,
    site_index: int,
    patient_index: int,
    finding: str,
    profile: ScannerProfile,
    matrix_scale: float,
    lesion_contrast: float,
    num_views: int = 4,
) -> list[PhantomImage]:
    """Render the first ``num_views`` of one patient's four screening views.

    The patient draws a breast density and, unless normal, one lesion in one breast; both views of
    that breast show it (same type, size and depth from the chest wall) and the other breast's two
    views are normal (label 0). Every view, whatever the finding, shows a few islands of dense tissue as dense
    as a mass, and about a third of breasts a few scattered benign calcifications. Images are stored in the
    DICOM display convention: a left breast's chest wall on the image's left (column 0), a right breast's on
    its right (mirror image).

    Parameters
    ----------
    seed, site_index, patient_index : int
        Identify the patient; the result depends on nothing else (besides the scanner and knobs).
    finding : str
        ``"normal"``, ``"benign"`` or ``"malignant"`` (from :func:`patient_findings`).
    profile : ScannerProfile
        The site's scanner.
    matrix_scale : float
        Multiplies the scanner's matrix size (small values make tiny test images).
    lesion_contrast : float
        Difficulty knob: scales the density excess of masses and dense islands (6 % x this; 1.0 realistic).
    num_views : int
        How many of :data:`VIEWS` to render (1-4).
    """
    rng = _rng(seed, site_index, _STREAM_PATIENT, patient_index)
    rows = max(round(profile.rows * matrix_scale), 16)
    cols = max(round(profile.cols * matrix_scale), 16)
    density = float(np.clip(rng.beta(2.2, 2.6), 0.05, 0.95))
    lesion_side = "L" if rng.random() < 0.5 else "R"
    spec = sample_lesion(rng, finding) if finding != "normal" else None
    calcified_sides = {side for side in ("L", "R") if rng.random() < BENIGN_CALCIFICATION_SHARE}
    view_seeds = rng.spawn(len(VIEWS))
    images = []
    for (laterality, view), view_rng in zip(VIEWS[:num_views], view_seeds, strict=False):
        geometry = sample_geometry(view_rng, rows, cols, view)
        breast = make_breast(view_rng, geometry, density)
        add_dense_islands(breast.attenuation, breast.thickness, geometry, view_rng, contrast_scale=lesion_contrast)
        lesion = None
        if spec is not None and laterality == lesion_side:
            lesion = place_lesion(spec, geometry, view)
            render_lesion(breast.attenuation, breast.thickness, spec, lesion, view_rng, contrast_scale=lesion_contrast)
        if laterality in calcified_sides:
            scatter_benign_calcifications(breast.attenuation, breast.thickness, geometry, view_rng)
        pixels = acquire(breast.attenuation, profile, view_rng, scale=rows / profile.rows)
        if laterality == "R":
            pixels = np.ascontiguousarray(pixels[:, ::-1])
            if lesion is not None:
                lesion = (lesion[0], cols - 1 - lesion[1], lesion[2])
        images.append(
            PhantomImage(
                laterality=laterality,
                view=view,
                pixels=pixels,
                finding=finding if lesion is not None else "normal",
                lesion=lesion,
                density=birads_density(density),
            )
        )
    return images
