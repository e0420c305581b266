"""Per-site scanner profiles: matrix size, spacing, bit depth, response curve, noise and DICOM pixel encoding."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from common.errors import ConfigError

__all__ = ["ScannerProfile", "scanner_profile"]


@dataclass(frozen=True)
class ScannerProfile:
    """How one phantom hospital's detector turns tissue attenuation into stored DICOM values.

    Attributes
    ----------
    manufacturer, model : str
        Written to (0008,0070) Manufacturer and (0008,1090) Manufacturer's Model Name.
    rows, cols : int
        Stored matrix size at ``matrix_scale=1``.
    pixel_spacing_mm : float
        (0028,0030) Pixel Spacing at ``matrix_scale=1`` (square pixels).
    bits_stored : int
        (0028,0101) Bits Stored, 12 to 16; Bits Allocated is always 16.
    photometric : str
        ``MONOCHROME2`` (bright = dense) or ``MONOCHROME1`` (stored values inverted).
    response : str
        ``"gamma"`` (display = attenuation ** gamma) or ``"log"`` (display = log1p(c * a) / log1p(c)).
    response_param : float
        The gamma exponent or the log curve's ``c``.
    photons : float
        Mean quanta per pixel without tissue; fewer quanta mean more Poisson-like noise.
    electronic_noise : float
        Gaussian read-out noise, as a fraction of the display range.
    blur_px : float
        Detector point-spread (Gaussian sigma in pixels at ``matrix_scale=1``).
    display_low, display_high : float
        Fractions of the stored range that display values 0 and 1 map to (the scanner's contrast).
    rescale_slope, rescale_intercept : float
        (0028,1053) / (0028,1052): modality value = stored * slope + intercept.
    """

    manufacturer: str
    model: str
    rows: int
    cols: int
    pixel_spacing_mm: float
    bits_stored: int
    photometric: str
    response: str
    response_param: float
    photons: float
    electronic_noise: float
    blur_px: float
    display_low: float
    display_high: float
    rescale_slope: float
    rescale_intercept: float

    @property
    def max_stored(self) -> int:
        """Largest stored value the bit depth allows."""
        return (1 << self.bits_stored) - 1

    def stored_range(self) -> tuple[int, int]:
        """Stored values that display values 0 (no tissue) and 1 (densest) map to; MONOCHROME1 swaps them."""
        low = round(self.display_low * self.max_stored)
        high = round(self.display_high * self.max_stored)
        return (self.max_stored - low, self.max_stored - high) if self.photometric == "MONOCHROME1" else (low, high)

    def window(self) -> tuple[float, float]:
        """(Window Center, Window Width) in modality values, covering background to the densest tissue."""
        ends = [s * self.rescale_slope + self.rescale_intercept for s in self.stored_range()]
        return (ends[0] + ends[1]) / 2.0, abs(ends[1] - ends[0]) * 1.02 + 1.0


_BASE_PROFILES: tuple[ScannerProfile, ...] = (
    ScannerProfile(
        manufacturer="Phantom Imaging Co.",
        model="Phantom Scanner A",
        rows=512,
        cols=416,
        pixel_spacing_mm=0.1,
        bits_stored=12,
        photometric="MONOCHROME2",
        response="gamma",
        response_param=0.85,
        photons=3000.0,
        electronic_noise=0.004,
        blur_px=0.7,
        display_low=0.02,
        display_high=0.92,
        rescale_slope=1.0,
        rescale_intercept=0.0,
    ),
    ScannerProfile(
        manufacturer="Phantom Imaging Co.",
        model="Phantom Scanner B",
        rows=576,
        cols=464,
        pixel_spacing_mm=0.085,
        bits_stored=14,
        photometric="MONOCHROME1",
        response="log",
        response_param=3.0,
        photons=1800.0,
        electronic_noise=0.007,
        blur_px=1.0,
        display_low=0.05,
        display_high=0.85,
        rescale_slope=0.5,
        rescale_intercept=-1024.0,
    ),
    ScannerProfile(
        manufacturer="Simulated Radiology Ltd.",
        model="Phantom Scanner C",
        rows=448,
        cols=368,
        pixel_spacing_mm=0.12,
        bits_stored=16,
        photometric="MONOCHROME2",
        response="gamma",
        response_param=1.3,
        photons=5000.0,
        electronic_noise=0.003,
        blur_px=0.5,
        display_low=0.1,
        display_high=0.7,
        rescale_slope=1.0,
        rescale_intercept=0.0,
    ),
)


def scanner_profile(site_index: int) -> ScannerProfile:
    """The scanner of phantom site ``site_index``; defined for every index.

    Sites 0-2 are hand-made (12-bit MONOCHROME2 gamma, 14-bit MONOCHROME1 log with a non-trivial
    rescale, 16-bit MONOCHROME2 gamma), so a federation of three already shows the heterogeneity a
    reader must undo. Later sites cycle through those three with deterministic jitter (drawn from the
    index alone, not the data seed) so every site keeps its own look however many sites are asked for.

    Raises
    ------
    ConfigError
        If ``site_index`` is negative.
    """
    if site_index < 0:
        raise ConfigError(f"phantom site_index = {site_index} must be >= 0 (site folders are site_0, site_1, ...)")
    base = _BASE_PROFILES[site_index % len(_BASE_PROFILES)]
    if site_index < len(_BASE_PROFILES):
        return base
    rng = np.random.default_rng(np.random.SeedSequence(entropy=site_index, spawn_key=(0xC0FFEE,)))
    rows = int(base.rows * rng.uniform(0.85, 1.15)) // 8 * 8
    cols = int(rows * rng.uniform(0.78, 0.84)) // 8 * 8
    bits = int(rng.choice([12, 14, 15, 16]))
    return dataclasses.replace(
        base,
        model=f"{base.model}-{site_index}",
        rows=rows,
        cols=cols,
        pixel_spacing_mm=round(float(np.clip(51.2 / rows, 0.07, 0.2)), 4),
        bits_stored=bits,
        photometric="MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2",
        response_param=float(base.response_param * rng.uniform(0.85, 1.15)),
        photons=float(base.photons * rng.uniform(0.6, 1.5)),
        electronic_noise=float(base.electronic_noise * rng.uniform(0.7, 1.4)),
        blur_px=float(base.blur_px * rng.uniform(0.8, 1.3)),
        display_low=float(rng.uniform(0.0, 0.1)),
        display_high=float(rng.uniform(0.7, 0.95)),
        rescale_slope=float(rng.choice([1.0, 0.5, 2.0])),
        rescale_intercept=float(rng.choice([0.0, -512.0, 100.0])),
    )
