"""Write whole phantom hospitals (DICOM files + manifest) atomically, reusing sites already generated."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from common.config import FederationConfig
from common.data import write_manifest
from common.errors import ConfigError

__all__ = ["GENERATOR_VERSION", "STAMP_NAME", "generate_configured_federation", "generate_federation", "generate_site"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 4
"""Bump whenever generated content changes, so stale sites on disk are regenerated rather than reused."""

STAMP_NAME = "phantom.json"
MANIFEST_NAME = "manifest.csv"


def _check(name: str, value: float, rule: bool, text: str) -> None:
    if not rule:
        raise ConfigError(f"phantom {name} = {value!r} is invalid: it must be {text}")


def _stamp(
    seed: int, site_index: int, num_images: int, lesion_contrast: float, matrix_scale: float
) -> dict[str, object]:
    return {
        "generator": "fedmammo.simulations.phantoms",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "site_index": site_index,
        "num_images": num_images,
        "lesion_contrast": lesion_contrast,
        "matrix_scale": matrix_scale,
    }


def _read_stamp(site_dir: Path) -> dict[str, object] | None:
    try:
        return json.loads((site_dir / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def generate_site(
    out_dir: str | Path,
    *,
    site_index: int,
    num_images: int = 200,
    seed: int = 42,
    lesion_contrast: float = 1.0,
    matrix_scale: float = 1.0,
) -> Path:
    """Write one synthetic hospital: ``out_dir/images/*.dcm`` and ``out_dir/manifest.csv``.

    Patients get four views each (L CC, L MLO, R CC, R MLO); the site holds exactly ``num_images``
    images, so when it is not a multiple of four the last patient keeps only its first views.
    Findings are 40 % normal / 30 % benign / 30 % malignant per patient; a lesion sits in one breast
    and shows in both its views, so about 15 % of images are malignant (label 1).

    The site is built in a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half site; a folder that already holds a site generated with the same arguments
    (``phantom.json``) is returned as is, which lets every node of a federation call this cheaply.

    Parameters
    ----------
    out_dir : str or Path
        The site folder (created; replaced only if it holds a phantom site made with other arguments).
    site_index : int
        Selects the scanner (:func:`scanner_profile`) and, with ``seed``, all content.
    num_images : int
        Images in the site (>= 1).
    seed : int
        Non-negative master seed; the same (seed, site_index, num_images, knobs) give identical files.
    lesion_contrast : float
        Difficulty knob (> 0): the density excess over glandular tissue of masses and dense islands is 6 % x this;
        lower is harder. 1.0 is a realistic mass density; the demo uses 12.
    matrix_scale : float
        Multiplies the scanner's matrix size (0.05-4); use e.g. 0.25 for tiny test images.

    Returns
    -------
    Path
        The site's ``manifest.csv``.

    Raises
    ------
    ConfigError
        If an argument is out of range, or ``out_dir`` exists, is not empty and is not a phantom site
        (it is never overwritten then: choose another folder).
    """
    _check("site_index", site_index, site_index >= 0, "a non-negative integer")
    _check("num_images", num_images, num_images >= 1, "at least 1")
    _check("seed", seed, seed >= 0, "a non-negative integer (numpy SeedSequence entropy)")
    _check("lesion_contrast", lesion_contrast, lesion_contrast > 0, "> 0 (1.0 is a realistic mass density)")
    _check("matrix_scale", matrix_scale, 0.05 <= matrix_scale <= 4.0, "between 0.05 and 4")
    out_dir = Path(out_dir).expanduser()
    stamp = _stamp(seed, site_index, num_images, float(lesion_contrast), float(matrix_scale))
    if _read_stamp(out_dir) == stamp and (out_dir / MANIFEST_NAME).is_file():
        logger.info("phantom site %d already generated in %s; reusing it", site_index, out_dir)
        return out_dir / MANIFEST_NAME
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and _read_stamp(out_dir) is None)):
        raise ConfigError(
            f"phantom site folder {out_dir} exists and is not a phantom site (no readable {STAMP_NAME}); "
            "it is never overwritten: give an empty or new folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_site(work, stamp)
        _swap_into_place(work, out_dir, stamp)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    logger.info("wrote phantom site %d (%d images) to %s", site_index, num_images, out_dir)
    return out_dir / MANIFEST_NAME


def _write_site(work: Path, stamp: dict[str, object]) -> None:
    # Imported here: rendering needs scipy and pydicom, reusing a site on disk (every run's start) does not.
    from simulations.phantoms.dicom_writer import ImageHeader, phantom_uid, write_dicom
    from simulations.phantoms.patients import VIEWS, patient_age, patient_findings, render_patient
    from simulations.phantoms.scanners import scanner_profile

    seed, site_index, num_images = int(stamp["seed"]), int(stamp["site_index"]), int(stamp["num_images"])
    profile = scanner_profile(site_index)
    num_patients = (num_images + len(VIEWS) - 1) // len(VIEWS)
    images_dir = work / "images"
    images_dir.mkdir()
    rows: list[dict[str, object]] = []
    spacing = profile.pixel_spacing_mm / float(stamp["matrix_scale"])
    for patient, finding in enumerate(patient_findings(seed, site_index, num_patients)):
        patient_id = f"S{site_index}-P{patient + 1:04d}"
        study_uid = phantom_uid(seed, site_index, patient, "study")
        age = patient_age(seed, site_index, patient)
        views = render_patient(
            seed=seed,
            site_index=site_index,
            patient_index=patient,
            finding=finding,
            profile=profile,
            matrix_scale=float(stamp["matrix_scale"]),
            lesion_contrast=float(stamp["lesion_contrast"]),
            num_views=min(len(VIEWS), num_images - patient * len(VIEWS)),
        )
        for number, image in enumerate(views, start=1):
            name = f"images/P{patient + 1:04d}_{image.laterality}_{image.view}.dcm"
            header = ImageHeader(
                patient_id=patient_id,
                study_uid=study_uid,
                series_uid=phantom_uid(seed, site_index, patient, "series", image.laterality),
                sop_uid=phantom_uid(seed, site_index, patient, "image", image.laterality, image.view),
                series_number=1 if image.laterality == "L" else 2,
                instance_number=number,
                laterality=image.laterality,
                view=image.view,
                pixel_spacing_mm=spacing,
                institution=f"Phantom Hospital {site_index}",
                patient_age=f"{age:03d}Y",
            )
            write_dicom(work / name, image.pixels, header, profile)
            lesion = image.lesion
            rows.append(
                {
                    "image_path": name,
                    "label": image.label,
                    "patient_id": patient_id,
                    "study_id": study_uid,
                    "laterality": image.laterality,
                    "view": image.view,
                    "split": "",
                    "finding": image.finding,
                    "lesion_row": None if lesion is None else round(lesion[0], 2),
                    "lesion_col": None if lesion is None else round(lesion[1], 2),
                    "lesion_radius_px": None if lesion is None else round(lesion[2], 2),
                    "density": image.density,
                    "age": age,
                }
            )
    write_manifest(work / MANIFEST_NAME, rows)
    (work / STAMP_NAME).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _swap_into_place(work: Path, out_dir: Path, stamp: dict[str, object]) -> None:
    """Rename the finished temp folder onto ``out_dir``; an old phantom site is moved aside first."""
    old = None
    if out_dir.exists():
        if _read_stamp(out_dir) == stamp:  # another process finished the same site meanwhile
            return
        if any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "site")
        else:
            out_dir.rmdir()
    try:
        os.replace(work, out_dir)
    except OSError:
        if _read_stamp(out_dir) != stamp:  # lost a race to an identical writer: theirs is as good as ours
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def generate_federation(
    out_dir: str | Path,
    *,
    num_sites: int = 3,
    images_per_site: int = 200,
    seed: int = 42,
    lesion_contrast: float = 1.0,
    matrix_scale: float = 1.0,
) -> list[Path]:
    """Write ``num_sites`` phantom hospitals as ``out_dir/site_0``, ``out_dir/site_1``, ...

    Site ``i`` depends only on (seed, i, images_per_site, knobs), so one node can generate its own
    site alone with :func:`generate_site` and get the same files; existing sites are reused.

    Returns
    -------
    list of Path
        The manifests, in site order.

    Raises
    ------
    ConfigError
        If ``num_sites`` < 1 or a site argument is invalid (see :func:`generate_site`).
    """
    _check("num_sites", num_sites, num_sites >= 1, "at least 1")
    root = Path(out_dir).expanduser()
    return [
        generate_site(
            root / f"site_{index}",
            site_index=index,
            num_images=images_per_site,
            seed=seed,
            lesion_contrast=lesion_contrast,
            matrix_scale=matrix_scale,
        )
        for index in range(num_sites)
    ]


def generate_configured_federation(federation: FederationConfig, *, seed: int) -> list[Path]:
    """The synthetic sites a run's ``federation`` section asks for (reused when already on disk)."""
    return generate_federation(
        Path(federation.data_dir).expanduser(),
        num_sites=federation.num_sites,
        images_per_site=federation.images_per_site,
        seed=seed,
        lesion_contrast=federation.lesion_contrast,
    )
