"""Reading the headers of a download response: validators and ``Content-Range``."""

from __future__ import annotations

import re

from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def header(response: IResponse, name: str) -> str | None:
    """The first value of a response header, as text; None when absent.

    :param response: the response.
    :param name: the header name.
    """
    values = response.headers.getRawHeaders(name.encode())
    return values[0].decode("latin-1") if values else None


def body_length(response: IResponse) -> int | None:
    """The body length the server announced (Content-Length), None when unknown.

    :param response: the response.
    """
    return None if response.length is UNKNOWN_LENGTH else int(response.length)


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` (or ``bytes */TOTAL``).

    :param value: the header value.
    :return: (start, end inclusive, total); None for each part that is ``*``.
    :raises ValueError: when the value is missing or malformed, or END < START.
    """
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        raise ValueError(f"malformed Content-Range {value!r}")
    start, end, total = match.groups()
    first = None if start is None else int(start)
    last = None if end is None else int(end)
    size = None if total == "*" else int(total)
    if first is not None and last is not None and last < first:
        raise ValueError(f"Content-Range {value!r} ends before it starts")
    return first, last, size


def strong_validator(etag: str | None, last_modified: str | None) -> str | None:
    """The value for ``If-Range``: a strong ETag, else Last-Modified, else None.

    :param etag: the stored ETag.
    :param last_modified: the stored Last-Modified.
    """
    if etag and not etag.startswith("W/"):
        return etag
    return last_modified
