"""Names chosen by people (a site, a study model) as file and folder names that are safe on every file system."""

from __future__ import annotations

__all__ = ["file_safe"]


def file_safe(text: str, *, limit: int = 80) -> str:
    """``text`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_`` (``local:site-0``
    -> ``local_site-0``), cut to ``limit``; never empty, never ``.`` or ``..``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:limit]
    return "_" if safe in ("", ".", "..") else safe
