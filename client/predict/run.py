"""Predict on a list of files: one bad file is recorded and skipped, every good one gets its overlay and results."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.predict.model_file import PredictModel
from client.predict.one_image import ImagePrediction, predict_image
from client.predict.overlay import render_overlay, write_png
from client.predict.records import failure_record, image_record, no_evidence, write_predictions
from common.errors import FedMammoError

__all__ = ["PredictRun", "caption", "predict_files"]

logger = logging.getLogger(__name__)


@dataclass
class PredictRun:
    """What a call of `predict_files` did: a record per file (in order), the predictions file, time per step."""

    records: list[dict[str, Any]]
    predictions_path: Path
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def num_ok(self) -> int:
        """Files scored."""
        return sum(record["status"] == "ok" for record in self.records)

    @property
    def all_failed(self) -> bool:
        """Whether no file could be scored (the command then exits non-zero)."""
        return self.num_ok == 0


def caption(model: PredictModel, prediction: ImagePrediction) -> str:
    """The overlay's text: the headline score, that this is research software, and a line when no box is drawn."""
    name = model.class_names[model.headline_class]
    text = f"{name} score {prediction.probabilities[model.headline_class]:.2f} | fedmammo | research use only"
    return f"{text}\n{no_evidence(name)}" if prediction.flat else text


def _unique_stem(path: Path, used: set[str]) -> str:
    """The file's stem, numbered when an earlier file of the call had the same one (two folders' ``1.dcm``)."""
    stem, number = path.stem or "image", 1
    candidate = stem
    while candidate in used:
        number += 1
        candidate = f"{stem}_{number}"
    used.add(candidate)
    return candidate


def _one(model: PredictModel, path: Path, out_dir: Path, stem: str, dicom: bool, seconds: dict[str, float]) -> dict:
    prediction = predict_image(model, path)
    for step, value in prediction.seconds.items():
        seconds[step] = seconds.get(step, 0.0) + value
    start = time.perf_counter()
    rgb = render_overlay(
        prediction.mammogram.pixels,
        prediction.cam,
        prediction.geometry,
        prediction.box,
        prediction.peak,
        caption(model, prediction),
    )
    overlay = write_png(out_dir / f"{stem}.overlay.png", rgb)
    prediction.seconds["overlay"] = time.perf_counter() - start
    seconds["overlay"] = seconds.get("overlay", 0.0) + prediction.seconds["overlay"]
    outputs: dict[str, Any] = {"overlay": overlay.name, "dicom": []}
    warnings: list[str] = []
    if dicom and prediction.is_dicom:
        start = time.perf_counter()
        try:
            from client.predict.dicom_files import write_dicom_outputs  # highdicom: only when DICOM is written

            headline = model.headline_class
            # its files are named after the source's stem: a renumbered stem gets a folder of its own
            folder = out_dir if stem == path.stem else out_dir / stem
            written = write_dicom_outputs(
                path,
                rgb,
                prediction.box,
                float(prediction.probabilities[headline]),
                folder,
                label=f"{model.class_names[headline]} score",
                note=no_evidence(model.class_names[headline]) if prediction.flat else "",
            )
            outputs["dicom"] = [p.relative_to(out_dir).as_posix() for p in written]
        except Exception as exc:  # the score stands; only the PACS copy could not be made (whatever the reason)
            warnings.append(f"no DICOM results: {type(exc).__name__}: {' '.join(str(exc).split())}")
            if isinstance(exc, FedMammoError):
                logger.info("%s: DICOM results not written: %s", path.name, exc)
            else:  # a library's surprise: keep the traceback for whoever debugs it
                logger.warning("%s: DICOM results not written after an unexpected error", path.name, exc_info=True)
        prediction.seconds["dicom_outputs"] = time.perf_counter() - start
        seconds["dicom_outputs"] = seconds.get("dicom_outputs", 0.0) + prediction.seconds["dicom_outputs"]
    return image_record(model, prediction, outputs, warnings)


def predict_files(
    model: PredictModel,
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    dicom: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> PredictRun:
    """Score every file, write each one's overlay (and DICOM results), then ``predictions.json`` for all.

    Parameters
    ----------
    model : PredictModel
        From `client.predict.model_file.load_predict_model`.
    paths : sequence of path
        DICOM files (any suffix) or PNG/PGM/JPEG/TIFF images.
    out_dir : path
        Created if missing: ``<stem>.overlay.png`` per image, ``<stem>.sc.dcm`` and ``<stem>.gsps.dcm`` per DICOM
        image (`client.predict.dicom_files`), ``predictions.json``.
    dicom : bool
        Write the DICOM results of DICOM images.
    on_record : callable or None
        Called with each file's record as soon as it is done (the console shows progress with it).

    Returns
    -------
    PredictRun
        A file that cannot be read, preprocessed or scored has a ``failed`` record with its reason and the others go
        on; a DICOM result that cannot be made is a warning on an otherwise good record.
    """
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    used: set[str] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        try:
            record = _one(model, path, out, _unique_stem(path, used), dicom, seconds)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one bad file never stops the others; its reason is recorded
            if isinstance(exc, FedMammoError):  # a named problem of the file: its record says it
                logger.info("%s: skipped: %s", path, exc)
            else:  # a bug or a library's surprise: keep the traceback for whoever debugs it
                logger.warning("%s: skipped after an unexpected error", path, exc_info=True)
            record = failure_record(path, exc)
        records.append(record)
        if on_record is not None:
            on_record(record)
    return PredictRun(records, write_predictions(out, model, records), seconds)
