"""Whether text read from a user, a file or the network is a number written in ASCII digits:
``str.isdigit()`` is true for any script's digits (``٣``, ``３``), which ``int()`` and
``float()`` read as a number, and for superscripts (``²``), for which ``int()`` raises;
``float()`` reads ``nan``, ``inf``, ``1_0`` and ``1e3`` too."""

from __future__ import annotations

import re

#: A decimal number of ASCII digits with at most one point: ``30``, ``2.5``, ``.5``, ``5.``.
_ASCII_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")


def ascii_digits(text: str) -> bool:
    """Whether ``text`` is one or more of the digits ``0`` to ``9`` and nothing else (no sign,
    space, underscore, point, other script's digit or superscript): what ``int()`` reads as
    the number written, and what every number in the gateway's config, file names and
    headers is written in."""
    return text.isascii() and text.isdigit()


def ascii_decimal(text: str) -> bool:
    """Whether ``text`` is a decimal number of the digits ``0`` to ``9`` with at most one point
    (``2.5``) and nothing else (no sign, space, underscore, exponent, ``nan``, ``inf``, other
    script's digit): what ``float()`` reads as the number written, where a number of seconds
    that may be fractional is written in a string."""
    return _ASCII_DECIMAL.match(text) is not None
