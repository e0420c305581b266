"""client.noise_secret: a real site's DP noise seeds take a secret the server cannot know; a simulation's do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.noise_secret import SECRET_FILE_NAME, site_noise_secret
from client.site import resolve_site
from client.task import _site_seed, round_seed
from common.config import load_config


def test_the_secret_is_made_once_kept_private_and_read_back(tmp_path: Path) -> None:
    ledger = tmp_path / "site" / "privacy_ledger.json"
    ledger.parent.mkdir()

    first = site_noise_secret(ledger)

    assert len(first) == 32 and site_noise_secret(ledger) == first
    assert (ledger.parent / SECRET_FILE_NAME).stat().st_mode & 0o777 == 0o600
    (ledger.parent / SECRET_FILE_NAME).write_bytes(b"short")
    with pytest.raises(ValueError, match="holds 5 bytes, not 32"):
        site_noise_secret(ledger)


def test_a_deployed_sites_seed_is_not_the_one_the_server_could_compute(tiny_federation: Path, tmp_path: Path) -> None:
    config = load_config({"federation.data_dir": str(tiny_federation), "federation.num_sites": 2, "seed": 3})
    manifest = tiny_federation / "site_0" / "manifest.csv"
    ledger = tmp_path / "ledger.json"
    deployed = resolve_site({"manifest": str(manifest), "site-name": "a", "ledger": str(ledger)}, config)
    simulated = resolve_site({"partition-id": 0, "num-partitions": 2}, config)

    server_guess = round_seed(config.seed, deployed.index, 4)  # all the server knows: the run's seed, the round
    assert deployed.deployed and not simulated.deployed
    assert _site_seed(config, deployed, 4) != server_guess
    assert _site_seed(config, deployed, 4) == _site_seed(config, deployed, 4)  # a round trained again: same noise
    assert _site_seed(config, simulated, 4) == round_seed(config.seed, simulated.index, 4)  # reproducible
    assert (tmp_path / SECRET_FILE_NAME).is_file()
