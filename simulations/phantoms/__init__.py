"""Synthetic "phantom hospitals": deterministic mammography DICOM sites, each with its own scanner."""

from __future__ import annotations

from simulations.phantoms.generate import (
    GENERATOR_VERSION,
    generate_configured_federation,
    generate_federation,
    generate_site,
)
from simulations.phantoms.scanners import ScannerProfile, scanner_profile

__all__ = [
    "GENERATOR_VERSION",
    "ScannerProfile",
    "generate_configured_federation",
    "generate_federation",
    "generate_site",
    "scanner_profile",
]
