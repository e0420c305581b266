"""The seed of the server's central-DP noise: set only by a local simulation, never by the run config."""

from __future__ import annotations

import os

__all__ = ["SIMULATION_NOISE_SEED_ENV", "simulation_noise_seed"]

SIMULATION_NOISE_SEED_ENV = "FEDMAMMO_SIMULATION_NOISE_SEED"
"""Environment variable the simulation launcher sets for its own SuperLink (and so its ServerApp process).

The run config reaches every ClientApp, so a noise seed taken from it would let any site regenerate the
server's Gaussian noise and subtract it from the released model, recovering the other sites' mean
update. An environment variable of the SuperLink's process never leaves the server's machine, and a
deployed SuperLink does not set it, so there the noise comes from numpy's OS-entropy seeding.
"""


def simulation_noise_seed() -> int | None:
    """The seed a local simulation asked for, or ``None`` (deployments: unpredictable noise)."""
    value = os.environ.get(SIMULATION_NOISE_SEED_ENV, "").strip()
    return int(value) % 2**32 if value.isdigit() else None  # numpy seeds are 0 ... 2**32 - 1
