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


def retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta seconds, or an HTTP date (counted from
    ``now``, the wall clock; a date already past is 0); None when the header is missing, blank
    or neither.

    :param value: the header's first value, or None.
    :param now: seconds since the epoch.
    """
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        return max(0.0, parse_http_date(text) - now)
    except ValueError:
        return None
