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
    # Automatic exposure control and per-image processing vary from exposure to exposure, even on one scanner.
    photons = profile.photons * rng.uniform(0.7, 1.3)
    curve = profile.response_param * rng.uniform(0.9, 1.1)
    expected = photons * np.exp(-_EFFECTIVE_MU * blurred)
    counts = expected + np.sqrt(expected) * rng.standard_normal(expected.shape, dtype=np.float32)
    measured = -np.log(np.maximum(counts, 1.0) / photons) / _EFFECTIVE_MU
    level = np.clip(measured / ATTENUATION_REFERENCE, 0.0, 1.0)
    display = np.log1p(curve * level) / np.log1p(curve) if profile.response == "log" else level**curve
    display = display + profile.electronic_noise * rng.standard_normal(display.shape, dtype=np.float32)
    display = np.clip(display, 0.0, 1.0)
    low, high = profile.stored_range()
    stored = np.rint(low + display * (high - low))
    return np.clip(stored, 0, profile.max_stored).astype(np.uint16)
