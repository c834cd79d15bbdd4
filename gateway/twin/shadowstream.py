"""The shadow sync's reading of its journal stream ``shadow-<link>``: records read ahead, when
those written before a moment are all read, and the cursor acknowledged as their requests are
answered."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import steady_seconds
from gateway.errors import JournalError
from gateway.links.readretry import READ_FAILURE_LOG_INTERVAL, READ_RETRY_INTERVAL, ReadRetry
from gateway.links.stream import LinkStream
from gateway.logthrottle import LogThrottle, since_last_line

#: The cursor the sync reads its stream with.
CURSOR = "shadow"
#: Seconds between two log lines about cursor saves the disk refused, at least.
CURSOR_FAILURE_LOG_INTERVAL = 60.0
#: Records read ahead from the stream at most.
READ_AHEAD = 500


class ShadowStreamReader:
    """Reads one shadow sync's stream ahead into :attr:`pending` and acknowledges what is
    answered.

    :param stream: the journal stream ``shadow-<link>``.
    :param clock: the retries of failed reads and the log's throttle.
    :param log: the sync's logger (the lines keep the sync's namespace).
    :param got: called once records read are added to :attr:`pending`.
    :param saved: called once an acknowledgement is durable (the segments it freed deleted).
    """

    def __init__(self, stream: LinkStream, clock: Any, log: Logger, got: Callable[[], None],
                 saved: Callable[[], None]) -> None:
        self.stream = stream
        self.log = log
        self.got = got
        self.saved = saved
        self.pending: list[Any] = []  # records read, not yet answered, in seq order
        self._last_read = 0
        self._acked = 0
        self._reading = False
        self._reads = 0  # reads started
        self._waiting = False  # for records to be written (the stream's wait)
        #: :meth:`known` calls waiting: the stream's last seq then, the reads started by then, and
        #: the Deferred to fire
        self._known: list[tuple[int, int, Deferred[None]]] = []
        self._cursor_failure_lines = LogThrottle(CURSOR_FAILURE_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._read_retry = ReadRetry(clock, self.read, READ_RETRY_INTERVAL, READ_FAILURE_LOG_INTERVAL)
        #: Whether :meth:`stop` was called: nothing more is read.
        self.stopped = False

    def start(self, first: Callable[[], None]) -> Deferred[None]:
        """Create the cursor, call ``first``, then start reading (fires once the cursor exists)."""
        def made(_: None) -> None:
            first()
            self.read()

        return self.stream.cursor(CURSOR).addCallback(made)

    def stop(self) -> None:
        """Stop reading (unanswered records stay in the stream)."""
        self.stopped = True
        self._read_retry.stop()

    def read(self) -> None:
        """Read more records, unless a read is under way or :data:`READ_AHEAD` are pending."""
        if self._reading or self.stopped or len(self.pending) >= READ_AHEAD:
            return
        self._reading = True
        self._reads += 1
        self.stream.read(CURSOR, max_records=READ_AHEAD - len(self.pending)).addCallbacks(
            self._got, self._read_failed)

    def _read_failed(self, failure: Any) -> None:
        """A read failed: tried again after :data:`READ_RETRY_INTERVAL`; logged at most once per
        :data:`READ_FAILURE_LOG_INTERVAL`."""
        self._reading = False
        count = self._read_retry.failed()
        if count is not None:
            if failure.check(OSError, JournalError):
                self.log.error("reading the shadow stream failed ({since}): {error}", error=failure.getErrorMessage(),
                               since=since_last_line(count, "", f"tried again every {READ_RETRY_INTERVAL:g} s,"
                                                     " logged at most once a minute"))
            else:
                self.log.failure("reading the shadow stream failed", failure)

    def _got(self, records: list[Any]) -> None:
        self._reading = False
        failures = self._read_retry.succeeded()  # (the next failure is logged at once)
        if failures:
            self.log.info("the shadow stream is read again, after {count} failed reads", count=failures)
        if self.stopped:
            return
        if records:
            self.pending.extend(records)
            self._last_read = records[-1].seq
            self._release_known(at_end=False)  # (before got(): nothing of what was read is sent yet)
            self.got()
            self.read()
        else:
            self._release_known(at_end=True)
            if self._known:  # (asked while this read was under way: a read begun after that tells)
                self.read()
            elif not self._waiting:  # (one wait at a time: reads found nothing again and again)
                self._waiting = True
                self.stream.wait(CURSOR).addCallback(self._written)

    @property
    def last_read(self) -> int:
        """The seq of the last record read (0 before the first)."""
        return self._last_read

    def _written(self, _: None) -> None:
        """Records may be there to read."""
        self._waiting = False
        self.read()

    def known(self) -> Deferred[None]:
        """Fires once every record written to the stream before this call is known: read into
        :attr:`pending` (or answered already). That is, once the records read reach the
        stream's last seq at the call, or a read begun after the call finds nothing more (a
        record still being appended then, or whose append failed, is not waited for); at once
        when :data:`READ_AHEAD` records are pending, since no more are read before some are
        answered. While reads fail, it waits for one that works."""
        if self._last_read >= self.stream.next_seq - 1 or len(self.pending) >= READ_AHEAD:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._known.append((self.stream.next_seq - 1, self._reads, d))
        self.read()
        return d

    def _release_known(self, at_end: bool) -> None:
        """Fire the :meth:`known` calls a read just finished answers (``at_end``: it found
        nothing more)."""
        full = len(self.pending) >= READ_AHEAD
        waiting, self._known = self._known, []
        for last, reads, d in waiting:
            if self._last_read >= last or full or at_end and self._reads > reads:
                d.callback(None)
            else:
                self._known.append((last, reads, d))

    def answered(self, records: list[Any]) -> None:
        """The request ``records`` stood for is answered: they are no longer pending, and the
        cursor is acknowledged up to the first record still pending."""
        seqs = {record.seq for record in records}
        self.pending = [record for record in self.pending if record.seq not in seqs]
        floor = self.pending[0].seq - 1 if self.pending else self._last_read
        if floor > self._acked:
            self._acked = floor
            self.stream.ack(CURSOR, floor).addCallbacks(lambda _: self.saved(), self._cursor_not_saved)

    def _cursor_not_saved(self, failure: Failure) -> None:
        """A cursor save the disk refuses (full, read-only) is one error line at most once a
        minute, counting the others: the next request accepted saves it again, and a restart
        before that sends the requests since the last save again (at least once). Anything
        else is a bug's traceback."""
        if not failure.check(OSError, JournalError):
            self.log.failure("shadow cursor not saved", failure)
            return
        count = self._cursor_failure_lines.note()
        if count is not None:
            self.log.error("shadow cursor not saved ({since}): {error}; saved with the next request accepted",
                           since=since_last_line(count, "", "logged at most once a minute"),
                           error=failure.getErrorMessage())
