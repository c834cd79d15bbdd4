"""Reading a stream through named cursors, acknowledging, and persisting cursors."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import WallClock, steady_seconds
from gateway.journal.cursors import (Cursor, check_name, cursor_path, encode_cursor, load_cursors, merge_ranges,
                                     runs_outside, union_runs)
from gateway.journal.errors import JournalWriteError, UnknownCursorError
from gateway.filelayer import FileLayer, move_into_place, write_temporary
from gateway.journal.losses import LossLedger, LossReason
from gateway.journal.record import Record
from gateway.journal.segments import ReadPosition, ReadResult, Segment, has_segment, read_records, segment_holding
from gateway.journal.stats import Histogram
from gateway.journal.tail import RecentTail
from gateway.logthrottle import LogThrottle, since_last_line

#: Seconds between two lines about cursor saves refused after drops moved the cursors, at least.
SKIP_SAVE_LOG_INTERVAL = 60.0

class ReaderStream(Protocol):
    """What the cursors use of their :class:`~gateway.journal.stream.Stream`."""

    log: Logger
    name: str
    directory: str
    files: FileLayer
    run: Callable[..., "Deferred[Any]"]
    next_seq: int
    written_seq: int
    tail: RecentTail
    ledger: LossLedger

    @property
    def clock(self) -> WallClock:
        """The stream's clock (read only)."""

    @property
    def segments(self) -> list[Segment]:
        """The stream's segments, oldest first (read only)."""

    @property
    def first_kept_seq(self) -> int:
        """The seq of the oldest record the stream still holds (``next_seq`` when none)."""

    def delete_acked(self, floor: int) -> None:
        """Every cursor's save has acknowledged up to ``floor``: delete the sealed segments
        that holds, and forget the loss ledger's seqs passed up to it."""

    def save_ledger_now(self) -> None:
        """Write the loss ledger now, for a loss the cursors pass (a damaged stretch)."""

    def ledger_on_disk(self) -> Deferred[None]:
        """Fires once the ledger that counts the losses the cursors passed is on disk (a
        ledger that changed is written now); fails when the disk refused it."""

    def note_loss(self, reason: LossReason, records: int, nbytes: int, first_seq: int = 0,
                  last_seq: int = 0, first_time: float = 0.0, last_time: float = 0.0,
                  where: tuple[int, int] | None = None) -> None:
        """Count a loss (``where``: the damaged stretch it counts)."""


class StreamReader:
    """The cursors of one :class:`~gateway.journal.stream.Stream` (use the stream's methods)."""

    def __init__(self, stream: ReaderStream) -> None:
        self.stream = stream
        self.cursors: dict[str, Cursor] = {}
        self._waiting: list[Deferred[None]] = []
        #: Seconds per cursor save that worked, from its hand-over to the I/O thread (the wait
        #: behind the batches queued there included) until it is durable, on the steady clock.
        self.save_latency = Histogram()
        #: The line of a cursor's save refused after a drop moved it (a full disk drops a segment
        #: after another, each refusing a save): the first, then at most once a minute.
        self._skip_lines = LogThrottle(SKIP_SAVE_LOG_INTERVAL, lambda: steady_seconds(stream.clock))

    def load(self) -> Deferred[None]:
        """Load the stored cursors (on the I/O thread)."""
        s = self.stream
        d = s.run(load_cursors, s.files, s.directory)
        d.addCallback(self._loaded)
        return d

    def _loaded(self, loaded: tuple[dict[str, tuple[int, list[tuple[int, int]]]], dict[str, str]]) -> None:
        s = self.stream
        found, unreadable = loaded
        last = s.next_seq - 1
        first = s.first_kept_seq
        dropped_below = s.ledger.dropped_below
        for name, (acked, above) in found.items():
            if acked > last:
                # (records are appended durably before any cursor may pass them: only damage
                # from outside, an emptied or removed tail segment, takes them away)
                s.log.warn("journal {stream}: cursor {cursor} had acknowledged up to seq {acked}, past the last"
                           " record on disk (seq {last}): the records at the stream's end are gone (its tail"
                           " segment emptied or removed from outside, or not yet on disk at a power cut under"
                           " sync none or interval); it goes on with new records",
                           stream=s.name, cursor=name, acked=acked, last=last)
            start, ranges = merge_ranges(min(acked, last), [], above, last)
            if start + 1 < dropped_below:
                # (a crash or power cut after the limits dropped the last segment, before its
                # file went, as it does once the next one is on disk: counted lost, never read)
                # (what it had acknowledged in memory, unsaved, was delivered: no drop counted it)
                s.log.warn("journal {stream}: cursor {cursor} resumes at seq {next}: seqs {start}-{end} were"
                           " dropped before a crash or power cut (those it had not acknowledged were counted in"
                           " the loss report then; those it had, in memory, were delivered)",
                           stream=s.name, cursor=name, next=dropped_below, start=start + 1, end=dropped_below - 1)
                start, ranges = merge_ranges(dropped_below - 1, ranges, (), last)
            self.cursors[name] = Cursor(name, start, ranges, saved=acked)
            if name in unreadable:
                s.log.warn("journal {stream}: cursor {cursor} is unreadable ({error}): it starts again at"
                           " the oldest record kept, seq {first} (what it had acknowledged is delivered again)",
                           stream=s.name, cursor=name, error=unreadable[name], first=first)
            elif start + 1 < first:  # (after a crash: saved before the acknowledgement that let them go)
                s.log.warn("journal {stream}: cursor {cursor} resumes at seq {first}, the oldest kept: seqs"
                           " {start}-{end} were deleted after its last save (acknowledged but not saved yet,"
                           " or dropped: a drop is in the loss report)",
                           stream=s.name, cursor=name, first=first, start=start + 1, end=first - 1)

    def cursor(self, name: str) -> Deferred[None]:
        """Create cursor ``name`` at the oldest retained record unless it exists. A file the
        disk refuses (a gateway started on a full disk) is logged: the cursor works from
        memory and is written with its next save (a start before that makes it afresh, at
        the oldest record kept: what it acknowledged is sent again, never skipped)."""
        if name in self.cursors:
            return succeed(None)
        s = self.stream
        first = s.first_kept_seq
        c = self.cursors[check_name(name)] = Cursor(name, first - 1, changes=1)
        return self._persist(c).addErrback(self._made_in_memory, c)

    def _made_in_memory(self, failure: Failure, c: Cursor) -> None:
        failure.trap(JournalWriteError)
        self.stream.log.error("journal {stream}: cursor {cursor} is not on disk ({error}): it is written with its"
                              " next save the disk takes; a start before that starts it again at the oldest"
                              " record kept (sent again, never skipped)",
                              stream=self.stream.name, cursor=c.name, error=failure.value.cause)

    def _get(self, name: str) -> Cursor:
        try:
            return self.cursors[name]
        except KeyError:
            raise UnknownCursorError(f"stream {self.stream.name!r} has no cursor {name!r}") from None

    def _position(self, c: Cursor) -> ReadPosition | None:
        segs = self.stream.segments
        if not segs:
            return None
        position = c.position
        if position is not None and has_segment(segs, position.segment):
            if not c.above:
                return position
            want = _skip(c.above, position.want)
            if want == position.want:
                return position
        else:
            want = _skip(c.above, position.want if position is not None else c.acked + 1)
        seg = segs[max(segment_holding(segs, want), 0)]
        if position is not None and seg.first_seq == position.segment and position.want <= want:
            return ReadPosition(seg.first_seq, position.offset, want)  # (scans on from there)
        return ReadPosition(seg.first_seq, 0, max(want, seg.first_seq))

    def read(self, name: str, max_records: int = 1000, max_bytes: int = 1 << 20) -> Deferred[list[Record]]:
        """The next records for cursor ``name`` (possibly none); advances its read position."""
        c = self._get(name)
        return c.lock.run(self._read, c, max_records, max_bytes)

    def _read(self, c: Cursor, max_records: int, max_bytes: int) -> Deferred[list[Record]]:
        s = self.stream
        position = self._position(c)
        if position is None or position.want > s.written_seq:
            return succeed([])
        hit = s.tail.take(position.want, s.segments[0].first_seq, max_records, max_bytes)
        if hit is not None:  # written a moment ago: no trip to the I/O thread
            records, c.position = hit
            return succeed(_unacked(c.above, records) if c.above else records)
        snapshot = [(g.first_seq, g.path, g.size) for g in s.segments]
        d = s.run(read_records, s.files, snapshot, position, max_records, max_bytes)
        d.addCallback(self._got, c, c.rewinds)
        return d

    def _got(self, result: ReadResult, c: Cursor, rewinds: int) -> list[Record]:
        if c.rewinds == rewinds:
            c.position = result.position
        ledger = self.stream.ledger
        for dmg in result.damage:
            where = (dmg.segment, dmg.start)
            if ledger.counted(where, dmg.lost):  # (by another cursor, before a restart, by an older build)
                continue
            # (seqs counted write-failed, which no record took, are no loss of this stretch)
            lost = ledger.not_skipped(dmg.lost)
            if dmg.lost is not None and not lost and dmg.end == dmg.start:
                continue
            first, last = (lost[0][0], lost[-1][1]) if lost else (0, 0)
            if dmg.end == dmg.start:
                self.stream.log.warn("journal {stream}: seqs {first}-{last} are missing before byte {start} of "
                                     "segment {segment} (a segment cut short or removed from outside)",
                                     stream=self.stream.name, first=first, last=last,
                                     start=dmg.start, segment=dmg.segment)
            else:
                self.stream.log.warn("journal {stream}: corrupt bytes {start}-{end} in segment {segment} skipped",
                                     stream=self.stream.name, start=dmg.start, end=dmg.end, segment=dmg.segment)
            self.stream.note_loss("corrupt", sum(b - a + 1 for a, b in lost), dmg.end - dmg.start, first, last,
                                  where=where)
            for low, high in lost:  # (no record holds them: a drop does not count them again)
                ledger.note_skipped(low, high)
            self.stream.save_ledger_now()  # (on disk before a cursor's save passes it)
        records = result.records
        if ledger.skipped:  # (a failed undo's records, counted write-failed: never read)
            records = [r for r in records if not ledger.is_skipped(r.seq)]
        return _unacked(c.above, records) if c.above else records

    def wait(self, name: str) -> Deferred[None]:
        """Fire when cursor ``name`` may have records to read (at once if it has)."""
        c = self._get(name)
        position = self._position(c)
        if position is not None and position.want <= self.stream.written_seq:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def wake(self) -> None:
        """New records were written: fire every :meth:`wait`."""
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def rewind(self, name: str) -> None:
        """Make the next read of ``name`` start right after its acknowledged seq."""
        c = self._get(name)
        c.position = None
        c.rewinds += 1

    def ack(self, name: str, seq: int, above: Iterable[tuple[int, int]] = ()) -> Deferred[None]:
        """Acknowledge every record up to ``seq``, and those in the ``(first, last)`` ranges
        ``above`` (none past the last written); fires once durable."""
        return self._persist(self.note_ack(name, seq, above))

    def note_ack(self, name: str, seq: int, above: Iterable[tuple[int, int]] = ()) -> Cursor:
        """Acknowledge as :meth:`ack` does, in memory only (durable with the next save).

        What every cursor acknowledged in memory was delivered: a drop does not count it
        as lost (:meth:`unacknowledged`)."""
        c = self._get(name)
        limit = self.stream.written_seq
        acked = max(c.acked, min(seq, limit))
        ranges = c.above
        if above or ranges:
            acked, ranges = merge_ranges(acked, ranges, above, limit)
        if acked != c.acked or ranges != c.above:
            c.acked, c.above = acked, ranges
            c.changes += 1
        return c

    def _persist(self, c: Cursor) -> Deferred[None]:
        if c.saved_changes >= c.changes:
            return succeed(None)
        d: Deferred[None] = Deferred()
        c.waiters.append((c.changes, d))
        if not c.saving:
            self._save(c)
        return d

    def _save(self, c: Cursor) -> None:
        s = self.stream
        c.saving = True
        # The damage this cursor read past, and the drops it was moved past, are counted on
        # disk before the cursor moves past them: a crash in between would leave them behind
        # the cursor, never read (nor counted) again. A ledger the disk refuses fails the save.
        target = (c.acked, c.changes)
        started = steady_seconds(s.clock)
        # Two jobs, not one write_atomic: each half waits for an fsync (on a slow disk,
        # 100 ms each), and a batch of appends handed over while the first runs is written
        # before the second, so it waits for one of them, not both.
        path = cursor_path(s.directory, c.name)
        data = encode_cursor(c.acked, c.above)
        d = s.ledger_on_disk()
        d.addCallback(lambda _: s.run(write_temporary, s.files, path + ".tmp", (data,)))
        d.addCallback(lambda _: s.run(move_into_place, s.files, path + ".tmp", path))
        d.addCallbacks(self._saved, self._save_failed, callbackArgs=(c, target, started), errbackArgs=(c,))

    def _saved(self, _: object, c: Cursor, target: tuple[int, int], started: float) -> None:
        c.saving = False
        self.save_latency.observe(steady_seconds(self.stream.clock) - started)
        c.saved, c.saved_changes = target
        # The segments the save frees are let go before its ack() fires (their files' deletion
        # queued, not waited for): a writer told that its acknowledgement is durable finds the
        # room it made (under reject-new, an append).
        floor = min(c.saved for c in self.cursors.values())
        self.stream.delete_acked(floor)
        ready = [d for changes, d in c.waiters if changes <= c.saved_changes]
        c.waiters = [(changes, d) for changes, d in c.waiters if changes > c.saved_changes]
        for d in ready:
            d.callback(None)
        # Again only for an ack() waiting (one fired above may have started its save already):
        # what note_ack() changed is saved by the next ack(), when its consumer chooses. Each
        # save is a write and two fsyncs on the thread the appends share (on a slow disk, 200 ms).
        if c.waiters and not c.saving:
            self._save(c)

    def _save_failed(self, failure: Failure, c: Cursor) -> None:
        c.saving = False
        cause = failure.value if isinstance(failure.value, OSError) else OSError(str(failure.value))
        waiters, c.waiters = c.waiters, []
        for _, d in waiters:
            d.errback(JournalWriteError(self.stream.name, cause))

    def save_all(self) -> Deferred[None]:
        """Fire once every cursor's acknowledged seq is durable, or its save was refused
        (logged: the stream is closing, and the next start resumes from the last save)."""
        ds = [self._persist(c).addErrback(self._not_saved_at_close, c) for c in self.cursors.values()]
        return gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    def _not_saved_at_close(self, failure: Failure, c: Cursor) -> None:
        failure.trap(JournalWriteError)
        self.stream.log.error("journal {stream}: cursor {cursor} could not be saved at stop ({error}): the next"
                              " start resumes it from its last save (the oldest record kept if it has none):"
                              " what it acknowledged since is sent again, never skipped",
                              stream=self.stream.name, cursor=c.name, error=failure.value.cause)

    def slowest_ack(self) -> int | None:
        """The lowest acknowledged seq over every cursor (None: no cursors), in memory:
        saved or not."""
        return min((c.acked for c in self.cursors.values()), default=None)

    def oldest_unacked(self) -> int | None:
        """The first seq some cursor has not acknowledged (in memory: saved or not), or None
        when every cursor acknowledged every record appended (or there is no cursor)."""
        return min((c.acked + 1 for c in self.cursors.values() if self.waiting(c) > 0), default=None)

    def unacknowledged(self, first: int, last: int) -> list[tuple[int, int]]:
        """The runs of seqs from ``first`` to ``last`` that a cursor has not acknowledged (in
        memory, above its acknowledged seq too), in order: all of them when there is no cursor.
        Seqs a reader counted lost as it passed them (the ledger's
        :attr:`~gateway.journal.losses.LossLedger.passed`), and those the limits dropped (below
        its :attr:`~gateway.journal.losses.LossLedger.dropped_below`), are in none: they are counted."""
        first = max(first, self.stream.ledger.dropped_below)  # (those below were dropped, and counted)
        if not self.cursors:
            runs = [(first, last)] if first <= last else []
        else:
            runs = union_runs(run for c in self.cursors.values() for run in c.unacked_runs(first, last))
        ledger = self.stream.ledger
        counted = union_runs([*ledger.passed, *ledger.skipped]) if ledger.skipped else ledger.passed
        return [left for run in runs for left in runs_outside(*run, counted)] if counted else runs

    def skip_to(self, seq: int) -> None:
        """Move every cursor behind ``seq`` to it (its records were dropped)."""
        for c in self.cursors.values():
            if c.acked < seq - 1:
                c.acked, c.above = merge_ranges(seq - 1, c.above, (), self.stream.next_seq - 1)
                c.changes += 1
                self._persist(c).addErrback(self._log_save_failed, c)
            if c.position is not None and c.position.want < seq:
                c.position = None

    def _log_save_failed(self, failure: Failure, c: Cursor) -> None:
        count = self._skip_lines.note()
        if count is None:
            return
        cadence = since_last_line(count, "failed", "logged at most once a minute while they go on",
                                  self._skip_lines.first)
        self.stream.log.error("journal {stream}: saving cursor {cursor} failed ({cadence}): {error}",
                              stream=self.stream.name, cursor=c.name, error=failure.value, cadence=cadence)

    def backlog(self) -> dict[str, int]:
        """Records appended but not acknowledged, per cursor."""
        return {n: self.waiting(c) for n, c in self.cursors.items()}

    def waiting(self, c: Cursor) -> int:
        """Records appended that ``c`` has not acknowledged: seqs past its acknowledged one and
        its ranges above, but those counted ``write-failed``, which no record holds
        (:attr:`~gateway.journal.losses.LossLedger.skipped`)."""
        last = self.stream.next_seq - 1
        count = c.unacked(last)
        for first, end in self.stream.ledger.skipped:
            low, high = max(first, c.acked + 1), min(end, last)
            if low <= high:
                count -= sum(b - a + 1 for a, b in runs_outside(low, high, c.above))
        return count


def _skip(above: list[tuple[int, int]], want: int) -> int:
    """``want``, or the seq after the acknowledged range it falls in."""
    i = bisect_right(above, (want, float("inf"))) - 1
    if i >= 0 and above[i][0] <= want <= above[i][1]:
        return above[i][1] + 1
    return want


def _unacked(above: list[tuple[int, int]], records: list[Record]) -> list[Record]:
    """``records`` without those in the acknowledged ranges ``above``."""
    return [r for r in records if _skip(above, r.seq) == r.seq]
