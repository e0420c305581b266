"""Tests of common.data.splits: patient-level splits, stratification, determinism, explicit split column."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data import ManifestRow, split_by_patient
from common.errors import ManifestError


def make_rows(labels_per_patient: dict[str, list[int]], splits: dict[str, str] | None = None) -> list[ManifestRow]:
    rows = []
    line = 2
    for patient, labels in labels_per_patient.items():
        for index, label in enumerate(labels):
            split = (splits or {}).get(patient, "")
            rows.append(ManifestRow(Path(f"/data/{patient}_{index}.dcm"), label, patient, line, split=split))
            line += 1
    return rows


def site(num_patients: int, num_malignant: int) -> dict[str, list[int]]:
    """Each patient has 2-4 images; the first ``num_malignant`` patients have one malignant image."""
    return {f"p{i:03d}": [0] * (1 + i % 3) + ([1] if i < num_malignant else []) for i in range(num_patients)}


def patients_of(rows: list[ManifestRow]) -> set[str]:
    return {row.patient_id for row in rows}


def test_no_patient_in_two_splits_and_every_row_kept() -> None:
    # Prepare
    rows = make_rows(site(40, 10))
    # Execute
    result = split_by_patient(rows, val_fraction=0.15, test_fraction=0.25, seed=7)
    # Assert
    train, val, test = (patients_of(result[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert sorted(r.row_number for k in result for r in result[k]) == sorted(r.row_number for r in rows)
    assert len(test) == pytest.approx(10, abs=1) and len(val) == pytest.approx(6, abs=1)


def test_stratified_by_patient_label() -> None:
    # Prepare: 20 of 80 patients malignant
    rows = make_rows(site(80, 20))
    # Execute
    result = split_by_patient(rows, val_fraction=0.15, test_fraction=0.25, seed=3)
    # Assert: every split's malignant share of patients is near 25 %
    for name in ("train", "val", "test"):
        patients = patients_of(result[name])
        malignant = {r.patient_id for r in result[name] if r.label == 1}
        assert len(malignant) / len(patients) == pytest.approx(0.25, abs=0.06), name


def test_test_split_gets_both_classes_when_few_malignant() -> None:
    rows = make_rows(site(12, 2))
    result = split_by_patient(rows, val_fraction=0.15, test_fraction=0.25, seed=0)
    assert {r.label for r in result["test"]} == {0, 1}
    assert {r.label for r in result["train"]} == {0, 1}


def test_deterministic_and_independent_of_row_order() -> None:
    # Prepare
    rows = make_rows(site(30, 8))
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    # Execute
    a = split_by_patient(rows, val_fraction=0.2, test_fraction=0.2, seed=11)
    b = split_by_patient(shuffled, val_fraction=0.2, test_fraction=0.2, seed=11)
    c = split_by_patient(rows, val_fraction=0.2, test_fraction=0.2, seed=12)
    # Assert
    assert a == b
    assert patients_of(a["test"]) != patients_of(c["test"])


@pytest.mark.parametrize("num_patients", [3, 4, 5])
def test_small_sites_get_a_patient_in_every_split(num_patients: int) -> None:
    rows = make_rows(site(num_patients, 1))
    result = split_by_patient(rows, val_fraction=0.15, test_fraction=0.25, seed=5)
    assert all(patients_of(result[name]) for name in ("train", "val", "test"))


def test_zero_val_fraction_leaves_val_empty() -> None:
    result = split_by_patient(make_rows(site(10, 3)), val_fraction=0.0, test_fraction=0.3, seed=5)
    assert result["val"] == [] and result["train"] and result["test"]


def test_explicit_split_column_is_respected() -> None:
    # Prepare
    labels = site(6, 2)
    chosen = {"p000": "test", "p001": "train", "p002": "val", "p003": "train", "p004": "train", "p005": "test"}
    rows = make_rows(labels, chosen)
    # Execute
    result = split_by_patient(rows, val_fraction=0.15, test_fraction=0.25, seed=0)
    # Assert
    assert patients_of(result["test"]) == {"p000", "p005"}
    assert patients_of(result["val"]) == {"p002"}
    assert patients_of(result["train"]) == {"p001", "p003", "p004"}


def test_patient_in_two_explicit_splits_names_rows_not_patient() -> None:
    # Prepare: patient p001's second image is marked test while the first is train
    rows = make_rows({"p000": [0], "p001": [0, 1]}, {"p000": "train", "p001": "train"})
    rows[2] = ManifestRow(rows[2].image_path, 1, "p001", rows[2].row_number, split="test")
    # Execute / Assert
    with pytest.raises(ManifestError, match=r"line 3: train, line 4: test") as info:
        split_by_patient(rows, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert "p001" not in str(info.value)


def test_partially_filled_split_column_is_an_error() -> None:
    rows = make_rows({"p000": [0], "p001": [1], "p002": [0]}, {"p000": "train"})
    with pytest.raises(ManifestError, match=r"filled on 1 row\(s\) but empty on 2 \(lines 3, 4\)"):
        split_by_patient(rows, val_fraction=0.1, test_fraction=0.2, seed=0)


def test_invalid_fractions() -> None:
    with pytest.raises(ManifestError, match="sum to less than 1"):
        split_by_patient(make_rows(site(5, 1)), val_fraction=0.5, test_fraction=0.5, seed=0)


@settings(max_examples=150, deadline=None)
@given(
    num_patients=st.integers(1, 25),
    malignant_share=st.floats(0.0, 1.0),
    val_fraction=st.sampled_from([0.0, 0.1, 0.15, 0.3]),
    test_fraction=st.sampled_from([0.05, 0.25, 0.5]),
    seed=st.integers(0, 1000),
)
def test_split_properties(
    num_patients: int, malignant_share: float, val_fraction: float, test_fraction: float, seed: int
) -> None:
    # Prepare
    rows = make_rows(site(num_patients, round(malignant_share * num_patients)))
    # Execute
    result = split_by_patient(rows, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    # Assert: a partition of the rows by patient, every split populated when the site allows it
    groups = [patients_of(result[name]) for name in ("train", "val", "test")]
    assert sum(len(g) for g in groups) == num_patients
    assert sum(len(result[name]) for name in result) == len(rows)
    assert groups[0], "train is never empty"
    if num_patients >= 3:
        assert groups[2], "test"
        assert bool(groups[1]) == (val_fraction > 0), "val"
