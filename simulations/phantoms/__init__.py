"""Synthetic "phantom hospitals": deterministic mammography DICOM sites, each with its own scanner.

Each name below imports its submodule on first use (`common.lazy_exports`).
"""

from common.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "simulations.phantoms.generate": (
            "GENERATOR_VERSION",
            "generate_configured_federation",
            "generate_federation",
            "generate_site",
        ),
        "simulations.phantoms.scanners": (
            "ScannerProfile",
            "scanner_profile",
        ),
    },
)
