"""Which header names and values the gateway can send in an HTTP request it makes.

A header name is an RFC 9110 token: letters, digits and ``!#$%&'*+-.^_`|~``, no space, colon
or other character (Twisted refuses any other when the request is made, so a link whose
configuration named one failed every batch with an internal error). A value is ASCII text
without control characters but the tab: RFC 9110 gives other bytes no meaning, Twisted
would send a text's UTF-8 and a server reads them as Latin-1 (``Zürich`` arrives as
``ZÃ¼rich``), so such a value is refused instead of sent garbled.
"""

from __future__ import annotations

import re

#: An RFC 9110 token (section 5.6.2): what a header name is.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: What a header value may hold: visible ASCII, the space and the tab.
_VALUE = re.compile(r"[\t\x20-\x7e]*\Z")


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a header of a request, or None when it can.

    :param name: a header name from the configuration or from a request.
    """
    if _TOKEN.match(name):
        return None
    return ("is no HTTP header name: a name is one or more letters, digits and "
            "!#$%&'*+-.^_`|~ (no space, colon, control or non-ASCII character)")


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a header's value, or None when it can.

    :param value: a header value from the configuration or from a request.
    """
    if _VALUE.match(value):
        return None
    odd = next(char for char in value if not _VALUE.match(char))
    if ord(odd) < 0x80:
        return f"holds {odd!r}, a control character: an HTTP header value holds none but the tab"
    return (f"holds {odd!r}, which is not ASCII: an HTTP header value is ASCII (a server reads other bytes "
            "as Latin-1, where UTF-8 arrives garbled); encode it as the server expects (percent-encoding, "
            "RFC 8187)")
