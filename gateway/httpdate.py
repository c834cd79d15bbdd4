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


#: The longest wait a ``Retry-After`` is taken for (a day): a server that asks for more (a
#: lie, a typo, a number too large for a float) does not stop the gateway asking for good.
MAX_RETRY_AFTER = 86400.0


def retry_after(value: bytes | None, now: float) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta seconds, or an HTTP date (counted from
    ``now``, the wall clock; a date already past is 0), at most :data:`MAX_RETRY_AFTER`; None
    when the header is missing, blank or neither.

    :param value: the header's first value, or None.
    :param now: seconds since the epoch.
    """
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        # (no int() of thousands of digits: Python refuses it, and a float cannot hold it)
        return MAX_RETRY_AFTER if len(text.lstrip(b"0")) > 9 else min(float(int(text)), MAX_RETRY_AFTER)
    try:
        return min(max(0.0, parse_http_date(text) - now), MAX_RETRY_AFTER)
    except ValueError:
        return None
