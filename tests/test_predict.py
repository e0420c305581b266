"""`fedmammo predict`: scores, the heatmap's box on the original image, outputs, skipped files, the card's checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalMammographyXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from torch import nn

from client.predict.card_summary import card_lines
from client.predict.overlay import display_shape, render_overlay
from common.config import AppConfig
from common.data.image_pipeline import ImageGeometry
from common.data.preprocessing import PREPROCESS_VERSION, PreprocessGeometry
from common.models import build_model, card_path, write_card
from simulations.cli import main
from tests.cam_models import bright_detector

ROWS, COLS = 240, 180
SPOT = (150, 50)
"""The bright spot of the left-breast test images (row, column), well inside the breast."""


def _card_fields(**data: object) -> dict[str, object]:
    """A card as the server writes it (`server.model_card`), for a 64-pixel small_cnn."""
    return {
        "kind": "federated-global-model",
        "model": {"name": "small_cnn", "norm": "groupnorm", "num_classes": 2, "class_names": ["normal", "malignant"]},
        "data": {
            "image_size": 64,
            "preprocess_version": PREPROCESS_VERSION,
            "pixel_spacing_mm": 0.0,
            "presentation_intent": "any",
            **data,
        },
        "config": AppConfig().to_nested(),
        "intended_use": "Research software for studying federated learning. It is not a medical device.",
        "training": {"strategy": "fedavg", "rounds_planned": 5, "final_round": 5, "trained": True},
        "sites": {"hospital_a": {"images": {"train": 120}, "epsilon": 3.5}, "hospital_b": {"images": {"train": 80}}},
        "privacy": {"mode": "local", "delta": 1e-5, "epsilon_per_site": {"hospital_a": 3.5, "hospital_b": 4.25}},
        "pooled": {"metrics": {"auc": 0.812, "auc_ci_low": 0.75, "auc_ci_high": 0.87}},
    }


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model" / "global_model.pt"
    path.parent.mkdir()
    torch.save(bright_detector().state_dict(), path)
    write_card(path, _card_fields())
    return path


def _breast(laterality: str, spot: tuple[int, int]) -> np.ndarray:
    """A half-ellipse of tissue (0.4) against the chest wall (left for L, right for R), a bright spot (1.0)."""
    rr, cc = np.mgrid[0:ROWS, 0:COLS]
    from_wall = cc if laterality == "L" else COLS - 1 - cc
    image = np.where((from_wall / (0.6 * COLS)) ** 2 + ((rr - ROWS / 2) / (0.4 * ROWS)) ** 2 <= 1, 0.4, 0.0)
    image[(rr - spot[0]) ** 2 + (cc - spot[1]) ** 2 <= 16] = 1.0
    return image.astype(np.float32)


def _mirrored(spot: tuple[int, int], laterality: str) -> tuple[int, int]:
    return spot if laterality == "L" else (spot[0], COLS - 1 - spot[1])


def _write_dicom(path: Path, image: np.ndarray, *, laterality: str, photometric: str = "MONOCHROME2") -> Dataset:
    """A 12-bit Digital Mammography file of ``image`` ([0, 1], bright = dense) in either photometric sense."""
    stored = np.round(image * 4095).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = 4095 - stored  # MONOCHROME1: high values are dark
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalMammographyXRayImageStorageForPresentation, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "MG", "TEST-1", "TEST^ONE"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20240101", "120000", "", "1"
    ds.ImageLaterality, ds.ViewPosition = laterality, "CC"
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelSpacing = [0.1, 0.1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def _predictions(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text(encoding="utf-8"))


def _assert_on_spot(record: dict, spot: tuple[int, int]) -> None:
    box, peak = record["box"], record["peak"]
    assert box["row0"] <= spot[0] < box["row1"] and box["col0"] <= spot[1] < box["col1"]
    row_px, col_px = record["heatmap"]["source_px_per_model_px"]
    assert abs(peak["row"] - spot[0]) <= 2 * row_px and abs(peak["col"] - spot[1]) <= 2 * col_px


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_predict_on_dicom_puts_box_and_peak_on_the_bright_spot_of_the_original_image(
    tmp_path: Path, model_file: Path, photometric: str, laterality: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a right breast is mirrored (chest wall on the image's right), so preprocessing flips it
    spot = _mirrored(SPOT, laterality)
    source = _write_dicom(
        tmp_path / "img.dcm", _breast(laterality, spot), laterality=laterality, photometric=photometric
    )
    out = tmp_path / "out"
    # Execute
    status = main(["predict", str(model_file), str(tmp_path / "img.dcm"), "--out", str(out)])
    # Assert
    assert status == 0
    record = _predictions(out)["images"][0]
    assert record["status"] == "ok" and record["photometric"] == photometric and record["laterality"] == laterality
    assert record["study_id"] == record["study_uid"] == source.StudyInstanceUID
    assert (record["series_uid"], record["sop_uid"], record["view"]) == (
        source.SeriesInstanceUID,
        source.SOPInstanceUID,
        "CC",
    )
    assert record["heatmap"]["source_shape"] == [ROWS, COLS]
    assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert record["headline"] == {"class": "malignant", "score": record["probabilities"]["malignant"]}
    _assert_on_spot(record, spot)
    assert Image.open(out / record["outputs"]["overlay"]).size == (COLS, ROWS)
    assert record["outputs"]["dicom"] == ["img.sc.dcm", "img.gsps.dcm"]
    assert pydicom.dcmread(out / "img.sc.dcm").StudyInstanceUID == source.StudyInstanceUID
    assert "pooled AUC" in capsys.readouterr().out


def test_predict_on_a_png_finds_the_spot_and_writes_no_dicom(tmp_path: Path, model_file: Path) -> None:
    # Prepare: a right breast as an 8-bit PNG (no header: its side is detected from the image)
    spot = _mirrored(SPOT, "R")
    Image.fromarray(np.round(_breast("R", spot) * 255).astype(np.uint8)).save(tmp_path / "right.png")
    # Execute
    status = main(["predict", str(model_file), str(tmp_path / "right.png"), "--out", str(tmp_path / "out")])
    # Assert
    record = _predictions(tmp_path / "out")["images"][0]
    assert status == 0 and record["status"] == "ok"
    assert record["laterality"] is None and record["laterality_detected"] == "R" and record["study_id"] is None
    _assert_on_spot(record, spot)
    assert record["outputs"] == {"overlay": "right.overlay.png", "dicom": []}


def test_a_corrupt_and_a_colour_file_are_skipped_with_their_reasons_and_the_others_are_scored(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a good DICOM between a truncated one and an RGB one
    good = tmp_path / "good.dcm"
    _write_dicom(good, _breast("L", SPOT), laterality="L")
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(good.read_bytes()[:2000])
    colour = tmp_path / "colour.dcm"
    ds = _write_dicom(colour, _breast("L", SPOT), laterality="L")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.zeros((ROWS, COLS, 3), dtype=np.uint8).tobytes()
    ds.save_as(colour, enforce_file_format=True)
    out = tmp_path / "out"
    # Execute
    status = main(["predict", str(model_file), str(corrupt), str(good), str(colour), "--out", str(out), "--no-dicom"])
    # Assert
    records = _predictions(out)["images"]
    assert status == 0
    assert [r["status"] for r in records] == ["failed", "ok", "failed"]
    assert records[0]["error"].startswith("DicomError: ") and "corrupt.dcm" in records[0]["error"]
    assert "Samples per Pixel is 3; a mammogram must be grayscale" in records[2]["error"]
    assert records[1]["outputs"]["dicom"] == []
    text = capsys.readouterr().out
    assert "skipped corrupt.dcm" in text and "1 of 3 image(s) scored, 2 skipped" in text


def test_the_exit_status_is_non_zero_only_when_every_image_failed(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"not an image")
    status = main(
        [
            "predict",
            str(model_file),
            str(tmp_path / "a.png"),
            str(tmp_path / "missing.dcm"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert status == 1
    assert [r["status"] for r in _predictions(tmp_path / "out")["images"]] == ["failed", "failed"]


def test_a_model_whose_hash_differs_from_its_card_is_refused_unless_allowed(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: other weights saved over the file after its card was written
    recorded = json.loads(card_path(model_file).read_text())["weights"]["sha256"]
    torch.save(build_model("small_cnn", norm="groupnorm").state_dict(), model_file)
    Image.fromarray(np.round(_breast("L", SPOT) * 255).astype(np.uint8)).save(tmp_path / "left.png")
    args = ["predict", str(model_file), str(tmp_path / "left.png"), "--out", str(tmp_path / "out")]
    # Execute / Assert: refused, naming both files and both hashes
    assert main(args) == 1
    refusal = " ".join(capsys.readouterr().out.split())
    assert f"does not match its card '{card_path(model_file)}'" in refusal and str(model_file) in refusal
    assert f"the card records {recorded}" in refusal and "--allow-hash-mismatch" in refusal
    assert not (tmp_path / "out").exists()
    # Execute / Assert: allowed, with a loud warning and the record of it
    assert main([*args, "--allow-hash-mismatch"]) == 0
    assert "WARNING: this model file is not the one its card describes" in " ".join(capsys.readouterr().out.split())
    assert _predictions(tmp_path / "out")["model"]["hash_matches_card"] is False


def test_a_model_without_a_card_is_refused_with_what_a_card_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "global_model.pt"
    torch.save(bright_detector().state_dict(), path)
    assert main(["predict", str(path), str(path), "--out", str(tmp_path / "out")]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert (
        f"has no card: '{path}.json' is missing" in text
        and "A card is the JSON file fedmammo writes beside every model" in text
    )


def test_a_card_from_another_preprocessing_version_is_refused(tmp_path: Path) -> None:
    from client.predict.model_file import load_predict_model
    from common.errors import ModelError

    path = tmp_path / "global_model.pt"
    torch.save(bright_detector().state_dict(), path)
    write_card(path, _card_fields(preprocess_version="preprocess-v1"))
    with pytest.raises(ModelError, match="trained on images preprocessed by 'preprocess-v1'; this fedmammo"):
        load_predict_model(path)


def test_weights_saved_from_an_opacus_wrapper_load(tmp_path: Path) -> None:
    from client.predict.model_file import load_predict_model

    path = tmp_path / "global_model.pt"
    state = bright_detector().state_dict()
    torch.save({f"_module.{key}": value for key, value in state.items()}, path)
    write_card(path, _card_fields())
    loaded = load_predict_model(path)
    assert not loaded.model.training and loaded.class_names == ("normal", "malignant")
    assert torch.equal(loaded.model.state_dict()["fc.weight"], state["fc.weight"])


def test_the_overlay_of_a_large_image_is_at_most_2048_pixels_long_keeping_the_aspect() -> None:
    geometry = ImageGeometry((4096, 3072), PreprocessGeometry((4096, 3072), False, (100, 4000, 0, 2500), 64))
    rgb = render_overlay(
        np.zeros((4096, 3072), np.float32),
        np.ones((64, 64), np.float32),
        geometry,
        (1000, 500, 1200, 800),
        (1100, 650),
        "malignant score 0.50",
    )
    assert rgb.shape == (2048, 1536, 3) and rgb.dtype == np.uint8
    assert display_shape((300, 200)) == (300, 200)
    assert rgb[10, 1500].sum() == 0 and rgb[2040, 100].sum() == 0  # outside the crop: no heat on black
    assert rgb[1000, 200, 0] > 40 and rgb[1000, 200, 1:].max() == 0  # in the crop: the hot end of the map (red)


def test_the_card_lines_show_architecture_sites_privacy_auc_and_intended_use() -> None:
    lines = dict(card_lines(_card_fields(), sha256="abc", hash_matches=False))
    assert lines["model"] == "small_cnn (groupnorm), classes normal, malignant"
    assert lines["sites"] == "2: hospital_a (120 training images), hospital_b (80 training images)"
    assert lines["privacy"] == "local DP, δ=1e-05: hospital_a ε=3.50, hospital_b ε=4.25"
    assert lines["pooled AUC"] == "0.812 (95% CI 0.750-0.870)"
    assert lines["training"] == "fedavg, 5 of 5 round(s)"
    assert "not a medical device" in lines["intended use"] and lines["weights"].startswith("MISMATCH")
    bare = dict(card_lines({"model": {"name": "resnet18"}}))
    assert "research software, not a medical device" in bare["intended use"] and bare["sites"] == "not recorded"


@pytest.mark.parametrize(("name", "norm"), [("resnet18", "frozen_bn"), ("densenet121", "groupnorm")])
def test_predict_runs_for_other_architectures_and_dp_norms(tmp_path: Path, name: str, norm: str) -> None:
    # Prepare: a random model of another architecture (frozen BatchNorm: what DP training keeps) and its card
    from client.predict.model_file import load_predict_model
    from client.predict.run import predict_files

    path = tmp_path / "global_model.pt"
    torch.save(build_model(name, norm=norm).state_dict(), path)
    fields = _card_fields()
    fields["model"] = {**fields["model"], "name": name, "norm": norm}  # type: ignore[dict-item]
    write_card(path, fields)
    Image.fromarray(np.round(_breast("L", SPOT) * 255).astype(np.uint8)).save(tmp_path / "left.png")
    # Execute
    run = predict_files(load_predict_model(path), [tmp_path / "left.png"], tmp_path / "out")
    # Assert
    record = run.records[0]
    assert record["status"] == "ok" and 0.0 <= record["headline"]["score"] <= 1.0
    assert record["heatmap"]["note"].startswith("Grad-CAM of the 'malignant'")
    if record["heatmap"]["flat"]:  # a random model may see no evidence for the class anywhere: then no box at all
        assert record["box"] is None and record["peak"] is None
    else:
        assert 0 <= record["box"]["row0"] < record["box"]["row1"] <= ROWS and 0 <= record["peak"]["col"] < COLS


def test_a_model_trained_on_resampled_images_still_puts_the_box_on_the_spot(tmp_path: Path) -> None:
    # Prepare: the card says images were resampled to 0.25 mm pixels; the file has 0.1 mm ones (a right breast)
    from client.predict.model_file import load_predict_model
    from client.predict.run import predict_files

    path = tmp_path / "global_model.pt"
    torch.save(bright_detector().state_dict(), path)
    write_card(path, _card_fields(pixel_spacing_mm=0.25))
    spot = _mirrored(SPOT, "R")
    _write_dicom(tmp_path / "right.dcm", _breast("R", spot), laterality="R")
    # Execute
    record = predict_files(load_predict_model(path), [tmp_path / "right.dcm"], tmp_path / "out", dicom=False).records[0]
    # Assert: one model pixel spans more source pixels than without resampling, and the spot is still found
    assert record["status"] == "ok" and record["heatmap"]["source_shape"] == [ROWS, COLS]
    _assert_on_spot(record, spot)


def test_the_four_views_of_one_exam_get_a_score_per_breast_and_one_per_exam(
    tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: one study, four views (the right breast's with a bright spot)
    study = generate_uid()
    paths = []
    for side in ("L", "R"):
        for view in ("CC", "MLO"):
            image = _breast(side, _mirrored(SPOT, side))
            path = tmp_path / f"{side}_{view}.dcm"
            ds = _write_dicom(path, image, laterality=side)
            ds.StudyInstanceUID, ds.ViewPosition = study, view
            ds.save_as(path, enforce_file_format=True)
            paths.append(str(path))
    out = tmp_path / "out"
    # Execute
    status = main(["predict", str(model_file), *paths, "--out", str(out), "--no-dicom"])
    # Assert: two breasts of two views each, the exam as its most suspicious breast (rule max)
    predictions = _predictions(out)
    assert status == 0 and predictions["exam_rule"]["name"] == "max"
    breasts = {b["laterality"]: b for b in predictions["breasts"]}
    assert sorted(breasts) == ["L", "R"]
    assert breasts["R"]["images"] == ["R_CC.dcm", "R_MLO.dcm"] and breasts["R"]["views"] == ["CC", "MLO"]
    scores = {r["file"]: r["headline"]["score"] for r in predictions["images"]}
    assert breasts["R"]["score"] == pytest.approx(max(scores["R_CC.dcm"], scores["R_MLO.dcm"]), abs=1e-6)
    assert breasts["L"]["score"] == pytest.approx(max(scores["L_CC.dcm"], scores["L_MLO.dcm"]), abs=1e-6)
    (exam,) = predictions["exams"]
    assert exam["study_id"] == study and exam["num_images"] == 4
    assert exam["score"] == pytest.approx(max(scores.values()), abs=1e-6)
    assert "per breast and exam" in capsys.readouterr().out


def test_the_learned_exam_rule_falls_back_to_max_in_predict_and_says_why(tmp_path: Path) -> None:
    # Prepare: a card whose run combined views by the learned rule (fitted on a validation split predict lacks)
    path = tmp_path / "global_model.pt"
    torch.save(bright_detector().state_dict(), path)
    fields = _card_fields()
    fields["config"]["evaluation"]["exam_rule"] = "learned"  # type: ignore[index]
    write_card(path, fields)
    image = tmp_path / "one.dcm"
    _write_dicom(image, _breast("L", SPOT), laterality="L")
    # Execute
    status = main(["predict", str(path), str(image), "--out", str(tmp_path / "out"), "--no-dicom"])
    # Assert
    rule = _predictions(tmp_path / "out")["exam_rule"]
    assert status == 0 and rule["name"] == "max" and rule["requested"] == "learned"
    assert "validation split" in rule["note"]


def _model_file(tmp_path: Path, model: nn.Module, **card: object) -> Path:
    """``model`` saved with a card as the server writes it; ``card`` replaces top-level sections of it."""
    path = tmp_path / "model" / "global_model.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    write_card(path, {**_card_fields(), **card})
    return path


def _dark_detector() -> nn.Module:
    """The bright detector with its classes swapped: brightness argues against malignant, so its Grad-CAM is zero."""
    model = bright_detector()
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)
    return model


def test_a_flat_heatmap_gives_no_box_no_peak_and_says_so_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a model for which every bright pixel argues against malignant (Grad-CAM's ReLU zeroes its map)
    path = _model_file(tmp_path, _dark_detector())
    image = _breast("L", SPOT)
    _write_dicom(tmp_path / "img.dcm", image, laterality="L")
    out = tmp_path / "out"
    # Execute
    status = main(["predict", str(path), str(tmp_path / "img.dcm"), "--out", str(out)])
    # Assert: the record says flat, with no box or peak (not a box around the whole breast)
    record = _predictions(out)["images"][0]
    assert status == 0 and record["status"] == "ok"
    assert record["box"] is None and record["peak"] is None and record["heatmap"]["flat"] is True
    assert "no box or peak is given" in record["heatmap"]["note"]
    assert "no evidence for malignant found" in " ".join(capsys.readouterr().out.split())
    # the overlay is the plain grey image under the caption: no heat, no box, no cross
    rgb = np.asarray(Image.open(out / record["outputs"]["overlay"]))
    grey = np.round(image * 255).astype(np.uint8)
    below_caption = slice(ROWS // 4, ROWS)
    for channel in range(3):
        assert np.array_equal(rgb[below_caption, :, channel], grey[below_caption])
    # the PACS gets the overlay and a presentation state with the score and the note, no outline
    assert record["outputs"]["dicom"] == ["img.sc.dcm", "img.gsps.dcm"]
    annotation = pydicom.dcmread(out / "img.gsps.dcm").GraphicAnnotationSequence[0]
    assert "GraphicObjectSequence" not in annotation
    assert "no evidence for malignant found" in annotation.TextObjectSequence[0].UnformattedTextValue


def test_a_heatmap_with_evidence_still_gets_its_box_and_a_non_flat_record(tmp_path: Path, model_file: Path) -> None:
    Image.fromarray(np.round(_breast("L", SPOT) * 255).astype(np.uint8)).save(tmp_path / "left.png")
    main(["predict", str(model_file), str(tmp_path / "left.png"), "--out", str(tmp_path / "out")])
    record = _predictions(tmp_path / "out")["images"][0]
    assert record["heatmap"]["flat"] is False and "no box or peak" not in record["heatmap"]["note"]
    _assert_on_spot(record, SPOT)


def test_a_model_with_nan_weights_fails_each_image_and_the_json_holds_no_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a diverged run's weights
    model = bright_detector()
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    path = _model_file(tmp_path, model)
    _write_dicom(tmp_path / "img.dcm", _breast("L", SPOT), laterality="L")
    out = tmp_path / "out"
    # Execute
    status = main(["predict", str(path), str(tmp_path / "img.dcm"), "--out", str(out)])
    # Assert: a failed record naming the reason; breasts and exams hold no NaN score (the JSON was written strictly)
    predictions = _predictions(out)
    (record,) = predictions["images"]
    assert status == 1 and record["status"] == "failed"
    assert record["error"].startswith("ModelError: ") and "non-finite scores" in record["error"]
    assert str(path) in record["error"] and predictions["breasts"] == [] and predictions["exams"] == []
    assert not list(out.glob("*.dcm")) and "skipped img.dcm" in capsys.readouterr().out


def test_a_fedbn_model_is_announced_in_red_in_the_json_and_in_the_card_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a card of a FedBN run (as server.model_card writes it) with its limitations
    from client.predict.card_summary import FEDBN_WARNING

    training = {
        "strategy": "fedavg",
        "rounds_planned": 5,
        "final_round": 5,
        "personalization": {"fedbn": True, "fine_tune_epochs": 0, "note": "FedBN: ..."},
    }
    limits = [f"limit number {n}." for n in range(1, 6)]
    path = _model_file(tmp_path, bright_detector(), training=training, limitations=limits)
    Image.fromarray(np.round(_breast("L", SPOT) * 255).astype(np.uint8)).save(tmp_path / "left.png")
    # Execute
    status = main(["predict", str(path), str(tmp_path / "left.png"), "--out", str(tmp_path / "out")])
    # Assert
    text = " ".join(capsys.readouterr().out.split())
    assert status == 0 and "WARNING: this model was trained with FedBN" in text
    assert _predictions(tmp_path / "out")["model"]["warnings"] == [FEDBN_WARNING]
    lines = dict(card_lines(json.loads(card_path(path).read_text())))
    assert lines["personalization"].startswith("FedBN: this model was trained with FedBN")
    assert lines["limitations"] == "- limit number 1.\n- limit number 2.\n- limit number 3.\n(and 2 more in the card)"
    plain = dict(card_lines(_card_fields()))
    assert "personalization" not in plain and plain["limitations"] == "not recorded"


def test_the_model_input_is_training_s_bit_for_bit_after_the_cache_s_uint16_round_trip(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: record what the model is given
    import client.predict.one_image as one_image
    from client.predict.model_file import load_predict_model
    from common.data.image_cache import dequantise, quantise

    seen: list[np.ndarray] = []
    original = one_image.scores_and_maps

    def recording(model: nn.Module, images: torch.Tensor, target_class: int | None = None) -> tuple:
        seen.append(images.detach().cpu().numpy()[0, 0].copy())
        return original(model, images, target_class=target_class)

    monkeypatch.setattr(one_image, "scores_and_maps", recording)
    image = tmp_path / "right.dcm"
    _write_dicom(image, _breast("R", _mirrored(SPOT, "R")), laterality="R")
    model = load_predict_model(model_file)
    # Execute
    prediction = one_image.predict_image(model, image)
    # Assert: what training's cache serves, and the split pipeline is the whole one
    training_input = dequantise(quantise(model.pipeline.load(image)))
    assert np.array_equal(seen[0], training_input) and seen[0].dtype == np.float32
    split, geometry = model.pipeline.preprocess(model.pipeline.read(image), name=image)
    whole, whole_geometry = model.pipeline.load_with_geometry(image)
    assert np.array_equal(split, whole) and geometry == whole_geometry == prediction.geometry


def test_a_card_whose_preprocessing_settings_differ_is_refused_naming_the_keys(tmp_path: Path) -> None:
    from client.predict.model_file import load_predict_model
    from common.data.image_pipeline import ImagePipeline
    from common.errors import ModelError

    settings = ImagePipeline(image_size=64).settings()
    path = _model_file(tmp_path, bright_detector())
    write_card(path, _card_fields(preprocess_settings=settings))
    assert load_predict_model(path).pipeline.settings() == settings
    write_card(path, _card_fields(preprocess_settings={**settings, "threshold": "otsu", "size": 128}))
    with pytest.raises(
        ModelError, match=r"\(size: card 128, here 64; threshold: card 'otsu', here 'triangle-smoothed'\)"
    ):
        load_predict_model(path)


def test_the_weights_loaded_are_the_bytes_that_were_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: other weights are saved over the file just after its hash was checked (a copy finishing late)
    import client.predict.model_file as model_file

    path = _model_file(tmp_path, bright_detector())
    hashed = torch.load(path, weights_only=True)
    check = model_file._checked_hash

    def check_then_swap(*args: object) -> tuple[str, bool]:
        result = check(*args)
        torch.save(build_model("small_cnn", norm="groupnorm").state_dict(), path)
        return result

    monkeypatch.setattr(model_file, "_checked_hash", check_then_swap)
    # Execute
    loaded = model_file.load_predict_model(path)
    # Assert: the hashed (card's) weights, not the swapped-in ones
    assert loaded.hash_matches and torch.equal(loaded.model.state_dict()["fc.weight"], hashed["fc.weight"])


def test_a_failure_of_the_dicom_step_is_a_warning_on_a_scored_record(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the DICOM writer fails with an error that is not ours (a library's surprise)
    import client.predict.dicom_files as dicom_files
    from client.predict.model_file import load_predict_model
    from client.predict.run import predict_files

    def broken(*args: object, **kwargs: object) -> list[Path]:
        raise RuntimeError("highdicom surprise")

    monkeypatch.setattr(dicom_files, "write_dicom_outputs", broken)
    _write_dicom(tmp_path / "img.dcm", _breast("L", SPOT), laterality="L")
    # Execute
    record = predict_files(load_predict_model(model_file), [tmp_path / "img.dcm"], tmp_path / "out").records[0]
    # Assert
    assert record["status"] == "ok" and record["outputs"]["dicom"] == []
    assert record["warnings"] == ["no DICOM results: RuntimeError: highdicom surprise"]
