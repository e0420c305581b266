"""Typed exceptions, one per failure kind, each naming the offending file or key."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DicomError",
    "FedMammoError",
    "ManifestError",
    "ModelError",
    "PrivacyBudgetExceeded",
]


class FedMammoError(Exception):
    """Base of every error this project raises on purpose.

    Subclasses also derive from the builtin that fits, so callers that only know
    ``ValueError`` or ``RuntimeError`` still catch them (as Opacus' validator errors do).
    """


class ConfigError(FedMammoError, ValueError):
    """A configuration key is missing, unknown, of the wrong type or out of range."""


class ManifestError(FedMammoError, ValueError):
    """A site manifest (CSV) is missing, malformed, or one of its rows is invalid."""


class DicomError(FedMammoError, ValueError):
    """A file could not be read as a usable mammogram (not DICOM, no pixels, wrong modality...)."""


class ModelError(FedMammoError, ValueError):
    """A model name is unknown, or weights do not match the architecture."""


class PrivacyBudgetExceeded(FedMammoError, RuntimeError):
    """Training another round would spend more than the site's (epsilon, delta) budget."""
