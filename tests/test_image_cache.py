"""Tests of common.image_cache: hits, invalidation by file and settings, corrupt entries, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from common.image_cache import PreprocessedImageCache


class CountingCompute:
    """A compute callable that counts its calls and returns a fixed image."""

    def __init__(self, value: float = 0.25) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> np.ndarray:
        self.calls += 1
        image = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
        image[0, 0] = self.value
        return image


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "img.dcm"
    path.write_bytes(b"pretend dicom bytes")
    return path


def test_second_call_is_a_hit(tmp_path: Path, source: Path) -> None:
    # Prepare
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    compute = CountingCompute()
    # Execute
    first = cache.get_or_compute(source, compute)
    second = cache.get_or_compute(source, compute)
    # Assert
    assert compute.calls == 1
    assert first.dtype == np.float32 and first.shape == (8, 8)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, compute(), atol=1 / 65535)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1


def test_entry_names_hide_the_path(tmp_path: Path, source: Path) -> None:
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    cache.get_or_compute(source, CountingCompute())
    (entry,) = (tmp_path / "cache").iterdir()
    assert "img" not in entry.name and len(entry.stem) == 64


def test_modified_file_is_recomputed(tmp_path: Path, source: Path) -> None:
    # Prepare
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    compute = CountingCompute()
    cache.get_or_compute(source, compute)
    stat = source.stat()
    # Execute: same size, new mtime
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    cache.get_or_compute(source, compute)
    # Assert
    assert compute.calls == 2


def test_settings_change_is_recomputed(tmp_path: Path, source: Path) -> None:
    # Prepare
    compute = CountingCompute()
    PreprocessedImageCache(tmp_path / "cache", {"size": 8}).get_or_compute(source, compute)
    # Execute
    PreprocessedImageCache(tmp_path / "cache", {"size": 16}).get_or_compute(source, compute)
    PreprocessedImageCache(tmp_path / "cache", {"size": 8}).get_or_compute(source, compute)
    # Assert: the second settings missed; the first are still cached
    assert compute.calls == 2


def test_extra_key_separates_entries(tmp_path: Path, source: Path) -> None:
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    compute = CountingCompute()
    cache.get_or_compute(source, compute, extra_key="laterality=L")
    cache.get_or_compute(source, compute, extra_key="laterality=R")
    assert compute.calls == 2


@pytest.mark.parametrize("garbage", [b"", b"not an npy file", b"\x93NUMPY\x01\x00truncated"])
def test_corrupt_entry_is_recomputed(tmp_path: Path, source: Path, garbage: bytes) -> None:
    # Prepare
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    compute = CountingCompute()
    expected = cache.get_or_compute(source, compute)
    (entry,) = (tmp_path / "cache").glob("*.npy")
    entry.write_bytes(garbage)
    # Execute
    recovered = cache.get_or_compute(source, compute)
    # Assert: recomputed, rewritten, and served from cache again afterwards
    np.testing.assert_array_equal(recovered, expected)
    assert compute.calls == 2
    cache.get_or_compute(source, compute)
    assert compute.calls == 2


def test_entry_of_wrong_dtype_is_recomputed(tmp_path: Path, source: Path) -> None:
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    compute = CountingCompute()
    cache.get_or_compute(source, compute)
    (entry,) = (tmp_path / "cache").glob("*.npy")
    np.save(entry, np.zeros((8, 8), dtype=np.float64))
    cache.get_or_compute(source, compute)
    assert compute.calls == 2


def test_compute_errors_propagate_and_nothing_is_cached(tmp_path: Path, source: Path) -> None:
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})

    def broken() -> np.ndarray:
        raise ValueError("cannot decode")

    with pytest.raises(ValueError, match="cannot decode"):
        cache.get_or_compute(source, broken)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_source_calls_compute_uncached(tmp_path: Path) -> None:
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    compute = CountingCompute()
    cache.get_or_compute(tmp_path / "missing.dcm", compute)
    cache.get_or_compute(tmp_path / "missing.dcm", compute)
    assert compute.calls == 2


def test_no_temporary_files_left(tmp_path: Path, source: Path) -> None:
    cache = PreprocessedImageCache(tmp_path / "cache", {"size": 8})
    cache.get_or_compute(source, CountingCompute())
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")] == []


def test_unwritable_cache_dir_still_returns_image(tmp_path: Path, source: Path) -> None:
    # Prepare: the cache "dir" is a file, so mkdir fails
    blocker = tmp_path / "blocked"
    blocker.write_text("x")
    cache = PreprocessedImageCache(blocker, {"size": 8})
    # Execute
    image = cache.get_or_compute(source, CountingCompute())
    # Assert
    assert image.shape == (8, 8)
