"""Whether text read from a user, a file or the network is a whole number written in ASCII
digits: ``str.isdigit()`` is true for any script's digits (``٣``, ``３``), which ``int()``
reads as a number, and for superscripts (``²``), for which ``int()`` raises."""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more of the digits ``0`` to ``9`` and nothing else (no sign,
    space, underscore, point, other script's digit or superscript): what ``int()`` reads as
    the number written, and what every number in the gateway's config, file names and
    headers is written in."""
    return text.isascii() and text.isdigit()
