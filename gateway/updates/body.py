"""Receives one response body: hands its chunks to the part file off the reactor.

Per-chunk work on the reactor is two list appends and a few additions. Chunks go down two
lanes that run side by side in ``run_blocking`` threads: one hashes, one writes (hashlib
and writev release the GIL). A lane starts once ``write_batch`` bytes wait for it and then
takes everything that queued while its previous call ran, so a lane that falls behind
catches up in one call instead of paying a thread round trip per batch. The transport is
paused while ``_MAX_IN_FLIGHT`` batches' worth of bytes are not yet both hashed and
written, so memory stays within a few batches. Every ``checkpoint_bytes`` a third call
fsyncs the part and records the new durable resume point while the download goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http import PotentialDataLoss

from gateway.updates.errors import DownloadError
from gateway.updates.partfile import PartFile
from gateway.blocking import RunBlocking

_MAX_READ = 1 << 20
_MAX_IN_FLIGHT = 3



class _Lane:
    """Runs one kind of blocking work over the body's chunks, one call at a time, in order.

    Chunks queue while a call runs; the next call takes all of them at once, so a lane that
    falls behind pays one thread round trip for all it has to catch up on.
    """

    def __init__(self, run_blocking: RunBlocking, work: Callable[[Sequence[bytes]], None],
                 finished: Callable[[object], None]) -> None:
        self._run_blocking = run_blocking
        self._work = work
        self._finished = finished
        self._queue: list[bytes] = []
        #: Bytes queued and not yet handed to a call.
        self.queued = 0
        #: Bytes the finished calls took.
        self.done = 0
        self.busy = False
        self._taken = 0

    def add(self, data: bytes) -> None:
        self._queue.append(data)
        self.queued += len(data)

    def start(self, least: float) -> None:
        """Hand every queued chunk to a call when none runs and at least ``least`` bytes wait."""
        if not self.busy and self._queue and self.queued >= least:
            chunks, self._queue, self._taken, self.queued = self._queue, [], self.queued, 0
            self.busy = True
            self._run_blocking(self._work, chunks).addBoth(self._done)

    def drop(self) -> None:
        self._queue, self.queued = [], 0

    def _done(self, result: object) -> None:
        self.busy = False
        self.done += self._taken
        self._finished(result)


class BodySink(Protocol):
    """Streams a response body into a :class:`PartFile`.

    :param part: the part file; its ``hash_chunks`` and ``write_chunks`` run through ``run_blocking``.
    :param run_blocking: runs blocking callables off the reactor.
    :param batch: bytes gathered before one hash and one write.
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
        self._batch = batch
        self._limit = limit
        self._too_big = too_big
        self._part = part
        self._run_blocking = run_blocking
        self._lanes = (_Lane(run_blocking, part.hash_chunks, self._finished),
                       _Lane(run_blocking, part.write_chunks, self._written))
        self._syncing = False
        self._sync_mark = part.written
        self._ready = first is None
        self._paused = False
        self._pumping = False
        self._write_failed = False
        self._error: Failure | None = None
        self._ended: Failure | None = None
        if first is not None:
            run_blocking(first).addBoth(self._prepared)

    def connectionMade(self) -> None:
        """Let the TCP connection read up to a batch per ``recv`` instead of 64 KiB.

        Per-read overhead in the reactor dominates the cost of a fast download; Twisted's
        TCP transport reads ``bufferSize`` bytes at a time and it may be raised per
        connection. The HTTP client hides the TCP transport behind a proxy, hence the walk.
        """
        tcp = getattr(self.transport, "_producer", None)
        if tcp is not None and isinstance(getattr(tcp, "bufferSize", None), int):
            tcp.bufferSize = max(tcp.bufferSize, min(self._batch, _MAX_READ))

    def dataReceived(self, data: bytes) -> None:
        """Queue a chunk; hand a batch on once enough is queued."""
        if self._error is not None:
            return
        self.received += len(data)
        if self.received > self._limit:
            self.abort(self._too_big())
            return
        hash_lane, write_lane = self._lanes
        hash_lane.add(data)
        write_lane.add(data)
        if write_lane.queued >= self._batch or hash_lane.queued >= self._batch:
            self._pump()

    def connectionLost(self, reason: Failure | None = None) -> None:
        """The body ended (completely or not): write what is left, then fire :attr:`done`.

        :param reason: why (``None``: the whole body came, as ``ResponseDone``).
        """
        # twisted.web.client is imported by the first download, not by an idle gateway.
        from twisted.web.client import ResponseDone

        self._ended = reason if reason is not None else Failure(ResponseDone())
        self._pump()

    def abort(self, error: Exception) -> None:
        """End the body early with ``error`` (idle timeout, cancel, size); bytes so far are kept.

        :param error: what :attr:`done` reports.
        """
        if self._error is None:
            self._error = Failure(error)
        if self._ended is None and self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _drained(self) -> bool:
        if self._syncing or any(lane.busy for lane in self._lanes):
            return False
        return self._write_failed or not any(lane.queued for lane in self._lanes)

    def _written(self, result: object) -> None:
        """A batch is written: make the part durable in the background every checkpoint_bytes."""
        part = self._part
        if not self._syncing and part.written - self._sync_mark >= part.checkpoint_bytes:
            self._syncing = True
            self._sync_mark = part.written
            self._run_blocking(part.sync_to, self._sync_mark).addBoth(self._synced)
        self._finished(result)

    def _synced(self, result: object) -> None:
        self._syncing = False
        self._finished(result)

    def _pump(self) -> None:
        if self._pumping:
            return  # a batch finished inside our own push (inline run_blocking): looked at below
        self._pumping = True
        try:
            self._pump_once()
        finally:
            self._pumping = False

    def _pump_once(self) -> None:
        if self._ready and not self._write_failed:
            least = self._batch if self._ended is None else 0
            for lane in self._lanes:
                lane.start(least)
        unfinished = self.received - min(lane.done for lane in self._lanes)
        busy = unfinished >= _MAX_IN_FLIGHT * self._batch
        if self._ended is None:
            if busy and not self._paused:
                self._paused = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            elif self._paused and not busy:
                self._paused = False
                self.transport.resumeProducing()  # type: ignore[union-attr]
        elif self._drained() and not self.done.called:
            for lane in self._lanes:
                lane.drop()
            outcome = self._outcome()
            if outcome is None:
                self.done.callback(None)
            else:
                self.done.errback(outcome)

    def _prepared(self, result: object) -> None:
        self._ready = True
        self._finished(result)

    def _finished(self, result: object) -> None:
        if isinstance(result, Failure) and not self._write_failed:
            self._write_failed = True
            self._error = None  # the disk error is the one to report
            self.abort(result.value)
        self._pump()

    def _outcome(self) -> Failure | None:
        if self._error is not None:
            return self._error
        assert self._ended is not None
        from twisted.web.client import ResponseDone

        if self._ended.check(ResponseDone, PotentialDataLoss):
            return None
        return self._ended
