"""Why a request's head is malformed, in words, for the gateway's HTTP listeners.

Twisted answered a malformed request line or header line (an HTTP/0.9 ``GET /``, an HTTP/2
preface, ``HTTP/9.9``, a header without a colon, a space before the colon, a NUL in a value,
two different ``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``, a transfer
coding other than ``chunked``) with a bare ``400 Bad Request`` and no body: a client's author
had nothing to go on. :class:`HeadCheck` finds the same faults, line by line as they arrive,
and says which, so that :class:`~gateway.httpchannels.ClosingChannel` answers them (``400``;
``505`` to an HTTP version other than 1.0 and 1.1) with the reason before Twisted sees them.
It refuses what Twisted refuses, no more: what it lets through Twisted parses as before.
"""

from __future__ import annotations

import re

#: An RFC 9110 token (section 5.6.2): a method, a header name.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
#: A request target as Twisted takes it: no control or space byte, none over 0xb0.
_TARGET = re.compile(rb"[\x21-\xb0]+\Z")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_SERVED = (b"HTTP/1.0", b"HTTP/1.1")
#: A request line with nothing wrong and no ``*`` target, in one match: what almost every
#: request sends, so that the checks one by one run only for the others (each check a
#: match of its own cost a request about as much as the rest of its head's parsing).
_PLAIN_REQUEST = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ (?!\* )[\x21-\xb0]+ HTTP/1\.[01]\Z")
#: The name of a header line that says nothing of the body's length, and is a token (a line that
#: starts so and holds no NUL has nothing wrong).
_PLAIN_NAME = re.compile(rb"(?!(?i:content-length|transfer-encoding):)[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00]*\Z")

#: The statuses of :meth:`HeadCheck.request_line`'s and :meth:`HeadCheck.header_line`'s answers.
BAD_REQUEST = b"400 Bad Request"
BAD_VERSION = b"505 HTTP Version Not Supported"


def _shown(data: bytes, limit: int = 60) -> str:
    text = repr(data[:limit])[2:-1]  # (b'...' -> ..., its control and non-ASCII bytes escaped)
    return "'" + text + ("...'" if len(data) > limit else "'")


class HeadCheck:
    """The head of one request as it arrives, line by line; each method says what is wrong
    with a line, as ``(status, reason)``, or None when nothing is."""

    def __init__(self) -> None:
        self._length_said = False  # (by a Content-Length or a Transfer-Encoding: chunked)

    def request_line(self, line: bytes) -> tuple[bytes, str] | None:
        """What is wrong with a request line (``GET /path HTTP/1.1``)."""
        self._length_said = False
        if _PLAIN_REQUEST.match(line):
            return None
        parts = line.split(b" ")
        if len(parts) == 2 and _TOKEN.match(parts[0]):
            return BAD_VERSION, "no HTTP version in the request line (HTTP/0.9 is not served): send HTTP/1.1"
        if len(parts) != 3:
            return BAD_REQUEST, (f"malformed request line {_shown(line)}: it is METHOD TARGET HTTP/1.1, "
                                 "one space between each")
        method, target, version = parts
        if version not in _SERVED:
            if version.startswith(b"HTTP/2"):  # (the preface: PRI * HTTP/2.0)
                return BAD_VERSION, "HTTP/2 is not served here: send HTTP/1.1 (or HTTP/1.0)"
            if _VERSION.match(version):
                return BAD_VERSION, f"{_shown(version)} is not served here: send HTTP/1.1 (or HTTP/1.0)"
            return BAD_REQUEST, f"malformed request line {_shown(line)}: it ends with HTTP/1.1, in capitals"
        if not _TOKEN.match(method):
            return BAD_REQUEST, f"{_shown(method)} is no HTTP method"
        if not _TARGET.match(target):
            return BAD_REQUEST, (f"the request target {_shown(target)} holds a control, space or non-ASCII "
                                 "byte: percent-encode it")
        if target == b"*" and method != b"OPTIONS":
            return BAD_REQUEST, f"the target * is for OPTIONS only, not {_shown(method)}"
        return None

    def header_line(self, line: bytes) -> tuple[bytes, str] | None:
        """What is wrong with a header line (not a continuation of one)."""
        if _PLAIN_NAME.match(line):
            return None
        name, colon, value = line.partition(b":")
        if not colon:
            return BAD_REQUEST, f"the header line {_shown(line)} has no colon: a header is Name: value"
        if not _TOKEN.match(name):
            return BAD_REQUEST, (f"{_shown(name)} is no header name (no space before the colon; letters, digits "
                                 "and !#$%&'*+-.^_`|~ only)")
        if b"\x00" in value:
            return BAD_REQUEST, f"the header {name.decode()} holds a NUL byte"
        value = value.strip(b" \t")
        lowered = name.lower()
        if lowered == b"content-length":
            if not value.isdigit():
                return BAD_REQUEST, f"Content-Length {_shown(value)} is not a number of bytes"
            if self._length_said:
                return BAD_REQUEST, ("Content-Length given twice, or with Transfer-Encoding: "
                                     "a request says its length once")
            self._length_said = True
        elif lowered == b"transfer-encoding":
            if value.lower() == b"identity":
                return None
            if value.lower() != b"chunked":
                return BAD_REQUEST, f"Transfer-Encoding {_shown(value)} is not taken: only chunked is"
            if self._length_said:
                return BAD_REQUEST, ("Transfer-Encoding given twice, or with Content-Length: "
                                     "a request says its length once")
            self._length_said = True
        return None
