"""Decode and preprocess many images in parallel threads, with a progress bar on a terminal; bad files give reasons."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import NamedTuple

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from common.data.image_cache import quantise
from common.data.image_pipeline import ImageGeometry, ImagePipeline
from common.data.manifest import ManifestRow
from common.errors import DicomError

__all__ = ["DecodedImage", "decode_rows", "default_workers"]


class DecodedImage(NamedTuple):
    """One decoded row: the quantised image and where its pixels came from in the file (to place lesions)."""

    pixels: np.ndarray
    """``S x S`` uint16 (:func:`common.data.image_cache.quantise`)."""
    geometry: ImageGeometry


def default_workers() -> int:
    """Up to 4 decoding threads, bounded by the CPU count (more only contend for memory bandwidth)."""
    return max(1, min(4, os.cpu_count() or 1))


def decode_rows(
    rows: Sequence[ManifestRow],
    pipeline: ImagePipeline,
    *,
    workers: int | None = None,
    progress: bool | None = None,
    on_result: Callable[[int, DecodedImage | DicomError], None] | None = None,
    keep_images: bool = True,
) -> dict[int, DecodedImage | DicomError]:
    """Run every row's image through ``pipeline`` in a thread pool.

    Threads, not processes: reading, decoding and resizing spend their time in pydicom's and numpy's
    C code, scipy and torch, which release the GIL (2 threads gave 1.6-2x one on 2 cores here). A
    forked worker pool deadlocked once torch had started its own threads, and spawned workers pay
    torch's import (about a second each), which a small site never wins back.

    Parameters
    ----------
    rows : sequence of ManifestRow
        The images to decode.
    pipeline : ImagePipeline
        The preprocessing.
    workers : int or None
        Threads; ``None`` uses :func:`default_workers`.
    progress : bool or None
        Show a progress bar on stderr; ``None`` shows it only when stderr is a terminal (quiet in tests and logs).
    on_result : callable or None
        Called in the calling thread with ``(row_number, result)`` as each image finishes (e.g. to checkpoint).
    keep_images : bool
        Keep the images in the returned dict; ``False`` keeps only the reasons, so a site larger than
        memory can be built when ``on_result`` stores each image away.

    Returns
    -------
    dict
        Per row number, the :class:`DecodedImage` (quantised uint16 image and its geometry) or, for a file
        that cannot be used, the :class:`DicomError` saying why (its message may name the file: keep it on site;
        its ``public_reason`` never does). Without ``keep_images``, only the errors.
    """
    results: dict[int, DecodedImage | DicomError] = {}
    if not rows:
        return results
    with (
        _progress_bar(len(rows), progress) as advance,
        ThreadPoolExecutor(max_workers=workers or default_workers()) as pool,
    ):
        futures = {pool.submit(_decode_one, row, pipeline): row.row_number for row in rows}
        try:
            for future in as_completed(futures):
                number, result = futures.pop(future), future.result()
                if keep_images or isinstance(result, DicomError):
                    results[number] = result
                if on_result is not None:
                    on_result(number, result)
                advance()
        except BaseException:  # Ctrl-C or a failing callback: do not wait for the rest of the site
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results


def _decode_one(row: ManifestRow, pipeline: ImagePipeline) -> DecodedImage | DicomError:
    """The quantised preprocessed image of one row with its geometry, or the error saying why it cannot be used."""
    try:
        image, geometry = pipeline.load_with_geometry(row.image_path, row.laterality)
        return DecodedImage(quantise(image), geometry)
    except DicomError as exc:  # a bad file is skipped with its reason; it never stops the site
        return exc
    except Exception as exc:
        return DicomError(
            f"{row.image_path}: {type(exc).__name__}: {exc}",
            public="the file could not be read (an unexpected error; details in the site's log)",
        )


@contextlib.contextmanager
def _progress_bar(total: int, enabled: bool | None) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr, yielding the function that advances it."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("decoding images"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("decode", total=total)
        yield lambda: bar.advance(task)
