"""Lesion-aware patches: lesion marks follow preprocessing, the cache keeps them, one patch per image, DP unchanged."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import load_config
from common.data import (
    INDEX_FORMAT,
    MIN_TISSUE_SHARE,
    NORMAL_LABEL,
    ImageGeometry,
    ImagePipeline,
    Lesion,
    LesionPatches,
    ManifestRow,
    SiteImages,
    dequantise,
    load_site,
    preprocess_with_geometry,
    quantise,
    read_manifest,
    source_lesion,
    split_by_patient,
    write_manifest,
)
from common.models import build_model
from common.privacy import planned_sampling
from common.training import train_local

SIZE = 64
MAP_SIZE = 256
"""Output side of the mapping tests: one source pixel is about one output pixel, so an off-by-one mapping shows."""


# --- lesion marks through preprocessing ----------------------------------------------------------------------------


def _spot_image(
    shape: tuple[int, int], spot: tuple[float, float], radius: float, *, chest_wall_right: bool
) -> np.ndarray:
    """A textured half-ellipse breast against one side with a bright disc of ``radius`` at ``spot`` (row, col), in
    faint noise (air and film grain: what the breast segmentation crops away)."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    depth = shape[1] - 1 - cols if chest_wall_right else cols
    breast = ((rows - shape[0] / 2) / (0.42 * shape[0])) ** 2 + (depth / (0.8 * shape[1])) ** 2 <= 1.0
    disc = (rows - spot[0]) ** 2 + (cols - spot[1]) ** 2 <= radius**2
    return _textured(breast, disc & breast)


def _textured(breast: np.ndarray, disc: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.where(breast, 0.3 + rng.normal(0.0, 0.03, breast.shape), rng.uniform(0.0, 0.02, breast.shape))
    return np.clip(np.where(disc, 1.0, image), 0.0, 1.0).astype(np.float32)


def _bright_centroid(output: np.ndarray) -> tuple[float, float, float]:
    """Centre (row, col) and equivalent radius of the output's bright disc."""
    bright = output > 0.65
    rows, cols = np.nonzero(bright)
    return float(rows.mean()), float(cols.mean()), float(np.sqrt(bright.sum() / np.pi))


@pytest.mark.parametrize(
    ("shape", "spot", "laterality"),
    [
        ((300, 220), (120.0, 170.0), "R"),  # flipped, cropped, columns padded on the right (tall breast)
        ((160, 420), (70.0, 330.0), "R"),  # flipped, rows padded above and below (a wide breast)
        ((300, 220), (180.0, 40.0), "L"),  # not flipped
    ],
)
def test_a_mapped_point_lands_on_the_bright_spot_it_marks(
    shape: tuple[int, int], spot: tuple[float, float], laterality: str
) -> None:
    # Prepare: a bright disc of radius 12 at a known place
    image = _spot_image(shape, spot, 12.0, chest_wall_right=laterality == "R")
    # Execute
    output, geometry = preprocess_with_geometry(image, laterality, size=MAP_SIZE)
    mapped = geometry.map_point(*spot, 12.0)
    # Assert: the image was cropped; the mark sits where the disc came out, radius scaled alike
    assert geometry.box != (0, shape[0], 0, shape[1])
    assert mapped is not None
    row, col, radius = _bright_centroid(output)
    assert geometry.flipped == (laterality == "R")
    assert abs(mapped[0] - row) < 0.3 and abs(mapped[1] - col) < 0.3, (mapped, (row, col))
    assert radius == pytest.approx(mapped[2], rel=0.15)


def test_a_mapped_point_follows_resampling_to_a_pixel_spacing() -> None:
    # Prepare: non-square pixels (0.1 x 0.05 mm) resampled to 0.1 mm squares before the crop
    shape, spot = (300, 440), (120.0, 340.0)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    breast = ((rows - 150) / 126) ** 2 + ((shape[1] - 1 - cols) / 352) ** 2 <= 1.0
    disc = (rows - spot[0]) ** 2 + ((cols - spot[1]) / 2) ** 2 <= 12.0**2  # round in millimetres
    image = _textured(breast, disc & breast)
    # Execute
    output, geometry = preprocess_with_geometry(
        image, "R", size=MAP_SIZE, spacing_mm=(0.1, 0.05), target_spacing_mm=0.1
    )
    mapped = geometry.map_point(*spot, 12.0 * np.sqrt(2), source_shape=shape)
    # Assert: the file's shape is the one points are given in, not the resampled one
    assert geometry.resampled_shape == (300, 220) and geometry.box != (0, 300, 0, 220)
    assert mapped is not None
    row, col, radius = _bright_centroid(output)
    assert abs(mapped[0] - row) < 0.3 and abs(mapped[1] - col) < 0.3, (mapped, (row, col))
    assert radius == pytest.approx(mapped[2], rel=0.15)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize(
    ("shape", "spot", "laterality", "spacing"),
    [
        ((300, 220), (120.0, 170.0), "R", None),
        ((160, 420), (70.0, 330.0), "R", None),
        ((300, 220), (180.0, 40.0), "L", None),
        ((300, 440), (120.0, 340.0), "R", (0.1, 0.05)),
    ],
)
def test_a_mapped_point_is_the_centre_of_mass_of_a_blob_sent_through_the_same_steps(
    size: int,
    shape: tuple[int, int],
    spot: tuple[float, float],
    laterality: str,
    spacing: tuple[float, float] | None,
) -> None:
    """Linear resizing keeps a blob's centre of mass where the pixel-centre mapping says: exact to a hundredth."""
    # Prepare
    image = _spot_image(shape, spot, 12.0, chest_wall_right=laterality == "R")
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    blob = np.exp(-((rows - spot[0]) ** 2 + (cols - spot[1]) ** 2) / (2 * 8.0**2))
    # Execute
    _, geometry = preprocess_with_geometry(
        image, laterality, size=size, spacing_mm=spacing, target_spacing_mm=0.1 if spacing else 0.0
    )
    mapped = geometry.map_point(*spot, source_shape=shape)
    moved = geometry.apply(blob)
    # Assert
    assert mapped is not None
    out_rows, out_cols = np.mgrid[0:size, 0:size]
    centre = ((out_rows * moved).sum() / moved.sum(), (out_cols * moved).sum() / moved.sum())
    assert mapped[:2] == pytest.approx(centre, abs=0.01)


def test_a_point_outside_the_breast_crop_has_no_place() -> None:
    image = _spot_image((300, 220), (120.0, 170.0), 12.0, chest_wall_right=True)
    _, geometry = preprocess_with_geometry(image, "R", size=SIZE)
    assert geometry.map_point(5.0, 5.0) is None  # air in a corner, cropped away
    assert geometry.map_point(150.0, -3.0) is None  # outside the image


def _row(**lesion: object) -> ManifestRow:
    return ManifestRow(image_path=Path("x.dcm"), label=1, patient_id="p", row_number=2, **lesion)  # type: ignore[arg-type]


def test_a_lesion_is_the_centre_and_radius_else_the_circle_around_its_box() -> None:
    assert source_lesion(_row()) is None
    assert source_lesion(_row(lesion_row=10.0, lesion_col=20.0, lesion_radius_px=3.0)) == Lesion(10.0, 20.0, 3.0)
    assert source_lesion(_row(lesion_row=10.0, lesion_col=20.0)) == Lesion(10.0, 20.0, 0.0)
    assert source_lesion(_row(lesion_box=(10.0, 20.0, 16.0, 28.0))) == Lesion(24.0, 13.0, 5.0)


def test_the_geometry_round_trips_through_integers_and_refuses_nonsense() -> None:
    _, geometry = preprocess_with_geometry(_spot_image((300, 220), (120, 170), 12, chest_wall_right=True), "R", size=32)
    placed = ImageGeometry((300, 220), geometry)
    assert ImageGeometry.from_ints(placed.to_ints(), 32) == placed
    for bad in ([1, 2, 3], [300, 220, 300, 220, 2, 0, 10, 0, 10], [300, 220, 300, 220, 0, 10, 5, 0, 10]):
        with pytest.raises(ValueError, match="geometry"):
            ImageGeometry.from_ints(bad, 32)


# --- the site cache keeps each image's geometry --------------------------------------------------------------------


def _lesion_site(root: Path, *, outside: bool = False) -> Path:
    """Four patients (L and R) whose L image has a bright lesion marked in the file's pixels; one marked in the air."""
    from tests.test_dicom_io import write_mg

    rows = []
    for index in range(4):
        for side in ("L", "R"):
            name = f"images/p{index}_{side}.dcm"
            spot = (110.0 + 10 * index, 60.0 + 5 * index)
            pixels = _spot_image((240, 180), spot, 9.0, chest_wall_right=side == "R")
            (root / "images").mkdir(parents=True, exist_ok=True)
            write_mg(root / name, (pixels * 4000).astype(np.uint16), laterality=side)
            lesion = side == "L"
            if outside and index == 0 and lesion:
                spot = (3.0, 170.0)  # air: cropped away
            rows.append(
                {
                    "image_path": name,
                    "label": int(lesion),
                    "patient_id": f"p{index}",
                    "laterality": side,
                    "split": ("train", "train", "val", "test")[index],
                    "lesion_row": spot[0] if lesion else None,
                    "lesion_col": spot[1] if lesion else None,
                    "lesion_radius_px": 9.0 if lesion else None,
                }
            )
    return write_manifest(root / "manifest.csv", rows)


def _load(manifest: Path, size: int = SIZE):
    return load_site(manifest, image_size=size, cache_dir=None, val_fraction=0.0, test_fraction=0.25, seed=0)


def test_lesions_land_on_their_spots_and_come_back_from_the_cache_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare / Execute: a cold load decodes; a warm one must not open a single file
    manifest = _lesion_site(tmp_path)
    cold = _load(manifest)

    def no_decoding(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a cached image was decoded again")

    monkeypatch.setattr(ImagePipeline, "load_with_geometry", no_decoding)
    warm = _load(manifest)
    # Assert: train holds p0 and p1 (L with a lesion, R without); each mark sits on its bright spot
    assert warm.train.lesions == cold.train.lesions
    assert [lesion is not None for lesion in warm.train.lesions] == [True, False, True, False]
    for index, lesion in enumerate(warm.train.lesions):
        if lesion is not None:
            row, col, _ = _bright_centroid(warm.train.image(index))
            assert abs(lesion.row - row) < 0.5 and abs(lesion.col - col) < 0.5
    assert warm.test.lesions[0] is not None and warm.val.lesions[0] is not None


def test_the_index_holds_geometry_as_integers_and_no_path(tmp_path: Path) -> None:
    manifest = _lesion_site(tmp_path)
    _load(manifest)
    (index_file,) = (tmp_path / ".cache" / "preprocessed").glob("*.index.json")
    text = index_file.read_text()
    index = json.loads(text)
    assert index["format"] == INDEX_FORMAT == 2
    assert all(len(entry) == 3 and len(entry[2]) == 9 for entry in index["entries"].values())
    assert all(isinstance(v, int) for entry in index["entries"].values() for v in entry[2])
    assert "images" not in text and "p0" not in text and str(tmp_path) not in text


def test_an_index_of_the_previous_format_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a format-1 index (entries without geometry) as fedmammo wrote it before
    manifest = _lesion_site(tmp_path)
    _load(manifest)
    (index_file,) = (tmp_path / ".cache" / "preprocessed").glob("*.index.json")
    index = json.loads(index_file.read_text())
    index["format"] = 1
    index["entries"] = {key: entry[:2] for key, entry in index["entries"].items()}
    index_file.write_text(json.dumps(index))
    decoded: list[object] = []
    original = ImagePipeline.load_with_geometry

    def counting(self: ImagePipeline, *args: object, **kwargs: object):
        decoded.append(args[0])
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ImagePipeline, "load_with_geometry", counting)
    # Execute
    data = _load(manifest)
    # Assert: every image decoded again, lesions placed, and the index rewritten in the new format
    assert len(decoded) == 8 and data.train.num_lesions == 2
    assert json.loads(index_file.read_text())["format"] == INDEX_FORMAT


def test_a_lesion_outside_the_breast_crop_is_dropped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = _lesion_site(tmp_path, outside=True)
    with caplog.at_level(logging.WARNING, logger="common.data.site_data"):
        data = _load(manifest)
    assert [lesion is not None for lesion in data.train.lesions] == [False, False, True, False]
    assert "1 lesion mark(s) lie outside the breast crop" in caplog.text
    assert "line" not in caplog.text.split("outside the breast crop")[1].splitlines()[0]  # lines: own log only


def test_a_lesion_edited_in_the_manifest_is_placed_anew_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = _lesion_site(tmp_path)
    first = _load(manifest)
    monkeypatch.setattr(ImagePipeline, "load_with_geometry", None)  # any decoding would fail
    rows = read_manifest(manifest)
    edited = [
        {
            "image_path": str(row.image_path),
            "label": row.label,
            "patient_id": row.patient_id,
            "laterality": row.laterality,
            "split": row.split,
        }
        for row in rows
    ]
    write_manifest(manifest, edited)  # every lesion mark removed
    again = _load(manifest)
    assert first.train.num_lesions == 2 and again.train.num_lesions == 0
    assert not again.skipped  # every image came from the cache: a re-decode would have failed and been skipped
    assert [len(split) for split in (again.train, again.val, again.test)] == [
        len(split) for split in (first.train, first.val, first.test)
    ]


# --- the patch dataset ---------------------------------------------------------------------------------------------


def _tagged_images(count: int, *, tag_base: int = 100, size: int = SIZE) -> SiteImages:
    """Images whose breast (left 60 %) holds one value per image, so a patch tells which image it came from."""
    images, labels, lesions = [], [], []
    for index in range(count):
        image = np.zeros((size, size), dtype=np.float32)
        image[4 : size - 4, : int(0.6 * size)] = (tag_base + index) / 1000.0
        images.append(quantise(image))
        labels.append(1 if index % 2 == 0 else 0)
        lesions.append(Lesion(size / 2, size / 4, 4.0) if index % 2 == 0 else None)
    return SiteImages(images, labels, size, lesions)


def _patches(images: SiteImages, seed: int = 3, **options: object) -> LesionPatches:
    settings: dict[str, object] = {"patch_size": 16, "lesion_share": 0.5, "seed": seed, **options}
    return LesionPatches(images, **settings)  # type: ignore[arg-type]


def test_one_patch_per_image_with_the_image_label_or_normal() -> None:
    images = _tagged_images(40)
    patches = _patches(images)
    assert len(patches) == len(images) == 40
    labels = []
    for index in range(len(patches)):
        patch, label = patches[index]
        spot = patches.spot(index)
        assert patch.shape == (1, 16, 16) and patch.dtype == torch.float32 and label.dtype == torch.int64
        assert int(label) == spot.label
        if spot.lesion:
            assert images.lesions[index] is not None and spot.label == int(images.labels[index])
        else:
            assert spot.label == NORMAL_LABEL
        labels.append(int(label))
    assert patches.labels.tolist() == labels
    kinds = [patches.spot(i).lesion for i in range(40)]
    assert 5 <= sum(kinds) <= 15  # about half of the 20 lesion images, none of the 20 others
    assert not any(kinds[1::2])


def test_a_lesion_patch_holds_the_lesion_centre_and_a_normal_one_avoids_the_circle() -> None:
    images = _tagged_images(2)
    lesion = images.lesions[0]
    assert lesion is not None
    for seed in range(60):
        patches = _patches(images, seed=seed, lesion_share=0.5)
        spot = patches.spot(0)
        if spot.lesion:
            assert spot.top - 0.5 <= lesion.row < spot.top + 16 - 0.5
            assert spot.left - 0.5 <= lesion.col < spot.left + 16 - 0.5
            assert abs(spot.top + 7.5 - lesion.row) <= lesion.radius / 2 + 0.5  # jitter: up to half the radius
        else:
            gap_row = max(spot.top - 0.5 - lesion.row, lesion.row - (spot.top + 15.5), 0.0)
            gap_col = max(spot.left - 0.5 - lesion.col, lesion.col - (spot.left + 15.5), 0.0)
            assert np.hypot(gap_row, gap_col) > lesion.radius
            patch = patches[0][0]
            assert float((patch > 0).float().mean()) >= MIN_TISSUE_SHARE  # normal tissue, not air


def test_a_lesion_patch_at_the_border_is_clamped_inside_the_image() -> None:
    images = _tagged_images(1)
    images.lesions[0] = Lesion(1.0, 62.0, 6.0)
    for seed in range(20):
        spot = _patches(images, seed=seed, lesion_share=1.0).spot(0)
        assert spot.lesion and spot.top >= 0 and spot.left + 16 <= SIZE and spot.top <= 1 and spot.left + 15 >= 62


def test_an_image_whose_lesion_leaves_no_clear_window_gives_a_lesion_patch() -> None:
    images = _tagged_images(1)
    images.lesions[0] = Lesion(32.0, 32.0, 40.0)  # the circle covers every 16-pixel window
    patches = _patches(images, lesion_share=0.01)
    assert patches.spot(0).lesion and patches.labels.tolist() == [1]


def test_patches_come_only_from_their_own_image() -> None:
    images = _tagged_images(12)
    for seed in range(5):
        patches = _patches(images, seed=seed)
        for index in range(len(patches)):
            values = [v for v in np.unique(patches[index][0].numpy()).tolist() if v != 0.0]
            assert values == [pytest.approx((100 + index) / 1000.0, abs=1e-4)]


def test_patches_are_reproducible_under_a_seed_and_change_with_it() -> None:
    images = _tagged_images(16)
    first, again = _patches(images, seed=11), _patches(images, seed=11)
    reversed_items = [again[i] for i in reversed(range(16))][::-1]  # order of reading does not matter
    for index in range(16):
        torch.testing.assert_close(first[index][0], reversed_items[index][0])
        assert first.spot(index) == again.spot(index)
    spots = [first.spot(i) for i in range(16)]
    first.set_seed(12)
    assert [first.spot(i) for i in range(16)] != spots
    first.set_seed(11)
    assert [first.spot(i) for i in range(16)] == spots


@pytest.mark.parametrize(
    ("options", "message"),
    [({"patch_size": 64}, "smaller than the image side"), ({"lesion_share": 1.5}, r"in \[0, 1\]")],
)
def test_settings_that_cannot_work_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _patches(_tagged_images(2), **options)


def test_train_patches_come_from_train_images_and_patients_only(tmp_path: Path) -> None:
    # Prepare: a phantom site, split by patient
    from simulations.phantoms import generate_site

    manifest = generate_site(tmp_path / "site", site_index=0, num_images=24, seed=7, matrix_scale=0.1)
    data = load_site(manifest, image_size=32, cache_dir=None, val_fraction=0.15, test_fraction=0.25, seed=42)
    rows = read_manifest(manifest)
    held_out = [data.val.image(i) for i in range(len(data.val))] + [data.test.image(i) for i in range(len(data.test))]
    # Execute / Assert: every patch is a block of its own train image, and of no held-out image anywhere
    assert data.train.num_lesions > 0
    for seed in range(3):
        patches = LesionPatches(data.train, patch_size=16, lesion_share=0.5, seed=seed)
        assert len(patches) == len(data.train)
        for index in range(len(patches)):
            block = patches[index][0][0].numpy()
            spot = patches.spot(index)
            np.testing.assert_array_equal(
                block, data.train.image(index)[spot.top : spot.top + 16, spot.left : spot.left + 16]
            )
            for image in held_out:
                windows = np.lib.stride_tricks.sliding_window_view(image, (16, 16))
                assert not (windows == block).all(axis=(2, 3)).any()
    # The lesion marks the train split carries are exactly its own patients' rows' marks, never a held-out patient's
    splits = split_by_patient(rows, val_fraction=0.15, test_fraction=0.25, seed=42)
    train_patients = {row.patient_id for row in splits["train"]}
    assert not train_patients & {row.patient_id for name in ("val", "test") for row in splits[name]}
    assert [lesion is not None for lesion in data.train.lesions] == [
        source_lesion(row) is not None for row in splits["train"]
    ]
    assert data.val.num_lesions + data.test.num_lesions > 0  # held-out lesions exist, and stay out of training


# --- DP: the patch dataset is sampled and accounted like the whole images ----------------------------------------


def test_a_dp_round_on_patches_charges_the_whole_image_sample_rate() -> None:
    # Prepare: 40 images of 32 px, 16-pixel patches, DP-SGD (privacy.mode local)
    config = load_config(
        {
            "data.image_size": 32,
            "training.batch_size": 8,
            "training.local_epochs": 1,
            "training.patch_rounds": 1,
            "training.patch_size": 16,
            "privacy.mode": "local",
            "privacy.noise_multiplier": 1.0,
        }
    )
    images = _tagged_images(40, size=32)
    patches = LesionPatches(images, patch_size=16, lesion_share=0.5, seed=5)

    def round_on(dataset: torch.utils.data.Dataset) -> list[tuple[float, float, int]]:
        torch.manual_seed(0)
        model = build_model("small_cnn", num_classes=2, in_channels=1, norm="groupnorm")
        return train_local(model, dataset, training=config.training, privacy=config.privacy, seed=1).history

    # Execute
    on_patches, on_images = round_on(patches), round_on(images)
    # Assert: one accountant entry at the same noise and sample rate (1 image of 40 per expected batch of 8)
    expected_rate, steps = planned_sampling(len(images), config.training.batch_size)
    assert [(n, q) for n, q, _ in on_patches] == [(n, q) for n, q, _ in on_images] == [(1.0, expected_rate)]
    assert sum(s for *_, s in on_patches) == sum(s for *_, s in on_images) == steps


def test_an_abnormal_image_without_a_usable_mark_gives_its_whole_view_with_its_own_label() -> None:
    """Any window of an unmarked abnormal image may hold the lesion: it is never labelled as normal tissue."""
    size, p = 32, 8
    image = np.zeros((size, size), dtype=np.float32)
    image[:, :20] = 0.5
    image[10:14, 10:14] = 1.0
    images = SiteImages([quantise(image)] * 3, [1, 0, 1], size)
    patches = LesionPatches(images, [None, None, Lesion(12.0, 12.0, 2.0)], patch_size=p, lesion_share=0.0, seed=3)

    whole, label = patches[0]
    normal = patches.spot(1)
    marked = patches.spot(2)

    assert patches.spot(0).whole and int(label) == 1 and whole.shape == (1, p, p)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(dequantise(quantise(image)))[None, None], (p, p), mode="area"
    )
    assert torch.allclose(whole, expected[0], atol=1e-6)
    assert not normal.whole and normal.label == 0
    assert not marked.whole and marked.label == 0 and not marked.lesion  # lesion_share 0: normal tissue, labelled 0
    assert len(patches) == 3 and patches.labels.tolist() == [1, 0, 0]  # still one item per image


def test_a_point_mark_keeps_normal_patches_a_quarter_patch_away() -> None:
    size, p = 48, 16
    image = np.full((size, size), 0.5, dtype=np.float32)
    images = SiteImages([quantise(image)], [1], size)
    patches = LesionPatches(images, [Lesion(24.0, 24.0, 0.0)], patch_size=p, lesion_share=0.0, seed=0)
    for seed in range(20):
        patches.set_seed(seed)
        spot = patches.spot(0)
        nearest_row = min(max(24.0, spot.top - 0.5), spot.top + p - 0.5)
        nearest_col = min(max(24.0, spot.left - 0.5), spot.left + p - 0.5)
        assert math.hypot(nearest_row - 24.0, nearest_col - 24.0) > p / 4
