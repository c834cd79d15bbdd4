"""One named stream: appends with group commit, limits and overflow, loss accounting.

All state lives on the reactor thread; every file operation is a job handed to
``run`` (the journal's dedicated I/O thread), one at a time in order, so jobs never
race each other. Readers and cursors are in :class:`~gateway.journal.reader.StreamReader`.

Group commit keeps up to two batches on the I/O thread (:data:`BATCHES_IN_FLIGHT`):
while one is written and fsynced, the reactor runs the Python of the other's appends
and callbacks, and the disk, which syncs faster back to back than after a pause, gets
its next batch at once. A batch's appends still fire only after its own fsync, and
batches complete in order. On a disk slow to sync (:data:`SLOW_WRITE_S`) that overlap buys
nothing and splits producers into groups that wait for each other's writes: there one batch
is in flight, handed over a linger after the first append it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import BootClock, clock_of, same_clock, steady_seconds, watch_steps
from gateway.degraded import Failing
from gateway.journal.batch import Batch, OnDurable, OnFailed, Once, call_logged, fire_range
from gateway.journal.errors import (JournalClosedError, JournalWriteError, RecordTooLargeError,
                                    StreamFullError, StreamNotDrainedError, too_large_words, write_reason)
from gateway.filelayer import FileLayer
from gateway.journal.iothread import Runner
from gateway.journal.ledgerwrites import LedgerWrites
from gateway.journal.losses import LossEntry, LossLedger, LossReason, LossReport
from gateway.journal.reader import StreamReader
from gateway.journal.retention import SegmentRetention
from gateway.journal.record import Record, encode, encode_numbered, with_seq
from gateway.journal.segments import (LEDGER_FILE, BatchOp, Recovered, Segment, UndoFailedError, WriteGate,
                                      mark_next_seq, open_directory, segment_path, write_batch,
                                      write_ledger)
from gateway.journal.settings import StreamSettings
from gateway.journal.snapshot import CursorSnapshot, LatencySnapshot, LossCount, StreamSnapshot
from gateway.journal.stats import Histogram, Latency, StreamStats
from gateway.journal.tail import RecentTail
from gateway.journal.unackedage import ReceivedLookup, closest_known, oldest_age
from gateway.logthrottle import LogThrottle

class Clock(Protocol):
    """What the journal needs of the reactor's clock (``IReactorTime``)."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""

    def callLater(self, delay: float, f: Callable[..., object], /, *args: Any) -> Any:
        """Call ``f(*args)`` after ``delay`` seconds."""


#: Batches a stream keeps on the I/O thread at once. Two overlap one batch's fsync with
#: the next one's Python; more only made smaller batches (measured: docs/benchmarks.md).
BATCHES_IN_FLIGHT = 2
#: A batch write slower than this (seconds) marks a disk slow to sync (an SD card or eMMC:
#: 20-200 ms). Until a write is faster again the stream keeps one batch in flight (a second
#: only waits behind the first on the one I/O thread, and producers that append again from
#: their callbacks then split into groups, each waiting for the others' writes too) and
#: hands it over :data:`SLOW_LINGER_SHARE` of the last write's time after its first append
#: (at most :data:`SLOW_LINGER_MAX_S`), so that clients answering their acknowledgement
#: join it.
SLOW_WRITE_S = 0.01
SLOW_LINGER_SHARE = 0.1
SLOW_LINGER_MAX_S = 0.01
#: After a failed write (ENOSPC, EIO) appends are refused at once, without touching the
#: disk, for this long; each further failure doubles it up to :data:`WRITE_BACKOFF_MAX_S`,
#: and a successful write ends it.
WRITE_BACKOFF_S = 0.5
WRITE_BACKOFF_MAX_S = 8.0
#: Seconds between two log lines of failed segment writes: a disk that stays full or
#: read-only fails one write per back-off (8 s), for hours.
WRITE_FAILURE_LOG_INTERVAL = 60.0
#: Seconds between two log lines of failed loss-ledger writes: on a full disk each refused
#: append notes a loss, and each note's write fails.
LEDGER_FAILURE_LOG_INTERVAL = 60.0
#: The :class:`~gateway.degraded.Degraded` reason of a stream whose loss ledger is not written.
LEDGER_NOT_SAVED = "ledger-not-saved"


class Stream:
    """A named, durable, append-only stream of :class:`Record`.

    Get one from :meth:`gateway.journal.service.JournalService.stream`.

    :param name: the stream's name.
    :param directory: its directory.
    :param settings: its limits and policies.
    :param files: the file layer.
    :param run: runs a blocking job on the journal's I/O thread.
    :param clock: the reactor's clock (timers, received times, ages, latencies).
    :param soon: calls a function at the end of the current reactor turn; by default
        ``clock.callLater(0, f)`` (the journal service passes the asyncio loop's cheaper
        ``call_soon``).
    :param slow_write_s: a batch write slower than this (seconds, as the I/O thread measured
        it) marks a slow disk (:data:`SLOW_WRITE_S`); 0: never (a test's simulated runner,
        whose write times mean nothing).
    :param boot: the clock of this boot, which tells whether the records kept were received on
        the wall clock as it reads at the open (this boot's, not stepped since): only those a
        step seen later moves. None: not known, a step moves every record kept.
    """

    log = Logger()

    def __init__(self, name: str, directory: str, settings: StreamSettings, files: FileLayer,
                 run: Runner, clock: Clock, soon: Callable[[Callable[[], object]], object] | None = None,
                 slow_write_s: float = 0.0, boot: BootClock | None = None) -> None:
        self.name = name
        self.boot = boot
        #: The first seq received on the wall clock as it reads now (0: every record kept).
        self._clock_since = 0
        self._clock_unsaved = False  # (the ledger's clock changed at the open: written with the first records)
        self.slow_write_s = slow_write_s
        self.soon = soon if soon is not None else (lambda f: clock.callLater(0, f))
        self.directory = directory
        self.settings = settings
        self.files = files
        self.run = run
        self.clock = clock
        # A stream always has sealed segments to drop before it reaches max_bytes.
        self._segment_bytes = min(settings.segment_bytes, max(settings.max_bytes // 4, 1024))
        self.next_seq = 1
        #: The last seq written to its segment (fsynced too under ``sync: sync``).
        self.written_seq = 0
        self.ledger = LossLedger()
        #: While writes of the loss ledger fail (a full disk): its counts are not durable.
        self.ledger_failing = Failing()
        #: Which of the ledger's writes are on disk (:meth:`ledger_on_disk`).
        self.ledger_writes = LedgerWrites()
        self._ledger_lines = LogThrottle(LEDGER_FAILURE_LOG_INTERVAL, partial(steady_seconds, clock))
        self._unwatch_steps: Callable[[], None] | None = None  # while open: stops hearing of clock steps
        self.reader = StreamReader(self)
        #: Reads when records no longer in memory were received (``oldest_unacked_age_s``).
        self.unacked_lookup = ReceivedLookup(self)
        #: The segments and the space they take; drops, expiry, free disk.
        self.retention = SegmentRetention(name, directory, settings, files, run, clock, self.reader, self)
        self._pending: list[bytes] = []  # frames appended since the last batch
        #: Where each segment's frames start in ``_pending``: ``(index, segment path)``.
        self._pending_segments: list[tuple[int, str]] = []
        self._pending_done: list[OnDurable | None] = []  # per sync append: told its seq once durable
        self._pending_failed: list[OnFailed] = []  # per sync append: told if it is lost
        self._pending_since = 0.0  # the sum of the pending appends' start times
        self._pending_oldest = 0.0  # the first pending append's start time
        self._pending_written: list[tuple[Record, int, int, int]] = []  # record, seq, segment, end
        self._pending_first = 1
        self._pending_plain = False  # a pending append needed no reserve (see Batch.plain)
        self._pending_refusals = 0  # refusing.total at the last such append (see Batch.refusals)
        #: The size of the append a limit (max-bytes, min-free-disk) refused last, while that
        #: refusal stands and a smaller stream could take it: once the stream has room for it
        #: again (its cursors let segments go, the disk has space), the snapshot stops saying it refuses.
        self._refused_size: int | None = None
        #: Whether appends are refused now (and why, since when), and how many were refused.
        self.refusing = Failing()
        #: The records written last, for readers that keep up (see :mod:`gateway.journal.tail`).
        self.tail = RecentTail()
        self._tail_bytes = 0  # size the tail segment will have once pending is written
        self._unsynced: set[str] = set()  # segments written by sync: interval or none, not fsynced
        self._idle: list[Deferred[None]] = []
        #: Batches on the I/O thread, oldest first (they complete in this order).
        self._inflight: list[Batch] = []
        #: Size each segment will have once the batches in flight are written.
        self._planned: dict[str, int] = {}
        self._gate = WriteGate()
        self._epoch = 0  # bumped after each failed write (see WriteGate)
        #: A failed batch whose undo failed too (UndoFailedError): its refused records may be on
        #: disk under the seqs the stream gives next. The next batch of records undoes it first
        #: and is written only if that works, so no record is stored under their seqs before.
        self._undo: list[BatchOp] | None = None
        self._flush_soon = False
        self._flush_ok = True
        self._retry_at = 0.0  # after a failed write: appends fail at once until then
        self._backoff = 0.0
        self._write_error: OSError | None = None
        self._write_failures = 0  # failed writes in a row: logged when they end
        self._write_lines = LogThrottle(WRITE_FAILURE_LOG_INTERVAL, partial(steady_seconds, clock))
        self._mark_lines = LogThrottle(WRITE_FAILURE_LOG_INTERVAL, partial(steady_seconds, clock))
        self._timer: Any = None
        self._early: list[tuple[Record, OnDurable | None, OnFailed, bool]] | None = []
        self._on_open: list[Callable[[], object]] = []
        self._closed = False
        self.append_latency = Latency()
        self.fsync_latency = Latency()
        self.fsync_histogram = Histogram()
        self.batch_records = Latency()
        self.drops: dict[str, int] = {}

    @property
    def segments(self) -> list[Segment]:
        """The segments, oldest first (read only: :attr:`retention` owns them)."""
        return self.retention.segments

    @property
    def first_kept_seq(self) -> int:
        """The seq of the oldest record the stream still holds (:attr:`next_seq` when it holds
        none): the records below it are gone, acknowledged by every cursor (their segments
        deleted) or dropped by the stream's limits (a last segment dropped whole, whose file a
        crash left, included: :attr:`~gateway.journal.losses.LossLedger.dropped_below`)."""
        return max(self.segments[0].first_seq if self.segments else self.next_seq, self.ledger.dropped_below)

    # -- opening and closing ------------------------------------------------------

    def open(self) -> Deferred[None]:
        """Recover the directory on the I/O thread; appends made meanwhile wait."""
        d = self.run(open_directory, self.files, self.directory)
        d.addCallback(self._opened)
        return d

    def _opened(self, result: tuple[Recovered, bytes | str | None, int]) -> Deferred[None]:
        rec, ledger, free = result
        self.ledger = LossLedger.load(ledger)
        if self.ledger.unreadable is not None:
            self.log.warn("journal {stream}: {file} holds no loss ledger ({error}): the losses it counted"
                          " are gone from the loss report; a new ledger replaces it",
                          stream=self.name, file=LEDGER_FILE, error=self.ledger.unreadable)
        self.next_seq = self.ledger.next_past_skipped(self.ledger.keep_dropped_below(rec.next_seq))
        self.retention.load(rec.segments, free, self.ledger.dropped_below)
        self._pending_first = self.next_seq
        self.written_seq = self.next_seq - 1
        self._tail_bytes = rec.segments[-1].size if rec.segments else 0
        segments = self.retention.segments
        self.ledger.keep_damage_in(segment.first_seq for segment in segments)
        self.ledger.keep_passed_below(self.next_seq)
        if segments:
            self.ledger.keep_steps_from(segments[0].first_seq)
        self._clock_since = self._same_clock_since()
        self._unwatch_steps = watch_steps(self.clock, self._clock_stepped)
        for dmg in rec.damage:
            # A corrupt stretch stays in the tail: counted at the open that found it first only.
            # A torn one is cut away, so its offset is written again: never remembered.
            where = None if dmg.torn else (dmg.segment, dmg.start)
            if where is not None and self.ledger.counted(where, dmg.lost):
                continue
            reason: LossReason = "torn" if dmg.torn else "corrupt"
            self.log.warn("journal {stream}: {reason} data cut from {segment} at {start}-{end}",
                          stream=self.name, reason=reason, segment=dmg.segment, start=dmg.start, end=dmg.end)
            lost = self.ledger.not_skipped(dmg.lost)  # (a record a failed undo left is counted write-failed)
            self.note_loss(reason, sum(b - a + 1 for a, b in lost), dmg.end - dmg.start,
                           lost[0][0] if lost else 0, lost[-1][1] if lost else 0, where=where)
            for low, high in lost:  # (no record holds them: a drop does not count them again)
                self.ledger.note_skipped(low, high)
        d = self.reader.load()
        d.addCallback(lambda _: self._release_early())
        return d

    def _release_early(self) -> None:
        early, self._early = self._early or [], None
        for record, done, failed, reserved in early:
            self._append(record, done, failed, reserved)
        on_open, self._on_open = self._on_open, []
        for call in on_open:
            call()
        oldest = self.reader.oldest_unacked()
        if oldest is not None:  # the tail is empty: read the oldest unacknowledged record's time now
            self._received(oldest)
        if self.ledger.dirty:
            self.clock.callLater(0, self._flush)
        if self.settings.sync == "interval":
            self._timer = LoopingCall(self._flush, force_sync=True)
            self._timer.clock = self.clock
            self._timer.start(self.settings.sync_interval_ms / 1000.0, now=False)

    def _same_clock_since(self) -> int:
        """The first seq kept that was received on the wall clock as it reads now: the one the
        ledger says, when the records since were received in this boot and the wall clock
        has not stepped since against the boot's (a step the gateway saw moved it along);
        else (another boot, a step made while the gateway was stopped, an unknown boot) the
        next one. Noted in the ledger, written with this run's first records (no write of its
        own: a stream that takes no record writes nothing)."""
        if self.boot is None:
            return 0
        here = clock_of(self.boot, self.clock.seconds())
        saved = self.ledger.clock
        if saved is not None and same_clock(saved[:2], here):
            return saved[2]
        self.ledger.clock = (*here, self.next_seq)
        self._clock_unsaved = True
        return self.next_seq

    def _clock_stepped(self, step: float) -> None:
        """The wall clock stepped by ``step`` seconds: the records appended so far on the
        clock as it read before (since :meth:`_same_clock_since`) were received on it. Kept
        in the ledger (written soon), so their ages are counted on the new clock, after a
        restart too."""
        self.ledger.note_step(self.next_seq, step, self._clock_since)
        if self.ledger.clock is not None:
            boot, offset, since = self.ledger.clock
            self.ledger.note_clock(boot, offset + step, since)
        self.clock.callLater(0, self._flush)

    def received_now(self, seq: int, received: float) -> float:
        """Record ``seq``'s ``received`` time on the wall clock as it reads now: moved by every
        step of the clock seen since (see :meth:`_clock_stepped`)."""
        return received + self.ledger.stepped_since(seq) if self.ledger.steps else received

    def keep_no_tail(self) -> None:
        """Keep none of the records written from now on in memory for readers that keep up
        (:attr:`tail`): for a stream nobody reads as it is written (the broker's state log,
        read only at start), whose tail would hold up to 16384 records that no read asks for."""
        self.tail = RecentTail(max_records=0, max_bytes=0)

    def close(self) -> Deferred[None]:
        """Stop taking appends; write and fsync everything pending, then close files."""
        self._closed = True
        if self._unwatch_steps is not None:
            self._unwatch_steps()
            self._unwatch_steps = None
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self.retention.log_held_drops()
        d = self._drain()
        d.addCallback(lambda _: self.reader.save_all())
        d.addCallback(self._log_totals)
        return d

    def unacknowledged_records(self) -> int:
        """Records kept (or waiting to be written) that not every cursor acknowledged, in
        memory (all of them when the stream has no cursor); seqs already counted lost as a
        reader passed them are not among them."""
        return sum(last - low + 1 for low, last in self._unacknowledged_runs())

    def _unacknowledged_runs(self) -> list[tuple[int, int]]:
        """The runs of seqs of :meth:`unacknowledged_records`, in order."""
        return self.reader.unacknowledged(self.first_kept_seq, self.next_seq - 1)

    def close_to_drop(self, force: bool) -> Deferred[LossEntry | None]:
        """Close the stream so that its directory can be deleted (the operator drops it:
        :meth:`gateway.journal.service.JournalService.drop`), once it is open.

        The records not every cursor acknowledged are counted lost, reason ``dropped``, in
        :attr:`drops` (its ledger goes with the directory), and logged once.

        :param force: drop records not acknowledged too; without it they refuse the drop.
        :returns: (a Deferred of) the loss counted, or None when nothing was lost.
        :raises StreamNotDrainedError: (as the Deferred's failure) records are not
            acknowledged and ``force`` is false; the stream stays open, as it was.
        :raises JournalClosedError: (likewise) the stream is closed already.
        """
        return self._when_open(self._close_to_drop, force)

    def _close_to_drop(self, force: bool) -> Deferred[LossEntry | None]:
        if self._closed:
            raise JournalClosedError(f"journal stream {self.name!r} is closed")
        waiting = self.unacknowledged_records()
        if waiting and not force:
            raise StreamNotDrainedError(self.name, waiting)
        return self.close().addCallback(lambda _: self._count_dropped())

    def _count_dropped(self) -> LossEntry | None:
        """Count (and log, once) what the drop loses: the records, written by now, that not
        every cursor acknowledged."""
        lost = self._unacknowledged_runs()
        if not lost:
            self.log.info("journal {stream}: dropped by the operator; every record it kept was acknowledged",
                          stream=self.name)
            return None
        records = sum(last - low + 1 for low, last in lost)
        nbytes = self.retention.bytes
        first_time = next((seg.first_time for seg in self.segments if seg.first_time), 0.0) or 0.0
        entry = LossEntry("dropped", records, nbytes, lost[0][0], lost[-1][1], first_time,
                          self.clock.seconds(), self.clock.seconds())
        self.note_loss(entry.reason, records, nbytes, entry.first_seq, entry.last_seq, first_time, entry.last_time)
        self.log.warn("journal {stream}: dropped by the operator with {records} record{s} not acknowledged by its"
                      " cursors (seq {first}-{last}, {bytes} bytes): counted lost (dropped)",
                      stream=self.name, records=records, s="" if records == 1 else "s", first=entry.first_seq, last=entry.last_seq, bytes=nbytes)
        return entry

    def _log_totals(self, _: object) -> None:
        if self.batch_records.count:
            self.log.info("journal {stream}: {batches} batches of {records:.1f} records on average; "
                          "write+fsync {fsync_ms:.2f} ms, append to durable {append_ms:.2f} ms on average",
                          stream=self.name, batches=self.batch_records.count, records=self.batch_records.mean,
                          fsync_ms=self.fsync_latency.mean * 1000, append_ms=self.append_latency.mean * 1000)

    def _drain(self) -> Deferred[None]:
        """Fire once nothing is pending or being written (each write fsynced), or once a write
        (of records or of the loss ledger) failed: what it held stays pending."""
        if self._pending or self.ledger.dirty or self._unsynced:
            self._flush(force_sync=True)
        if not self._inflight:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        d.addCallback(self._drain_more)
        return d

    def _drain_more(self, _: object) -> Deferred[None] | None:
        # Go on while work remains, but not after a failed write: no retry loop on a full disk.
        if self._inflight or self._flush_ok and (self._pending or self.ledger.dirty or self._unsynced):
            return self._drain()
        return None

    def _wake_idle(self) -> None:
        idle, self._idle = self._idle, []
        for d in idle:
            d.callback(None)

    # -- appending ----------------------------------------------------------------

    def append(self, record: Record, reserved: bool = False) -> Deferred[int]:
        """Store ``record``; the Deferred fires with its seq once it is durable.

        Under ``sync: interval`` and ``sync: none`` it fires at once instead.

        :param reserved: the append may use the stream's reserve: exceed ``max_bytes`` by
            up to :data:`~gateway.journal.retention.RESERVED_BYTES` and use half of
            ``min_free_bytes``, without dropping anything (the link's loss reports, which
            must get through when the stream is full). Refused even so, it is not counted
            as a ``rejected`` loss.

        :raises StreamFullError: (as the Deferred's failure) a limit was reached
            and the policy is reject-new, or nothing is left to drop.
        :raises JournalWriteError: (likewise) the write or fsync failed, or one failed
            less than the back-off ago (:data:`WRITE_BACKOFF_S`, doubling up to
            :data:`WRITE_BACKOFF_MAX_S`): then nothing is tried.
        :raises JournalClosedError: (likewise) the stream is closed.
        """
        d: Deferred[int] = Deferred()
        self.append_then(record, d.callback, d.errback, reserved)
        return d

    def append_then(self, record: Record, on_durable: OnDurable, on_failed: OnFailed,
                    reserved: bool = False) -> None:
        """Store ``record``; call ``on_durable(seq)`` once it is durable, or ``on_failed(failure)``.

        The same contract as :meth:`append` without a Deferred per record: a batch that
        completes calls its appends' ``on_durable`` one after another, in seq order, and
        that is the whole cost per record (the broker's hot path uses this). Exactly one of
        the two is called, once; it may be called before this returns (a refused append,
        ``sync: interval`` or ``sync: none``). An exception raised by either is logged.

        :param record: the record to store.
        :param on_durable: told the record's seq once it is durable.
        :param on_failed: told why it was not stored: :class:`StreamFullError`,
            :class:`JournalWriteError` or :class:`JournalClosedError`.
        :param reserved: as for :meth:`append`.
        """
        self._append(record, on_durable, on_failed, reserved)

    def append_many(self, records: Sequence[Record], on_durable: OnDurable, on_failed: OnFailed,
                    reserved: bool = False) -> None:
        """Store ``records`` in order; call ``on_durable(seq of the last)`` once every one is
        durable, or ``on_failed(failure)``: one callback for the whole sequence.

        The broker appends the PUBLISHes of each socket read this way: the records join the
        same batch, and the batch's completion makes one call for them instead of one per
        record. Exactly one of the two is called, once. A refused record (a limit, the write
        back-off, a closed stream) fails the call at once; the records after it are still
        tried, each refused one counted as :meth:`append_then` counts it, and those stored
        are kept (the client whose acknowledgement failed sends them again: at least once).

        :param records: at least one.
        :param on_durable: told the last record's seq; the records' seqs are consecutive
            unless one was refused (and then this is not called).
        :param on_failed: as for :meth:`append_then`.
        :param reserved: as for :meth:`append`.
        :raises ValueError: ``records`` is empty.
        """
        if not records:
            raise ValueError("append_many needs at least one record")
        if self._append_together(records, on_durable, on_failed):
            return
        once = Once(on_durable, on_failed)
        append, failed, last = self._append, once.failed, len(records) - 1
        for i, record in enumerate(records):
            append(record, once.durable if i == last else None, failed, reserved)

    def _append_together(self, records: Sequence[Record], on_durable: OnDurable, on_failed: OnFailed) -> bool:
        """:meth:`append_many`'s common case in one pass: the stream is open and syncing
        (``sync: sync``), not backing off after a write error, and the records fit the
        current segment and every limit as they are. Each record then gets exactly what
        :meth:`_append` would give it, without its checks per record.

        :returns: False, with nothing done, when one of those does not hold (or a record
            cannot be framed): the records then go one by one.
        """
        if self._closed or self._early is not None or self._retry_at or self.settings.sync != "sync":
            return False
        segments = self.retention.segments
        if not segments:
            return False
        seq = self.next_seq
        try:
            frames, numbered = encode_numbered(records, seq)
        except ValueError:
            return False  # _append raises it, after appending the records before it
        sizes = list(map(len, frames))
        total, end = sum(sizes), self._tail_bytes
        if end + total > self._segment_bytes or not self.retention.admit_within_limits(total):
            return False
        tail = segments[-1]
        if tail.first_time is None:
            tail.first_time = records[0].received
        pending = self._pending
        if not pending:
            self._pending_segments.append((0, tail.path))
        pending.extend(frames)
        written, first = self._pending_written, tail.first_seq
        for record, size in zip(numbered, sizes):
            end += size
            written.append((record, seq, first, end))
            seq += 1
        self._tail_bytes, self.next_seq = end, seq
        self._pending_plain = True  # (within every limit as they are: no reserve needed)
        self._pending_refusals = self.refusing.total
        done = self._pending_done
        if len(records) > 1:
            done.extend([None] * (len(records) - 1))
        self._queue_sync(on_durable, on_failed, len(records))
        return True

    def _append(self, record: Record, on_durable: OnDurable | None, on_failed: OnFailed,
                reserved: bool) -> None:
        """:meth:`append_then`, where ``on_durable`` may be ``None`` (:meth:`append_many`'s
        records but the last: nobody is told of them one by one)."""
        if self._closed:
            call_logged(on_failed, Failure(JournalClosedError(f"journal stream {self.name!r} is closed")))
            return
        if self._early is not None:
            # Framed once now, so that a record the format cannot hold raises here, as on an
            # open stream: raised when the open releases it, it failed the open and left the
            # appends queued behind it waiting for ever.
            encode(record, 0)
            self._early.append((record, on_durable, on_failed, reserved))
            return
        seq = self.next_seq
        frame = encode(record, seq)
        size = len(frame)
        retention = self.retention
        settings = self.settings
        limit = retention.admit(size, reserved)
        if limit is not None:
            if not reserved:
                self.note_loss("rejected", 1, size, 0, 0, record.received, record.received)
            if limit == "min-free-disk" and not self._closed:  # measure again (at most once a second)
                retention.measure_free()
            words = self._limit_words(limit, size)
            self.refusing.failed(limit, words, self.clock.seconds())
            self._refused_size = size if size <= settings.max_bytes else None
            call_logged(on_failed, Failure(RecordTooLargeError(self.name, size, settings.max_bytes)
                                     if size > settings.max_bytes else StreamFullError(self.name, limit)))
            return
        if self._retry_at and steady_seconds(self.clock) < self._retry_at:
            assert self._write_error is not None
            retention.refund(size)
            self.refusing.failed(write_reason(self._write_error), str(self._write_error), self.clock.seconds())
            self._refused_size = None
            call_logged(on_failed, Failure(JournalWriteError(self.name, self._write_error)))
            return
        if not reserved:
            self._pending_plain = True
            self._pending_refusals = self.refusing.total
        segments = retention.segments
        pending = self._pending
        tail_bytes = self._tail_bytes
        tail = segments[-1] if segments else None
        if tail is None or 0 < tail_bytes and tail_bytes + size > self._segment_bytes:
            tail = retention.start_segment(seq, segment_path(self.directory, seq), record.received)
            self._pending_segments.append((len(pending), tail.path))
            tail_bytes = 0
        else:
            if tail.first_time is None:
                tail.first_time = record.received
            if not pending:
                self._pending_segments.append((0, tail.path))
        self._tail_bytes = tail_bytes = tail_bytes + size
        self.next_seq = seq + 1
        pending.append(frame)
        self._pending_written.append((with_seq(record, seq), seq, tail.first_seq, tail_bytes))
        if settings.sync != "sync":
            self.append_latency.add(0.0)
            if not self._inflight and len(pending) == 1:  # written next turn; fsynced by the timer or at stop
                self.clock.callLater(0, self._flush)
            if on_durable is not None:
                call_logged(on_durable, seq)
            return
        self._queue_sync(on_durable, on_failed, 1)

    def _limit_words(self, limit: str, size: int) -> str:
        """What a refusal for ``limit`` (``max-bytes`` or ``min-free-disk``) of a record of
        ``size`` bytes (framed) means, for the read side: a record larger than ``max_bytes``
        on its own is refused by any stream, the emptiest too, and is said to be."""
        if limit == "max-bytes" and size > self.settings.max_bytes:
            return too_large_words(size, self.settings.max_bytes)
        if limit == "max-bytes":
            return f"the stream holds its max_bytes ({self.settings.max_bytes} bytes)"
        return (f"{max(self.retention.free, 0)} bytes free on the disk, min_free_bytes is"
                f" {self.settings.min_free_bytes}")

    def _queue_sync(self, on_durable: OnDurable | None, on_failed: OnFailed, count: int) -> None:
        """The last of ``count`` records just made pending under ``sync: sync``: it is told
        ``on_durable`` (the others' entries in ``_pending_done`` are there already) and
        ``on_failed`` stands for all of them; the batch is written at the end of this turn."""
        now = steady_seconds(self.clock)
        done = self._pending_done
        if len(done) < count:  # these are the first pending records
            self._pending_oldest = now
        done.append(on_durable)
        self._pending_failed.append(on_failed)
        self._pending_since += now * count
        if not self._flush_soon and len(self._inflight) < self._batches_in_flight():
            # At the end of this reactor turn, not now: every append that arrives in the same
            # turn (one socket read carries many PUBLISHes) joins one write and one fsync.
            self._flush_later()

    def _flush_later(self) -> None:
        """Hand the pending appends over at the end of this turn, or after the slow disk's linger."""
        self._flush_soon = True
        linger = self._linger()
        if linger:
            self.clock.callLater(linger, self._flush_now)
        else:
            self.soon(self._flush_now)

    def _linger(self) -> float:
        """Seconds a batch waits for more appends before it is handed over: 0 but on a slow disk."""
        last = self.fsync_latency.last
        if not self.slow_write_s or last < self.slow_write_s or self.settings.sync != "sync":
            return 0.0
        return min(last * SLOW_LINGER_SHARE, SLOW_LINGER_MAX_S)

    def _batches_in_flight(self) -> int:
        """Batches the I/O thread may hold at once: one on a slow disk."""
        return 1 if self._linger() else BATCHES_IN_FLIGHT

    def _flush_now(self) -> None:
        self._flush_soon = False
        self._flush()

    def _flush(self, force_sync: bool = False) -> None:
        """Hand everything pending to the I/O thread as one batch (if it has room)."""
        if len(self._inflight) >= self._batches_in_flight() or not (
                self._pending or self.ledger.dirty or force_sync and self._unsynced):
            return
        frames, done, failed = self._pending, self._pending_done, self._pending_failed
        first, written = self._pending_first, self._pending_written
        marks = self._pending_segments
        since = (self._pending_since, self._pending_oldest)
        self._pending, self._pending_done, self._pending_failed = [], [], []
        self._pending_first, self._pending_written = self.next_seq, []
        self._pending_segments = []
        self._pending_since = 0.0
        # A segment's frames are contiguous in the batch: appends only ever move to a newer one.
        ends = [i for i, _ in marks[1:]] + [len(frames)]
        by_path = {path: frames[i:end] for (i, path), end in zip(marks, ends)}
        sync = force_sync or self.settings.sync == "sync"
        if sync:  # also fsync what sync: interval or none wrote earlier
            for path in sorted(self._unsynced - by_path.keys()):  # (oldest first: a fixed order)
                by_path[path] = []
            self._unsynced = set()
        else:
            self._unsynced.update(by_path)
        retention = self.retention
        segments = {s.path: s for s in retention.segments}
        planned = self._planned
        ops = []
        for path, fs in by_path.items():
            seg = segments.get(path)
            if seg is None:
                continue
            data = b"".join(fs)
            before = planned.get(path)
            start = seg.size if before is None else before
            # New: no batch in flight has created the file yet (only its creator undoes it).
            ops.append((path, data, start, before is None and retention.unborn(seg.first_seq)))
            planned[path] = start + len(data)
        ledger = self.ledger.dump() if self.ledger.dirty or self._clock_unsaved and frames else None
        if ledger is not None:
            self._clock_unsaved = False
        check_free = retention.free_check_due()
        undo = None
        if self._undo is not None and written and not any(b.undo for b in self._inflight):
            undo = self._undo
        batch = Batch(ops, done, failed, since, first, written, ledger,
                       0 if ledger is None else self.ledger_writes.handed_over(), self._pending_plain, undo,
                       self._pending_refusals)
        self._pending_plain = False
        self._inflight.append(batch)
        d = self.run(write_batch, self.files, self.directory, ops, sync, ledger, check_free, self._gate, self._epoch,
                     undo)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(batch,), errbackArgs=(batch,))

    def note_loss(self, reason: LossReason, records: int, nbytes: int, first_seq: int = 0,
                  last_seq: int = 0, first_time: float = 0.0, last_time: float = 0.0,
                  where: tuple[int, int] | None = None) -> None:
        """Count a loss in the stats and the durable ledger (written with the next batch).

        :param where: a damaged stretch's ``(segment, offset)``, kept in the ledger with the
            entry so that it is never counted again (:meth:`LossLedger.counted`).

        A loss of no record (a torn tail, a damaged stretch between two records) has no seq
        lost: its ``first_seq``/``last_seq`` are 0, whatever the seqs around it.
        """
        if records == 0:
            first_seq = last_seq = 0
        counted = self.ledger.note(LossEntry(reason, records, nbytes, first_seq, last_seq, first_time,
                                             last_time, self.clock.seconds()), where)
        if counted or not records:  # (seqs a link counted before a restart add nothing: LossLedger.passed)
            self.drops[reason] = self.drops.get(reason, 0) + counted
        if not self._inflight and not self._closed and self._early is None:
            self.clock.callLater(0, self._flush)

    def note_dropped_below(self, seq: int) -> None:
        """See :meth:`~gateway.journal.retention.RetentionStream.note_dropped_below`."""
        self.ledger.note_dropped_below(seq)

    def save_ledger_now(self) -> None:
        """Queue the loss ledger's write on the I/O thread now, if it changed, ahead of every
        job queued after this call, for a loss the cursors are moved past (a drop, a damaged
        stretch): :meth:`ledger_on_disk` waits for it. A failed write is logged and the ledger
        goes with the next batch (or the next call)."""
        self._write_ledger()
        self.ledger_writes.need()

    def ledger_on_disk(self) -> Deferred[None]:
        """Fires once the ledger that counts the losses the cursors were moved past
        (:meth:`save_ledger_now`) is on disk (at once, when it is; a ledger that changed is
        written now); fails when the disk refused it. Retention deletes the segments of a
        drop that counted a loss, and a cursor's save moves past such losses, only after it:
        a power cut never loses records that no ledger counts."""
        self._write_ledger()
        return self.ledger_writes.on_disk()

    def _write_ledger(self) -> None:
        """Queue the loss ledger's write on the I/O thread, if it changed."""
        if not self.ledger.dirty:
            return
        number = self.ledger_writes.handed_over()
        d = self.run(write_ledger, self.files, self.directory, self.ledger.dump())
        d.addCallbacks(lambda _: self._ledger_written(number),
                       lambda failure: self._ledger_not_written(failure.value, number))

    def _ledger_not_written(self, error: BaseException, number: int) -> None:
        """The ledger's write failed: it stays to write (with the next batch), the snapshot's
        ``ledger_failing`` says why, and so does the log: at the first failure, then at most
        once a minute (a full disk fails one write per refused append, and publishers retry
        at once)."""
        self.ledger.dirty = True
        self.ledger_writes.refused(number, error)
        failing = self.ledger_failing.failed(LEDGER_NOT_SAVED, str(error), self.clock.seconds())
        if self._ledger_lines.note() is not None:
            self.log.error("journal {stream}: writing the loss ledger failed ({count} in a row; kept, written later;"
                           " logged at most once a minute): {error}", stream=self.name, count=failing.failures,
                           error=error)

    def _ledger_written(self, number: int) -> None:
        """The ledger is on disk: after failed writes, say it works again."""
        self.ledger_writes.written(number)
        failing = self.ledger_failing.now
        if failing is not None:
            self.log.info("journal {stream}: the loss ledger is written again, after {count} failed writes",
                          stream=self.name, count=failing.failures)
            self.ledger_failing.recovered()
            self._ledger_lines.reset()

    def unwritten_bytes(self) -> int:
        """Bytes appended but not yet on disk: pending and in flight."""
        return sum(map(len, self._pending)) + sum(b.nbytes for b in self._inflight)

    def _written(self, result: tuple[float, int | None, OSError | None], batch: Batch) -> None:
        del self._inflight[0]  # this batch: results arrive in order, and refused ones fail
        seconds, free, ledger_error = result
        if batch.undo is not None:
            self._undo = None
        # (a ledger the disk refused is a failed write too: a drain tries it once, not for ever)
        self._flush_ok = ledger_error is None
        if self._backoff:
            self._retry_at = self._backoff = 0.0
        if self._write_failures:
            self.log.info("journal {stream}: writes work again, after {count} failed writes",
                          stream=self.name, count=self._write_failures)
            self._write_failures = 0
            self._write_lines.reset()
        if batch.plain and batch.refusals == self.refusing.total:
            self.refusing.recovered()
            self._refused_size = None
        if ledger_error is not None:
            self._ledger_not_written(ledger_error, batch.ledger_write)
        elif batch.ledger is not None:
            self._ledger_written(batch.ledger_write)
        self.fsync_latency.add(seconds)
        self.fsync_histogram.observe(seconds)
        written, done, first = batch.written, batch.done, batch.first
        n = len(written)
        if n:  # (a write of the loss ledger alone, a refusal's, is no batch of records)
            self.batch_records.add(n)
        self.tail.add(written, batch.nbytes)
        self.retention.written({p: len(data) for p, data, _, _ in batch.ops}, free)
        if not self._inflight:
            self._planned = {}
        now = steady_seconds(self.clock)
        self.written_seq = first + n - 1
        if done:
            self.append_latency.add_many(len(done), len(done) * now - batch.since[0], now - batch.since[1])
        # Producers that append again from their callbacks join one batch, written below,
        # instead of each scheduling a write of its own (hence _flush_soon held).
        # When no other batch is in flight, the first half's new appends are handed over
        # once that half has fired, so their fsync runs while the second half fires.
        scheduled, self._flush_soon = self._flush_soon, True
        slow = self._linger() > 0
        half = len(done) // 2 if not self._inflight and self.settings.sync == "sync" and not slow else 0
        fire_range(done, 0, half, first, self)
        if half and self._pending:
            self._flush()
        fire_range(done, half, len(done), first, self)
        self._flush_soon = scheduled
        self.reader.wake()
        if self._pending and slow:
            if not self._flush_soon:  # (a stop's drain hands it over at once)
                self._flush_later()
        elif self._pending and self.settings.sync == "sync":
            self._flush()
        elif self._pending:  # sync: interval or none
            self.clock.callLater(0, self._flush)
        self._wake_idle()

    def _write_failed(self, failure: Any, batch: Batch) -> None:
        """Fail this batch, the batch in flight behind it and everything pending; their
        seqs are reused under ``sync: sync`` (refused, never acknowledged), and skipped under
        ``interval`` and ``none`` (acknowledged: counted lost under them)."""
        if not self._inflight or self._inflight[0] is not batch:
            return  # refused (BatchRefusedError) after the batch before it failed
        lost_batches, self._inflight = self._inflight, []
        self._planned = {}
        self._epoch += 1  # batches from now on pass the gate again
        self._flush_ok = False
        cause = failure.value if isinstance(failure.value, OSError) else OSError(str(failure.value))
        if isinstance(cause, UndoFailedError):
            self._undo = cause.undo
        elif batch.undo is not None:  # undone first, then this batch failed and was undone
            self._undo = None
        error = JournalWriteError(self.name, cause)
        # Back off: every append refused now saves a write that would fail the same way
        # (a full disk stays full until something frees space). The free-space estimate is
        # refreshed too, so the overflow policy (drop-oldest, reject-new) sees the full disk
        # at once rather than at the next check.
        self._backoff = min(max(self._backoff * 2, WRITE_BACKOFF_S), WRITE_BACKOFF_MAX_S)
        self._retry_at = steady_seconds(self.clock) + self._backoff
        self._write_error = cause
        self._write_failures += 1
        # At the first failure, then at most once a minute: a disk that stays full or
        # read-only fails one write per back-off for as long as it stays so.
        if self._write_lines.note() is not None:
            self.log.error("journal {stream}: write failed ({count} in a row; appends refused for {backoff} s, then"
                           " tried again; logged at most once a minute): {error}",
                           stream=self.name, count=self._write_failures, error=cause, backoff=self._backoff)
        lost = sum(len(b.written) for b in lost_batches) + len(self._pending)
        # (under sync: interval or none its appends were acknowledged: lost, not refused)
        self.refusing.failed(write_reason(cause), str(cause), self.clock.seconds(),
                             lost if self.settings.sync == "sync" else 0)
        self._refused_size = None
        if not self._closed:
            self.retention.measure_free(now=True)
        queued, queued_failed = self._pending, self._pending_failed
        self._pending, self._pending_done, self._pending_failed, self._pending_written = [], [], [], []
        self._pending_segments = []
        self._pending_since = 0.0
        self._pending_plain = False
        lost_bytes = sum(b.nbytes for b in lost_batches) + sum(map(len, queued))
        first = batch.first
        self.next_seq = self._pending_first = first
        self.retention.unwritten_lost(lost_bytes)
        segments = self.retention.segments
        self._tail_bytes = segments[-1].size if segments else 0
        # (the disk did not refuse the ledger these batches carried: it never got it. It is
        # written on its own now, and what waited for theirs waits for that write: a segment
        # write a full disk refuses is no sign that the small ledger will not fit)
        carried = [b.ledger_write for b in lost_batches if b.ledger is not None]
        if carried and not self._closed:
            self.ledger.dirty = True
            self._write_ledger()
        for number in carried:
            self.ledger_writes.not_run(number, cause)
        if self.settings.sync != "sync" and lost:
            # Counted lost, so never given to another record (the loss report names them):
            # the stream numbers on past them, and readers skip them (LossLedger.skipped).
            self.note_loss("write-failed", lost, lost_bytes, first, first + lost - 1)
            self.ledger.note_skipped(first, first + lost - 1)
            self.next_seq = self._pending_first = first + lost
            if not self._closed:
                self._mark_next_seq(first + lost)
        lost_failed = [f for b in lost_batches for f in b.failed] + queued_failed
        for on_failed in lost_failed:
            call_logged(on_failed, Failure(error))
        self._wake_idle()

    def _mark_next_seq(self, seq: int) -> None:
        """Seqs up to ``seq`` were skipped at the tail: make ``seq`` the tail segment's name, on
        disk before the ledger that counts them (queued after this), so that a build that
        ignores the ledger's ``skipped`` gives them to no record either. Should that fail, the
        next batch creates the segment, and only the ledger tells them."""
        path = segment_path(self.directory, seq)
        replaced = self.retention.start_empty_segment(seq, path)
        self._tail_bytes = 0
        d = self.run(mark_next_seq, self.files, self.directory, path, replaced)
        d.addCallbacks(lambda _: self.retention.written({path: 0}, None), partial(self._not_marked, seq))

    def _not_marked(self, seq: int, failure: Failure) -> None:
        if self._mark_lines.note() is not None:
            self.log.warn("journal {stream}: marking seq {seq} as the next on disk failed (logged at most once a"
                          " minute): {error}; a build older than the loss ledger's skipped seqs would give the"
                          " seqs before it to new records", stream=self.name, seq=seq, error=failure.value)

    # -- limits (see SegmentRetention) ---------------------------------------------

    def delete_acked(self, floor: int) -> None:
        """Delete sealed segments whose every record every cursor acknowledged (up to ``floor``,
        saved), and forget the ledger's :attr:`~LossLedger.passed` seqs up to it."""
        self.retention.delete_acked(floor)
        self.ledger.forget_passed_to(floor)

    def enforce_limits(self) -> None:
        """Expire records older than max_age_s and restore min free disk (call periodically)."""
        self.retention.enforce_limits()
        if self.ledger.steps and self.segments:
            self.ledger.keep_steps_from(self.segments[0].first_seq)

    def free_measured(self, free: int) -> None:
        """Take ``free``, the free space of :attr:`directory`'s filesystem measured by the
        caller on the I/O thread (the journal's limits check measures every stream in one job)."""
        self.retention.measured(free)

    # -- reading (see StreamReader) ------------------------------------------------

    def cursor(self, name: str) -> Deferred[None]:
        """Create cursor ``name`` at the oldest retained record unless it exists; fires when durable."""
        return self._when_open(self.reader.cursor, name)

    def read(self, cursor: str, max_records: int = 1000, max_bytes: int = 1 << 20) -> Deferred[list[Record]]:
        """The next records for ``cursor`` (an empty list when there are none yet).

        Each read continues where the previous one stopped; :meth:`rewind` goes back
        to the last acknowledged record. Reads see only written (under ``sync``:
        durable) records.

        :param max_records: at most this many records.
        :param max_bytes: stop once the payloads reach this many bytes.
        :raises UnknownCursorError: no such cursor.
        """
        return self._when_open(self.reader.read, cursor, max_records, max_bytes)

    def _when_open(self, f: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        """Call ``f(*args)`` now, or once the stream has opened."""
        if self._early is None:
            return maybeDeferred(f, *args)
        d: Deferred[Any] = Deferred()
        self._on_open.append(lambda: maybeDeferred(f, *args).chainDeferred(d))
        return d

    def ack(self, cursor: str, seq: int, above: Iterable[tuple[int, int]] = ()) -> Deferred[None]:
        """Acknowledge every record of ``cursor`` up to ``seq``; fires once durable, the sealed
        segments every cursor has acknowledged whole let go by then (under reject-new, the room
        they held takes appends; their files are deleted on the I/O thread right behind).

        :param above: ``(first, last)`` ranges of seqs above ``seq`` acknowledged too
            (out of order): reads, after a restart too, skip them.
        """
        return self._when_open(self.reader.ack, cursor, seq, tuple(above))

    def note_ack(self, cursor: str, seq: int) -> None:
        """Acknowledge every record of ``cursor`` up to ``seq`` in memory only, at once (a
        save costs a write and fsyncs; the next :meth:`ack` saves it): a drop does not count
        these records as lost, though a restart before that save sends them again.

        :raises UnknownCursorError: no such cursor (nor any before the stream is open).
        """
        self.reader.note_ack(cursor, seq)

    def rewind(self, cursor: str) -> None:
        """Re-deliver from the record after the last acknowledged one (link reconnect)."""
        self.reader.rewind(cursor)

    def wait(self, cursor: str) -> Deferred[None]:
        """Fire when ``cursor`` may have records to read (at once if it has)."""
        return self._when_open(self.reader.wait, cursor)

    def unacked(self, cursor: str) -> int:
        """Records appended and not acknowledged by ``cursor`` (0 for an unknown cursor)."""
        c = self.reader.cursors.get(cursor)
        return self.reader.waiting(c) if c is not None else 0

    def loss_report(self) -> LossReport:
        """Losses not yet cleared, for the link to send upstream."""
        return self.ledger.report(self.name)

    @property
    def losses_reported(self) -> str | None:
        """What :meth:`mark_losses_reported` last stored (after a restart too), or None."""
        return self.ledger.reported

    def mark_losses_reported(self, key: str | None) -> None:
        """Store ``key`` (the link's summary of the report it queued) in the loss ledger,
        written with the next batch: with the report's own append when made in the same turn."""
        if key != self.ledger.reported:
            self.ledger.reported = key
            self.ledger.dirty = True

    def clear_losses(self, report: LossReport) -> Deferred[None]:
        """Forget the entries of ``report``; fires once that is durable."""
        self.ledger.clear(report)
        return self._drain().addCallback(self._raise_if_ledger_unwritten)

    def _raise_if_ledger_unwritten(self, _: object) -> None:
        """:raises JournalWriteError: the drain ended with the ledger not written (the disk refused it)."""
        if self.ledger.dirty:
            raise JournalWriteError(self.name, OSError("the loss ledger could not be written"))

    def snapshot(self) -> StreamSnapshot:
        """The read side's view of this stream (O(segments + cursors); no I/O on the reactor
        thread, though it may queue one read on the I/O thread: see :meth:`_received`)."""
        now = self.clock.seconds()
        age = self._oldest_age(now)
        cursors = tuple(CursorSnapshot(n, c.acked, self.reader.waiting(c))
                        for n, c in sorted(self.reader.cursors.items()))
        unacked_age = 0.0
        oldest = self.reader.oldest_unacked()
        if oldest is not None:
            seq, received = self._received(oldest)
            unacked_age = max(now - self.received_now(seq, received), 0.0) if received else 0.0
        latency = self.append_latency
        self._room_again()
        return StreamSnapshot(
            self.name, self.next_seq - self.first_kept_seq, self.retention.bytes,
            len(self.segments), max(self.retention.free, 0), age, unacked_age, self.next_seq, latency.count,
            LatencySnapshot(latency.count, latency.total, latency.max, latency.last), self.fsync_latency.count,
            self.fsync_histogram.snapshot(), cursors,
            tuple(LossCount(reason, n) for reason, n in sorted(self.drops.items())), self.refusing.now,
            self.refusing.total, self.ledger_failing.now, self.reader.save_latency.snapshot())

    def _room_again(self) -> None:
        """End a refusal by a limit once the stream has room for the append it refused (its
        cursors let segments go, or the disk has space again): the stream takes appends now,
        and its snapshot (``GET /status``, ``gateway_journal_refusing_appends``) said it refused
        them until the next append was written, however long after the cloud drained it."""
        size = self._refused_size
        if size is None or self.refusing.now is None or self._backoff:
            return  # (after a failed write, until a write works: room alone takes no append)
        if self.refusing.now.reason in ("max-bytes", "min-free-disk") and self.retention.fits(size):
            self.refusing.recovered()
            self._refused_size = None

    def _received(self, seq: int) -> tuple[int, float | None]:
        """Record ``seq`` (a cursor has not acknowledged it) and when it was received.

        From memory when the stream wrote it lately or is writing it; else read from its
        segment (:class:`ReceivedLookup`: the first record kept from ``seq`` on, when damage
        took ``seq`` itself). Until that read is done: the closest older record whose time
        is known, at worst its segment's first (so the age is at most that much too old).
        """
        received = self.tail.received_at(seq)
        if received is not None:
            return seq, received
        for batch in self._inflight:
            if batch.first <= seq < batch.first + len(batch.written):
                return seq, batch.written[seq - batch.first][0].received
        if self._pending_first <= seq < self._pending_first + len(self._pending_written):
            return seq, self._pending_written[seq - self._pending_first][0].received
        found = None if self._closed else self.unacked_lookup.received(seq)  # (no reads once closed)
        if found is not None:
            return found
        return closest_known(self.segments, seq, self.unacked_lookup)

    def _oldest_age(self, now: float) -> float:
        """Seconds since the oldest record kept was received (0 when there is none)."""
        return oldest_age(self.segments, now, self.received_now)

    def stats(self) -> StreamStats:
        """A snapshot of depth, age, latencies and drops."""
        age = self._oldest_age(self.clock.seconds())
        return StreamStats(
            self.name, self.next_seq - self.first_kept_seq,
            self.retention.bytes, len(self.segments), age, self.next_seq,
            self.reader.backlog(), self.append_latency, self.fsync_latency, self.batch_records,
            dict(self.drops))
