"""The SHA-256 of the app bundle Flower builds from a folder: the digest a hospital approves in its policy.

``flwr run APP`` and ``flwr build`` zip the same files with fixed dates, so the digest depends only on the files'
paths and contents: a reviewer can compute it from the code they reviewed, and the gate compares it with the bytes
its SuperNode received (`deploy.policy`)::

    python -m deploy.app_hash .
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["app_hash", "main"]


def app_hash(app_dir: Path) -> str:
    """SHA-256 (hex) of the bundle ``flwr run`` builds from ``app_dir``."""
    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(app_dir))).hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    """Print the bundle digest of an app folder."""
    parser = argparse.ArgumentParser(prog="python -m deploy.app_hash", description=__doc__.splitlines()[0])
    parser.add_argument("app_dir", type=Path, nargs="?", default=Path("."))
    args = parser.parse_args(argv)
    sys.stdout.write(f"{app_hash(args.app_dir)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
