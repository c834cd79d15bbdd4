"""Receives one response body: batches chunks and hands them to the part file off the reactor.

Per-chunk work on the reactor is a list append and two additions. Once per batch
(``write_batch`` bytes) the batch is hashed in one ``run_blocking`` call and written in
another, side by side (hashlib and writev release the GIL); one batch is in flight at a
time, and the transport is paused while a second batch waits, so memory stays within a
few batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from gateway.updates.errors import DownloadError
from gateway.updates.partfile import PartFile

#: Runs a blocking callable (in a thread in production) and fires with its result.
RunBlocking = Callable[..., "Deferred[Any]"]


class BodySink(Protocol):
    """Streams a response body into a :class:`PartFile`.

    :param part: the part file; its ``hash_chunks`` and ``write_chunks`` run through ``run_blocking``.
    :param run_blocking: runs blocking callables off the reactor.
    :param batch: bytes gathered before one write.
    :param limit: how many body bytes may arrive before ``too_big`` aborts the body.
    :param too_big: builds the error raised when ``limit`` is passed.
    :param first: a blocking callable to run before the first write (e.g. truncating the part).
    """

    def __init__(
        self,
        part: PartFile,
        run_blocking: RunBlocking,
        batch: int,
        limit: float,
        too_big: Callable[[], DownloadError],
        first: Callable[[], None] | None = None,
    ) -> None:
        self.received = 0
        #: Fires when every received byte is written: None for a complete body, else the
        #: failure that ended it.
        self.done: Deferred[None] = Deferred()
        self._part = part
        self._run_blocking = run_blocking
        self._batch = batch
        self._limit = limit
        self._too_big = too_big
        self._chunks: list[bytes] = []
        self._pending = 0
        self._busy = False
        self._write_failed = False
        self._paused = False
        self._error: Failure | None = None
        self._ended: Failure | None = None
        if first is not None:
            self._busy = True
            run_blocking(first).addBoth(self._wrote)

    def dataReceived(self, data: bytes) -> None:
        """Queue a chunk; write a batch once enough is queued."""
        if self._error is not None:
            return
        self.received += len(data)
        if self.received > self._limit:
            self.abort(self._too_big())
            return
        self._chunks.append(data)
        self._pending += len(data)
        if self._pending >= self._batch:
            self._pump()

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        """The body ended (completely or not): write what is left, then fire :attr:`done`."""
        self._ended = reason
        self._pump()

    def abort(self, error: Exception) -> None:
        """End the body early with ``error`` (idle timeout, cancel, size); bytes so far are kept.

        :param error: what :attr:`done` reports.
        """
        if self._error is None:
            self._error = Failure(error)
        if self._ended is None and self.transport is not None:
            self.transport.stopProducing()

    def _pump(self) -> None:
        if self._busy:
            if self._pending >= 2 * self._batch and not self._paused and self._ended is None:
                self._paused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            return
        if self._chunks and not self._write_failed:
            chunks, self._chunks, self._pending = self._chunks, [], 0
            self._busy = True
            hashed = self._run_blocking(self._part.hash_chunks, chunks)
            written = self._run_blocking(self._part.write_chunks, chunks)
            gatherResults([hashed, written], consumeErrors=True).addBoth(self._wrote)
        elif self._ended is not None and not self.done.called:
            self._chunks = []
            outcome = self._outcome()
            if outcome is None:
                self.done.callback(None)
            else:
                self.done.errback(outcome)

    def _wrote(self, result: object) -> None:
        self._busy = False
        if isinstance(result, Failure):
            if result.check(FirstError):
                result = result.value.subFailure  # type: ignore[union-attr]
            self._write_failed = True
            self._error = None  # the write error is the one to report
            self.abort(result.value)  # type: ignore[arg-type]
        if self._paused and self._ended is None:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._pending >= self._batch or self._ended is not None:
            self._pump()

    def _outcome(self) -> Failure | None:
        if self._error is not None:
            return self._error
        assert self._ended is not None
        if self._ended.check(ResponseDone, PotentialDataLoss):
            return None
        return self._ended
