"""Turns a site's own failure into an error reply that tells the server why in fixed words, never with file names."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from client.site import PARTITION_ID_KEY, SITE_NAME_KEY, UNNAMED_SITE_NAME
from common.errors import FedMammoError, public_text
from common.file_log import file_log

__all__ = ["reply_with_error_on_failure", "site_label"]

logger = logging.getLogger(__name__)

Handler = Callable[[Message, Context], Message]


def site_label(node_config: Mapping[str, object]) -> str:
    """A name for the site even when its configuration is broken: its chosen name or simulation partition.

    Never a folder or file name: ``site-name`` is what the hospital chose for the server to see, and a
    partition id is a number. A site without either is :data:`client.site.UNNAMED_SITE_NAME`, as its
    successful replies name it, so the server sees one site, not two.
    """
    if node_config.get(SITE_NAME_KEY):
        return str(node_config[SITE_NAME_KEY])
    if PARTITION_ID_KEY in node_config:
        return f"site-{node_config[PARTITION_ID_KEY]}"
    return UNNAMED_SITE_NAME


def reply_with_error_on_failure(handler: Handler) -> Handler:
    """Decorate a ClientApp handler so any failure on the site becomes an error reply.

    The reply's reason is the site's label, the error's type and its fixed public reason
    (:func:`common.errors.public_text`): never ``str(exc)``, whose text names files, keys and manifest values.
    No pattern decides what to hide, so no file name can slip through, whatever characters it holds. The full
    message (and the traceback of an unexpected error) goes to the site's own log (:func:`file_log`).
    """

    @functools.wraps(handler)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:
            public = public_text(exc)
            logger.error("%s failed on this site: %s", handler.__name__, public)
            file_log().error(
                "%s failed on this site: %s", handler.__name__, exc, exc_info=not isinstance(exc, FedMammoError)
            )
            reason = f"{site_label(context.node_config)}: {public}"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)

    return guarded
