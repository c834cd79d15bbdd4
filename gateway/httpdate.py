"""HTTP dates in headers (``If-Modified-Since``, ``Retry-After``) from outside the gateway."""

from __future__ import annotations

from twisted.web import http


def parse_http_date(value: bytes) -> float:
    """Seconds since the epoch of the HTTP date ``value`` (the forms Twisted reads).

    :raises ValueError: ``value`` is not an HTTP date; an empty or blank one too (Twisted's
        parser raises IndexError for it).
    """
    try:
        return float(http.stringToDatetime(value))
    except IndexError:
        raise ValueError(f"not an HTTP date: {value!r}") from None
