"""Reading download responses: headers, validators, ``Content-Range``; dropping bodies."""

from __future__ import annotations

import re

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from gateway.httpbody import read_body
from gateway.updates.errors import ContentRangeMismatch

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*\Z", re.IGNORECASE | re.ASCII)


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


def total_of(content_range: str | None) -> int | None:
    """The total size from a ``Content-Range``, None when absent or malformed."""
    try:
        return parse_content_range(content_range)[2]
    except ValueError:
        return None


def checked_range(url: str, content_range: str | None, offset: int) -> tuple[int, int, int | None]:
    """Check a 206's ``Content-Range`` against the offset asked for.

    :param url: for the error message.
    :param content_range: the header value.
    :param offset: the first byte asked for.
    :return: (start, end inclusive, total or None).
    :raises ContentRangeMismatch: when it is malformed or is not ``offset-`` up to the end.
    """
    try:
        start, end, total = parse_content_range(content_range)
    except ValueError as error:
        raise ContentRangeMismatch(url, str(error)) from error
    if start is None or end is None or start != offset or (total is not None and end >= total):
        raise ContentRangeMismatch(url, f"asked for bytes {offset}-, got Content-Range {content_range!r}")
    return start, end, total


#: The most of an unwanted body (a redirect's, an error's) read so that its connection can be
#: kept alive; a longer one is not read further and its connection is closed.
DISCARD_LIMIT = 64 * 1024


def discard(response: IResponse, clock: IReactorTime, timeout: float) -> Deferred[None]:
    """Read and drop a small body (redirects, errors) so the connection can be reused. One
    over :data:`DISCARD_LIMIT` bytes, or not over after ``timeout`` seconds (a server that
    trickles it), is not read further and its connection is closed: the download goes on
    without it, and such a body must not hold a connection (and the bandwidth) for ever.

    :param response: the answer whose body is not wanted.
    :param clock: the reactor's clock.
    :param timeout: the seconds its body may take (the downloads' ``idle_timeout``).
    :return: fires (never fails) once the body is dropped; cancelling it closes the
        connection at once (a stop).
    """
    reading = read_body(response, DISCARD_LIMIT)
    timer = clock.callLater(timeout, reading.cancel)
    return reading.addBoth(lambda _: timer.cancel() if timer.active() else None)


def abort(response: IResponse) -> None:
    """Close the connection of a response whose body we refuse."""
    response.deliverBody(_Closer())


class _Closer(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]
