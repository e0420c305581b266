"""Localization: the pointing game, box IoU, Wilson CI, baselines, a site's counts per round, pooling, the report."""

from __future__ import annotations

import csv
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MetricRecord, RecordDict
from PIL import Image

from client.lesion_regions import marked_images
from client.localization import localization_counts, localizes
from client.site import resolve_site
from client.task import load_site_data
from common import wire
from common.config import AppConfig, load_config
from common.metrics.localization import (
    MIN_LESION_RADIUS_PX,
    LesionRegion,
    box_iou,
    breast_centre,
    brightest_point,
    chance_of_hit,
    score_image,
)
from common.metrics.localization_counts import LocalizationCounts, localization_figures, wilson_interval
from common.models import build_model
from server.localization_pooling import pool_localization_metrics
from server.report.localization_section import render_localization_section

# --- the pointing game: circle, box, mask -------------------------------------------------------------------------


def test_a_peak_inside_a_circle_hits_and_one_outside_misses() -> None:
    region = LesionRegion.from_circle((32, 32), row=10.0, col=12.0, radius=3.0)

    assert region.contains((10, 12)) and region.contains((13, 12)) and region.contains((12, 14))
    assert not region.contains((14, 12)) and not region.contains((10, 16)) and not region.contains((40, 40))


def test_a_point_mark_is_scored_with_the_minimum_radius() -> None:
    region = LesionRegion.from_circle((16, 16), row=5.0, col=5.0, radius=0.0)

    assert MIN_LESION_RADIUS_PX == 1.0
    assert region.contains((5, 5)) and region.contains((4, 5)) and region.contains((5, 6))  # the pixel, 4 neighbours
    assert not region.contains((4, 4)) and not region.contains((7, 5))
    assert region.box == (4.5, 4.5, 6.5, 6.5)


def test_a_box_and_a_mask_hit_only_their_own_pixels() -> None:
    box = np.zeros((20, 20), dtype=bool)
    box[4:8, 10:15] = True
    ring = np.zeros((20, 20), dtype=bool)
    ring[2:9, 2:9] = True
    ring[4:7, 4:7] = False  # a mask with a hole: its box holds the hole, its pixels do not

    boxed, masked = LesionRegion.from_mask(box), LesionRegion.from_mask(ring)

    assert boxed is not None and boxed.box == (4.0, 10.0, 8.0, 15.0)
    assert boxed.contains((4, 10)) and boxed.contains((7, 14)) and not boxed.contains((8, 14))
    assert masked is not None and masked.contains((2, 2)) and not masked.contains((5, 5))
    assert LesionRegion.from_mask(np.zeros((4, 4))) is None


def test_a_tiny_lesion_resized_onto_the_image_keeps_its_most_covered_pixels() -> None:
    coverage = np.zeros((8, 8))
    coverage[3, 4], coverage[3, 5] = 0.3, 0.2

    region = LesionRegion.from_coverage(coverage)

    assert region is not None and region.contains((3, 4)) and not region.contains((3, 5))
    assert LesionRegion.from_coverage(np.zeros((8, 8))) is None


# --- box IoU ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7),  # overlap 1, union 4 + 4 - 1
        ((0, 0, 4, 4), (0, 0, 4, 4), 1.0),
        ((0, 0, 2, 2), (2, 2, 4, 4), 0.0),  # touching edges share no area
        ((0, 0, 4, 2), (0, 0, 2, 2), 0.5),
        ((0, 0, 0, 5), (0, 0, 3, 3), 0.0),  # no area
    ],
)
def test_box_iou_hand_computed(first: tuple, second: tuple, expected: float) -> None:
    assert box_iou(first, second) == pytest.approx(expected)


def test_a_circle_is_compared_by_its_bounding_square() -> None:
    region = LesionRegion.from_circle((32, 32), row=5.0, col=5.0, radius=2.0)  # centre pixel 5 spans [5, 6)

    assert region.box == (3.5, 3.5, 7.5, 7.5)
    assert box_iou((4, 4, 8, 8), region.box) == pytest.approx(3.5 * 3.5 / (16 + 16 - 3.5 * 3.5))


# --- the confidence interval --------------------------------------------------------------------------------------


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(8, 10), (0, 12), (30, 30), (57, 200)])
def test_the_hit_rate_interval_is_wilsons(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)

    assert (low, high) == pytest.approx(_wilson_by_hand(k, n), abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_no_images_give_no_interval() -> None:
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert all(math.isnan(v) for v in LocalizationCounts().figures().values())


# --- baselines ----------------------------------------------------------------------------------------------------


def _synthetic_breast() -> np.ndarray:
    """A 32 x 32 image: a breast (value 0.3) on the left 16 columns, a bright 3 x 3 spot at rows 20-22, cols 4-6."""
    image = np.zeros((32, 32), dtype=np.float32)
    image[:, :16] = 0.3
    image[20:23, 4:7] = 0.9
    image[0, 15] = 1.0  # one hot pixel: noise the smoothing must not take for the brightest spot
    return image


def test_the_baselines_point_at_the_bright_spot_and_the_breast_centre() -> None:
    image = _synthetic_breast()

    assert brightest_point(image) == (21, 5)
    assert breast_centre(image) == (16, 8)  # centroid of rows 0-31, cols 0-15, rounded
    assert breast_centre(np.zeros((4, 4))) is None
    region = LesionRegion.from_mask(np.pad(np.ones((4, 4), bool), ((0, 28), (0, 28))))
    assert region is not None and chance_of_hit(region, image) == pytest.approx(16 / (32 * 16))


def test_an_image_is_scored_for_the_heatmap_and_every_baseline() -> None:
    image = _synthetic_breast()
    lesion = LesionRegion.from_circle(image.shape, row=21.0, col=5.0, radius=2.0)

    on_lesion = score_image(lesion, peak=(21, 6), suspicious_box=(19, 3, 24, 8), image=image)
    elsewhere = score_image(lesion, peak=(2, 2), suspicious_box=(0, 0, 4, 4), image=image)

    assert on_lesion.hit and on_lesion.bright_hit and not on_lesion.centre_hit
    assert on_lesion.iou == pytest.approx(box_iou((19, 3, 24, 8), (19.5, 3.5, 23.5, 7.5)))
    assert not elsewhere.hit and elsewhere.iou == 0.0 and elsewhere.bright_hit  # the baselines ignore the heatmap
    assert on_lesion.chance == pytest.approx(lesion.mask.sum() / (32 * 16))
    flat = score_image(lesion, peak=None, suspicious_box=None, image=image)  # `headline_region` of a flat map
    assert not flat.hit and flat.iou == 0.0 and flat.flat  # a map that is zero everywhere points nowhere
    assert flat.bright_hit and flat.chance == on_lesion.chance  # the baselines are scored all the same
    assert not on_lesion.flat and not elsewhere.flat


# --- counts and pooling -------------------------------------------------------------------------------------------


def test_two_sites_pool_by_summing_counts() -> None:
    first = LocalizationCounts(images=10, hits=6, iou_sum=2.5, iou10=7, iou30=3, bright_hits=4, centre_hits=1)
    second = LocalizationCounts(images=30, hits=6, iou_sum=4.5, iou10=9, iou30=2, bright_hits=12, chance_sum=1.2)
    replies = [{wire.NUM_EXAMPLES: 50, **first.to_flat()}, {wire.NUM_EXAMPLES: 80, **second.to_flat()}]

    pooled = pool_localization_metrics(replies)

    assert pooled[wire.LOC_IMAGES] == 40 and pooled[wire.LOC_HITS] == 12
    assert pooled["loc_hit_rate"] == pytest.approx(12 / 40)  # not the mean of 0.6 and 0.2
    assert (pooled["loc_hit_rate_ci_low"], pooled["loc_hit_rate_ci_high"]) == pytest.approx(_wilson_by_hand(12, 40))
    assert pooled["loc_mean_iou"] == pytest.approx(7.0 / 40)
    assert pooled["loc_iou10_share"] == pytest.approx(16 / 40) and pooled["loc_iou30_share"] == pytest.approx(5 / 40)
    assert pooled["loc_baseline_bright_rate"] == pytest.approx(16 / 40)
    assert pooled["loc_baseline_centre_rate"] == pytest.approx(1 / 40)
    assert pooled["loc_baseline_chance_rate"] == pytest.approx(1.2 / 40)
    assert pool_localization_metrics([{wire.NUM_EXAMPLES: 5}]) == {}  # not the final round: nothing pooled


def test_the_pooled_evaluate_row_carries_the_localization_figures() -> None:
    from server.pooling import pool_evaluate_metrics

    def reply(counts: LocalizationCounts, positives: list[int]) -> RecordDict:
        metrics = {wire.NUM_EXAMPLES: 4, wire.LOSS: 0.5, wire.SCORE_HIST_NEG: [0] * 20, **counts.to_flat()}
        return RecordDict({wire.METRICS_KEY: MetricRecord({**metrics, wire.SCORE_HIST_POS: positives})})

    bins = [0] * 19 + [2]
    pooled = pool_evaluate_metrics([reply(LocalizationCounts(images=2, hits=1), bins)] * 2, wire.NUM_EXAMPLES)

    assert pooled[wire.LOC_IMAGES] == 4 and pooled["loc_hit_rate"] == pytest.approx(0.5)


def test_unreadable_counts_are_left_out() -> None:
    assert LocalizationCounts.from_flat({}) is None
    with pytest.raises(ValueError, match="loc_hits"):
        LocalizationCounts.from_flat({wire.LOC_IMAGES: 3, wire.LOC_HITS: "three"})
    assert localization_figures({wire.LOC_IMAGES: 3, wire.LOC_HITS: "three"}) == {}


def test_the_report_section_shows_rates_beside_the_baselines_only_when_counts_exist() -> None:
    site = {wire.LOC_IMAGES: 20, wire.LOC_HITS: 5, wire.LOC_IOU_SUM: 2.0, wire.LOC_BASELINE_BRIGHT_HITS: 9}
    results = {"site-0": site, "pooled": dict(site)}

    html = render_localization_section(results, ["benign", "malignant"])

    assert "Where the model looked" in html and "malignant" in html
    assert "0.250 (" in html and "0.450" in html  # hit rate 5/20 with its CI, brightest-spot baseline 9/20
    assert render_localization_section({"site-0": {"auc": 0.7}}) == ""


# --- a site's counts through the ClientApp ------------------------------------------------------------------------


def _config(data_dir: Path, tmp_path: Path, **overrides: object) -> AppConfig:
    values = {
        "federation.data_dir": str(data_dir),
        "federation.num_sites": 2,
        "data.image_size": 32,
        "data.cache_dir": str(tmp_path / "cache"),
        "model.name": "small_cnn",
        "training.batch_size": 8,
        "privacy.mode": "none",
        "strategy.num_rounds": 2,
    }
    values.update(overrides)
    return load_config(values)


def test_localization_is_scored_only_in_the_final_round_and_only_when_enabled(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path)
    off = _config(tmp_path, tmp_path, **{"evaluation.localization": False})

    assert [localizes(config, r) for r in (0, 1, 2)] == [False, False, True]
    assert not localizes(off, 2)


@pytest.mark.usefixtures("flower_identity")
def test_the_evaluate_reply_carries_counts_only_in_the_final_round(tiny_federation: Path, tmp_path: Path) -> None:
    from tests.test_client_app import _context, _message

    config = _config(tiny_federation, tmp_path)
    disabled = _config(tiny_federation, tmp_path, **{"evaluation.localization": False})

    early = app_metrics(_message("evaluate", config, 1), _context(config))
    final = app_metrics(_message("evaluate", config, 2), _context(config))
    final_off = app_metrics(_message("evaluate", disabled, 2), _context(disabled))

    assert not set(wire.LOCALIZATION_KEYS) & set(early) and not set(wire.LOCALIZATION_KEYS) & set(final_off)
    assert set(wire.LOCALIZATION_KEYS) <= set(final)
    assert all(isinstance(final[key], (int, float)) for key in wire.LOCALIZATION_KEYS)
    data = load_site_data(resolve_site({"partition-id": 0}, config), config)
    pairs = zip(data.test.labels.tolist(), data.test.lesions, strict=True)
    marked = sum(label == 1 and lesion is not None for label, lesion in pairs)
    assert final[wire.LOC_IMAGES] == marked > 0 and final[wire.LOC_FAILED] == 0
    assert 0 <= final[wire.LOC_HITS] <= marked and 0.0 <= final[wire.LOC_IOU_SUM] <= marked


def app_metrics(message: object, context: object) -> MetricRecord:
    from client.client_app import app

    reply = app(message, context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply.content[wire.METRICS_KEY]


def test_the_site_cap_bounds_the_images_scored(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path)
    site = resolve_site({"partition-id": 0}, config)
    model = build_model("small_cnn", num_classes=2, in_channels=1, norm=config.model.norm)

    assert localization_counts(site, config, model, load_site_data(site, config), max_images=1).images == 1


# --- boxes and masks from the manifest, carried onto the model's input --------------------------------------------


def _with_boxes_and_masks(tiny_federation: Path, tmp_path: Path, *, masks_only: bool = False) -> Path:
    """Site 0 copied with each circle mark turned into a box (odd lines) or a PNG disk mask (even lines; every
    line with ``masks_only``)."""
    root = tmp_path / "marks"
    shutil.copytree(tiny_federation, root, ignore=shutil.ignore_patterns(".cache", "privacy_ledger.json*"))
    manifest = root / "site_0" / "manifest.csv"
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    for number, row in enumerate(rows):
        if not row["lesion_row"]:
            continue
        r, c, radius = float(row["lesion_row"]), float(row["lesion_col"]), float(row["lesion_radius_px"])
        if number % 2 and not masks_only:
            row.update(lesion_x0=c - radius, lesion_y0=r - radius, lesion_x1=c + radius, lesion_y1=r + radius)
        else:
            import pydicom

            shape = pydicom.dcmread(root / "site_0" / row["image_path"], stop_before_pixels=True)
            rows_, cols_ = int(shape.Rows), int(shape.Columns)
            yy, xx = np.ogrid[:rows_, :cols_]
            disk = ((yy - r) ** 2 + (xx - c) ** 2 <= radius**2).astype(np.uint8) * 255
            Image.fromarray(disk).save(root / "site_0" / f"mask_{number}.png")
            row["mask_path"] = f"mask_{number}.png"
        row.update(lesion_row="", lesion_col="", lesion_radius_px="")
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_boxes_and_masks_land_where_the_circles_they_replace_land(tiny_federation: Path, tmp_path: Path) -> None:
    circles_config = _config(tiny_federation, tmp_path / "a")
    marks_config = _config(_with_boxes_and_masks(tiny_federation, tmp_path), tmp_path / "b")
    circles_site, marks_site = (resolve_site({"partition-id": 0}, c) for c in (circles_config, marks_config))
    circles_test = load_site_data(circles_site, circles_config).test
    marks_test = load_site_data(marks_site, marks_config).test

    circles = marked_images(circles_site, circles_config, circles_test, 100)
    marks = marked_images(marks_site, marks_config, marks_test, 100)

    assert marks_test.num_lesions < circles_test.num_lesions  # masked images have no circle (a box gives one)
    assert [m.index for m in marks] == [c.index for c in circles] and marks
    for circle, mark in zip(circles, marks, strict=True):
        assert np.allclose(mark.region.box, circle.region.box, atol=1.5)
        assert (mark.region.mask & circle.region.mask).sum() >= 0.5 * circle.region.mask.sum()


def test_the_summary_gives_each_site_its_rates(tmp_path: Path) -> None:
    from server.summary import build_summary

    counts = LocalizationCounts(images=4, hits=3, iou_sum=1.0, bright_hits=1).to_flat()
    rows = [{"round": 2, "phase": "evaluate", "site": "site-0", "num_examples": 9, "auc": 0.7, **counts}]

    summary = build_summary(_config(tmp_path, tmp_path), rows, duration_s=1.0)

    entry = summary["sites"]["site-0"]
    assert entry["loc_hit_rate"] == pytest.approx(0.75) and entry["loc_mean_iou"] == pytest.approx(0.25)
    assert entry["loc_baseline_bright_rate"] == pytest.approx(0.25)


# --- the benchmark on a trained model's run folder ----------------------------------------------------------------


def test_the_benchmark_scores_a_run_folder_with_the_run_settings(tiny_federation: Path, tmp_path: Path) -> None:
    import torch
    import yaml

    from client.task import model_with
    from simulations.benchmarks.localization import score_federation

    config = _config(tiny_federation, tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_nested()), encoding="utf-8")
    weights = build_model("small_cnn", num_classes=2, in_channels=1, norm=config.model.norm).state_dict()
    torch.save(weights, run / "global_model.pt")

    counts = score_federation(run / "global_model.pt", tiny_federation)

    site = resolve_site({"partition-id": 0}, config)
    expected = localization_counts(site, config, model_with(config, weights), load_site_data(site, config))
    assert set(counts) == {"site-0", "site-1", "pooled"}
    assert counts["site-0"] == expected  # the federated evaluation's own function
    assert counts["pooled"].images == counts["site-0"].images + counts["site-1"].images > 0


def test_the_benchmark_loads_a_carded_model_as_predict_does_and_writes_json_without_nan(
    tiny_federation: Path, tmp_path: Path
) -> None:
    import json

    import torch

    from client.task import model_with
    from common.errors import ModelError
    from server.model_card import federation_card_fields, write_model_card
    from server.summary import build_summary
    from simulations.benchmarks.localization import main, score_federation

    # Prepare: weights saved from an Opacus wrapper (`_module.` keys) with their card, and no config.yaml
    config = _config(tiny_federation, tmp_path)
    weights = build_model("small_cnn", num_classes=2, in_channels=1, norm=config.model.norm).state_dict()
    run = tmp_path / "run"
    run.mkdir()
    torch.save({f"_module.{key}": value for key, value in weights.items()}, run / "global_model.pt")
    write_model_card(
        run / "global_model.pt", federation_card_fields(config, build_summary(config, [], duration_s=1.0), [])
    )

    counts = score_federation(run / "global_model.pt", tiny_federation)
    report = tmp_path / "out.json"
    assert main(["--model", str(run / "global_model.pt"), "--data", str(tiny_federation), "--split", "val",
                 "--json", str(report)]) == 0  # fmt: skip

    site = resolve_site({"partition-id": 0}, config)
    assert counts["site-0"] == localization_counts(
        site, config, model_with(config, weights), load_site_data(site, config)
    )
    text = report.read_text(encoding="utf-8")
    figures = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in the benchmark's JSON"))
    unscored = [site for site, entry in figures["sites"].items() if entry["loc_images"] == 0]
    assert unscored and all(figures["sites"][site]["loc_hit_rate"] is None for site in unscored)  # NaN -> null
    with (run / "global_model.pt").open("ab") as handle:
        handle.write(b"\0")  # the file is no longer the one its card describes
    with pytest.raises(ModelError, match="does not match its card"):
        score_federation(run / "global_model.pt", tiny_federation)


# --- one rule for where a map points, the data loaded once, failures kept to the site ----------------------------


def test_the_peak_is_read_inside_the_image_as_predict_reads_it(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import client.localization
    from common.data.geometry_inverse import content_box

    # Prepare: maps hottest in the square padding, half as hot on the lesion; then maps warm only in the padding
    config = _config(tiny_federation, tmp_path)
    site = resolve_site({"partition-id": 0}, config)
    data = load_site_data(site, config)
    marked = marked_images(site, config, data.test, 100)
    assert marked and data.test.geometries is not None
    boxes = [content_box(data.test.geometries[item.index]) for item in marked]
    assert all(box[3] < config.data.image_size for box in boxes)  # these phantoms are padded on the right
    by_image = {id_: (item, box) for id_, (item, box) in enumerate(zip(marked, boxes, strict=True))}

    def maps(padding_only: bool):
        def fake(model: object, tensor: object) -> np.ndarray:
            out = np.zeros((len(by_image), config.data.image_size, config.data.image_size), np.float32)
            for n, (item, box) in by_image.items():
                out[n, :, box[3] :] = 1.0  # the padding, where there is no image
                if not padding_only:
                    rows, cols = np.nonzero(item.region.mask)
                    out[n, rows[len(rows) // 2], cols[len(cols) // 2]] = 0.5
            return out

        return fake

    model = build_model("small_cnn", num_classes=2, in_channels=1, norm=config.model.norm)
    monkeypatch.setattr(client.localization, "_BATCH", len(marked))  # one batch: the fake maps are per marked image
    monkeypatch.setattr(client.localization, "class_activation_maps", maps(padding_only=False))
    on_lesion = localization_counts(site, config, model, data)
    monkeypatch.setattr(client.localization, "class_activation_maps", maps(padding_only=True))
    nowhere = localization_counts(site, config, model, data)

    assert on_lesion.images == len(marked) and on_lesion.hits == len(marked) and on_lesion.flat == 0
    assert nowhere.hits == 0 and nowhere.flat == len(marked) and nowhere.iou_sum == 0.0


def _no_pixels_dicom(path: Path) -> None:
    """A DICOM file without pixel data: reading it as a mask raises AttributeError, not OSError or ValueError."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = 4, 4
    ds.save_as(path, enforce_file_format=True)


def test_a_broken_mask_file_costs_its_image_only(
    tiny_federation: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from common.data import read_manifest
    from common.file_log import FILE_LOGGER

    # Prepare: every lesion a PNG mask; then one of a split's mask files becomes a DICOM without pixels
    root = _with_boxes_and_masks(tiny_federation, tmp_path, masks_only=True)
    config = _config(root, tmp_path / "cache")
    site = resolve_site({"partition-id": 0}, config)
    split = load_site_data(site, config).test
    good = marked_images(site, config, split, 100)
    rows = {row.row_number: row for row in read_manifest(site.manifest)}
    assert split.row_numbers is not None and len(good) >= 2
    assert all(rows[split.row_numbers[m.index]].mask_path is not None for m in good)
    line = split.row_numbers[good[0].index]
    _no_pixels_dicom(Path(str(rows[line].mask_path)))

    with caplog.at_level(logging.WARNING):
        broken = marked_images(site, config, split, 100)

    assert [m.index for m in broken] == [m.index for m in good[1:]]  # the good masks are still scored
    assert all(np.array_equal(b.region.mask, g.region.mask) for b, g in zip(broken, good[1:], strict=True))
    own = " ".join(r.getMessage() for r in caplog.records if r.name == FILE_LOGGER)
    shared = " ".join(r.getMessage() for r in caplog.records if r.name != FILE_LOGGER)
    assert "AttributeError" in own and f"line {line}:" in own and str(root) in own
    assert "1 lesion box(es) or mask(s)" in shared and str(root) not in shared


def test_a_failure_names_no_file_in_the_shared_log(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import client.localization
    from common.file_log import FILE_LOGGER

    config = _config(tiny_federation, tmp_path)
    site = resolve_site({"partition-id": 0}, config)
    secret = str(tiny_federation / "site_0" / "manifest.csv")

    def broken(*args: object, **kwargs: object) -> list:
        raise FileNotFoundError(f"no such file: {secret}")

    monkeypatch.setattr(client.localization, "marked_images", broken)
    model = build_model("small_cnn", num_classes=2, in_channels=1, norm=config.model.norm)
    with caplog.at_level(logging.INFO):
        entries = client.localization.localization_on_site(site, config, model, load_site_data(site, config))

    assert entries[wire.LOC_FAILED] == 1 and entries[wire.LOC_IMAGES] == 0
    shared = [r for r in caplog.records if r.name == "client.localization"]
    own = [r for r in caplog.records if r.name == FILE_LOGGER]
    assert shared and all(secret not in r.getMessage() and r.exc_info is None for r in shared)
    assert any("site-0" in r.getMessage() and "FileNotFoundError" in r.getMessage() for r in shared)
    assert own and own[-1].exc_info is not None and secret in str(own[-1].exc_info[1])


@pytest.mark.usefixtures("flower_identity")
def test_a_final_round_evaluation_loads_the_site_once(
    tiny_federation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import client.task
    import common.data.site_data
    from tests.test_client_app import _context, _message

    root = _with_boxes_and_masks(tiny_federation, tmp_path)  # masks and boxes: their geometries are needed too
    config = _config(root, tmp_path)
    loads: list[str] = []
    preprocessed: list[int] = []
    load_site, preprocess = client.task.load_site, common.data.site_data.preprocess_site_with_geometry
    monkeypatch.setattr(client.task, "load_site", lambda *a, **k: loads.append("site") or load_site(*a, **k))
    monkeypatch.setattr(
        common.data.site_data,
        "preprocess_site_with_geometry",
        lambda *a, **k: preprocessed.append(len(a[1])) or preprocess(*a, **k),
    )

    final = app_metrics(_message("evaluate", config, 2), _context(config))

    assert loads == ["site"] and len(preprocessed) == 1  # scores, counts and localization from one load
    assert final[wire.LOC_IMAGES] > 0 and final[wire.LOC_FAILED] == 0
    assert final[wire.data_count_key("test", wire.DATA_IMAGES)] == final[wire.NUM_EXAMPLES]


def test_the_pooled_node_sums_its_member_sites_counts(tiny_federation: Path, tmp_path: Path) -> None:
    config = _config(tiny_federation, tmp_path, **{"study.enabled": True, "output.run_dir": str(tmp_path / "run")})
    pooled = resolve_site({"partition-id": 2}, config)
    members = [resolve_site({"partition-id": i}, config) for i in range(2)]
    model = build_model("small_cnn", num_classes=2, in_channels=1, norm=config.model.norm)
    data = load_site_data(pooled, config)

    counts = localization_counts(pooled, config, model, data)

    assert pooled.pooled and [part.test.labels.tolist() for part in data.parts] == [
        load_site_data(member, config).test.labels.tolist() for member in members
    ]
    expected = LocalizationCounts.pooled(
        localization_counts(member, config, model, load_site_data(member, config)) for member in members
    )
    assert counts == expected and counts.images > 0
    assert data.test.geometries is not None and len(data.test.geometries) == len(data.test)  # kept when pooled


def test_the_site_keeps_each_images_geometry(tiny_federation: Path, tmp_path: Path) -> None:
    from common.data import ImagePipeline, SiteImages, cache_root, preprocess_site_with_geometry, read_manifest

    config = _config(tiny_federation, tmp_path)
    site = resolve_site({"partition-id": 0}, config)
    data = load_site_data(site, config)
    _, geometries, _ = preprocess_site_with_geometry(
        site.manifest,
        read_manifest(site.manifest),
        ImagePipeline.from_config(config.data),
        cache_root(site.manifest, site.cache_dir),
        progress=False,
    )

    for split in (data.train, data.val, data.test):
        assert split.row_numbers is not None and split.geometries is not None
        assert split.geometries == [geometries[line] for line in split.row_numbers]
    with pytest.raises(ValueError, match="2 images but 1 image geometries"):
        SiteImages([np.zeros((4, 4), np.uint16)] * 2, [0, 1], 4, geometries=data.test.geometries[:1])
    empty, unknown = SiteImages([], [], data.test.size, geometries=[]), SiteImages([], [], data.test.size)
    assert SiteImages.concatenated([data.test, empty]).geometries == data.test.geometries
    assert SiteImages.concatenated([data.test, unknown]).geometries is None  # not every image's place is known
