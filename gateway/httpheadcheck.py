"""Why a request's head is malformed, in words, for the gateway's HTTP listeners.

Twisted answered a malformed request line or header line (an HTTP/0.9 ``GET /``, an HTTP/2
preface, ``HTTP/9.9``, a header without a colon, a space before the colon, a NUL, CR or LF in a value,
two different ``Content-Length``, ``Content-Length`` with ``Transfer-Encoding``, a transfer
coding other than ``chunked``) with a bare ``400 Bad Request`` and no body: a client's author
had nothing to go on. :class:`HeadCheck` finds the same faults, line by line as they arrive,
and says which, so that :class:`~gateway.httpchannels.ClosingChannel` answers them (``400``;
``505`` to an HTTP version other than 1.0 and 1.1) with the reason before Twisted sees them.
It refuses what Twisted refuses, and a request target's DEL and non-ASCII bytes (Twisted took
0x7f to 0xb0 raw): what it lets through Twisted parses as before. A
header folded onto more lines (obs-fold: a line beginning with a space or tab continues the
header before) is judged whole, its lines joined by a space, as Twisted reads it: once the next
header line, or the blank line ending the head, says it is complete.

:class:`HeadRules` spells every rule out; :class:`HeadCheck`, which the listeners use, gives the
same verdicts, and takes the lines most heads are made of with one regular expression each: a
request line of a method, an origin-form target and ``HTTP/1.0`` or ``HTTP/1.1``, and a header
line whose header says nothing of the body's length (a third of the checking's cost saved).

:func:`origin_form` gives the origin-form of a target in absolute-form (``GET http://gw/metrics
HTTP/1.1``), which a server must accept (RFC 9112, section 3.2.2) and Twisted took whole for
the path.
"""

from __future__ import annotations

import re

from gateway.shown import shown_bytes

#: An RFC 9110 token (section 5.6.2): a method, a header name.
_TOKEN_BYTES = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TOKEN_BYTES + rb"\Z")
#: A request target: printable ASCII (RFC 9112 section 3.2), no control (DEL included), space
#: or non-ASCII byte (Twisted took 0x7f to 0xb0; a client percent-encodes them).
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]\Z")
_SERVED = (b"HTTP/1.0", b"HTTP/1.1")
#: A request target in absolute-form, of HTTP: its authority (no user in it), and its path and query.
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#@]+)([/?].*)?\Z", re.S)
#: The headers that say how long a request's body is (lower case): judged once complete.
_FRAMING = (b"content-length", b"transfer-encoding")
#: A request line nothing is wrong with, of the commonest kind: a method, an origin-form
#: target (``/`` then printable ASCII) and HTTP/1.0 or HTTP/1.1, one space between each.
_PLAIN_REQUEST = re.compile(_TOKEN_BYTES + rb" /[\x21-\x7e]* HTTP/1\.[01]\Z")
#: The bytes a header's value may not hold (RFC 9110, section 5.5), as a value's words say each.
_NOT_IN_VALUE = {b"\x00": "a NUL byte", b"\r": "a CR byte", b"\n": "an LF byte"}
#: A header line nothing is wrong with, of a header that says nothing of the body's length:
#: its name (a token), a colon, a value without NUL, CR or LF.
_PLAIN_HEADER = re.compile(rb"(?!(?i:" + b"|".join(_FRAMING) + rb"):)(" + _TOKEN_BYTES + rb"):[^\x00\r\n]*\Z")

#: The statuses of :meth:`HeadCheck.request_line`'s and :meth:`HeadCheck.header_line`'s answers.
BAD_REQUEST = b"400 Bad Request"
BAD_VERSION = b"505 HTTP Version Not Supported"


def _shown(data: bytes) -> str:
    return shown_bytes(data, 60)


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """A request target as the gateway's resources take it, and the host it names: an
    absolute-form target (``http://gw:8090/path?query``) is its path and query (``/`` when it
    has none) and its authority, which stands for the request's ``Host`` (RFC 9112, section
    7.2); any other target is itself, and names none.

    :param target: the request target of a well-formed request line.
    """
    absolute = _ABSOLUTE.match(target)
    if absolute is None:
        return target, None
    authority, rest = absolute.groups()
    if not rest or rest.startswith(b"?"):
        rest = b"/" + (rest or b"")
    return rest, authority


def _not_in_value(name: bytes, value: bytes) -> tuple[bytes, str] | None:
    """What is wrong with the value (or a folded line of it) of header ``name``: a byte no
    value may hold (a NUL, a CR or an LF not ending its line, which Twisted refuses too)."""
    for byte, words in _NOT_IN_VALUE.items():
        if byte in value:
            return BAD_REQUEST, f"the header {name.decode()} holds {words}"
    return None


class HeadRules:
    """The head of one request as it arrives, line by line; each method says what is wrong
    with a line, as ``(status, reason)``, or None when nothing is. Every rule, spelled out:
    :class:`HeadCheck` gives the same verdicts, faster."""

    def __init__(self) -> None:
        self._blank = False  # a blank line came before the request line (one is ignored)
        self._length_said = False  # (by a Content-Length or a Transfer-Encoding: chunked)
        #: the name of the header arriving (folded lines continue it)
        self._header: bytes | None = None
        #: the header arriving, when it says the body's length: its name in lower case and its
        #: value so far (folded lines joined by a space), judged once complete
        self._framing: tuple[bytes, bytes] | None = None

    def blank_line(self) -> tuple[bytes, str] | None:
        """What is wrong with a blank line before the request line: one is ignored (RFC 9112,
        section 2.2: a client may end a body with one more CRLF), as Twisted ignores it; a second
        is not (Twisted answered it a bare ``400``)."""
        if self._blank:
            return BAD_REQUEST, "more than one blank line before the request line (one is ignored)"
        self._blank = True
        return None

    def request_line(self, line: bytes) -> tuple[bytes, str] | None:
        """What is wrong with a request line (``GET /path HTTP/1.1``)."""
        self._begin()
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

    def _begin(self) -> None:
        """A request line came: the head of a new request begins."""
        self._blank, self._length_said, self._header, self._framing = False, False, None, None

    def header_line(self, line: bytes) -> tuple[bytes, str] | None:
        """What is wrong with a header line (not a continuation of one), or with the header
        before it, now complete."""
        problem = self._complete()
        if problem is not None:
            return problem
        name, colon, value = line.partition(b":")
        if not colon:
            return BAD_REQUEST, f"the header line {_shown(line)} has no colon: a header is Name: value"
        if not _TOKEN.match(name):
            return BAD_REQUEST, (f"{_shown(name)} is no header name (no space before the colon; letters, digits "
                                 "and !#$%&'*+-.^_`|~ only)")
        problem = _not_in_value(name, value)
        if problem is not None:
            return problem
        self._header = name
        lowered = name.lower()
        if lowered in _FRAMING:
            self._framing = lowered, value
        return None

    def continuation(self, line: bytes) -> tuple[bytes, str] | None:
        """What is wrong with a line that begins with a space or tab: it continues the header
        before (obs-fold), and there must be one."""
        if self._header is None:
            return BAD_REQUEST, (f"the header line {_shown(line)} is folded (it begins with a space or tab) "
                                 "but follows no header")
        problem = _not_in_value(self._header, line)
        if problem is not None:
            return problem
        if self._framing is not None:
            lowered, value = self._framing
            self._framing = lowered, value + b" " + line.lstrip(b" \t")
        return None

    def end_of_head(self) -> tuple[bytes, str] | None:
        """What is wrong with the head's last header, complete at the blank line that ends it."""
        self._header = None
        return self._complete()

    def _complete(self) -> tuple[bytes, str] | None:
        """What is wrong with the header arriving, now complete: its framing (the body's length)."""
        if self._framing is None:
            return None
        lowered, value = self._framing
        self._framing = None
        value = value.strip(b" \t")
        if lowered == b"content-length":
            if not value.isdigit():
                return BAD_REQUEST, f"Content-Length {_shown(value)} is not a number of bytes"
            if self._length_said:
                return BAD_REQUEST, ("Content-Length given twice, or with Transfer-Encoding: "
                                     "a request says its length once")
            self._length_said = True
        else:  # (Transfer-Encoding)
            if value.lower() == b"identity":
                return None
            if value.lower() != b"chunked":
                return BAD_REQUEST, f"Transfer-Encoding {_shown(value)} is not taken: only chunked is"
            if self._length_said:
                return BAD_REQUEST, ("Transfer-Encoding given twice, or with Content-Length: "
                                     "a request says its length once")
            self._length_said = True
        return None


class HeadCheck(HeadRules):
    """:class:`HeadRules`' verdicts, the commonest lines judged by one regular expression each
    (a plain request line; a header line that says nothing of the body's length, with no
    header before it that does still to be judged); any other line by the rules."""

    def request_line(self, line: bytes) -> tuple[bytes, str] | None:
        """What is wrong with a request line (``GET /path HTTP/1.1``)."""
        if _PLAIN_REQUEST.match(line) is None:
            return super().request_line(line)
        self._begin()
        return None

    def header_line(self, line: bytes) -> tuple[bytes, str] | None:
        """What is wrong with a header line (not a continuation of one), or with the header
        before it, now complete."""
        if self._framing is None:
            plain = _PLAIN_HEADER.match(line)
            if plain is not None:
                self._header = plain.group(1)
                return None
        return super().header_line(line)
