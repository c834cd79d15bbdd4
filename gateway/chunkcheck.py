"""Why a request's chunked body is malformed, in words, for the gateway's HTTP listeners.

Twisted answered a chunked body whose framing is broken (a chunk size that is no hexadecimal
number, a chunk longer than its size says, trailers past 64 KiB) with a bare ``400 Bad
Request`` and no body, from inside its chunked decoder, which no public API lets a server
answer for. :class:`ChunkedBodyCheck` reads the same framing as the bytes arrive, before
Twisted's decoder sees them, and says what is wrong, so that
:class:`~gateway.httpchannels.ClosingChannel` answers ``400`` with the reason, as it does a
malformed head (:mod:`gateway.httpheadcheck`). It refuses exactly what Twisted's decoder
refuses (the same rules, in the same order), and what it lets through Twisted decodes as
before. A chunk's data is counted, not copied: only size lines and trailers are held, at most
1 KiB and 64 KiB.
"""

from __future__ import annotations

from gateway.shown import shown_bytes

#: The longest chunk-size line Twisted's decoder takes (``twisted.web.http.maxChunkSizeLineLength``).
MAX_SIZE_LINE = 1024
#: The most trailer bytes Twisted's decoder takes, their CRLFs counted.
MAX_TRAILERS = 1 << 16
_HEX = frozenset(b"0123456789abcdefABCDEF")
#: What a chunk extension may hold (Twisted's ``_chunkExtChars``: HTAB, SP to ``~`` but the
#: backslash, and every byte from 0x80 on).
_EXTENSION = (frozenset(b"\t") | frozenset(range(0x20, 0x7F)) | frozenset(range(0x80, 0x100))) - {0x5C}


def _shown(data: bytes) -> str:
    return shown_bytes(data, 40)


class ChunkedBodyCheck:
    """The framing of one chunked request body as it arrives (RFC 9112, section 7.1).

    :ivar done: the body's last chunk and trailers are in: what follows is the next request's.
    """

    def __init__(self) -> None:
        self._state = "size"  # size (a chunk-size line), data, crlf (after a chunk's data), trailer
        self._line = bytearray()  # the line arriving (or the CRLF after a chunk's data)
        self._left = 0  # bytes of the chunk's data still to come
        self._trailers = 0  # trailer bytes taken, CRLFs counted
        self.done = False

    def feed(self, data: bytes) -> str | None:
        """Take the next bytes of the body (those past its end are not looked at): why its
        framing is broken, or None while it is not."""
        at, size = 0, len(data)
        while not self.done and at < size:
            if self._state == "data":
                taken = min(self._left, size - at)
                at += taken
                self._left -= taken
                if not self._left:
                    self._state = "crlf"
                continue
            line = self._line
            if self._state == "crlf":
                taken = 2 - len(line)
                line += data[at:at + taken]
                at += taken
                if len(line) < 2:
                    return None
                if line != b"\r\n":
                    return "a chunk of the chunked body is longer than its size says (its data is not followed by CRLF)"
                line.clear()
                self._state = "size"
                continue
            if line.endswith(b"\r") and data[at:at + 1] == b"\n":
                end = at + 1
            else:
                found = data.find(b"\r\n", at)
                end = -1 if found == -1 else found + 2
            if end == -1:
                line += data[at:]
                return self._unended()
            line += data[at:end]
            at = end
            problem = self._ended(bytes(line[:-2]))
            line.clear()
            if problem is not None:
                return problem
        return None

    def _unended(self) -> str | None:
        """The line arriving has no CRLF yet: too long already, or None."""
        line = self._line
        if self._state == "size":
            return self._size_too_long() if len(line) > MAX_SIZE_LINE else None
        if self._trailers + len(line) + (1 if line.endswith(b"\r") else 2) > MAX_TRAILERS:
            return self._trailers_too_long()
        return None

    def _ended(self, line: bytes) -> str | None:
        """A whole chunk-size or trailer line (without its CRLF) is in: what is wrong with it."""
        if self._state == "trailer":
            if not line:
                self.done = True
                return None
            self._trailers += len(line) + 2
            return self._trailers_too_long() if self._trailers > MAX_TRAILERS else None
        if len(line) >= MAX_SIZE_LINE:
            return self._size_too_long()
        size, _, extension = line.partition(b";")
        if not size or not _HEX.issuperset(size):
            return (f"the chunk size {_shown(size)} of the chunked body is not a hexadecimal number"
                    " (each chunk begins with its size in hexadecimal digits, then CRLF)")
        if not _EXTENSION.issuperset(extension):
            return f"the chunk extension {_shown(extension)} of the chunked body holds a control character or a backslash"
        self._left = int(size, 16)
        self._state = "data" if self._left else "trailer"
        return None

    @staticmethod
    def _size_too_long() -> str:
        return f"a chunk-size line of the chunked body is longer than {MAX_SIZE_LINE - 1} bytes"

    @staticmethod
    def _trailers_too_long() -> str:
        return f"the chunked body's trailers are over {MAX_TRAILERS} bytes"
