"""Patient-level partitioners: no patient in two sites, every row kept, seeded, and skew that follows alpha."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import ConfigError
from simulations.datasets.partition import DIRICHLET, IID, QUANTITY, SCHEMES, partition_patients


def _pooled(num_patients: int = 120, seed: int = 0) -> list[dict[str, object]]:
    """Two images per patient; about a third of patients positive."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient in range(num_patients):
        label = int(rng.random() < 0.35)
        rows += [{"image_path": f"p{patient}_{side}.png", "patient_id": f"P{patient}", "label": label} for side in "LR"]
    return rows


def _label_skew(sites: list[list[dict[str, object]]]) -> float:
    """Mean absolute gap between each site's positive rate and the pooled rate."""
    pooled = np.mean([r["label"] for site in sites for r in site])
    return float(np.mean([abs(np.mean([r["label"] for r in site]) - pooled) for site in sites]))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_row_is_kept_and_no_patient_spans_two_sites(scheme: str) -> None:
    rows = _pooled()

    sites = partition_patients(rows, 4, scheme=scheme, alpha=0.5, seed=1)

    patients = [{r["patient_id"] for r in site} for site in sites]
    assert sum(len(site) for site in sites) == len(rows)
    assert sorted(id(r) for site in sites for r in site) == sorted(id(r) for r in rows)
    assert all(a.isdisjoint(b) for i, a in enumerate(patients) for b in patients[i + 1 :])
    assert min(len(p) for p in patients) >= 3


def test_same_seed_same_partition_other_seed_other_partition() -> None:
    rows = _pooled()

    first = partition_patients(rows, 3, scheme=DIRICHLET, alpha=0.5, seed=7)
    again = partition_patients(rows, 3, scheme=DIRICHLET, alpha=0.5, seed=7)
    other = partition_patients(rows, 3, scheme=DIRICHLET, alpha=0.5, seed=8)

    assert first == again and first != other


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    rows = _pooled(200)

    skewed = np.mean([_label_skew(partition_patients(rows, 4, scheme=DIRICHLET, alpha=0.1, seed=s)) for s in range(8)])
    even = np.mean([_label_skew(partition_patients(rows, 4, scheme=DIRICHLET, alpha=100.0, seed=s)) for s in range(8)])

    assert skewed > 2 * even


def test_quantity_skew_spreads_sizes_iid_keeps_them_even() -> None:
    rows = _pooled(200)

    quantity = [len(site) for site in partition_patients(rows, 4, scheme=QUANTITY, alpha=0.3, seed=3)]
    iid = [len(site) for site in partition_patients(rows, 4, scheme=IID, seed=3)]

    assert max(iid) - min(iid) <= 2 and max(quantity) - min(quantity) > 20


def test_bad_requests_say_what_is_wrong() -> None:
    rows = _pooled(10)

    with pytest.raises(ConfigError, match="is not one of iid, dirichlet, quantity"):
        partition_patients(rows, 2, scheme="random")
    with pytest.raises(ConfigError, match="alpha = 0 must be > 0"):
        partition_patients(rows, 2, scheme=DIRICHLET, alpha=0)
    with pytest.raises(ConfigError, match=r"10 patient\(s\) cannot fill 4 site\(s\) with at least 3 each"):
        partition_patients(rows, 4)
