"""Tests of common.data.image_cache: the per-site store's hits, keys, crash safety, checksums and compaction."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from common.data import INDEX_FORMAT, SiteImageCache, dequantise, quantise

SHAPE = (8, 8)


def cache_at(root: Path, settings: dict[str, object] | None = None, site: str = "/site/manifest.csv") -> SiteImageCache:
    cache = SiteImageCache(root, settings or {"size": 8}, site=site, image_shape=SHAPE)
    cache.open()
    return cache


def image(value: int) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.uint16)


def store(root: Path, images: dict[str, np.ndarray], keep: tuple[str, ...] = ()) -> SiteImageCache:
    cache = cache_at(root)
    with cache.locked():
        cache.open()
        cache.commit([*keep, *images], images)
    return cache


def test_stored_images_are_served_by_a_new_instance(tmp_path: Path) -> None:
    # Prepare
    store(tmp_path, {"a": image(1), "b": image(2)})
    # Execute
    cache = cache_at(tmp_path)
    # Assert
    np.testing.assert_array_equal(cache.lookup("a"), image(1))
    np.testing.assert_array_equal(cache.lookup("b"), image(2))
    assert cache.lookup("c") is None and cache.lookup(None) is None


def test_one_data_file_and_one_index_with_hashed_names(tmp_path: Path) -> None:
    # Prepare / Execute
    store(tmp_path, {"a": image(1), "b": image(2)})
    # Assert: no part of the site's path in any name
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n.rsplit(".", 2)[-2:] for n in names if not n.endswith(".lock")] == [["0", "u16"], ["index", "json"]]
    assert not any("site" in n or "manifest" in n for n in names)
    assert (tmp_path / names[0]).stat().st_size == 2 * 8 * 8 * 2


def test_other_settings_or_site_use_another_store(tmp_path: Path) -> None:
    store(tmp_path, {"a": image(1)})
    assert cache_at(tmp_path, {"size": 16}).lookup("a") is None
    assert cache_at(tmp_path, site="/other/manifest.csv").lookup("a") is None
    assert cache_at(tmp_path).lookup("a") is not None


def test_item_key_follows_mtime_and_extra_and_is_none_for_a_missing_file(tmp_path: Path) -> None:
    # Prepare
    source = tmp_path / "img.dcm"
    source.write_bytes(b"pixels")
    first = SiteImageCache.item_key(source, "laterality=L")
    # Execute
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    # Assert
    assert SiteImageCache.item_key(source, "laterality=L") not in (first, None)
    assert SiteImageCache.item_key(source, "laterality=R") != SiteImageCache.item_key(source, "laterality=L")
    assert SiteImageCache.item_key(tmp_path / "missing.dcm") is None


def test_crash_before_the_index_write_keeps_the_old_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: "a" stored; writing the next index fails after the new slot was appended
    store(tmp_path, {"a": image(1)})
    cache = cache_at(tmp_path)

    def crash(*_index: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cache, "_write_index", crash)
    with cache.locked():
        cache.commit(["a", "b"], {"b": image(2)})
    # Execute
    reopened = cache_at(tmp_path)
    # Assert: the old entry is intact, the half-written one is not served, and the next write reuses the tail
    np.testing.assert_array_equal(reopened.lookup("a"), image(1))
    assert reopened.lookup("b") is None
    store(tmp_path, {"c": image(3)}, keep=("a",))
    assert [p.stat().st_size for p in tmp_path.glob("*.u16")] == [2 * 8 * 8 * 2]


def test_a_corrupt_slot_fails_its_checksum(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: flip bytes of slot 1 ("b")
    store(tmp_path, {"a": image(1), "b": image(2)})
    (data,) = tmp_path.glob("*.u16")
    raw = bytearray(data.read_bytes())
    raw[8 * 8 * 2 + 3] ^= 0xFF
    data.write_bytes(bytes(raw))
    # Execute
    with caplog.at_level(logging.WARNING, logger="common.data.image_cache"):
        cache = cache_at(tmp_path)
        hit_a, hit_b = cache.lookup("a"), cache.lookup("b")
    # Assert
    np.testing.assert_array_equal(hit_a, image(1))
    assert hit_b is None and "fails its checksum" in caplog.text


@pytest.mark.parametrize("damage", ["truncate-data", "garbage-index", "other-format", "delete-data", "foreign-data"])
def test_an_inconsistent_store_is_treated_as_empty(tmp_path: Path, damage: str) -> None:
    # Prepare
    store(tmp_path, {"a": image(1), "b": image(2)})
    (data,) = tmp_path.glob("*.u16")
    (index,) = tmp_path.glob("*.index.json")
    if damage == "truncate-data":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "garbage-index":
        index.write_text("{not json")
    elif damage == "other-format":
        index.write_text(index.read_text().replace(f'"format": {INDEX_FORMAT}', '"format": 99'))
    elif damage == "foreign-data":
        index.write_text(index.read_text().replace(data.name, "../elsewhere.0.u16"))
    else:
        data.unlink()
    # Execute
    cache = cache_at(tmp_path)
    # Assert: nothing served, and it can be rebuilt in place
    assert cache.lookup("a") is None and cache.lookup("b") is None
    store(tmp_path, {"a": image(5)})
    np.testing.assert_array_equal(cache_at(tmp_path).lookup("a"), image(5))


def test_dropped_entries_are_compacted_into_a_new_generation(tmp_path: Path) -> None:
    # Prepare: four slots, then only "d" is still wanted
    store(tmp_path, {"a": image(1), "b": image(2), "c": image(3), "d": image(4)})
    # Execute
    store(tmp_path, {}, keep=("d",))
    # Assert: one file, of one slot, generation 1; the survivor is intact
    (data,) = tmp_path.glob("*.u16")
    assert data.name.endswith(".1.u16") and data.stat().st_size == 8 * 8 * 2
    cache = cache_at(tmp_path)
    np.testing.assert_array_equal(cache.lookup("d"), image(4))
    assert cache.lookup("a") is None


def test_an_unwritable_cache_folder_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: the cache "folder" is a file
    blocker = tmp_path / "blocked"
    blocker.write_text("x")
    # Execute
    with caplog.at_level(logging.WARNING, logger="common.data.image_cache"):
        cache = store(blocker, {"a": image(1)})
    # Assert
    assert cache.lookup("a") is None and "not writable" in caplog.text


def test_an_image_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(4, 4\) does not fit a cache of shape \(8, 8\)"):
        store(tmp_path, {"a": np.zeros((4, 4), dtype=np.uint16)})


def test_quantise_round_trip_is_within_one_step() -> None:
    values = np.array([[0.0, 0.25, 1.0, np.nan, 2.0, -1.0]], dtype=np.float32)
    restored = dequantise(quantise(values))
    assert restored.dtype == np.float32
    np.testing.assert_allclose(restored, [[0.0, 0.25, 1.0, 0.0, 1.0, 0.0]], atol=1 / 65535)
