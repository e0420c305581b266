"""A prepared federation folder: its index orders the sites, and a size mismatch is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data import list_sites, site_manifest, write_federation_index
from common.errors import ConfigError, ManifestError


def _site(root: Path, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "manifest.csv").write_text("image_path,label,patient_id\n", encoding="utf-8")


def test_the_index_sets_the_order(tmp_path: Path) -> None:
    for name in ("b", "a", "c"):
        _site(tmp_path, name)
    write_federation_index(tmp_path, ["c", "a", "b"], {"dataset": "x"})

    names = list_sites(tmp_path)
    name, manifest = site_manifest(tmp_path, 0, 3)

    assert names == ["c", "a", "b"]
    assert (name, manifest) == ("c", tmp_path / "c" / "manifest.csv")


def test_without_an_index_site_folders_sort_naturally(tmp_path: Path) -> None:
    for name in ("site_10", "site_2", "site_1"):
        _site(tmp_path, name)
    (tmp_path / "not_a_site").mkdir()

    assert list_sites(tmp_path) == ["site_1", "site_2", "site_10"]


def test_a_num_sites_mismatch_names_both_counts(tmp_path: Path) -> None:
    _site(tmp_path, "a")
    _site(tmp_path, "b")

    with pytest.raises(ConfigError, match=r"num_sites = 3 but .* holds 2 site\(s\) \(a, b\); set federation"):
        site_manifest(tmp_path, 0, 3)


def test_an_index_naming_a_missing_site_or_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    _site(tmp_path, "a")
    write_federation_index(tmp_path, ["a", "gone"])

    with pytest.raises(ManifestError, match=r"names site\(s\) gone without a manifest.csv"):
        list_sites(tmp_path)
    with pytest.raises(ManifestError, match=r"has no <site>/manifest\.csv"):
        list_sites(tmp_path / "a")
    with pytest.raises(ManifestError, match="does not exist; prepare it first"):
        list_sites(tmp_path / "nope")
