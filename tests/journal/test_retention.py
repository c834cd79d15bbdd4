"""SegmentRetention on its own: space accounting, limits, drops, expiry, free disk."""

from __future__ import annotations

from typing import Literal

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.clockstep import CLOCK_SET_SINCE
from gateway.journal.losses import LossReason
from gateway.journal.droplines import DROP_LOG_INTERVAL
from gateway.journal.retention import FREE_CHECK_S, RESERVED_BYTES, SegmentRetention
from gateway.journal.segments import Segment, segment_path
from gateway.journal.settings import StreamSettings
from tests.journal.helpers import DIR, ManualRunner, run_now
from tests.journal.powercut import PowerCutFiles
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock


class FakeCursors:
    """Cursors that acknowledged up to ``acked`` (None: there are none)."""

    def __init__(self, acked: int | None = None) -> None:
        self.acked = acked
        self.skipped: list[int] = []

    def slowest_ack(self) -> int | None:
        return self.acked

    def unacknowledged(self, first: int, last: int) -> list[tuple[int, int]]:
        start = first if self.acked is None else max(first, self.acked + 1)
        return [(start, last)] if start <= last else []

    def skip_to(self, seq: int) -> None:
        self.skipped.append(seq)


class FakeStream:
    """Records the losses it is told; ``unwritten`` bytes are appended but not on disk."""

    def __init__(self) -> None:
        self.losses: list[tuple[LossReason, int, int, int, int, float, float]] = []
        self.unwritten = 0
        self.next_seq = 1

    def note_loss(self, reason: LossReason, records: int, nbytes: int, first_seq: int = 0,
                  last_seq: int = 0, first_time: float = 0.0, last_time: float = 0.0) -> None:
        self.losses.append((reason, records, nbytes, first_seq, last_seq, first_time, last_time))

    def note_dropped_below(self, seq: int) -> None:
        """(The stream's ledger keeps it: tests/journal/test_stream.py.)"""

    def save_ledger_now(self) -> None:
        """(The stream's write of its ledger: tests/journal/test_stream.py checks the order.)"""

    def ledger_on_disk(self) -> Deferred[None]:
        """(On disk at once: tests/journal/test_stream.py has refused writes.)"""
        return succeed(None)

    def received_now(self, seq: int, received: float) -> float:
        """(No step of the clock here: tests/journal/test_stream.py has those.)"""
        return received

    def unwritten_bytes(self) -> int:
        return self.unwritten


def _retention(settings: StreamSettings, acked: int | None = None, free: int = 1 << 40,
               runner: ManualRunner | None = None) -> tuple[SegmentRetention, FakeCursors, FakeStream,
                                                            PowerCutFiles, Clock]:
    files, clock, cursors, stream = PowerCutFiles(), SteppingClock(), FakeCursors(acked), FakeStream()
    files.makedirs(DIR)
    r = SegmentRetention("s", DIR, settings, files, runner or run_now, clock, cursors, stream)
    r.load([], free)
    return r, cursors, stream, files, clock


def _segments(r: SegmentRetention, files: PowerCutFiles, *firsts: int, size: int = 100,
              received: float = 0.0) -> None:
    """Sealed segments starting at ``firsts``, each ``size`` bytes, on disk."""
    for first in firsts:
        path = segment_path(DIR, first)
        r.start_segment(first, path, received + first)
        assert r.admit(size) is None
        files.append(path, b"x" * size)
        r.written({path: size}, None)


class AccountingTests(SynchronousTestCase):
    """Appends, writes and failed writes move the byte and free-disk counts."""

    def test_load_counts_recovered_segments(self) -> None:
        """Recovered segments' sizes are the stream's bytes; the measured free disk is taken as is."""
        r, *_ = _retention(StreamSettings())
        r.load([Segment(1, segment_path(DIR, 1), 300, 1.0), Segment(9, segment_path(DIR, 9), 50, 2.0)], 5000)
        self.assertEqual((r.bytes, r.free, len(r.segments)), (350, 5000, 2))

    def test_written_creates_segments_and_subtracts_unwritten_from_free(self) -> None:
        """A new segment is unborn until a write adds to it; a measurement after the write
        counts what is still pending against the free disk."""
        r, _, stream, _, _ = _retention(StreamSettings(min_free_bytes=0), free=10_000)
        seg = r.start_segment(1, segment_path(DIR, 1), 0.0)
        self.assertIsNone(r.admit(40))
        self.assertTrue(r.unborn(1))
        self.assertEqual((r.bytes, r.free), (40, 9_960))
        stream.unwritten = 15
        r.written({seg.path: 40}, 9_000)
        self.assertFalse(r.unborn(1))
        self.assertEqual((seg.size, r.bytes, r.free), (40, 40, 8_985))

    def test_unwritten_lost_forgets_unborn_segments(self) -> None:
        """After a failed write the lost bytes are uncounted and segments never created go."""
        r, _, _, files, _ = _retention(StreamSettings())
        _segments(r, files, 1)
        r.start_segment(5, segment_path(DIR, 5), 0.0)
        self.assertIsNone(r.admit(30))
        r.unwritten_lost(30)
        self.assertEqual(([s.first_seq for s in r.segments], r.bytes), ([1], 100))
        self.assertFalse(r.unborn(5))


class AdmitTests(SynchronousTestCase):
    """admit: the limits, the reserve, and making room by policy."""

    def test_admit_names_the_limit(self) -> None:
        """An append within both limits is counted; max-bytes is checked before min-free-disk;
        a refused one is not counted."""
        r, *_ = _retention(StreamSettings(max_bytes=1000, min_free_bytes=500, overflow="reject-new"), free=1000)
        self.assertEqual(r.admit(1001), "max-bytes")
        self.assertEqual(r.admit(501), "min-free-disk")
        self.assertEqual((r.bytes, r.free), (0, 1000))
        self.assertIsNone(r.admit(500))
        self.assertEqual((r.bytes, r.free), (500, 500))
        r.refund(500)
        self.assertEqual((r.bytes, r.free), (0, 1000))

    def test_reserve(self) -> None:
        """A reserved append may pass max_bytes by RESERVED_BYTES and use half of
        min_free_bytes, even under reject-new and without dropping anything."""
        r, _, stream, files, _ = _retention(StreamSettings(max_bytes=1000, min_free_bytes=10_000,
                                                           overflow="reject-new"), free=1 << 30)
        self.assertEqual(r.admit(1001 + RESERVED_BYTES, reserved=True), "max-bytes")
        self.assertIsNone(r.admit(1000 + RESERVED_BYTES, reserved=True))
        self.assertEqual(stream.losses, [])
        r, *_ = _retention(StreamSettings(min_free_bytes=10_000, overflow="reject-new"), free=10_000)
        self.assertEqual(r.admit(5_001, reserved=True), "min-free-disk")
        self.assertIsNone(r.admit(5_000, reserved=True))

    def test_a_reserved_append_beyond_the_reserve_drops_nothing(self) -> None:
        """Under drop-oldest too, a reserved append (a link's loss report) never drops anything
        (docs/journal.md): beyond the reserve it is refused, naming the limit, every segment
        kept. It dropped the oldest segments to make room, losing records for a report of losses."""
        r, cursors, stream, files, _ = _retention(StreamSettings(max_bytes=1000), acked=0)
        _segments(r, files, 1, 11, 21)
        path = segment_path(DIR, 31)  # the reserve, used and on disk: dropping the oldest would make room
        r.start_segment(31, path, 31.0)
        self.assertIsNone(r.admit(600 + RESERVED_BYTES, reserved=True))
        files.append(path, b"x" * (600 + RESERVED_BYTES))
        r.written({path: 600 + RESERVED_BYTES}, None)
        self.assertEqual(r.admit(200, reserved=True), "max-bytes")
        self.assertEqual([s.first_seq for s in r.segments], [1, 11, 21, 31])
        self.assertEqual((stream.losses, cursors.skipped), ([], []))

    def test_reject_new_never_drops(self) -> None:
        """Under reject-new, an append over max_bytes is refused and every segment kept."""
        r, _, stream, files, _ = _retention(StreamSettings(max_bytes=1000, overflow="reject-new"))
        _segments(r, files, 1, 11, 21)
        self.assertEqual(r.admit(800), "max-bytes")
        self.assertEqual(len(r.segments), 3)
        self.assertEqual(stream.losses, [])

    def test_drop_oldest_makes_room_and_counts_unacknowledged(self) -> None:
        """Drop-oldest deletes the oldest segments until the append fits, counting only
        records past the slowest cursor, and moves the cursors past them."""
        r, cursors, stream, files, _ = _retention(StreamSettings(max_bytes=1000), acked=4)
        _segments(r, files, 1, 11, 21)
        self.assertIsNone(r.admit(850))
        self.assertEqual([s.first_seq for s in r.segments], [21])
        self.assertEqual(r.bytes, 950)
        self.assertEqual(stream.losses, [("max-bytes", 6, 100, 5, 10, 1.0, 11.0),
                                         ("max-bytes", 10, 100, 11, 20, 11.0, 21.0)])
        self.assertEqual(cursors.skipped, [11, 21])
        self.assertNotIn(segment_path(DIR, 1), files.names)
        self.assertNotIn(segment_path(DIR, 11), files.names)

    def test_drop_oldest_keeps_the_last_and_unborn(self) -> None:
        """The segment taking appends is never dropped, nor one whose successor is not on
        disk yet (a failed write would need it back)."""
        r, _, _, files, _ = _retention(StreamSettings())
        _segments(r, files, 1)
        self.assertFalse(r._drop_oldest("max-bytes"))
        r.start_segment(11, segment_path(DIR, 11), 0.0)
        self.assertFalse(r._drop_oldest("max-bytes"))
        self.assertEqual(len(r.segments), 2)

    def test_drop_oldest_drops_the_last_segment_when_it_alone_is_in_the_way(self) -> None:
        """A last segment bigger than max_bytes allows (the limit was lowered) is dropped
        too, counted, and the cursors move past it: the append then starts a new segment,
        and the file goes once that one is on disk. Not while bytes appended to it wait to
        be written, nor when the append would not fit even then, nor under reject-new."""
        before, _, _, files, _ = _retention(StreamSettings())
        _segments(before, files, 1, 11)
        r, cursors, stream, _, clock = _retention(StreamSettings(max_bytes=150), acked=3)
        r.files = files
        r.load(list(before.segments), 1 << 40)  # reopened with a smaller max_bytes
        stream.next_seq = 21
        clock.advance(50)
        self.assertEqual(r.admit(151), "max-bytes")  # fits no stream: nothing dropped
        self.assertEqual((len(r.segments), stream.losses), (2, []))
        stream.unwritten = 1
        self.assertEqual(r.admit(100), "max-bytes")  # segment 1 went, 11 has bytes on their way
        self.assertEqual([s.first_seq for s in r.segments], [11])
        stream.unwritten = 0
        self.assertIsNone(r.admit(100))
        self.assertEqual((r.segments, r.bytes), ([], 100))
        self.assertEqual(stream.losses, [("max-bytes", 7, 100, 4, 10, 1.0, 11.0),
                                         ("max-bytes", 10, 100, 11, 20, 11.0, 50.0)])
        self.assertEqual(cursors.skipped, [11, 21])
        self.assertNotIn(segment_path(DIR, 1), files.names)
        self.assertIn(segment_path(DIR, 11), files.names)  # until its successor is on disk
        r.start_segment(21, segment_path(DIR, 21), 50.0)
        files.append(segment_path(DIR, 21), b"x" * 100)
        r.written({segment_path(DIR, 21): 100}, None)
        self.assertNotIn(segment_path(DIR, 11), files.names)
        r, *_ = _retention(StreamSettings(max_bytes=150, overflow="reject-new"))
        r.load(list(before.segments)[1:], 1 << 40)
        self.assertEqual(r.admit(100), "max-bytes")
        self.assertEqual(len(r.segments), 1)

    def test_a_flood_of_drops_is_one_line_a_minute(self) -> None:
        """Drop-oldest dropping a segment at each new one (a publisher flooding while the
        cloud is away) logs the first drop at once, then nothing for a minute, then one line
        for every seq dropped since: not a line a segment; the drops held back when the flood
        stops get their line at the periodic check once it is due. Every drop is counted all
        along."""
        r, _, stream, files, clock = _retention(StreamSettings(max_bytes=1000), acked=4)
        events = capture_log_events(self)
        lines = lambda: [formatEvent(e) for e in events if "dropped seq" in formatEvent(e)]  # noqa: E731
        _segments(r, files, *range(1, 101, 10))
        _segments(r, files, 101)
        self.assertEqual(lines(), ["journal s: dropped seq 5-10 (max-bytes)"])
        _segments(r, files, *range(111, 301, 10))
        clock.advance(DROP_LOG_INTERVAL - 1)
        _segments(r, files, 301)
        self.assertEqual((len(lines()), len(stream.losses)), (1, 21))
        clock.advance(1)
        _segments(r, files, 311)
        self.assertEqual(lines()[1:], ["journal s: dropped seq 11-220 (max-bytes) (21 segments dropped since the"
                                       " last such line; logged at most once a minute while drops go on)"])
        self.assertEqual(len(stream.losses), 22)
        _segments(r, files, 321, 331)  # the flood's last drops: held back
        r.enforce_limits()
        self.assertEqual(len(lines()), 2)
        clock.advance(DROP_LOG_INTERVAL)
        r.enforce_limits()  # (the periodic check) their line is due: they get it
        self.assertEqual(lines()[2:], ["journal s: dropped seq 221-240 (max-bytes) (2 segments dropped since the"
                                       " last such line; logged at most once a minute while drops go on)"])
        r.enforce_limits()
        self.assertEqual(len(lines()), 3)

    def test_the_drops_held_back_get_their_line_at_the_close(self) -> None:
        """The drops a flood's end held back are logged when the stream closes, due or not (no
        periodic check comes after it: they were never logged)."""
        r, _, stream, files, clock = _retention(StreamSettings(max_bytes=1000), acked=4)
        events = capture_log_events(self)
        lines = lambda: [formatEvent(e) for e in events if "dropped seq" in formatEvent(e)]  # noqa: E731
        _segments(r, files, *range(1, 101, 10))
        _segments(r, files, 101, 111, 121)
        self.assertEqual(len(lines()), 1)
        r.log_held_drops()
        self.assertEqual(lines()[1:], ["journal s: dropped seq 11-30 (max-bytes) (2 segments dropped since the"
                                       " last such line; logged at most once a minute while drops go on)"])
        r.log_held_drops()
        self.assertEqual(len(lines()), 2)

    def test_acknowledged_drop_is_no_loss(self) -> None:
        """Dropping records every cursor acknowledged counts nothing."""
        r, _, stream, files, _ = _retention(StreamSettings(), acked=10)
        _segments(r, files, 1, 11)
        self.assertTrue(r._drop_oldest("max-bytes"))
        self.assertEqual(stream.losses, [])


class DeletionAndExpiryTests(SynchronousTestCase):
    """Acknowledged segments go; old and space-starved ones are dropped periodically."""

    def test_delete_acked(self) -> None:
        """Sealed segments acknowledged up to the floor are deleted and their bytes freed."""
        r, _, stream, files, _ = _retention(StreamSettings(min_free_bytes=0), free=10_000)
        _segments(r, files, 1, 11, 21)
        free = r.free
        r.delete_acked(15)
        self.assertEqual([s.first_seq for s in r.segments], [11, 21])
        r.delete_acked(20)
        self.assertEqual(([s.first_seq for s in r.segments], r.bytes, r.free), ([21], 100, free + 200))
        r.delete_acked(1000)  # the last segment stays
        self.assertEqual(len(r.segments), 1)
        self.assertEqual(stream.losses, [])

    def test_max_age(self) -> None:
        """Segments whose successor's first record is past max_age_s are dropped as max-age."""
        r, _, stream, files, clock = _retention(StreamSettings(max_age_s=100))
        _segments(r, files, 1, 11, 21)  # first records received at 1, 11 and 21
        clock.advance(113)  # horizon 13: segment 1 (the next starts at 11) goes, segment 11 stays
        r.enforce_limits()
        self.assertEqual([s.first_seq for s in r.segments], [11, 21])
        self.assertEqual([loss[0] for loss in stream.losses], ["max-age"])

    def test_records_received_while_the_clock_was_not_set_do_not_expire(self) -> None:
        """A gateway without a real-time clock buffered records at 1970 and was stopped before
        NTP set its clock; it starts again with the clock right (the step came while it was
        stopped, so no step is noted for them). Their age is not known: max_age_s does not
        expire them (they looked 56 years old, and every sealed segment went as max-age).
        Records received with the clock set still expire."""
        r, _, stream, files, clock = _retention(StreamSettings(max_age_s=100))
        _segments(r, files, 1, 11, 21)  # received at 1970
        clock.step(CLOCK_SET_SINCE + 86400 * 365)
        r.enforce_limits()
        self.assertEqual(([s.first_seq for s in r.segments], stream.losses), ([1, 11, 21], []))
        r, _, stream, files, clock = _retention(StreamSettings(max_age_s=100))
        _segments(r, files, 1, 11, 21, received=CLOCK_SET_SINCE)
        clock.step(CLOCK_SET_SINCE + 113)
        r.enforce_limits()
        self.assertEqual([s.first_seq for s in r.segments], [11, 21])

    def test_min_free_disk(self) -> None:
        """Below min_free_bytes drop-oldest drops until there is enough again; reject-new does not."""
        cases: list[tuple[Literal["drop-oldest", "reject-new"], list[int]]] = [
            ("drop-oldest", [21]), ("reject-new", [1, 11, 21])]
        for overflow, left in cases:
            r, _, stream, files, _ = _retention(StreamSettings(min_free_bytes=1000, overflow=overflow))
            _segments(r, files, 1, 11, 21)
            r.load(list(r.segments), 850)  # the disk filled up: two segments must go
            r.enforce_limits()
            self.assertEqual([s.first_seq for s in r.segments], left)


class CountingFiles(PowerCutFiles):
    """:class:`PowerCutFiles` that counts the directory fsyncs."""

    def __init__(self) -> None:
        super().__init__()
        self.dir_syncs: list[str] = []

    def fsync_dir(self, path: str) -> None:
        self.dir_syncs.append(path)
        super().fsync_dir(path)


class DurableDeletionTests(SynchronousTestCase):
    """Deleted segments stay deleted through a power cut: one directory fsync per batch."""

    def _durable(self, settings: StreamSettings, *firsts: int, free: int = 1 << 40,
                 acked: int | None = None) -> tuple[SegmentRetention, FakeStream, CountingFiles,
                                                    ManualRunner, SteppingClock]:
        """Retention over sealed segments starting at ``firsts``, their names durable; jobs
        run when the test says."""
        files, clock, runner, stream = CountingFiles(), SteppingClock(), ManualRunner(), FakeStream()
        files.makedirs(DIR)
        r = SegmentRetention("s", DIR, settings, files, runner, clock, FakeCursors(acked), stream)
        r.load([], free)
        _segments(r, files, *firsts)
        files.fsync_dir(DIR)
        files.dir_syncs.clear()
        return r, stream, files, runner, clock

    def _after_cut(self, files: CountingFiles) -> list[str]:
        files.cut()
        return files.listdir(DIR)

    def test_drops_for_room_are_one_durable_job(self) -> None:
        """drop-oldest dropping two segments for one append deletes both in one job on the I/O
        thread (nothing before it runs), with one fsync of the stream directory: after a power
        cut neither comes back (it did: their records were sent again, or counted lost twice)."""
        r, stream, files, runner, _ = self._durable(StreamSettings(max_bytes=400), 1, 11, 21, 31)
        self.assertIsNone(r.admit(200))
        self.assertEqual([s.first_seq for s in r.segments], [21, 31])
        self.assertEqual(len(stream.losses), 2)
        self.assertEqual(len(runner.jobs), 1)
        self.assertEqual(files.listdir(DIR), [f"{n:020d}.seg" for n in (1, 11, 21, 31)])
        runner.drain()
        self.assertEqual(files.dir_syncs, [DIR])
        self.assertEqual(self._after_cut(files), [f"{n:020d}.seg" for n in (21, 31)])

    def test_acknowledged_segments_stay_deleted(self) -> None:
        """Segments every cursor acknowledged (its save done) go in one job, one directory fsync."""
        r, _, files, runner, _ = self._durable(StreamSettings(), 1, 11, 21)
        r.delete_acked(25)
        runner.drain()
        self.assertEqual((files.dir_syncs, self._after_cut(files)), ([DIR], [f"{21:020d}.seg"]))

    def test_expired_and_space_starved_segments_stay_deleted(self) -> None:
        """max-age and min-free-disk drops of one periodic check are one job, one directory fsync."""
        r, stream, files, runner, clock = self._durable(
            StreamSettings(max_age_s=100, min_free_bytes=1000), 1, 11, 21, 31)
        clock.advance(113)  # segment 1 expires (the next starts at 11); then min free disk drops 11 and 21
        r.load(list(r.segments), 750)
        r.enforce_limits()
        self.assertEqual([loss[0] for loss in stream.losses], ["max-age", "min-free-disk", "min-free-disk"])
        self.assertEqual(len(runner.jobs), 1)
        runner.drain()
        self.assertEqual((files.dir_syncs, self._after_cut(files)), ([DIR], [f"{31:020d}.seg"]))

    def test_a_dropped_last_segment_stays_deleted(self) -> None:
        """The last segment dropped for an append goes once the new one is on disk, durably."""
        r, _, files, runner, _ = self._durable(StreamSettings(max_bytes=150), 1)
        self.assertIsNone(r.admit(100))
        new = r.start_segment(2, segment_path(DIR, 2), 0.0)
        self.assertEqual(runner.jobs, [])
        files.append(new.path, b"x" * 100)
        files.fsync_dir(DIR)  # (write_batch: a new segment's directory is fsynced)
        r.written({new.path: 100}, None)
        runner.drain()
        self.assertEqual(self._after_cut(files), [f"{2:020d}.seg"])


class FreeDiskTests(SynchronousTestCase):
    """Free-disk measurements: when they are due, and what they count."""

    def test_free_check_due(self) -> None:
        """Due once every FREE_CHECK_S, and on every write once free disk is low."""
        r, _, _, _, clock = _retention(StreamSettings(min_free_bytes=1000), free=1 << 30)
        clock.advance(FREE_CHECK_S)
        self.assertTrue(r.free_check_due())
        self.assertFalse(r.free_check_due())
        clock.advance(FREE_CHECK_S)
        self.assertTrue(r.free_check_due())
        r.load([], 1999)
        self.assertTrue(r.free_check_due())
        self.assertTrue(r.free_check_due())

    def test_free_check_due_across_a_step_back_of_the_wall_clock(self) -> None:
        """docs/journal.md: free space is measured once a second while appending. NTP steps
        the clock back an hour: still once a second (it was not measured for the hour)."""
        r, _, _, _, clock = _retention(StreamSettings(min_free_bytes=1000), free=1 << 30)
        clock.advance(FREE_CHECK_S)
        self.assertTrue(r.free_check_due())
        clock.step(-3600.0)
        clock.advance(FREE_CHECK_S)
        self.assertTrue(r.free_check_due())

    def test_refresh_and_measure(self) -> None:
        """A measurement subtracts the bytes not yet written; measure_free is rate-limited
        unless ``now``."""
        runner = ManualRunner()
        r, _, stream, files, clock = _retention(StreamSettings(), runner=runner)
        files.reported_free = 5000
        stream.unwritten = 300
        clock.advance(FREE_CHECK_S)
        r.measure_free()
        r.measure_free()  # less than a second ago: not again
        self.assertEqual(len(runner.jobs), 1)
        runner.drain()
        self.assertEqual(r.free, 4700)
        r.measure_free(now=True)
        self.assertEqual(len(runner.jobs), 1)
        files.reported_free = 4000
        runner.drain()
        self.assertEqual(r.free, 3700)
