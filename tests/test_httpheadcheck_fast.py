"""The listeners' head check (gateway.httpheadcheck.HeadCheck: one regular expression for a
plain request line, one for a header line that says nothing of the body's length) gives the
verdicts and reasons of every rule spelled out (HeadRules), head for head: those of the test
tables, and variants of a head with every byte at a few places of its request line and of a
header line, folded lines and odd spacing."""

from __future__ import annotations

from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

from gateway.httpheadcheck import HeadCheck, HeadRules
from tests.test_httpheadcheck import MALFORMED, WELL_FORMED

Verdict = tuple[bytes, str] | None

#: The request line of the generated heads, and the places a byte is put at or in place of.
REQUEST_LINE = b"POST /onep:v1/stack/alias?a=b HTTP/1.1"
REQUEST_PLACES = (0, 2, 4, 5, 6, 20, 29, 30, 31, 35, 37, len(REQUEST_LINE))
#: The header lines of the generated heads (one that says the body's length, one that does
#: not), and the places a byte is put at or in place of.
HEADER_LINES = (b"X-Device: abc def", b"Content-Length: 12")
HEADER_PLACES = (0, 1, 7, 8, 9, 10, 14, 15, 17, 18)
#: Lines a generated head puts the changed header line among: after a plain header, and
#: after one that says the body's length (still to be judged when the next line comes).
BEFORE = (b"Host: gw", b"Transfer-Encoding: chunked")
#: Heads of odd spacing, case and folding.
ODD = [b"GET  / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1 \r\n\r\n", b" GET / HTTP/1.1\r\n\r\n", b"GET\t/ HTTP/1.1\r\n\r\n",
       b"GET / HTTP/1.1\r\nX-A:b\r\n\r\n", b"GET / HTTP/1.1\r\nX-A:  b  \r\n\r\n", b"GET / HTTP/1.1\r\nX-A :b\r\n\r\n",
       b"GET / HTTP/1.1\r\n:b\r\n\r\n", b"GET / HTTP/1.1\r\nX-A\t: b\r\n\r\n", b"GET / HTTP/1.1\r\nX-A: a:b:c\r\n\r\n",
       b"POST / HTTP/1.1\r\ncontent-LENGTH:  5 \r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length :5\r\n\r\n",
       b"POST / HTTP/1.1\r\nContent-Lengths: x\r\nContent-Length: 5\r\n\r\n",
       b"POST / HTTP/1.1\r\nX-Content-Length: x\r\nTransfer-Encodings: gzip\r\n\r\n",
       b"POST / HTTP/1.1\r\nTRANSFER-ENCODING: Chunked\r\nContent-Length: 3\r\n\r\n",
       b"POST / HTTP/1.1\r\nTransfer-Encoding: Identity\r\nTransfer-Encoding: chunked\r\n\r\n",
       b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\t\r\n 6\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length:\r\n\t\t7\r\n\r\n",
       b"POST / HTTP/1.1\r\nX-A: 1\r\n 2\r\nContent-Length: 3\r\n  4\r\nX-B: 5\r\n\r\n",
       b"POST / HTTP/1.1\r\nX-A: 1\r\n 2\x00\r\n\r\n", b"POST / HTTP/1.1\r\nContent-Length: 1\r\n 2\x00\r\n\r\n",
       b"POST / HTTP/1.1\r\n\tX-A: 1\r\n\r\n", b"GET * HTTP/1.1\r\n\r\n", b"OPTIONS * HTTP/1.1\r\n\r\n",
       b"GET http://gw/a HTTP/1.1\r\n\r\n", b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.2\r\n\r\n", b"GET /\r\n\r\n",
       b"\r\nGET / HTTP/1.1\r\nX-A: 1\r\n\r\n"]


def verdicts(check: HeadRules, head: bytes) -> list[Verdict]:
    """Each line's verdict, the lines handed over as the listeners' channel hands them
    (:meth:`gateway.httpchannels.ClosingChannel.lineReceived`), up to the first refused or the
    blank line ending the head."""
    said: list[Verdict] = []
    started = False
    for line in head.split(b"\r\n"):
        if not started:
            if not line:  # (a blank line before the request line)
                said.append(check.blank_line())
            else:
                started = True
                said.append(check.request_line(line))
        elif not line:
            said.append(check.end_of_head())
            break
        elif line[:1] in (b" ", b"\t"):
            said.append(check.continuation(line))
        else:
            said.append(check.header_line(line))
        if said[-1] is not None:
            break
    return said


def changed(line: bytes, places: tuple[int, ...]) -> Iterator[bytes]:
    """``line`` with every byte put at each place, and put in place of the byte there."""
    for place in places:
        for byte in range(256):
            one = bytes((byte,))
            yield line[:place] + one + line[place:]
            if place < len(line):
                yield line[:place] + one + line[place + 1:]


def generated() -> Iterator[bytes]:
    """Heads of a changed request line, and of a changed header line among others."""
    for line in changed(REQUEST_LINE, REQUEST_PLACES):
        yield line + b"\r\nHost: gw\r\n\r\n"
    for header in HEADER_LINES:
        for line in changed(header, HEADER_PLACES):
            for before in BEFORE:
                yield REQUEST_LINE + b"\r\n" + before + b"\r\n" + line + b"\r\nX-After: 1\r\n\r\n"
            yield REQUEST_LINE + b"\r\n" + line + b"\r\n folded\r\n\r\n"


class SameVerdictsTests(SynchronousTestCase):
    """HeadCheck and HeadRules, fed the same heads, say the same of each line."""

    def assert_same(self, heads: list[bytes]) -> None:
        fast, rules = HeadCheck(), HeadRules()  # (one of each for all: each head starts them over)
        differ = [(head, got, want) for head in heads
                  if (got := verdicts(fast, head)) != (want := verdicts(rules, head))]
        self.assertEqual(differ[:3], [], f"{len(differ)} of {len(heads)} heads judged otherwise")

    def test_the_tables_heads(self) -> None:
        self.assert_same(list(MALFORMED) + WELL_FORMED + ODD)

    def test_every_byte_at_a_few_places(self) -> None:
        """34,304 heads: each byte in the method, the spaces, the target, the version, a
        header's name, colon and value, and past each line's end."""
        heads = list(generated())
        self.assertEqual(len(heads), 34_304)
        self.assert_same(heads)


class PlainLinesTests(SynchronousTestCase):
    """The lines most heads are made of are judged without the rules spelled out."""

    def test_a_plain_head_takes_no_rule(self) -> None:
        """A request line of a method, a path and HTTP/1.1, and headers that say nothing of the
        body's length: each one match, not the rules' split, partition and token matches."""
        def no_rule(check: HeadRules, line: bytes) -> Verdict:
            raise AssertionError(f"{line!r} went through the rules")

        self.patch(HeadRules, "request_line", no_rule)
        self.patch(HeadRules, "header_line", no_rule)
        head = b"GET /onep:v1/stack/alias?x HTTP/1.1\r\nHost: gw\r\nAccept: */*\r\nX-Exosite-CIK: 0123\r\n\r\n"
        self.assertEqual(verdicts(HeadCheck(), head), [None] * 5)
