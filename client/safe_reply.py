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

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:~|\.{1,2})?[/\\][^\s'\"`,;:()]+")

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
    """Decorate a ClientApp handler so a data, config or privacy error becomes an error reply.

    The full message (with paths) goes to the site's own log; the server gets the error kind and
    the rule that failed, so the federation records the site's failure and carries on.
    """

    @functools.wraps(handler)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except FedMammoError as exc:
            logger.error("%s failed on this site: %s", handler.__name__, exc)
            reason = f"{site_label(context.node_config)}: {type(exc).__name__}: {redact_paths(str(exc))}"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)

    return guarded
