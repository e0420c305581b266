"""The fixed vocabularies of subgroup values (view, laterality, density, vendor, age band) and the maps onto them.

Subgroup values leave the hospital as record keys, so they come only from these vocabularies, never from a free
text of a manifest or DICOM header (which could carry a name, a serial number or a site's own code).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

__all__ = [
    "AGE_BANDS",
    "DENSITY_GROUPS",
    "LATERALITY_GROUPS",
    "SUBGROUP_ATTRIBUTES",
    "SUBGROUP_VOCABULARIES",
    "VENDOR_GROUPS",
    "VIEW_GROUPS",
    "age_band",
    "density_group",
    "laterality_group",
    "vendor_group",
    "view_group",
]

SUBGROUP_ATTRIBUTES: tuple[str, ...] = ("view", "laterality", "density", "vendor", "age_band")
VIEW_GROUPS: tuple[str, ...] = ("CC", "MLO", "ML", "LM", "XCCL", "other")
LATERALITY_GROUPS: tuple[str, ...] = ("L", "R")
DENSITY_GROUPS: tuple[str, ...] = ("A", "B", "C", "D")
"""BI-RADS breast density (5th edition letters; the 4th edition's 1-4 map onto them)."""
AGE_BANDS: tuple[str, ...] = ("<40", "40-49", "50-59", "60-69", "70+")
VENDOR_GROUPS: tuple[str, ...] = (
    "Hologic", "GE", "Siemens", "Fujifilm", "Philips", "Sectra", "Agfa",
    "Konica Minolta", "Carestream", "IMS Giotto", "Planmed", "Metaltronica", "other",
)  # fmt: skip
SUBGROUP_VOCABULARIES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "view": VIEW_GROUPS,
        "laterality": LATERALITY_GROUPS,
        "density": DENSITY_GROUPS,
        "vendor": VENDOR_GROUPS,
        "age_band": AGE_BANDS,
    }
)
"""Every value each attribute may take (read-only); anything else is refused before it can leave a site."""
_VIEW_NAMES = {
    "CC": "CC", "CRANIOCAUDAL": "CC", "MLO": "MLO", "MEDIOLATERALOBLIQUE": "MLO", "ML": "ML", "MEDIOLATERAL": "ML",
    "LM": "LM", "LATEROMEDIAL": "LM", "XCCL": "XCCL", "CRANIOCAUDALEXAGGERATEDLATERALLY": "XCCL",
    "EXAGGERATEDCRANIOCAUDALLATERAL": "XCCL",
}  # fmt: skip
_DENSITY_WORDS = (("ALMOST ENTIRELY FAT", "A"), ("SCATTERED", "B"), ("HETEROGENEOUS", "C"), ("EXTREMELY DENSE", "D"))
_DENSITY_CODE = re.compile(r"(?:(?:ACR|BI-?RADS|DENSITY)[\s:_\-]*)*([A-D1-4])(?:$|[^A-Z0-9])")
_AGE = re.compile(r"(\d{1,3})\s*([YMWD]?)")
_AGE_UNITS = {"": 1.0, "Y": 1.0, "M": 12.0, "W": 365.25 / 7.0, "D": 365.25}
_VENDOR_PATTERNS = tuple(
    (group, re.compile(pattern))
    for group, pattern in (
        ("Hologic", r"HOLOGIC|LORAD"), ("GE", r"\bGE\b|GENERAL ELECTRIC"), ("Siemens", r"SIEMENS"),
        ("Fujifilm", r"FUJI"), ("Philips", r"PHILIPS"), ("Sectra", r"SECTRA"), ("Agfa", r"AGFA"),
        ("Konica Minolta", r"KONICA|MINOLTA"), ("Carestream", r"CARESTREAM|KODAK"), ("IMS Giotto", r"\bIMS\b|GIOTTO"),
        ("Planmed", r"PLANMED"), ("Metaltronica", r"METALTRONICA"),
    )
)  # fmt: skip


def _text(value: object) -> str:
    """Stripped upper-case text; '' for None and NaN (a blank cell of a pandas-read manifest)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip().upper()


def view_group(text: str | None) -> str | None:
    """Mammographic view: CC, MLO, ML, LM, XCCL from codes or DICOM code meanings ('cranio-caudal').

    A left/right prefix ('LCC', 'R-MLO', 'LEFT_CC') is dropped. Any other non-empty text is "other" (a spot
    or magnification view, Hologic's 'FLATFIELD'); empty is None.
    """
    code = re.sub(r"[\s_\-.]+", "", _text(text))
    if not code:
        return None
    if code in _VIEW_NAMES:
        return _VIEW_NAMES[code]
    side = re.fullmatch(r"(?:LEFT|RIGHT|L|R)(.+)", code)
    return _VIEW_NAMES.get(side.group(1), "other") if side else "other"


def laterality_group(text: str | None) -> str | None:
    """Laterality "L" or "R" from 'L', 'left', 'RIGHT', 'rt', ... in any case; None otherwise (blank, 'B')."""
    return {"L": "L", "LEFT": "L", "LT": "L", "R": "R", "RIGHT": "R", "RT": "R"}.get(_text(text))


def density_group(text: str | float | None) -> str | None:
    """BI-RADS breast density "A".."D" from 'a'..'d', 1..4, 'B - scattered ...', 'ACR C', 'extremely dense'.

    The rule: a whole number 1-4 is the 4th edition's category (1 = A); a letter A-D standing alone or followed
    by a separator (optionally after 'ACR', 'BI-RADS' or 'density') is the 5th edition's; the four BI-RADS
    descriptions are recognised by their first words. Anything else is None: CBIS-DDSM's 0, CDD-CESM's '_',
    and mini-MIAS's background tissue F/G ('fatty', 'fatty-glandular', 'dense-glandular'), which is a different
    scale and must not be passed as density; note its 'D' cannot be told apart from BI-RADS d here.
    """
    code = _text(text)
    try:
        number = float(code)
    except ValueError:
        number = math.nan
    if not math.isnan(number):
        return DENSITY_GROUPS[int(number) - 1] if number in (1.0, 2.0, 3.0, 4.0) else None
    for words, group in _DENSITY_WORDS:
        if code.startswith(words):
            return group
    match = _DENSITY_CODE.match(code)
    return "ABCD"["ABCD1234".index(match.group(1)) % 4] if match else None


def age_band(value: str | float | None) -> str | None:
    """Age band "<40", "40-49", "50-59", "60-69" or "70+" from years or a DICOM AS string ('052Y', '006M').

    None for blank, negative or unparseable input, and for ages under a year: no mammogram is taken of an infant,
    and anonymisers write placeholders such as '001D' (seen in real vendor headers), which must not fill "<40".
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | np.number):
        years = float(value)
    else:
        code = _text(value)
        match = _AGE.fullmatch(code)
        try:
            years = float(code) if match is None else float(match.group(1)) / _AGE_UNITS[match.group(2)]
        except ValueError:
            return None
    if not math.isfinite(years) or years < 1:
        return None
    return AGE_BANDS[min(4, max(0, int(years // 10) - 3))]


def vendor_group(manufacturer: str | None) -> str | None:
    """Mammography vendor of a DICOM (0008,0070) Manufacturer text, by case-insensitive substring.

    'HOLOGIC, Inc.' and 'LORAD' are Hologic, 'GE MEDICAL SYSTEMS' and 'GE Healthcare' GE, 'FUJI PHOTO FILM' and
    'FUJIFILM' Fujifilm, 'KODAK' Carestream (its former medical division), 'IMS' and 'Giotto' IMS Giotto. Any
    other non-empty text is "other"; empty is None.
    """
    text = _text(manufacturer).replace(".", "")
    if not text:
        return None
    return next((group for group, pattern in _VENDOR_PATTERNS if pattern.search(text)), "other")
