"""The one logger for messages that name a site's files or quote its manifest: the site's own log, nothing shared.

A hospital's file and folder names often carry patient names or record numbers, and a manifest holds patient
ids and labels. Messages that hold them (a skipped image's full reason, a failed round's full message) go through
:func:`file_log`; everything else a site logs says only manifest line numbers, error types and fixed texts.

On a SuperNode the process's log is the hospital's own, so these messages appear there as any other. Where the
output of the sites is copied somewhere else, the copier turns this logger off by setting
:data:`FILE_LOG_ENV` to ``off`` in the sites' environment: ``fedmammo simulate`` does, because it stores the
simulation's output (every simulated site's included) in the run folder as ``flower.log``.
"""

from __future__ import annotations

import logging
import os

__all__ = ["FILE_LOGGER", "FILE_LOG_ENV", "file_log"]

FILE_LOGGER = "fedmammo.site_files"
"""Name of the logger for messages that may name files, folders or manifest values."""

FILE_LOG_ENV = "FEDMAMMO_FILE_LOG"
"""``off`` drops every message of :data:`FILE_LOGGER` (set by whoever copies the sites' output elsewhere)."""


def file_log() -> logging.Logger:
    """The logger for messages naming the site's files; disabled while :data:`FILE_LOG_ENV` is ``off``."""
    logger = logging.getLogger(FILE_LOGGER)
    logger.disabled = os.environ.get(FILE_LOG_ENV, "").strip().lower() == "off"
    return logger
