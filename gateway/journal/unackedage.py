"""When the oldest record a cursor has not acknowledged was received, read from its segment.

The read side's ``oldest_unacked_age_s`` is the age of one record: the first that some
cursor has not acknowledged. While that record is among those the stream wrote last (its
:class:`~gateway.journal.tail.RecentTail`) or is still being written, its ``received`` time
is in memory. Otherwise (after a restart the tail is empty; a cursor can be far behind)
it is only on disk, and its segment's first record, which the stream knows, may have been
received days or weeks before it on a quiet gateway. :class:`ReceivedLookup` reads the
record's time from its segment on the journal's I/O thread, a bounded stretch per job
(:data:`LOOKUP_READ`, so the writes queued behind wait no longer than behind a reader's
read), and keeps the answer until the oldest unacknowledged record changes. A later
lookup goes on from where the last one stopped when it can (a cursor draining a backlog
moves forward), so following a cursor through a segment reads it about once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.filelayer import FileLayer
from gateway.journal.segments import ReadPosition, ReadResult, Segment, has_segment, read_records, segment_holding

#: Bytes of segment one lookup job scans at most (a frame bigger than that is read whole).
LOOKUP_READ = 1 << 20


class LookupStream(Protocol):
    """What a lookup uses of its :class:`~gateway.journal.stream.Stream`."""

    name: str
    files: FileLayer
    run: Callable[..., "Deferred[Any]"]

    @property
    def segments(self) -> list[Segment]:
        """The stream's segments, oldest first (read only)."""


class ReceivedLookup:
    """The ``received`` time of a stream's records that are only on disk, one at a time.

    :param stream: the stream whose segments are read.
    """

    log = Logger()

    def __init__(self, stream: LookupStream) -> None:
        self.stream = stream
        #: The last answer: ``(want, seq, received)``: the first record on disk at or after
        #: seq ``want`` is ``seq`` (none is between them: damaged, missing), received then.
        self._found: tuple[int, int, float] | None = None
        #: Where the last lookup stopped: after record ``seq`` (a later one goes on from there).
        self._after: ReadPosition | None = None
        self._looking: int | None = None  # the seq being looked up
        self._failed: int | None = None  # the seq whose lookup failed (not tried again)

    def received(self, want: int) -> tuple[int, float] | None:
        """The first record kept at or after seq ``want``: its seq and ``received`` time,
        once read; until then ``None``, and a lookup starts (one at a time, on the I/O thread).

        ``want`` is a seq some cursor has not acknowledged, so such a record exists unless
        damage or an outside hand took it (then, and after a failed read, ``None``: the
        caller falls back on what it knows of the segments).
        """
        answer = self._answer(want)
        if answer is None and self._looking is None and want != self._failed:
            self._looking = want
            self._step(want, self._start(want))
            answer = self._answer(want)  # (a runner that runs jobs at once has answered)
        return answer

    def _answer(self, want: int) -> tuple[int, float] | None:
        found = self._found
        return (found[1], found[2]) if found is not None and found[0] <= want <= found[1] else None

    def known_before(self, want: int) -> tuple[int, float] | None:
        """The last record read below seq ``want`` (``(seq, received)``), if any: the
        closest record older than ``want`` whose time is known."""
        found = self._found
        return (found[1], found[2]) if found is not None and found[1] < want else None

    def _start(self, want: int) -> ReadPosition | None:
        """Where a lookup of ``want`` starts reading: where the last one stopped, if that is
        in the segment holding ``want`` and not past it; else that segment's start."""
        segments = self.stream.segments
        i = segment_holding(segments, want)
        if i < 0:
            return None
        holding = segments[i]
        after = self._after
        if after is not None and after.segment == holding.first_seq and after.want <= want:
            return ReadPosition(after.segment, after.offset, want)
        return ReadPosition(holding.first_seq, 0, want)

    def _step(self, want: int, position: ReadPosition | None) -> None:
        """Scan on from ``position`` with one job on the I/O thread."""
        s = self.stream
        if position is None or not has_segment(s.segments, position.segment):
            # Its segment went (retention) while the lookup ran: start again, if it still can.
            position = self._start(want)
            if position is None:
                self._looking = None
                return
        snapshot = [(g.first_seq, g.path, g.size) for g in s.segments]
        d = s.run(read_records, s.files, snapshot, position, 1, 1, LOOKUP_READ)
        d.addCallbacks(self._read, self._not_read, callbackArgs=(want, position), errbackArgs=(want,))

    def _read(self, result: ReadResult, want: int, position: ReadPosition) -> None:
        if result.records:
            record = result.records[0]
            self._found = (want, record.seq, record.received)
            self._after = result.position
            self._looking = None
        elif result.position != position:  # scanned its share: on with the next job
            self._step(want, result.position)
        else:  # at the end of the segments: nothing kept at or after want (damage, an outside hand)
            self._looking = None
            self._failed = want

    def _not_read(self, failure: Failure, want: int) -> None:
        self._looking = None
        self._failed = want
        self.log.warn("journal {stream}: reading when record {seq} was received failed ({error}); its age"
                      " is counted from an older record's", stream=self.stream.name, seq=want, error=failure.value)


def closest_known(segments: list[Segment], seq: int, lookup: ReceivedLookup) -> tuple[int, float | None]:
    """The closest record at or before ``seq`` whose received time is known without a read:
    the first of the nearest segment that has one, or what ``lookup`` read earlier when that
    is closer; ``(0, None)`` when none is known."""
    closest: tuple[int, float | None] = (0, None)
    for i in range(segment_holding(segments, seq), -1, -1):  # (a damaged head leaves no first time)
        if segments[i].first_time:
            closest = (segments[i].first_seq, segments[i].first_time)
            break
    read = lookup.known_before(seq)
    return read if read is not None and read[0] > closest[0] else closest


def oldest_age(segments: list[Segment], now: float, received_now: Callable[[int, float], float]) -> float:
    """Seconds since the oldest record kept in ``segments`` was received (0 when there is
    none), its time moved by ``received_now`` (the clock steps seen since)."""
    first = segments[0] if segments else None
    if first is None or not first.first_time:
        return 0.0
    return max(now - received_now(first.first_seq, first.first_time), 0.0)
