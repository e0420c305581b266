"""Detector simulation: blur, quantum (Poisson-like) and read-out noise, response curve, stored DICOM values."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from simulations.phantoms.scanners import ScannerProfile

__all__ = ["ATTENUATION_REFERENCE", "acquire"]

ATTENUATION_REFERENCE = 1.9
"""Attenuation shown at full brightness; denser pixels (calcifications) saturate, as on a real display."""

_EFFECTIVE_MU = 1.6


def acquire(
    attenuation: np.ndarray, profile: ScannerProfile, rng: np.random.Generator, *, scale: float = 1.0
) -> np.ndarray:
    """Turn an attenuation map into the scanner's stored pixel values (uint16, For Presentation).

    The chain mimics a processed digital mammogram: detector blur, photon counts with Poisson
    statistics (Gaussian approximation, so noise grows where dense tissue absorbs more quanta), log
    transform back to attenuation, the site's response curve (gamma or log), read-out noise, then
    linear mapping into the site's share of the stored range and MONOCHROME1 inversion where the
    site stores it that way. Every site therefore shows the same anatomy with its own intensities.

    Parameters
    ----------
    attenuation : numpy.ndarray
        2-D map, 0 outside the breast, about 0.45 (fat) to 1.9 (calcification).
    profile : ScannerProfile
        The site's scanner.
    rng : numpy.random.Generator
        Noise source (one per image).
    scale : float
        Matrix scale factor; blur is given at scale 1 and shrinks with the matrix.
    """
    blurred = ndimage.gaussian_filter(attenuation, sigma=max(profile.blur_px * scale, 0.3), mode="nearest")
    expected = profile.photons * np.exp(-_EFFECTIVE_MU * blurred)
    counts = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    measured = -np.log(np.maximum(counts, 1.0) / profile.photons) / _EFFECTIVE_MU
    level = np.clip(measured / ATTENUATION_REFERENCE, 0.0, 1.0)
    if profile.response == "log":
        display = np.log1p(profile.response_param * level) / np.log1p(profile.response_param)
    else:
        display = level**profile.response_param
    display = display + profile.electronic_noise * rng.standard_normal(display.shape, dtype=np.float32)
    display = np.clip(display, 0.0, 1.0)
    low, high = profile.stored_range()
    stored = np.rint(low + display * (high - low))
    return np.clip(stored, 0, profile.max_stored).astype(np.uint16)
