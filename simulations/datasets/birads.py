"""BI-RADS assessment -> finding, for datasets (INbreast, VinDr-Mammo) that grade images but have no biopsy."""

from __future__ import annotations

import re

__all__ = ["birads_finding"]


def birads_finding(value: str) -> str | None:
    """``1`` normal, ``2``/``3`` benign, ``4*``/``5``/``6`` malignant; ``0`` or unknown -> ``None`` (row dropped).

    BI-RADS 4 and 5 are "suspicious" rather than proven malignant: the standard proxy when a dataset
    has no pathology for every image (INbreast's and VinDr-Mammo's own papers use it), documented so a
    reader does not mistake it for biopsy truth. ``0`` means "needs more imaging" and has no class.
    """
    match = re.search(r"([0-6])", value or "")
    if match is None:
        return None
    grade = int(match.group(1))
    if grade == 0:
        return None
    return "normal" if grade == 1 else "benign" if grade <= 3 else "malignant"
