"""Reading the body of a server's HTTP answer with a limit on its size: a server that lies
or goes wrong must not fill the gateway's memory with an endless answer, nor keep a
connection open once the gateway has given up on its answer."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


class _BodyReader(Protocol):
    """Keeps a body's first ``limit`` bytes; closes the connection past them, or when the
    reading is cancelled (a timeout: a server trickling its answer would hold it for ever)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.done: Deferred[tuple[bytes, bool]] = Deferred(self._cancelled)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _cancelled(self, _: Deferred[tuple[bytes, bool]]) -> None:
        self._close()  # (done then fails with CancelledError; what comes after is dropped)

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.parts.append(data[:max(self.limit - self.size, 0)])
        self.size += len(data)
        if self.size > self.limit:
            self._close()
            self.done.callback((b"".join(self.parts), True))

    def connectionLost(self, reason: Failure | None = None) -> None:
        from twisted.web.client import PotentialDataLoss, ResponseDone  # (imported by the first request)

        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback((b"".join(self.parts), False))
        else:
            self.done.errback(reason)


def read_body(response: Any, limit: int) -> Deferred[tuple[bytes, bool]]:
    """The body of ``response``, at most ``limit`` bytes: beyond them the rest is not read and
    the connection is closed. Cancelling the Deferred (a request's timeout) closes the
    connection too, so that a server that trickles its answer or stops half-way does not
    keep it open.

    :param response: a treq/Twisted ``IResponse``.
    :param limit: the most bytes taken.
    :return: (a Deferred firing with) the body and whether it was cut at the limit.
    """
    reader = _BodyReader(limit)
    response.deliverBody(reader)
    return reader.done
