"""A secret of the site's own, mixed into the seeds of its DP-SGD noise, so the server cannot predict the noise.

Without ``privacy.secure_mode`` (Opacus' cryptographic generator needs ``torchcsprng``), DP-SGD draws its noise from
a generator seeded per site and round from the run's ``seed``, which the server sets. A hostile server could then
replay a site's training and subtract the noise. A real SuperNode therefore mixes in 32 random bytes kept beside its
privacy ledger and never sent. They stay the same across restarts, so a round trained again after a resume gives
the same update (which its ledger does not charge twice); a simulation, where the researcher is the server,
keeps the seeds reproducible from the run's seed alone.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["SECRET_FILE_NAME", "site_noise_secret"]

SECRET_FILE_NAME = "noise_seed.secret"
_SIZE = 32


def site_noise_secret(ledger: Path) -> bytes:
    """The site's secret, beside its ledger file: read it, or create it (mode 0600) the first time."""
    path = Path(ledger).expanduser().parent / SECRET_FILE_NAME
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes()
        if len(secret) != _SIZE:
            raise ValueError(f"{path} holds {len(secret)} bytes, not {_SIZE}: delete it to make a new secret") from None
        return secret
    secret = secrets.token_bytes(_SIZE)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
        handle.flush()
        os.fsync(handle.fileno())
    return secret
