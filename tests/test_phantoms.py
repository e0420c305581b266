"""Tests for simulations.phantoms: DICOM validity, manifest consistency, determinism, site heterogeneity, atomicity."""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian

from common.data import MANIFEST_COLUMNS, ManifestRow, read_manifest
from common.errors import ConfigError
from simulations.phantoms import dicom_writer, generate_federation, generate_site, scanner_profile

SCALE = 0.25  # 128 x 104 px images for site 0: fast, lesions still several pixels wide


@pytest.fixture(scope="module")
def site0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten patients (one full 4/3/3 findings block) at scanner 0, MONOCHROME2."""
    root = tmp_path_factory.mktemp("site0")
    return generate_site(root / "site_0", site_index=0, num_images=40, seed=3, matrix_scale=SCALE)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("federation")
    return generate_federation(root, num_sites=3, images_per_site=12, seed=3, matrix_scale=SCALE)


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Modality values in 'bright = dense' sense (MONOCHROME1 stored values inverted first)."""
    stored = ds.pixel_array.astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        stored = ((1 << int(ds.BitsStored)) - 1) - stored
    return stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _by_patient(rows: list[ManifestRow]) -> dict[str, list[ManifestRow]]:
    groups: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        groups[row.patient_id].append(row)
    return groups


def test_every_file_is_valid_mg_dicom_with_required_tags(site0: Path) -> None:
    # Prepare
    rows = read_manifest(site0)
    profile = scanner_profile(0)
    # Execute
    datasets = [(row, pydicom.dcmread(row.image_path)) for row in rows]
    # Assert
    for row, ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == DigitalMammographyXRayImageStorageForPresentation
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "MG"
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.ImageLaterality == ds.Laterality == row.laterality
        assert ds.ViewPosition == row.view
        assert ds.PatientID == row.patient_id and "PHANTOM" in str(ds.PatientName)
        assert ds.StudyInstanceUID == row.study_id
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, profile.bits_stored, profile.bits_stored - 1)
        assert (ds.PixelRepresentation, ds.SamplesPerPixel) == (0, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.Manufacturer and ds.ManufacturerModelName == "Phantom Scanner A"
        assert float(ds.PixelSpacing[0]) == pytest.approx(profile.pixel_spacing_mm / SCALE)
        assert "WindowCenter" in ds and "WindowWidth" in ds and "RescaleSlope" in ds
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns) == (128, 104)
        assert int(ds.pixel_array.max()) <= profile.max_stored


def test_manifest_lists_exactly_the_written_files(site0: Path) -> None:
    # Execute
    rows = read_manifest(site0)
    on_disk = {p.name for p in (site0.parent / "images").glob("*.dcm")}
    # Assert
    assert len(rows) == 40
    assert {r.image_path.name for r in rows} == on_disk
    raw_header = (site0.read_text(encoding="utf-8").splitlines()[0]).split(",")
    assert tuple(raw_header) == MANIFEST_COLUMNS
    first = site0.read_text(encoding="utf-8").splitlines()[1]
    assert first.startswith("images/P0001_L_CC.dcm,") and ",S0-P0001," in first
    assert all(r.split == "" for r in rows)


def test_labels_findings_and_lesion_columns_agree(site0: Path) -> None:
    # Execute
    rows = read_manifest(site0)
    patient_findings = Counter(
        max((r.finding for r in group), key=("normal", "benign", "malignant").index)
        for group in _by_patient(rows).values()
    )
    # Assert
    assert patient_findings == {"normal": 4, "benign": 3, "malignant": 3}
    for row in rows:
        assert row.label == int(row.finding == "malignant")
        lesion = (row.lesion_row, row.lesion_col, row.lesion_radius_px)
        if row.finding == "normal":
            assert lesion == (None, None, None)
        else:
            assert 0 <= row.lesion_row < 128 and 0 <= row.lesion_col < 104 and 3 < row.lesion_radius_px < 15


def test_patient_images_share_patient_and_study_and_lesion_is_in_one_breast(site0: Path) -> None:
    # Execute
    groups = _by_patient(read_manifest(site0))
    # Assert
    assert len(groups) == 10
    for patient, group in groups.items():
        assert [(r.laterality, r.view) for r in group] == [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
        assert len({r.study_id for r in group}) == 1
        assert len({pydicom.dcmread(r.image_path).StudyInstanceUID for r in group}) == 1
        sides = {r.laterality for r in group if r.finding != "normal"}
        assert len(sides) <= 1, f"{patient} has lesions in both breasts"
        if sides:
            assert sum(r.finding != "normal" for r in group) == 2  # CC and MLO of the same breast


def test_last_patient_is_truncated_to_keep_the_exact_image_count(tmp_path: Path) -> None:
    # Execute
    rows = read_manifest(generate_site(tmp_path / "s", site_index=2, num_images=6, seed=1, matrix_scale=0.15))
    # Assert
    assert len(rows) == 6
    assert [(r.patient_id, r.laterality, r.view) for r in rows[4:]] == [
        ("S2-P0002", "L", "CC"),
        ("S2-P0002", "L", "MLO"),
    ]


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    # Prepare
    args = {"site_index": 1, "num_images": 8, "matrix_scale": 0.2}
    # Execute
    first = read_manifest(generate_site(tmp_path / "a", seed=5, **args))
    second = read_manifest(generate_site(tmp_path / "b", seed=5, **args))
    other = read_manifest(generate_site(tmp_path / "c", seed=6, **args))
    # Assert
    for a, b, c in zip(first, second, other, strict=True):
        assert a.image_path.read_bytes() == b.image_path.read_bytes()
        assert pydicom.dcmread(a.image_path).PixelData != pydicom.dcmread(c.image_path).PixelData
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()


def test_sites_have_different_scanners(federation: list[Path]) -> None:
    # Execute
    headers = [pydicom.dcmread(read_manifest(m)[0].image_path) for m in federation]
    # Assert
    assert [m.parent.name for m in federation] == ["site_0", "site_1", "site_2"]
    assert {h.PhotometricInterpretation for h in headers} == {"MONOCHROME1", "MONOCHROME2"}
    assert len({int(h.BitsStored) for h in headers}) == 3
    assert len({float(h.PixelSpacing[0]) for h in headers}) == 3
    assert len({(h.Rows, h.Columns) for h in headers}) == 3
    assert any(float(h.RescaleSlope) != 1.0 or float(h.RescaleIntercept) != 0.0 for h in headers)
    assert len({h.Manufacturer + h.ManufacturerModelName for h in headers}) == 3


def test_scanner_profile_is_defined_for_any_index_and_rejects_negative() -> None:
    # Execute
    profiles = [scanner_profile(i) for i in range(12)]
    # Assert
    assert all(12 <= p.bits_stored <= 16 and 0.07 <= p.pixel_spacing_mm <= 0.2 for p in profiles)
    assert scanner_profile(7) == scanner_profile(7)
    assert len({p.model for p in profiles}) == 12
    with pytest.raises(ConfigError, match="site_index = -1 must be >= 0"):
        scanner_profile(-1)


def test_monochrome1_site_shows_breast_brighter_than_background_after_inversion(federation: list[Path]) -> None:
    # Prepare
    row = next(r for r in read_manifest(federation[1]) if (r.laterality, r.view) == ("L", "CC"))
    ds = pydicom.dcmread(row.image_path)
    # Execute
    values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float64)
    inverted = values.max() - values
    rows, cols = inverted.shape
    breast = inverted[rows // 3 : 2 * rows // 3, : cols // 4].mean()  # chest wall of a left breast: left edge
    background = inverted[:, -max(cols // 20, 2) :].mean()  # beyond the nipple
    # Assert
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert breast > background + 0.2 * (inverted.max() - inverted.min())


def test_right_breast_is_mirror_layout_of_left(site0: Path) -> None:
    # Prepare
    rows = {(r.patient_id, r.laterality, r.view): r for r in read_manifest(site0)}
    left = _display(pydicom.dcmread(rows[("S0-P0001", "L", "CC")].image_path))
    right = _display(pydicom.dcmread(rows[("S0-P0001", "R", "CC")].image_path))
    # Execute
    quarter = left.shape[1] // 4
    # Assert: chest wall (bright) on the left for L, on the right for R
    assert left[:, :quarter].mean() > left[:, -quarter:].mean()
    assert right[:, -quarter:].mean() > right[:, :quarter].mean()


def test_masses_are_brighter_than_surrounding_tissue(site0: Path) -> None:
    # Prepare
    lesions = [r for r in read_manifest(site0) if r.finding != "normal"]
    differences = []
    # Execute
    for row in lesions:
        image = _display(pydicom.dcmread(row.image_path))
        yy, xx = np.indices(image.shape)
        dist = np.hypot(yy - row.lesion_row, xx - row.lesion_col) / row.lesion_radius_px
        inside = image[dist < 0.6].mean()
        ring = image[(dist > 1.6) & (dist < 2.6) & (image > image.max() * 0.1)].mean()
        differences.append(inside - ring)
    # Assert
    assert len(lesions) == 12
    assert np.mean(differences) > 0
    assert sum(d > 0 for d in differences) >= 10


def test_existing_site_is_reused_and_changed_arguments_regenerate(tmp_path: Path) -> None:
    # Prepare
    site = tmp_path / "site_0"
    manifest = generate_site(site, site_index=0, num_images=4, seed=2, matrix_scale=0.15)
    before = {p.name: p.stat().st_mtime_ns for p in (site / "images").iterdir()}
    # Execute
    again = generate_site(site, site_index=0, num_images=4, seed=2, matrix_scale=0.15)
    after = {p.name: p.stat().st_mtime_ns for p in (site / "images").iterdir()}
    bigger = generate_site(site, site_index=0, num_images=8, seed=2, matrix_scale=0.15)
    # Assert
    assert again == manifest and after == before
    assert len(read_manifest(bigger)) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site_0"]


def test_crash_mid_site_leaves_no_half_site_or_temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    real_write = dicom_writer.write_dicom  # looked up when a site is written, not when generate is imported
    written: list[Path] = []

    def failing_write(path: Path, *args: object) -> Path:
        if len(written) == 3:
            raise OSError("disk full (simulated)")
        written.append(real_write(path, *args))
        return path

    monkeypatch.setattr(dicom_writer, "write_dicom", failing_write)
    # Execute
    with pytest.raises(OSError, match="disk full"):
        generate_site(tmp_path / "site_0", site_index=0, num_images=8, seed=2, matrix_scale=0.15)
    # Assert
    assert len(written) == 3
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_folder_that_is_not_a_phantom_site(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "real_data").mkdir()
    (tmp_path / "real_data" / "scan.dcm").write_bytes(b"precious")
    # Execute / Assert
    with pytest.raises(ConfigError, match="is not a phantom site"):
        generate_site(tmp_path / "real_data", site_index=0, num_images=4, matrix_scale=0.15)
    assert (tmp_path / "real_data" / "scan.dcm").read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 0}, "num_images = 0 is invalid"),
        ({"seed": -1}, "seed = -1 is invalid"),
        ({"lesion_contrast": 0.0}, "lesion_contrast = 0.0 is invalid"),
        ({"matrix_scale": 10.0}, "matrix_scale = 10.0 is invalid"),
    ],
)
def test_invalid_arguments_raise_config_error(tmp_path: Path, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate_site(tmp_path / "s", site_index=0, **kwargs)  # type: ignore[arg-type]


def test_a_site_generated_alone_equals_the_same_site_in_a_federation(federation: list[Path], tmp_path: Path) -> None:
    # Execute
    alone = generate_site(tmp_path / "site_2", site_index=2, num_images=12, seed=3, matrix_scale=SCALE)
    # Assert
    for a, b in zip(read_manifest(alone), read_manifest(federation[2]), strict=True):
        assert a.image_path.read_bytes() == b.image_path.read_bytes()
    with pytest.raises(ConfigError, match="num_sites = 0 is invalid"):
        generate_federation(tmp_path / "fed", num_sites=0)


def test_configured_federation_follows_the_config_section(tmp_path: Path) -> None:
    from common.config import load_config
    from simulations.phantoms import generate_configured_federation

    config = load_config(
        {"federation.data_dir": str(tmp_path / "fed"), "federation.num_sites": 2, "federation.images_per_site": 8}
    )

    manifests = generate_configured_federation(config.federation, seed=config.seed)

    assert manifests == [tmp_path / "fed" / "site_0" / "manifest.csv", tmp_path / "fed" / "site_1" / "manifest.csv"]
    assert all(m.is_file() for m in manifests)


def test_a_mass_is_as_dense_as_glandular_tissue_not_a_light() -> None:
    """A mass replaces tissue by slightly denser tissue: inside it, attenuation stays under the mass level."""
    from simulations.phantoms.anatomy import GLAND_ATTENUATION, make_breast, sample_geometry
    from simulations.phantoms.lesions import MASS_EXCESS, render_lesion, sample_lesion

    rng = np.random.default_rng(0)
    geometry = sample_geometry(rng, 256, 208, "CC")
    breast = make_breast(rng, geometry, density=0.3)
    spec = dataclasses.replace(sample_lesion(rng, "malignant"), calcifications=0)
    before = breast.attenuation.copy()
    centre = (geometry.center_row, geometry.depth * 0.4, 0.08 * geometry.rows)
    render_lesion(breast.attenuation, breast.thickness, spec, centre, rng, contrast_scale=2.0)
    ceiling = breast.thickness * GLAND_ATTENUATION * (1 + MASS_EXCESS * spec.contrast * 2.0)
    changed = breast.attenuation > before + 1e-6
    assert changed.sum() > 50  # the mass is there
    assert np.all(breast.attenuation[changed] <= np.maximum(before, ceiling)[changed] + 1e-5)
    assert np.all(breast.attenuation >= before - 1e-6)  # and never makes tissue less dense


def test_normal_breasts_carry_dense_islands_as_dense_as_masses() -> None:
    from simulations.phantoms.anatomy import GLAND_ATTENUATION, make_breast, sample_geometry
    from simulations.phantoms.lesions import MASS_EXCESS, add_dense_islands

    rng = np.random.default_rng(1)
    geometry = sample_geometry(rng, 256, 208, "MLO")
    breast = make_breast(rng, geometry, density=0.2)
    before = breast.attenuation.copy()
    add_dense_islands(breast.attenuation, breast.thickness, geometry, rng, contrast_scale=6.0)
    relative = np.where(breast.thickness > 0.5, breast.attenuation / np.maximum(breast.thickness, 1e-6), 0.0)
    assert relative.max() > GLAND_ATTENUATION * (1 + MASS_EXCESS * 0.5 * 6.0) * 0.8  # near a mass's density
    assert relative.max() > (before / np.maximum(breast.thickness, 1e-6))[breast.thickness > 0.5].max()
