"""Split a pooled manifest into N sites at patient level: IID, Dirichlet label skew, or quantity skew."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.errors import ConfigError

__all__ = ["DIRICHLET", "IID", "MIN_SITE_PATIENTS", "QUANTITY", "SCHEMES", "partition_patients"]

MIN_SITE_PATIENTS = 3
"""Fewest patients a site may have: at least one each for its train, val and test splits."""

IID = "iid"
"""Patients dealt at random: every site sees about the same size and label mix."""
DIRICHLET = "dirichlet"
"""Label skew: each class's patients are spread over sites by proportions ~ Dirichlet(alpha)."""
QUANTITY = "quantity"
"""Quantity skew: site sizes ~ Dirichlet(alpha), label mix about the same."""
SCHEMES = (IID, DIRICHLET, QUANTITY)

_MAX_DRAWS = 1000


def _patients(rows: Sequence[dict[str, object]]) -> tuple[list[str], dict[str, int]]:
    """Patient ids in first-seen order and each patient's label (the worst over their images)."""
    labels: dict[str, int] = {}
    for row in rows:
        patient = str(row["patient_id"])
        labels[patient] = max(labels.get(patient, 0), int(row["label"]))  # type: ignore[call-overload]
    return list(labels), labels


def _cut(patients: list[str], proportions: np.ndarray) -> list[list[str]]:
    bounds = (np.cumsum(proportions)[:-1] * len(patients)).round().astype(int)
    return [list(chunk) for chunk in np.split(np.asarray(patients, dtype=object), bounds)]


def _assign(scheme: str, patients: list[str], labels: dict[str, int], n: int, alpha: float,
            rng: np.random.Generator) -> list[list[str]]:  # fmt: skip
    order = [patients[i] for i in rng.permutation(len(patients))]
    if scheme == IID:
        return [order[i::n] for i in range(n)]
    if scheme == QUANTITY:
        return _cut(order, rng.dirichlet(np.full(n, alpha)))
    sites: list[list[str]] = [[] for _ in range(n)]
    for label in sorted(set(labels.values())):
        members = [p for p in order if labels[p] == label]
        for site, chunk in zip(sites, _cut(members, rng.dirichlet(np.full(n, alpha))), strict=True):
            site.extend(chunk)
    return sites


def partition_patients(
    rows: Sequence[dict[str, object]],
    num_sites: int,
    *,
    scheme: str = IID,
    alpha: float = 0.5,
    seed: int = 42,
    min_patients: int = MIN_SITE_PATIENTS,
) -> list[list[dict[str, object]]]:
    """Rows of each of ``num_sites`` sites; a patient's images always land in one site.

    Splitting by image would put one patient's films in two hospitals, which no real federation has
    and which leaks between a site's training and another's test data. Proportions are redrawn
    (seeded) until every site has ``min_patients`` patients (enough for its own train/val/test split).

    Parameters
    ----------
    scheme
        ``iid``, ``dirichlet`` (label skew; smaller ``alpha`` = more skew) or ``quantity`` (size skew).
    alpha
        Dirichlet concentration, > 0; ignored by ``iid``.

    Raises
    ------
    ConfigError
        If the scheme or alpha is invalid, or there are too few patients for every site to get
        ``min_patients`` (the message says how many there are).
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"partition scheme {scheme!r} is not one of {', '.join(SCHEMES)}")
    if alpha <= 0:
        raise ConfigError(f"partition alpha = {alpha} must be > 0 (smaller is more skewed)")
    patients, labels = _patients(rows)
    if num_sites < 1 or len(patients) < num_sites * min_patients:
        raise ConfigError(
            f"{len(patients)} patient(s) cannot fill {num_sites} site(s) with at least {min_patients} each; "
            "use fewer sites"
        )
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DRAWS):
        sites = _assign(scheme, patients, labels, num_sites, alpha, rng)
        if min(len(site) for site in sites) >= min_patients:
            break
    else:
        raise ConfigError(
            f"{_MAX_DRAWS} draws of the {scheme} partition (alpha={alpha}) all left a site with fewer than "
            f"{min_patients} patients; raise alpha or use fewer sites"
        )
    where = {patient: index for index, site in enumerate(sites) for patient in site}
    out: list[list[dict[str, object]]] = [[] for _ in range(num_sites)]
    for row in rows:
        out[where[str(row["patient_id"])]].append(row)
    return out
