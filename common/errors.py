"""Typed exceptions, one per failure kind: a full message for the site's own log and a fixed public reason.

Every fedmammo error carries two texts. ``str(exc)`` is the full message for the site's own log: it names the
offending file or key, the value, the rule and the fix. :attr:`FedMammoError.public_reason` is what may leave the
site (a ClientApp's error reply, a shared log, ``check-data``'s output): a fixed sentence written in the source,
filled only with numbers, plus optional manifest line numbers. Nothing read from a file path, a manifest value or
a file's header can enter it, so no file or folder name (which in hospitals often carries a patient's name or
record number) can leak through it, whatever punctuation the name holds. A test holds every ``public=`` argument in
the code base to a string literal.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Iterable, Sequence
from typing import Self

__all__ = [
    "MAX_PUBLIC_LINES",
    "ConfigError",
    "DicomError",
    "FedMammoError",
    "ManifestError",
    "ModelError",
    "PrivacyBudgetExceeded",
    "public_text",
]

MAX_PUBLIC_LINES = 20
"""At most this many manifest line numbers are listed in a public reason (the count of the rest follows)."""


class FedMammoError(Exception):
    """Base of every error this project raises on purpose.

    Subclasses also derive from the builtin that fits, so callers that only know ``ValueError`` or
    ``RuntimeError`` still catch them (as Opacus' validator errors do).

    Parameters
    ----------
    message : str
        The full message, for the site's own log only (it may name files, keys and values).
    public : str or None
        A fixed sentence that may leave the site: a string literal in the source, never built from data.
        It may hold ``str.format`` fields (``{}``, ``{:.3g}``) filled from ``figures``. ``None`` uses the
        class's :attr:`public_reason`.
    figures : sequence of int or float
        Numbers for ``public``'s fields (counts, limits, epsilon); anything else is refused with ``TypeError``.
    lines : iterable of int
        Manifest line numbers the failure concerns; listed after the sentence (the first
        :data:`MAX_PUBLIC_LINES`). Leave them out where a line says something about a patient (which lines hold
        label 2 says which images are malignant).
    """

    public_reason: str = "failed on this site (the reason is in the site's own log)"
    """The class's fixed public sentence; an instance holds its own, formatted one."""

    def __init__(
        self,
        message: str = "",
        *,
        public: str | None = None,
        figures: Sequence[int | float] = (),
        lines: Iterable[int] = (),
    ) -> None:
        super().__init__(message)
        template = type(self).public_reason if public is None else public
        numbered = sorted({_line(line) for line in lines})
        self.lines: tuple[int, ...] = tuple(numbered)
        self.figures: tuple[int | float, ...] = _numbers(figures)
        self.public_reason = _filled(template, self.figures) + _lines_text(numbered)

    def extended(self, template: str, *figures: int | float) -> Self:
        """This error with a fixed text filled with numbers appended to its message and its public reason.

        How a number learnt after the error was raised joins it (a decline gets the ledger's epsilon);
        ``template`` is a string literal, like ``public``.
        """
        note = _filled(template, _numbers(figures))
        extended = copy.copy(self)
        extended.args = (f"{self} {note}",)
        extended.figures = self.figures + _numbers(figures)
        extended.public_reason = f"{self.public_reason} {note}"
        return extended


def _filled(template: object, figures: tuple[int | float, ...]) -> str:
    if not isinstance(template, str):
        raise TypeError(f"a public reason must be a fixed str, got {type(template).__name__}")
    return template.format(*figures)


def _numbers(figures: Iterable[object]) -> tuple[int | float, ...]:
    values = tuple(figures)
    for figure in values:
        if not isinstance(figure, numbers.Real):
            raise TypeError(f"public figures must be numbers, got {type(figure).__name__}")
    return values  # type: ignore[return-value]


def _line(line: object) -> int:
    if isinstance(line, bool) or not isinstance(line, numbers.Integral):
        raise TypeError(f"public line numbers must be integers, got {type(line).__name__}")
    return int(line)


def _lines_text(lines: Sequence[int]) -> str:
    if not lines:
        return ""
    shown = ", ".join(str(line) for line in lines[:MAX_PUBLIC_LINES])
    more = f" and {len(lines) - MAX_PUBLIC_LINES} more" if len(lines) > MAX_PUBLIC_LINES else ""
    return f" (manifest line{'s' if len(lines) > 1 else ''} {shown}{more})"


def public_text(exc: BaseException) -> str:
    """What may leave the site about ``exc``: its type and fixed public reason, never its message.

    An exception that is not fedmammo's (a library's, whose text we do not control and which often quotes a
    path) gives only its type.
    """
    if isinstance(exc, FedMammoError):
        return f"{type(exc).__name__}: {exc.public_reason}"
    return f"unexpected {type(exc).__name__} (details in the site's own log; nothing more is sent)"


class ConfigError(FedMammoError, ValueError):
    """A configuration key is missing, unknown, of the wrong type or out of range."""

    public_reason = "a configuration value is invalid (the key and the rule are in the site's own log)"


class ManifestError(FedMammoError, ValueError):
    """A site manifest (CSV) is missing, malformed, or one of its rows is invalid."""

    public_reason = "the site's manifest is missing or invalid (each problem is in the site's own log)"


class DicomError(FedMammoError, ValueError):
    """A file could not be read as a usable mammogram (not DICOM, no pixels, wrong modality...).

    ``lasting=True`` says the verdict follows from the file's bytes and the preprocessing settings alone (not
    a DICOM file, a header that rules it out, undecodable uncompressed pixels), so the site's cache may
    remember it until the file changes; a missing plugin, a permission or a lack of memory may pass, so those
    failures are tried again on every load.
    """

    public_reason = "the file could not be read as a usable mammogram"

    def __init__(
        self,
        message: str = "",
        *,
        public: str | None = None,
        figures: Sequence[int | float] = (),
        lines: Iterable[int] = (),
        lasting: bool = False,
    ) -> None:
        super().__init__(message, public=public, figures=figures, lines=lines)
        self.lasting = lasting


class ModelError(FedMammoError, ValueError):
    """A model name is unknown, or weights do not match the architecture."""

    public_reason = "the model could not be built, or its weights do not match it"


class PrivacyBudgetExceeded(FedMammoError, RuntimeError):
    """Training another round would spend more than the site's (epsilon, delta) budget."""

    public_reason = "declined: this round would breach one of the site's own privacy limits"
