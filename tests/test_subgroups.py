"""Tests for common.metrics.subgroups: fixed vocabularies, per-subgroup metrics, pooling and flat records."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MetricRecord

from common.metrics import (
    SUBGROUP_METRIC_KEYS,
    VENDOR_GROUPS,
    ScoreHistogram,
    age_band,
    density_group,
    laterality_group,
    pooled_subgroup_metrics,
    subgroup_metrics,
    subgroups_from_flat,
    subgroups_to_flat,
    vendor_group,
    view_group,
)
from tests.conftest import SHARED_DATA

OPENREM = Path(os.environ.get("FEDMAMMO_SHARED_DATA", SHARED_DATA)) / "openrem_mg_header_fixtures"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CC", "CC"), ("mlo", "MLO"), ("MLO ", "MLO"), ("ML", "ML"), ("LM", "LM"), ("XCCL", "XCCL"),
        ("cranio-caudal", "CC"), ("medio-lateral oblique", "MLO"), ("latero-medial", "LM"),
        ("cranio-caudal exaggerated laterally", "XCCL"), ("LCC", "CC"), ("R-MLO", "MLO"), ("LEFT_CC", "CC"),
        ("FLATFIELD", "other"), ("spot compression", "other"), ("", None), (None, None),
    ],
)  # fmt: skip
def test_view_group(text: str | None, expected: str | None) -> None:
    assert view_group(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("L", "L"), ("left", "L"), ("LEFT", "L"), ("r", "R"), ("Right", "R"), ("B", None), ("", None), (None, None)],
)
def test_laterality_group(text: str | None, expected: str | None) -> None:
    assert laterality_group(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", "A"), ("D", "D"), ("1", "A"), ("4", "D"), (3, "C"), ("A - almost entirely fatty", "A"),
        ("b: scattered fibroglandular", "B"), ("ACR C", "C"), ("heterogeneously dense", "C"),
        ("extremely dense", "D"), ("0", None), ("5", None), ("_", None), ("", None), (None, None),
        # mini-MIAS background tissue is another scale: fatty / fatty-glandular / dense-glandular.
        ("F", None), ("G", None), ("Fatty-glandular", None), ("Dense-glandular", None),
    ],
)  # fmt: skip
def test_density_group(text: str | int | None, expected: str | None) -> None:
    assert density_group(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("052Y", "50-59"), ("039Y", "<40"), ("040Y", "40-49"), ("069Y", "60-69"), ("100Y", "70+"), ("001D", None),
        ("006M", None), ("010W", None), ("001Y", "<40"), (45, "40-49"), (49.9, "40-49"), ("70", "70+"), ("", None),
        (None, None),
        ("unknown", None), (-3, None), (float("nan"), None),
    ],
)  # fmt: skip
def test_age_band(value: str | float | None, expected: str | None) -> None:
    assert age_band(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GE MEDICAL SYSTEMS", "GE"), ("GE Healthcare", "GE"), ("HOLOGIC, Inc.", "Hologic"), ("LORAD", "Hologic"),
        ("SIEMENS", "Siemens"), ("FUJIFILM Corporation", "Fujifilm"), ("FUJI PHOTO FILM Co., ltd.", "Fujifilm"),
        ("Philips Medical Systems", "Philips"), ("Sectra Imtec AB", "Sectra"), ("AGFA-Gevaert", "Agfa"),
        ("KONICA MINOLTA", "Konica Minolta"), ("Carestream Health", "Carestream"), ("I.M.S.", "IMS Giotto"),
        ("Planmed Oy", "Planmed"), ("METALTRONICA", "Metaltronica"), ("Acme Imaging", "other"),
        ("Trims Medical", "other"), ("", None),  # 'IMS' and 'GE' count only as whole words
    ],
)  # fmt: skip
def test_vendor_group(text: str, expected: str | None) -> None:
    assert vendor_group(text) == expected


@pytest.mark.skipif(not OPENREM.is_dir(), reason="no shared OpenREM headers")
def test_real_vendor_headers_map_onto_the_vocabularies() -> None:
    # Prepare
    import pydicom

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(OPENREM.glob("*.dcm"))]

    # Execute
    vendors = {h.Manufacturer: vendor_group(h.Manufacturer) for h in headers}
    sides = {laterality_group(h.get("ImageLaterality") or h.get("Laterality")) for h in headers}
    ages = {age_band(h.get("PatientAge")) for h in headers}

    # Assert
    assert vendors == {"GE MEDICAL SYSTEMS": "GE", "HOLOGIC, Inc.": "Hologic"}
    assert sides == {"L", "R"}
    assert ages == {None, "70+"}  # '001D' is an anonymiser's placeholder, '100Y' a real age


def test_phantom_scanners_map_to_no_real_vendor() -> None:
    from simulations.phantoms.scanners import scanner_profile

    groups = {vendor_group(scanner_profile(i).manufacturer) for i in range(3)}

    assert groups == {"other"}


def _site(n: int, seed: int, vendors: list[str | None] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0.0, 1.0)
    groups = {
        "view": rng.choice(["CC", "MLO"], n).tolist(),
        "laterality": rng.choice(["L", "R"], n).tolist(),
        "vendor": vendors if vendors is not None else ["GE"] * n,
        "density": [None] * n,
    }
    return labels, scores, groups


def test_group_under_min_count_reports_its_size_only() -> None:
    # Prepare: 85 GE images and 5 Hologic ones, 11 images of unknown vendor.
    labels, scores, groups = _site(101, seed=1, vendors=["GE"] * 85 + ["Hologic"] * 5 + [None] * 11)

    # Execute
    report = subgroup_metrics(labels, scores, groups, min_count=10, resamples=50)
    flat = subgroups_to_flat(report, "sub/")

    # Assert
    assert report.metrics["vendor"]["Hologic"] == {"num_examples": 5, "too_small": True}
    assert ("vendor", "Hologic") not in report.histograms
    assert {k for k in flat if k.startswith("sub/vendor=Hologic.")} == {
        "sub/vendor=Hologic.num_examples",
        "sub/vendor=Hologic.too_small",
    }
    assert tuple(report.metrics["vendor"]["GE"]) == SUBGROUP_METRIC_KEYS
    assert report.metrics["vendor"]["GE"]["num_examples"] == 85
    assert "density" not in report.metrics  # every value unknown


def test_reported_group_matches_its_own_binary_metrics() -> None:
    # Prepare
    labels, scores, groups = _site(200, seed=2)
    cc = np.array(groups["view"]) == "CC"

    # Execute
    entry = subgroup_metrics(labels, scores, groups, min_count=10, resamples=0).metrics["view"]["CC"]

    # Assert
    from sklearn.metrics import roc_auc_score

    assert entry["auc"] == pytest.approx(roc_auc_score(labels[cc], scores[cc]))
    assert entry["sensitivity"] == pytest.approx(((scores[cc] >= 0.5) & (labels[cc] == 1)).sum() / labels[cc].sum())
    assert entry["num_positives"] + entry["num_negatives"] == entry["num_examples"] == cc.sum()


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        ({"hospital": ["x"] * 4}, "must be one of"),
        ({"vendor": ["GE MEDICAL SYSTEMS"] * 4}, "outside its fixed vocabulary"),
        ({"view": ["CC"] * 3}, "one per image"),
    ],
)
def test_malformed_groups_raise(groups: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        subgroup_metrics(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8]), groups, min_count=1)


def test_flat_round_trip_through_a_metric_record() -> None:
    # Prepare
    labels, scores, groups = _site(80, seed=3, vendors=["Hologic"] * 70 + ["Siemens"] * 10)
    report = subgroup_metrics(labels, scores, groups, min_count=20, resamples=50)

    # Execute
    record = MetricRecord({"auc": 0.5, **subgroups_to_flat(report, "sub/")})
    restored = subgroups_from_flat("sub/", dict(record))

    # Assert
    assert restored.metrics == report.metrics
    assert restored.histograms == report.histograms
    assert restored.metrics["vendor"]["Siemens"] == {"num_examples": 10, "too_small": True}


def test_from_flat_refuses_a_value_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        subgroups_from_flat("sub/", {"sub/vendor=Acme Corp.num_examples": 3})


def test_pooled_subgroups_equal_subgroups_of_the_concatenated_data() -> None:
    # Prepare
    sites = [_site(300, seed=4), _site(250, seed=5)]
    reports = [subgroup_metrics(*site, min_count=20, resamples=0) for site in sites]
    labels = np.concatenate([s[0] for s in sites])
    scores = np.concatenate([s[1] for s in sites])
    groups = {key: sites[0][2][key] + sites[1][2][key] for key in sites[0][2]}
    concatenated = subgroup_metrics(labels, scores, groups, min_count=20, resamples=0)

    # Execute
    pooled = pooled_subgroup_metrics(reports, min_count=20, resamples=0)

    # Assert
    for attribute in ("view", "laterality", "vendor"):
        for value, expected in concatenated.metrics[attribute].items():
            got = pooled[attribute][value]
            assert (got["num_sites"], got["num_withheld"]) == (2, 0)
            for key in ("num_examples", "num_positives", "num_negatives", "sensitivity", "specificity"):
                assert got[key] == pytest.approx(expected[key])
            assert got["auc"] == pytest.approx(expected["auc"], abs=0.01)  # binned AUC, ~0.1 logit bins
            pooled_histogram = ScoreHistogram.pooled([r.histograms[(attribute, value)] for r in reports])
            assert pooled_histogram == concatenated.histograms[(attribute, value)]


def test_pooled_subgroup_leaves_out_sites_where_it_was_too_small() -> None:
    # Prepare: Siemens reaches the minimum at site A only; Hologic at no site.
    site_a = _site(130, seed=6, vendors=["Siemens"] * 100 + ["Hologic"] * 20 + [None] * 10)
    site_b = _site(60, seed=7, vendors=["Siemens"] * 15 + ["Hologic"] * 15 + ["GE"] * 30)
    reports = [subgroup_metrics(*site, min_count=25, resamples=0) for site in (site_a, site_b)]

    # Execute
    pooled = pooled_subgroup_metrics(reports, min_count=25, resamples=0)["vendor"]

    # Assert
    assert (pooled["Siemens"]["num_examples"], pooled["Siemens"]["num_sites"]) == (100, 1)
    assert pooled["Siemens"]["num_withheld"] == 15
    assert pooled["Hologic"] == {"num_examples": 0, "too_small": True, "num_withheld": 35}
    assert math.isfinite(pooled["GE"]["auc"])
    assert set(pooled) <= set(VENDOR_GROUPS)


def test_no_small_group_can_be_had_by_subtracting_reported_groups_from_the_whole() -> None:
    # Prepare: 37 left and 3 right images; the site sends the whole split's histogram besides its subgroups.
    labels, scores, _ = _site(40, seed=9, vendors=[None] * 40)
    sides = ["L"] * 37 + ["R"] * 3

    # Execute
    report = subgroup_metrics(labels, scores, {"laterality": sides}, min_count=10, resamples=0)

    # Assert: "L" alone would give away "R" (whole minus L); both are held back, L marked as withheld.
    assert report.metrics["laterality"]["R"] == {"num_examples": 3, "too_small": True}
    assert report.metrics["laterality"]["L"] == {"num_examples": 37, "too_small": True, "withheld": True}
    assert not report.histograms
    restored = subgroups_from_flat("s/", subgroups_to_flat(report, "s/"))
    assert restored.metrics == report.metrics


def test_the_remainder_outside_reported_groups_is_none_or_at_least_the_minimum() -> None:
    # Prepare: many draws of group sizes with unknown values mixed in.
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(10, 80))
        pool = np.array(["CC", "MLO", "ML", "LM", None], dtype=object)
        views = list(rng.choice(pool, size=n, p=rng.dirichlet(np.ones(5))))
        labels, scores, _ = _site(n, seed=int(rng.integers(1000)), vendors=[None] * n)

        # Execute
        report = subgroup_metrics(labels, scores, {"view": views}, min_count=8, resamples=0)

        # Assert
        reported = sum(h.num_positives + h.num_negatives for h in report.histograms.values())
        assert n - reported == 0 or n - reported >= 8
