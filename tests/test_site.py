"""One mapping from a node's config (real SuperNode or simulated partition) to the site it serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.site import resolve_site
from common.config import load_config
from common.errors import ConfigError, ManifestError


def test_a_real_supernode_names_its_manifest_site_and_ledger(tmp_path: Path) -> None:
    config = load_config({})

    site = resolve_site({"manifest": str(tmp_path / "a" / "m.csv"), "site-name": "hospital-a"}, config)
    custom = resolve_site({"manifest": str(tmp_path / "a" / "m.csv"), "ledger": str(tmp_path / "l.json")}, config)

    assert (site.name, site.manifest, site.ledger) == (
        "hospital-a",
        tmp_path / "a" / "m.csv",
        tmp_path / "a" / "privacy_ledger.json",
    )
    assert custom.name == "unnamed-site" and custom.ledger == tmp_path / "l.json"  # never the folder's name
    assert site.index == resolve_site({"manifest": "x.csv", "site-name": "hospital-a"}, config).index  # stable seed


def test_a_simulated_partition_maps_to_its_phantom_site(tmp_path: Path) -> None:
    (tmp_path / "site_1").mkdir()
    (tmp_path / "site_1" / "manifest.csv").write_text("image_path,label,patient_id\n")
    config = load_config({"federation.data_dir": str(tmp_path), "data.cache_dir": str(tmp_path / "cache")})

    site = resolve_site({"partition-id": 1, "num-partitions": 3}, config)

    assert (site.name, site.index, site.cache_dir) == ("site-1", 1, tmp_path / "cache")
    with pytest.raises(ManifestError, match="simulated site 2 has no manifest"):
        resolve_site({"partition-id": 2}, config)


def test_a_node_config_naming_no_site_says_how_to_fix_it() -> None:
    with pytest.raises(ConfigError, match=r"names no site: start the SuperNode with --node-config 'manifest="):
        resolve_site({"something": 1}, load_config({}))


def test_a_prepared_federation_maps_partitions_to_named_sites(tmp_path: Path) -> None:
    from common.data import write_federation_index

    for name in ("fatty", "dense"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.csv").write_text("image_path,label,patient_id\n")
    write_federation_index(tmp_path, ["fatty", "dense"])
    config = load_config({"federation.data_dir": str(tmp_path), "federation.synthetic": False,
                          "federation.num_sites": 2})  # fmt: skip
    wrong = load_config({"federation.data_dir": str(tmp_path), "federation.synthetic": False})

    site = resolve_site({"partition-id": 1, "num-partitions": 2}, config)

    assert (site.name, site.index, site.manifest) == ("dense", 1, tmp_path / "dense" / "manifest.csv")
    assert site.ledger == tmp_path / "dense" / "privacy_ledger.json"
    with pytest.raises(ConfigError, match=r"federation.num_sites = 3 but .* holds 2 site"):
        resolve_site({"partition-id": 0}, wrong)


def test_named_site_folders_without_an_index_are_taken_in_natural_order(tmp_path: Path) -> None:
    for name in ("b_hospital", "a_hospital"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.csv").write_text("image_path,label,patient_id\n")
    config = load_config({"federation.data_dir": str(tmp_path), "federation.synthetic": False,
                          "federation.num_sites": 2})  # fmt: skip

    names = [resolve_site({"partition-id": i}, config).name for i in (0, 1)]

    assert names == ["a_hospital", "b_hospital"]


def test_a_federation_prepared_for_other_classes_is_refused(tmp_path: Path) -> None:
    from common.data import write_federation_index

    for name in ("site_0", "site_1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.csv").write_text("image_path,label,patient_id\n")
    write_federation_index(tmp_path, ["site_0", "site_1"], {"task": "three-class", "num_classes": 3})
    base = {"federation.data_dir": str(tmp_path), "federation.synthetic": False, "federation.num_sites": 2}

    site = resolve_site({"partition-id": 0}, load_config({**base, "model.num_classes": 3}))

    assert site.name == "site_0"
    with pytest.raises(ConfigError, match=r"prepared with 3 classes .* model\.num_classes = 2; run with model\.num"):
        resolve_site({"partition-id": 0}, load_config(base))
