"""Patient-level train/val/test splits of a site: from the ``split`` column, or seeded and stratified."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from common.data.manifest import SPLITS, ManifestRow
from common.errors import ManifestError

__all__ = ["split_by_patient"]


def split_by_patient(
    rows: Sequence[ManifestRow], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[ManifestRow]]:
    """Split a site's images into train/val/test so that no patient is in two splits.

    Images of one patient are correlated (two views, two breasts, prior studies); putting them
    on both sides of a split inflates test metrics, so the unit of splitting is the patient.

    When every row has a ``split`` value it is used as given (a site's own curated split), after
    checking that no patient spans two splits. Otherwise patients are split with a seeded,
    order-independent shuffle, stratified by patient label (the max label of the patient's
    images), so the test split gets both classes when there are enough patients of each.
    With at least 3 patients each split gets at least one (val only when ``val_fraction > 0``).

    Parameters
    ----------
    rows : sequence of ManifestRow
        The validated manifest (see :func:`common.data.manifest.read_manifest`).
    val_fraction, test_fraction : float
        Target share of patients in val and test, each in [0, 1), summing to less than 1.
    seed : int
        Same seed and same patients give the same split, whatever the row order.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, each list sorted by row number.

    Raises
    ------
    ManifestError
        If some rows have a split and others do not, if a patient's rows name different splits
        (the message gives the row numbers, not the pseudonymous id), or the fractions are invalid.
    """
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ManifestError(
            f"split fractions val={val_fraction}, test={test_fraction} must each be in [0, 1) and sum to less than 1"
        )
    if not rows:
        return {name: [] for name in SPLITS}
    with_split = [row for row in rows if row.split]
    if with_split and len(with_split) < len(rows):
        missing = sorted(row.row_number for row in rows if not row.split)
        shown = ", ".join(str(n) for n in missing[:20]) + (" ..." if len(missing) > 20 else "")
        raise ManifestError(
            f"manifest column 'split' is filled on {len(with_split)} row(s) but empty on {len(missing)} "
            f"(lines {shown}); fill it on every row or leave it empty everywhere to split automatically"
        )
    by_patient: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_patient[row.patient_id].append(row)
    assignment = _explicit(by_patient) if with_split else _stratified(by_patient, val_fraction, test_fraction, seed)
    out: dict[str, list[ManifestRow]] = {name: [] for name in SPLITS}
    for patient, patient_rows in by_patient.items():
        out[assignment[patient]].extend(patient_rows)
    for name in SPLITS:
        out[name].sort(key=lambda row: row.row_number)
    return out


def _explicit(by_patient: dict[str, list[ManifestRow]]) -> dict[str, str]:
    conflicts = []
    assignment = {}
    for patient, patient_rows in by_patient.items():
        names = {row.split for row in patient_rows}
        if len(names) > 1:
            detail = ", ".join(f"line {row.row_number}: {row.split}" for row in sorted(patient_rows, key=_line))
            conflicts.append(f"one patient's rows name different splits ({detail})")
        assignment[patient] = min(names)
    if conflicts:
        raise ManifestError(
            "manifest column 'split' puts a patient in more than one split, which leaks that patient between "
            "training and evaluation; give all rows of a patient the same split:\n  " + "\n  ".join(conflicts)
        )
    return assignment


def _stratified(
    by_patient: dict[str, list[ManifestRow]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    strata: dict[int, list[str]] = defaultdict(list)
    for patient, patient_rows in by_patient.items():
        strata[max(row.label for row in patient_rows)].append(patient)
    groups: dict[str, list[tuple[int, str]]] = {name: [] for name in SPLITS}  # (label, patient)
    for label in sorted(strata):
        patients = sorted(strata[label], key=lambda p: _shuffle_key(seed, p))
        count = len(patients)
        n_test = _round(test_fraction * count)
        if count >= 2 and test_fraction > 0:
            n_test = max(n_test, 1)  # so the test split sees every class that has patients to spare
        n_val = _round(val_fraction * count)
        n_test = min(n_test, max(count - 1, 0))
        n_val = min(n_val, max(count - 1 - n_test, 0))
        groups["test"] += [(label, p) for p in patients[:n_test]]
        groups["val"] += [(label, p) for p in patients[n_test : n_test + n_val]]
        groups["train"] += [(label, p) for p in patients[n_test + n_val :]]
    if len(by_patient) >= 3:
        wanted = ["test"] + (["val"] if val_fraction > 0 else [])
        for name in wanted:
            if not groups[name]:
                groups[name].append(_take_one(groups, donor="train", seed=seed))
        if not groups["train"]:
            groups["train"].append(_take_one(groups, donor=max(wanted, key=lambda n: len(groups[n])), seed=seed))
    return {patient: name for name, members in groups.items() for _, patient in members}


def _take_one(groups: dict[str, list[tuple[int, str]]], *, donor: str, seed: int) -> tuple[int, str]:
    """Move one patient out of ``donor``, from its most common label, chosen by the seeded order."""
    members = groups[donor]
    counts: dict[int, int] = defaultdict(int)
    for label, _ in members:
        counts[label] += 1
    label = max(sorted(counts), key=lambda k: counts[k])
    chosen = max((m for m in members if m[0] == label), key=lambda m: _shuffle_key(seed, m[1]))
    members.remove(chosen)
    return chosen


def _shuffle_key(seed: int, patient: str) -> str:
    """A seeded pseudo-random order that depends only on (seed, patient), never on row order or platform."""
    return hashlib.sha256(f"{seed}\x00{patient}".encode()).hexdigest()


def _round(value: float) -> int:
    return int(value + 0.5)


def _line(row: ManifestRow) -> int:
    return row.row_number
