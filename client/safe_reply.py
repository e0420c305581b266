"""Turns a site's own failure into an error reply that tells the server why, without file paths."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Mapping

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from common.errors import FedMammoError

__all__ = ["redact_paths", "reply_with_error_on_failure", "site_label"]

logger = logging.getLogger(__name__)

_PATH = re.compile(
    r"(?:[A-Za-z]:)?(?:~|\.{1,2})?[/\\]"  # a root, home or relative start, then the first separator
    r"[^\n'\"`;()]*?"  # the rest, spaces and commas included: 'MRN0012345 Jane 1962', 'Doe, Jane'
    r"(?=:\s|:$|,\s[a-z]|,$|[\n'\"`;()]|\s+(?:is|does|has|have|cannot|could|was|lacks|holds|names|line|or|and)\b|$)"
)
"""A path, up to the punctuation or the verb that our error messages put after one (``<path>: ...``,
``<path> is not ...``, ``manifest <path> line 4``)."""

Handler = Callable[[Message, Context], Message]


def redact_paths(text: str) -> str:
    """Replace file-system paths by ``<path>``: file names on a hospital's disk can carry patient identifiers."""
    return _PATH.sub("<path>", text)


def site_label(node_config: Mapping[str, object]) -> str:
    """A name for the site even when its configuration is broken: its chosen name or simulation partition."""
    if node_config.get("site-name"):
        return str(node_config["site-name"])
    if "partition-id" in node_config:
        return f"site-{node_config['partition-id']}"
    return "unnamed site"


def reply_with_error_on_failure(handler: Handler) -> Handler:
    """Decorate a ClientApp handler so any failure on the site becomes an error reply.

    The full message (with paths) goes to the site's own log. For fedmammo's own errors the server
    gets the error kind and the rule that failed, paths redacted; for any other exception (whose text
    we do not control) only its type, since Flower would otherwise send ``str(exc)`` as it is.
    """

    @functools.wraps(handler)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except FedMammoError as exc:
            logger.error("%s failed on this site: %s", handler.__name__, exc)
            reason = f"{site_label(context.node_config)}: {type(exc).__name__}: {redact_paths(str(exc))}"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        except Exception as exc:  # not ours: its text may hold anything (paths, names), so only its kind leaves
            logger.exception("%s failed on this site", handler.__name__)
            reason = (
                f"{site_label(context.node_config)}: unexpected {type(exc).__name__} "
                "(details in the site's own log; nothing more is sent)"
            )
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)

    return guarded
