"""In-memory HTTP resources for downloader tests: a file that honours Range, and liars."""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request


class RangeFile(Resource):
    """Serves ``data`` with ETag, Range and If-Range like a good static server.

    :param data: the file's bytes.
    :param etag: its strong ETag.
    :ivar cuts: body byte counts after which the next responses cut the connection.
    :ivar stall: when True the next response sends headers and then nothing (idle).
    :ivar ignore_range: answer 200 with the whole file even to a Range request.
    :ivar ignore_if_range: honour Range even when If-Range no longer matches.
    :ivar requests: the (Range, If-Range) headers of every request seen.
    """

    isLeaf = True

    def __init__(self, data: bytes, etag: str = '"v1"') -> None:
        super().__init__()
        self.data = data
        self.etag = etag
        self.cuts: list[int] = []
        self.stall = False
        self.ignore_range = False
        self.ignore_if_range = False
        self.requests: list[tuple[str | None, str | None]] = []
        self.served = 0

    def render_GET(self, request: Request) -> bytes | int:
        rng = _text(request.getHeader("range"))
        if_range = _text(request.getHeader("if-range"))
        self.requests.append((rng, if_range))
        request.setHeader("etag", self.etag)
        start = 0
        if rng and not self.ignore_range and (if_range in (None, self.etag) or self.ignore_if_range):
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(self.data):
                request.setResponseCode(416)
                request.setHeader("content-range", f"bytes */{len(self.data)}")
                return b""
            request.setResponseCode(206)
            request.setHeader("content-range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        body = self.data[start:]
        request.setHeader("content-length", str(len(body)))
        if self.stall:
            return NOT_DONE_YET
        if self.cuts:
            cut = self.cuts.pop(0)
            request.write(body[:cut])
            self.served += cut
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        self.served += len(body)
        return body


class Scripted(Resource):
    """Answers each request with the next (code, headers, body) of a script; records requests.

    :param answers: what to send, in order; the last one repeats.
    """

    isLeaf = True

    def __init__(self, answers: list[tuple[int, dict[str, str], bytes]]) -> None:
        super().__init__()
        self.answers = answers
        self.requests: list[dict[str, str | None]] = []

    def render_GET(self, request: Request) -> bytes:
        self.requests.append(
            {"path": request.path.decode(), "range": _text(request.getHeader("range")),
             "if-range": _text(request.getHeader("if-range")), "host": _text(request.getHeader("host")),
             "authorization": _text(request.getHeader("authorization"))}
        )
        code, headers, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        request.setResponseCode(code)
        for name, value in headers.items():
            request.setHeader(name, value)
        return body


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode()
    return value
