"""What a stream keeps on disk: its segments, the bytes and free disk they cost, which go.

:class:`SegmentRetention` owns a stream's segment list and its space accounting
(bytes on disk and pending, the free-space estimate, segments not yet created on
disk) and decides what goes: the oldest segments on overflow (drop-oldest), on
max-age expiry and to restore min free disk, and acknowledged segments. It tells
its stream what each drop cost through :class:`RetentionStream`; the stream
(:class:`~gateway.journal.stream.Stream`) owns appends, batches and the loss ledger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import CLOCK_SET_SINCE, steady_seconds
from gateway.filelayer import FileLayer
from gateway.journal.droplines import DropLines
from gateway.journal.errors import DISK_FULL_ERRNOS
from gateway.journal.losses import LossReason
from gateway.journal.segments import Segment, delete_segments
from gateway.journal.settings import StreamSettings


#: Bytes a reserved append (a link's loss report) may add beyond a stream's ``max_bytes``.
RESERVED_BYTES = 256 * 1024
#: Seconds between free-space measurements while appending (statvfs costs a syscall).
FREE_CHECK_S = 1.0


class RetentionCursors(Protocol):
    """What retention uses of the stream's cursors (:class:`~gateway.journal.reader.StreamReader`)."""

    def slowest_ack(self) -> int | None:
        """The lowest acknowledged seq over every cursor (None: no cursors)."""

    def unacknowledged(self, first: int, last: int) -> list[tuple[int, int]]:
        """The runs of seqs from ``first`` to ``last`` a cursor has not acknowledged (all
        when there is no cursor), less those a reader already counted lost."""

    def skip_to(self, seq: int) -> None:
        """Move every cursor behind ``seq`` to it."""


class RetentionStream(Protocol):
    """What retention uses of its :class:`~gateway.journal.stream.Stream`."""

    #: The seq the next append gets.
    next_seq: int

    def note_loss(self, reason: LossReason, records: int, nbytes: int, first_seq: int = 0,
                  last_seq: int = 0, first_time: float = 0.0, last_time: float = 0.0) -> None:
        """Count a loss in the stats and the durable loss ledger."""

    def note_dropped_below(self, seq: int) -> None:
        """Note in the loss ledger that every record below ``seq`` is dropped (saved with its
        next write: :meth:`save_ledger_now` when the drop counted a loss)."""

    def save_ledger_now(self) -> None:
        """Write the loss ledger now, for a loss the cursors are moved past (a drop):
        :meth:`ledger_on_disk` waits for that write."""

    def ledger_on_disk(self) -> Deferred[None]:
        """Fires once the ledger that counts the losses the cursors were moved past
        (:meth:`save_ledger_now`) is on disk (a ledger that changed is written now); fails
        when the disk refused it."""

    def received_now(self, seq: int, received: float) -> float:
        """Record ``seq``'s ``received`` time on the wall clock as it reads now."""

    def unwritten_bytes(self) -> int:
        """Bytes appended but not yet on disk (pending and in flight)."""


class RetentionClock(Protocol):
    """What retention uses of the reactor's clock."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""


class SegmentRetention:
    """The segments of one stream, what they cost, and which of them go.

    The segment list is read by the stream and its reader; only this object changes
    it. Appends are let in and counted by :meth:`admit` (and roll over with
    :meth:`start_segment`); completed writes are applied with :meth:`written`, failed
    ones with :meth:`unwritten_lost`.

    :param name: the stream's name (for logs).
    :param directory: the stream's directory (for free-space measurements).
    :param settings: its limits and policies.
    :param files: the file layer (deletes, free space).
    :param run: runs a blocking job on the journal's I/O thread.
    :param clock: the reactor's clock (ages, free-space check times).
    :param cursors: the stream's cursors: what they acknowledged, moved past what is dropped.
    :param stream: told each loss; asked for the bytes not yet on disk.
    """

    log = Logger()

    def __init__(self, name: str, directory: str, settings: StreamSettings, files: FileLayer,
                 run: Callable[..., Deferred[Any]], clock: RetentionClock, cursors: RetentionCursors,
                 stream: RetentionStream) -> None:
        self.name = name
        self.directory = directory
        self.settings = settings
        self.files = files
        self.run = run
        self.clock = clock
        self.cursors = cursors
        self.stream = stream
        #: The segments, oldest first; the last one takes appends. Others only read it.
        self.segments: list[Segment] = []
        self._bytes = 0  # on disk and pending
        self._free = 1 << 62  # free disk, less what is appended but not written yet
        self._free_checked = 0.0
        self._unborn: set[int] = set()  # first seqs of segments not yet created on disk
        #: Dropped last segments, deleted once a later segment is on disk (until then they
        #: tell recovery where the seqs go on).
        self._dropped_last: list[str] = []
        #: Segments dropped or acknowledged whose files are not deleted yet: one job deletes them
        #: (:meth:`_delete_doomed`), after the ledger's write that counts them.
        self._doomed: list[str] = []
        #: The files of segments whose drop the ledger counts (path: bytes), until they are deleted:
        #: only once a ledger that counts them is on disk (:meth:`_delete_doomed`).
        self._counted: dict[str, int] = {}
        self._waiting_for_ledger: list[str] = []  # of them, those doomed, not yet handed to the ledger's wait
        self._awaiting_ledger = False
        self._made_room = False  # a dropped segment was deleted to make room for the ledger, not yet written
        self._drop_lines = DropLines(name, self.log, lambda: steady_seconds(clock))

    @property
    def bytes(self) -> int:
        """Bytes of the stream's segments, on disk and pending."""
        return self._bytes

    @property
    def free(self) -> int:
        """The estimated free disk, less what is appended but not yet written."""
        return self._free

    # -- the write path's bookkeeping --------------------------------------------

    def load(self, segments: list[Segment], free: int, dropped_below: int = 0) -> None:
        """Take the segments recovery found and the free disk it measured.

        :param dropped_below: the loss ledger's seq below which every record was dropped: a
            sealed segment wholly below it was dropped before a crash or power cut that came
            before its deletion was durable; its file is deleted now (its drop is counted).
        """
        gone = 0
        while gone + 1 < len(segments) and segments[gone + 1].first_seq <= dropped_below:
            gone += 1
        if gone:
            # (a drop counts what some cursor had not acknowledged, in memory: the rest was delivered)
            self.log.warn("journal {stream}: deleting {count} segments (seqs {first}-{last}) that a crash or power"
                          " cut left after they were dropped (those a cursor had not acknowledged were counted in"
                          " the loss report then; the others were delivered)",
                          stream=self.name, count=gone, first=segments[0].first_seq,
                          last=segments[gone].first_seq - 1)
            self._doomed += [s.path for s in segments[:gone]]
            self._delete_doomed()
        self.segments, self._free = segments[gone:], free
        self._bytes = sum(s.size for s in self.segments)

    def admit(self, size: int, reserved: bool = False) -> LossReason | None:
        """Let an append of ``size`` bytes in, and count it, if the limits allow.

        Over a limit, drop-oldest drops the oldest segments until it fits, the last one
        too when it alone is in the way (the append then starts a new one; reject-new
        deletes that one only once every cursor acknowledged all of it); a reserved
        append uses the reserve instead (:data:`RESERVED_BYTES` beyond ``max_bytes``,
        half of ``min_free_bytes``) and never drops anything: beyond the reserve (and what
        reject-new may delete) it is refused.

        :returns: None when it is in (its bytes are counted), else the limit that
            refused it.
        """
        if self.admit_within_limits(size):
            return None
        limit = self._over_limit(size)
        assert limit is not None
        if not (reserved and self._in_reserve(size)):
            # (reject-new's room is what every cursor acknowledged: no loss, a reserved append may use it)
            made = not (reserved and self.settings.overflow == "drop-oldest") and self._make_room(size, limit)
            self._delete_doomed()
            if not made:
                return limit
        self._bytes += size  # room was made, or the reserve has it
        self._free -= size
        return None

    def admit_within_limits(self, size: int) -> bool:
        """Let an append of ``size`` bytes in, and count it, if it fits every limit as
        things are: nothing dropped, no reserve used. False (nothing counted) otherwise
        (:meth:`admit` then decides)."""
        nbytes, free = self._bytes + size, self._free - size
        if nbytes > self.settings.max_bytes or free < self.settings.min_free_bytes:
            return False
        self._bytes, self._free = nbytes, free
        return True

    def fits(self, size: int) -> bool:
        """Whether an append of ``size`` bytes would fit every limit as things are (nothing
        dropped, no reserve used); nothing is counted."""
        return (self._bytes + size <= self.settings.max_bytes
                and self._free - size >= self.settings.min_free_bytes)

    def refund(self, size: int) -> None:
        """Uncount an append :meth:`admit` let in that was refused after all."""
        self._bytes -= size
        self._free += size

    def start_segment(self, seq: int, path: str, received: float) -> Segment:
        """A new last segment, starting at ``seq``; it exists on disk once :meth:`written`."""
        segment = Segment(seq, path, 0, received)
        self.segments.append(segment)
        self._unborn.add(seq)
        return segment

    def start_empty_segment(self, seq: int, path: str) -> str | None:
        """A new last segment starting at ``seq``, empty (see :func:`~gateway.journal.segments.mark_next_seq`),
        in place of an empty last one, which goes; it exists on disk once :meth:`written`.

        :returns: the file of the empty last segment it replaces, if any.
        """
        segments = self.segments
        replaced = None
        if segments and segments[-1].size == 0 and segments[-1].first_seq not in self._unborn:
            replaced = segments.pop().path
        segments.append(Segment(seq, path, 0, None))
        self._unborn.add(seq)
        return replaced

    def unborn(self, first_seq: int) -> bool:
        """Whether the segment starting at ``first_seq`` is not yet created on disk."""
        return first_seq in self._unborn

    def written(self, sizes: dict[str, int], free: int | None) -> None:
        """A batch is on disk: ``sizes`` bytes were added to these segment paths.

        :param free: the free disk measured after it, if it was.
        """
        for s in self.segments:
            if s.path in sizes:
                s.size += sizes[s.path]
                self._unborn.discard(s.first_seq)
        if self._dropped_last and any(s.first_seq not in self._unborn for s in self.segments):
            self._doomed += self._dropped_last
            self._dropped_last = []
            self._delete_doomed()
        if free is not None:
            self._free = free - self.stream.unwritten_bytes() + self._held_bytes()

    def unwritten_lost(self, nbytes: int) -> None:
        """A write failed: ``nbytes`` appended bytes are gone, with the segments never created."""
        self._bytes -= nbytes
        self.segments = [s for s in self.segments if s.first_seq not in self._unborn]
        self._unborn.clear()

    # -- limits ------------------------------------------------------------------

    def _over_limit(self, size: int) -> LossReason | None:
        """The limit ``size`` more bytes would break, if any."""
        if self._bytes + size > self.settings.max_bytes:
            return "max-bytes"
        if self._free - size < self.settings.min_free_bytes:
            return "min-free-disk"
        return None

    def _in_reserve(self, size: int) -> bool:
        """Whether ``size`` more bytes fit in the reserve kept for reserved appends."""
        return (self._bytes + size <= self.settings.max_bytes + RESERVED_BYTES
                and self._free - size >= self.settings.min_free_bytes // 2)

    def _fits_alone(self, size: int) -> bool:
        """Whether ``size`` more bytes would fit every limit once every segment is gone."""
        on_disk = sum(s.size for s in self.segments)
        return (self._bytes - on_disk + size <= self.settings.max_bytes
                and self._free + on_disk - size >= self.settings.min_free_bytes)

    def _make_room(self, size: int, limit: LossReason) -> bool:
        """Drop oldest segments until ``size`` more bytes fit (drop-oldest). Under
        reject-new only a last segment every cursor acknowledged goes: nothing is lost.

        :param limit: the limit ``size`` breaks now (from :meth:`_over_limit`).
        """
        if not self._fits_alone(size):
            return False  # never a drop that makes no room
        if self.settings.overflow == "reject-new":
            floor = self.cursors.slowest_ack()
            return floor is not None and floor >= self.stream.next_seq - 1 and self._drop_last(size, limit)
        reason: LossReason | None = limit
        while reason is not None:
            if not self._drop_oldest(reason) and not self._drop_last(size, reason):
                return False
            reason = self._over_limit(size)
        return True

    def _drop_oldest(self, reason: LossReason) -> bool:
        """Drop the oldest sealed segment, counting what no cursor had acknowledged (its file
        goes with :meth:`_delete_doomed`)."""
        segments = self.segments
        if len(segments) < 2 or segments[1].first_seq in self._unborn:
            return False
        nxt = segments[1]
        self._drop_first(reason, nxt.first_seq, nxt.first_time or 0.0)
        return True

    def _drop_last(self, size: int, reason: LossReason) -> bool:
        """Delete the only segment left, so that an append of ``size`` bytes fits in a new one.

        A stream reopened with a smaller ``max_bytes`` may keep a last segment bigger than
        the new limit allows; without this it would refuse every append.
        Only when the segment is wholly on disk: nothing appended waits to be written to it.
        Its file goes once the new segment is on disk (as a sealed segment is dropped only
        once its successor is): a crash in between must not leave a stream without segments,
        which recovery would number from 1 again.
        """
        if len(self.segments) != 1 or self.stream.unwritten_bytes():
            return False
        self._drop_first(reason, self.stream.next_seq, self.clock.seconds(), unlink=False)
        return True

    def _drop_first(self, reason: LossReason, end_seq: int, end_time: float, unlink: bool = True) -> None:
        """Drop the first segment, whose records end before ``end_seq`` and were received
        by ``end_time``, counting what no cursor had acknowledged; cursors skip past it.

        :param unlink: delete its file with the next :meth:`_delete_doomed`; else once a later
            segment is on disk.
        """
        seg = self.segments.pop(0)
        self._bytes -= seg.size
        self._free += seg.size
        lost = self.cursors.unacknowledged(seg.first_seq, end_seq - 1)
        self.stream.note_dropped_below(end_seq)  # (a start deletes the file if a crash leaves it)
        if lost:
            first_lost, last_lost = lost[0][0], lost[-1][1]
            records = sum(high - low + 1 for low, high in lost)
            self.stream.note_loss(reason, records, seg.size, first_lost, last_lost,
                                  seg.first_time or 0.0, end_time)
            self._drop_lines.dropped(reason, first_lost, last_lost, records)
            self.stream.save_ledger_now()  # (on disk before the cursors move past them, or the file goes)
            self._counted[seg.path] = seg.size
        self.cursors.skip_to(end_seq)
        if unlink:
            self._doomed.append(seg.path)
        else:
            self._dropped_last.append(seg.path)

    def delete_acked(self, floor: int) -> None:
        """Delete sealed segments whose every record every cursor acknowledged (up to ``floor``)."""
        segments = self.segments
        while len(segments) > 1 and segments[1].first_seq - 1 <= floor \
                and segments[1].first_seq not in self._unborn:
            seg = segments.pop(0)
            self._bytes -= seg.size
            self._free += seg.size
            self._doomed.append(seg.path)
        self._delete_doomed()

    def enforce_limits(self) -> None:
        """Expire records older than max_age_s and restore min free disk (call periodically);
        log the drops held back whose line is due (:class:`~gateway.journal.droplines.DropLines`).

        A record received while the wall clock was not set yet (before
        :data:`~gateway.clockstep.CLOCK_SET_SINCE`: a gateway without a real-time clock at
        1970), and not moved by a step seen since, has no known age once the clock is set: it
        is not expired, nor is anything after it (the step to the right time came while the
        gateway was stopped; it would look decades old)."""
        max_age = self.settings.max_age_s
        if max_age > 0:
            now = self.clock.seconds()
            horizon, unset_before = now - max_age, CLOCK_SET_SINCE if now >= CLOCK_SET_SINCE else -math.inf
            received_now = self.stream.received_now
            while len(self.segments) > 1:
                nxt = self.segments[1]
                if not nxt.first_time:
                    break
                received = received_now(nxt.first_seq, nxt.first_time)
                if received >= horizon or received < unset_before or not self._drop_oldest("max-age"):
                    break
        if self.settings.overflow == "drop-oldest":
            while self._over_limit(0) == "min-free-disk" and self._drop_oldest("min-free-disk"):
                pass
        self._delete_doomed()
        self._drop_lines.flush()

    def log_held_drops(self) -> None:
        """Log the drops held back, due or not (the stream closes: no periodic check comes)."""
        self._drop_lines.close()

    def _delete_doomed(self) -> None:
        """Delete the files of the segments dropped or acknowledged since the last call, in one
        job on the I/O thread with one fsync of the directory (:func:`~gateway.journal.segments.delete_segments`).

        The job is queued after the cursors' saves that passed them (:meth:`delete_acked` takes
        the saved floor), so once it is done a power cut can bring none of them back: its records
        forwarded again, or a drop counted twice. The segments whose drop counted a loss go only
        once a loss ledger that counts it is on disk (:meth:`RetentionStream.ledger_on_disk`):
        while the disk refuses it (full), they stay, and are tried again at the next call (the
        next drop, acknowledgement or periodic check); their bytes count as free meanwhile, so
        that they make no more drops. Deleted before, a power cut lost them uncounted.
        """
        paths = [path for path in self._doomed if path not in self._counted]
        counted = [path for path in self._doomed if path in self._counted]
        self._doomed = []
        if paths:
            self._delete(paths)
        if counted:
            self._waiting_for_ledger += counted
        if self._waiting_for_ledger and not self._awaiting_ledger:
            waiting, self._waiting_for_ledger = self._waiting_for_ledger, []
            self._awaiting_ledger = True
            self._await_ledger(waiting)

    def _await_ledger(self, paths: list[str]) -> None:
        """Delete ``paths`` once the ledger that counts their drops is on disk
        (:meth:`_counted_on_disk`); else see :meth:`_not_counted_on_disk`."""
        self.stream.ledger_on_disk().addCallbacks(self._counted_on_disk, self._not_counted_on_disk,
                                                  callbackArgs=(paths,), errbackArgs=(paths,))

    def _counted_on_disk(self, _: object, paths: list[str]) -> None:
        """The ledger that counts the drops of ``paths`` is on disk: they go."""
        self._awaiting_ledger = self._made_room = False
        if paths:
            self._delete_counted(paths)
        if self._waiting_for_ledger:
            self._delete_doomed()

    def _not_counted_on_disk(self, failure: Failure, paths: list[str]) -> None:
        """The disk refused the ledger (the stream logs it): ``paths`` wait for its next write.

        A disk too full to take the ledger would stay full for good, the ledger waiting for
        the deletions and they for it: the oldest of them is deleted first, and the ledger
        written again behind it (a power cut in that moment loses its records uncounted);
        once, until a ledger is written: a disk that refuses it still keeps the others."""
        self._awaiting_ledger = False
        error = failure.value
        full = isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS and not self._made_room
        if not full:
            self._waiting_for_ledger[:0] = paths
            return
        self._made_room = self._awaiting_ledger = True
        first, paths = paths[:1], paths[1:]
        self._delete_counted(first)
        # (the ledger is written again behind the deletion, in the room it makes)
        self._await_ledger(paths)

    def _delete_counted(self, paths: list[str]) -> None:
        """Delete ``paths``, segments whose drop the ledger counts; their bytes stop counting
        as free once the deletion is done (or failed: logged)."""
        self._delete(paths).addBoth(lambda _: self._forget_counted(paths))

    def _forget_counted(self, paths: list[str]) -> None:
        for path in paths:
            del self._counted[path]

    def _delete(self, paths: list[str]) -> Deferred[None]:
        """Delete ``paths`` on the I/O thread (a failure is logged)."""
        d = self.run(delete_segments, self.files, self.directory, paths)
        d.addErrback(lambda f: self.log.error("journal {stream}: deleting {paths} failed: {error}",
                                              stream=self.name, paths=", ".join(paths), error=f.value))
        return d

    # -- free disk -----------------------------------------------------------------

    def refresh_free(self) -> Deferred[None]:
        """Re-read the free space of the journal's filesystem (on the I/O thread)."""
        d = self.run(self.files.free_bytes, self.directory)
        d.addCallback(self.measured)
        return d

    def measured(self, free: int) -> None:
        """Take ``free``, the free space of the stream's filesystem just measured (by
        :meth:`refresh_free`, or with other streams' in one job)."""
        self._free = free - self.stream.unwritten_bytes() + self._held_bytes()

    def _held_bytes(self) -> int:
        """Bytes of dropped segments still on disk, waiting for the ledger that counts them."""
        return sum(self._counted.values())

    def free_check_due(self) -> bool:
        """Whether the next write should measure free disk (then it counts as measured).

        Once a second (:data:`FREE_CHECK_S`), and on every write once free disk is
        below twice ``min_free_bytes``.
        """
        now = steady_seconds(self.clock)
        if now - self._free_checked >= FREE_CHECK_S or self._free < 2 * self.settings.min_free_bytes:
            self._free_checked = now
            return True
        return False

    def measure_free(self, now: bool = False) -> None:
        """Measure the free space in the background (unless ``now`` is false and it was
        measured less than :data:`FREE_CHECK_S` ago)."""
        t = steady_seconds(self.clock)
        if not now and t - self._free_checked < FREE_CHECK_S:
            return
        self._free_checked = t
        self.refresh_free().addErrback(
            lambda f: self.log.error("journal {stream}: measuring free space failed: {error}",
                                     stream=self.name, error=f.value))
