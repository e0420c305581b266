"""``predictions.json``: one record per image (scores, box, peak, identifiers, outputs, errors) under the model's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from client.predict.card_summary import NOT_A_DEVICE, card_warnings
from client.predict.exam_records import exam_section
from client.predict.model_file import PredictModel
from client.predict.one_image import ImagePrediction
from common.data.geometry_inverse import point_to_source
from common.explain import cam_layer
from common.models.weights_card import atomic_write

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PREDICTIONS_FILE",
    "failure_record",
    "image_record",
    "no_evidence",
    "write_predictions",
]

PREDICTIONS_FILE = "predictions.json"
FORMAT = "fedmammo-predictions"
FORMAT_VERSION = 1


def no_evidence(class_name: str) -> str:
    """What the overlay, the console and the presentation state say for a flat heatmap (no box is shown)."""
    return f"no evidence for {class_name} found (the heatmap is flat: no box)"


def _layer_name(model: PredictModel) -> str:
    layer = cam_layer(model.model)
    return next((name for name, module in model.model.named_modules() if module is layer), type(layer).__name__)


def _heatmap_note(model: PredictModel, prediction: ImagePrediction) -> dict[str, Any]:
    """How fine the heatmap is in the file's pixels (made at the model's input size, stretched back), and if flat."""
    size, name = prediction.geometry.preprocess.size, model.class_names[model.headline_class]
    (r0, c0), (r1, c1) = (point_to_source(v, v, prediction.geometry) for v in (0.0, 1.0))
    rows, cols = abs(r1 - r0), abs(c1 - c0)
    flat = (
        " Here it is zero over the whole breast: Grad-CAM keeps only what raises the score, nothing in this image "
        "does, so no box or peak is given."
    )
    return {
        "flat": prediction.flat,
        "model_input_px": size,
        "source_shape": list(prediction.geometry.source_shape),
        "source_px_per_model_px": [round(rows, 3), round(cols, 3)],
        "note": (
            f"Grad-CAM of the '{name}' score at layer {_layer_name(model)}, made on "
            f"the {size} x {size} model input and mapped back to this image's {prediction.geometry.source_shape[0]} x "
            f"{prediction.geometry.source_shape[1]} pixels: one model pixel covers about {rows:.1f} x {cols:.1f} of "
            "them, so finer detail is interpolation. Zero outside the breast crop the model saw."
            + (flat if prediction.flat else "")
        ),
    }


def image_record(
    model: PredictModel, prediction: ImagePrediction, outputs: dict[str, Any], warnings: list[str]
) -> dict[str, Any]:
    """The record of an image that was scored (box and peak in the file's own pixels, rows first; null when flat)."""
    mammogram, headline = prediction.mammogram, model.headline_class
    box: dict[str, Any] | None = None
    peak: dict[str, int] | None = None
    if prediction.box is not None and prediction.peak is not None:
        row0, col0, row1, col1 = prediction.box
        box = {"row0": row0, "col0": col0, "row1": row1, "col1": col1, "ends": "exclusive"}
        peak = {"row": prediction.peak[0], "col": prediction.peak[1]}
    ids = prediction.identifiers
    detected = "" if mammogram.laterality else ("R" if prediction.geometry.preprocess.flipped else "L")
    return {
        "file": prediction.path.name,
        "path": str(prediction.path),
        "status": "ok",
        "study_id": ids.get("study_uid") or None,
        "study_uid": ids.get("study_uid") or None,
        "series_uid": ids.get("series_uid") or None,
        "sop_uid": ids.get("sop_uid") or None,
        "laterality": mammogram.laterality or None,
        "laterality_detected": detected or None,
        "view": mammogram.view or None,
        "photometric": mammogram.photometric or None,
        "probabilities": {name: float(p) for name, p in zip(model.class_names, prediction.probabilities, strict=True)},
        "headline": {"class": model.class_names[headline], "score": float(prediction.probabilities[headline])},
        "box": box,
        "peak": peak,
        "heatmap": _heatmap_note(model, prediction),
        "outputs": outputs,
        "warnings": warnings,
        "seconds": {step: round(value, 4) for step, value in prediction.seconds.items()},
        "error": None,
    }


def failure_record(path: Path, exc: BaseException) -> dict[str, Any]:
    """The record of an image that could not be scored: its reason, and nothing else."""
    return {
        "file": path.name,
        "path": str(path),
        "status": "failed",
        "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}",
    }


def write_predictions(out_dir: Path, model: PredictModel, records: list[dict[str, Any]]) -> Path:
    """Write ``out_dir/predictions.json`` whole (a temporary file renamed onto it) and return its path."""
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "intended_use": NOT_A_DEVICE,
        "model": {
            "file": model.path.name,
            "path": str(model.path),
            "sha256": model.sha256,
            "hash_matches_card": model.hash_matches,
            "name": model.card.get("model", {}).get("name"),
            "norm": model.card.get("model", {}).get("norm"),
            "class_names": list(model.class_names),
            "headline_class": model.class_names[model.headline_class],
            "image_size": model.pipeline.image_size,
            "pixel_spacing_mm": model.pipeline.pixel_spacing_mm,
            "presentation_intent": model.pipeline.presentation_intent,
            "preprocess_version": model.card.get("data", {}).get("preprocess_version"),
            "warnings": card_warnings(model.card, hash_matches=model.hash_matches),
        },
        "images": records,
        # One score per breast and per exam (the images' study, laterality and view), by the model's exam rule.
        **exam_section(records, model.config.evaluation.exam_rule),
    }
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    return atomic_write(out_dir / PREDICTIONS_FILE, lambda temp: temp.write_text(text, encoding="utf-8"))
