"""Tests of common.data.site_data: a site loads to tensors, bad files are skipped with reasons, empty sites fail."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import SiteData, load_site, write_manifest
from common.errors import DicomError, ManifestError
from tests.test_dicom_io import breast_pixels, write_mg

SIZE = 16


def make_site(root: Path, num_patients: int = 8, *, with_split: bool = False) -> Path:
    """Two images (L and R) per patient; every third patient malignant. Returns the manifest path."""
    rows = []
    for index in range(num_patients):
        patient = f"anon{index:02d}"
        for side in ("L", "R"):
            name = f"images/{patient}_{side}.dcm"
            (root / "images").mkdir(parents=True, exist_ok=True)
            write_mg(root / name, breast_pixels(side=side, seed=index), laterality=side)
            split = ("train", "train", "val", "test")[index % 4] if with_split else ""
            label = int(index % 3 == 0 and side == "L")
            rows.append({"image_path": name, "label": label, "patient_id": patient, "laterality": side, "split": split})
    return write_manifest(root / "manifest.csv", rows)


def load(manifest: Path, **overrides: object) -> SiteData:
    options: dict[str, object] = {"image_size": SIZE, "cache_dir": None, "val_fraction": 0.2, "test_fraction": 0.25}
    options.update(overrides)
    return load_site(manifest, seed=0, **options)  # type: ignore[arg-type]


def test_loads_every_image_into_split_tensors(tmp_path: Path) -> None:
    # Prepare
    manifest = make_site(tmp_path)
    # Execute
    data = load(manifest)
    # Assert
    sizes = [len(data.train), len(data.val), len(data.test)]
    assert sum(sizes) == 16 and all(sizes)
    images, labels = data.train.stacked(), data.train.labels
    assert images.dtype == torch.float32 and images.shape[1:] == (1, SIZE, SIZE)
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert data.skipped == [] and sum(data.num_patients.values()) == 8
    assert (tmp_path / ".cache" / "preprocessed").is_dir()


def test_items_are_read_from_the_cache_map_not_held_in_memory(tmp_path: Path) -> None:
    # Prepare / Execute: a cold load, which decodes, and a warm one, which only maps the cache
    manifest = make_site(tmp_path)
    cold, warm = load(manifest), load(manifest)
    # Assert: no split holds a copy; each item is the float image of its mapped uint16 slot
    for data in (cold, warm):
        assert [split.bytes_in_memory for split in (data.train, data.val, data.test)] == [0, 0, 0]
    image, label = warm.train[3]
    assert image.shape == (1, SIZE, SIZE) and image.dtype == torch.float32 and label.dtype == torch.int64
    torch.testing.assert_close(image, cold.train.stacked()[3])
    loader = torch.utils.data.DataLoader(warm.train, batch_size=4)
    images, labels = next(iter(loader))
    assert images.shape == (4, 1, SIZE, SIZE) and labels.tolist() == warm.train.labels[:4].tolist()


def test_an_unwritable_cache_keeps_the_images_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: every write to the cache fails (a read-only share, a full disk)
    import common.data.image_cache as image_cache

    manifest = make_site(tmp_path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(image_cache.SiteImageCache, "_append", refuse)
    # Execute
    data = load(manifest)
    # Assert: the site still loads, from memory, and says why
    assert len(data.train) + len(data.val) + len(data.test) == 16 and data.skipped == []
    assert data.train.bytes_in_memory == len(data.train) * SIZE * SIZE * 2
    assert "could not write the preprocessed-image cache" in caplog.text
    assert float(data.train.stacked().max()) > 0.5


def test_left_and_right_images_of_a_patient_match_after_flip(tmp_path: Path) -> None:
    # Prepare: the phantoms' R image is the mirror of its L image
    manifest = make_site(tmp_path, num_patients=4, with_split=True)
    # Execute
    data = load(manifest)
    # Assert: rows come in L, R order per patient; both are oriented alike
    images = data.train.stacked()
    torch.testing.assert_close(images[0], images[1])


def test_summary_has_counts_and_no_identifiers(tmp_path: Path) -> None:
    # Prepare
    manifest = make_site(tmp_path, with_split=True)
    # Execute
    summary = load(manifest).summary()
    # Assert
    assert summary["train"] == {"images": 8, "patients": 4, "labels": {"0": 7, "1": 1}}
    assert summary["val"]["images"] == 4 and summary["test"]["images"] == 4  # type: ignore[index]
    assert summary["skipped"] == 0
    assert "anon" not in repr(summary) and "images/" not in repr(summary)


def test_bad_files_are_skipped_with_reasons(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: one file corrupt (text), one missing
    manifest = make_site(tmp_path)
    (tmp_path / "images" / "anon01_L.dcm").write_text("not a dicom")
    (tmp_path / "images" / "anon02_R.dcm").unlink()
    # Execute
    with caplog.at_level(logging.WARNING, logger="common.data.site_data"):
        data = load(manifest)
    # Assert: lines 4 (anon01 L) and 7 (anon02 R) skipped, the other 14 loaded
    reasons = {item.row_number: item.reason for item in data.skipped}
    assert sorted(reasons) == [4, 7]
    assert "is not a DICOM file" in reasons[4] and "does not exist" in reasons[7]
    assert len(data.train) + len(data.val) + len(data.test) == 14
    assert data.summary()["skipped"] == 2
    assert "line 4 skipped" in caplog.text and "line 7 skipped" in caplog.text


def test_second_load_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    manifest = make_site(tmp_path, num_patients=4)
    first = load(manifest, cache_dir=tmp_path / "cache")
    calls = []
    import common.data.image_pipeline as image_pipeline

    monkeypatch.setattr(image_pipeline, "read_mammogram", lambda *a, **k: calls.append(a) or None)
    # Execute
    second = load(manifest, cache_dir=tmp_path / "cache")
    # Assert: nothing decoded again, identical tensors
    assert calls == []
    torch.testing.assert_close(first.train.stacked(), second.train.stacked())
    assert len(list((tmp_path / "cache").glob("*.u16"))) == 1 and len(list((tmp_path / "cache").glob("*.json"))) == 1


def test_nothing_usable_fails_clearly(tmp_path: Path) -> None:
    # Prepare
    manifest = make_site(tmp_path, num_patients=3)
    for path in (tmp_path / "images").iterdir():
        path.write_bytes(b"garbage")
    # Execute / Assert
    with pytest.raises(
        DicomError, match=r"none of its 6 image\(s\) could be used; first reasons:\n  line 2: .*not a DICOM"
    ):
        load(manifest)


def test_empty_test_split_after_skipping_fails_clearly(tmp_path: Path) -> None:
    # Prepare: explicit split; every test image is unreadable
    manifest = make_site(tmp_path, num_patients=4, with_split=True)
    for side in ("L", "R"):
        (tmp_path / "images" / f"anon03_{side}.dcm").unlink()
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"the test split has no usable image .*2 skipped"):
        load(manifest)


def test_wrong_modality_is_skipped_not_fatal(tmp_path: Path) -> None:
    manifest = make_site(tmp_path, num_patients=4)
    write_mg(tmp_path / "images" / "anon00_L.dcm", breast_pixels(), modality="CT")
    data = load(manifest)
    assert [item.row_number for item in data.skipped] == [2]
    assert "Modality is 'CT'" in data.skipped[0].reason
    assert np.isfinite(data.train.stacked().numpy()).all()


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every file the pipeline decodes (and still decode it)."""
    import common.data.image_pipeline as image_pipeline

    names: list[str] = []
    real = image_pipeline.read_mammogram

    def reading(path: Path, **kwargs: object) -> object:
        names.append(Path(path).name)
        return real(path, **kwargs)

    monkeypatch.setattr(image_pipeline, "read_mammogram", reading)
    return names


def test_only_changed_images_are_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a warm cache, then one file rewritten with other pixels
    manifest = make_site(tmp_path, num_patients=4)
    load(manifest)
    write_mg(tmp_path / "images" / "anon01_R.dcm", breast_pixels(side="R", seed=99), laterality="R")
    reads = count_reads(monkeypatch)
    # Execute
    data = load(manifest)
    # Assert: that file alone was decoded, and the cache still holds one data file
    assert reads == ["anon01_R.dcm"] and data.skipped == []
    assert len(list((tmp_path / ".cache" / "preprocessed").glob("*.u16"))) == 1


def test_new_settings_decode_everything_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = make_site(tmp_path, num_patients=4, with_split=True)
    load(manifest)
    reads = count_reads(monkeypatch)
    data = load(manifest, image_size=2 * SIZE)
    assert len(reads) == 8 and data.train.stacked().shape[-1] == 2 * SIZE


def test_a_bad_file_is_remembered_not_read_again_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: one image replaced by a sparse file whose header claims 20000 x 20000 pixels
    from tests.test_dicom_io import write_sparse_claim

    manifest = make_site(tmp_path, num_patients=4)
    write_sparse_claim(tmp_path / "images" / "anon01_L.dcm", 20000, 20000)
    first = load(manifest)
    reads = count_reads(monkeypatch)
    # Execute: the next round's load, then one after the file was fixed
    second = load(manifest)
    index = "".join(path.read_text() for path in (tmp_path / ".cache" / "preprocessed").glob("*.index.json"))
    write_mg(tmp_path / "images" / "anon01_L.dcm", breast_pixels(seed=5), laterality="L")
    fixed = load(manifest)
    # Assert: skipped with the same reason without being read again (the cache keeps only the fixed reason);
    # read once more only after it changed
    assert reads == ["anon01_L.dcm"] and fixed.skipped == []
    assert [item.row_number for item in first.skipped] == [item.row_number for item in second.skipped] == [4]
    assert "more than the maximum" in second.skipped[0].public and second.skipped[0].public == first.skipped[0].public
    assert "more than the maximum" in index and "anon01" not in index and str(tmp_path) not in index


def test_a_file_that_may_read_later_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a folder where an image should be (nothing about the file's bytes rules it out for good)
    manifest = make_site(tmp_path, num_patients=4)
    (tmp_path / "images" / "anon01_L.dcm").unlink()
    (tmp_path / "images" / "anon01_L.dcm").mkdir()
    load(manifest)
    reads = count_reads(monkeypatch)
    # Execute
    data = load(manifest)
    # Assert
    assert reads == ["anon01_L.dcm"] and [item.row_number for item in data.skipped] == [4]
    assert data.skipped[0].public == "DicomError: the image path is not a regular file (a folder, a device or a pipe)"


def test_a_symlink_loop_is_a_bad_file_not_a_crash(tmp_path: Path) -> None:
    # Prepare: line 4's image is a loop of symbolic links (a -> b -> a)
    import os

    manifest = make_site(tmp_path, num_patients=4)
    image = tmp_path / "images" / "anon01_L.dcm"
    image.unlink()
    os.symlink(tmp_path / "images" / "b.dcm", image)
    os.symlink(image, tmp_path / "images" / "b.dcm")
    # Execute: twice, as two rounds would
    first, second = load(manifest), load(manifest)
    # Assert
    for data in (first, second):
        assert [item.row_number for item in data.skipped] == [4]
        assert data.skipped[0].public == "DicomError: the image path is a loop of symbolic links; it leads to no file"
        assert len(data.train) + len(data.val) + len(data.test) == 7


def test_an_image_listed_twice_is_used_once_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Prepare: line 10 repeats line 2's path (under another patient), line 11 reaches line 3's file by a link
    import csv
    import os

    manifest = make_site(tmp_path, num_patients=4)
    os.symlink(tmp_path / "images", tmp_path / "linked")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    rows.append({**rows[0], "patient_id": "someone-else"})
    rows.append({**rows[1], "image_path": "linked/" + Path(rows[1]["image_path"]).name})
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    # Execute
    with caplog.at_level(logging.WARNING, logger="common.data.site_data"):
        data = load(manifest)
    # Assert: 8 images, each once; the repeats named by line only
    assert data.duplicates == {10: 2, 11: 3}
    assert len(data.train) + len(data.val) + len(data.test) == 8 and data.summary()["duplicates"] == 2
    assert "manifest line 10 lists the same image as line 2" in caplog.text
    assert "manifest line 11 lists the same image as line 3" in caplog.text


def test_preprocess_site_decodes_a_file_listed_twice_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    from common.data import ImagePipeline, preprocess_site, read_manifest

    manifest = make_site(tmp_path, num_patients=1)
    rows = read_manifest(manifest)
    rows = [*rows, type(rows[0])(**{**rows[0].__dict__, "row_number": 99})]
    reads = count_reads(monkeypatch)
    # Execute
    images, skipped = preprocess_site(manifest, rows, ImagePipeline(SIZE), tmp_path / "cache", progress=False)
    # Assert
    assert sorted(reads) == ["anon00_L.dcm", "anon00_R.dcm"] and skipped == []
    np.testing.assert_array_equal(images[2], images[99])


def test_a_crash_mid_build_keeps_what_was_checkpointed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: checkpoint after every image; the third decode is interrupted
    import common.data.image_pipeline as image_pipeline
    import common.data.site_preprocess as site_preprocess

    manifest = make_site(tmp_path, num_patients=4)
    monkeypatch.setattr(site_preprocess, "CHECKPOINT_SECONDS", 0.0)
    real, calls = image_pipeline.read_mammogram, []

    def interrupted(path: Path, **kwargs: object) -> object:
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, **kwargs)

    monkeypatch.setattr(image_pipeline, "read_mammogram", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(manifest, workers=1)
    monkeypatch.setattr(image_pipeline, "read_mammogram", real)
    reads = count_reads(monkeypatch)
    # Execute
    data = load(manifest, workers=1)
    # Assert: the two images decoded before the crash came from the cache
    assert len(reads) == 6 and len(data.train) + len(data.val) + len(data.test) == 8
