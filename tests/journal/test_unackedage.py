"""docs/readside.md ``oldest_unacked_age_s``: the age of the oldest record a cursor has not
acknowledged, exact when that record is no longer in memory (after a restart, or behind
the in-memory tail): read from its segment on the I/O thread, never aged by the segment's
first record once read."""

from __future__ import annotations

import errno

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import encode
from gateway.journal.segments import segment_path
from gateway.journal.settings import StreamSettings
from gateway.journal.stream import Stream
from gateway.journal.unackedage import LOOKUP_READ
from tests.journal.helpers import DIR, ManualRunner, appended, open_stream, read_all, record
from tests.journal.powercut import PowerCutFiles
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock

FRAME = len(encode(record(1), 1))
DAY = 86400.0
#: Ten records a segment: seqs 1-10, 11-20, 21-30, 31-40.
SEGMENTS = StreamSettings(segment_bytes=10 * FRAME)


class ReadsCounted(PowerCutFiles):
    """PowerCutFiles that remembers every read: ``(path, offset, length)``."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, int, int]] = []

    def read(self, path: str, offset: int, length: int) -> bytes:
        self.reads.append((path, offset, length))
        return super().read(path, offset, length)


def forty_records(files: PowerCutFiles, acked: dict[str, int]) -> None:
    """Seqs 1-40 in four segments, seq ``i`` received at ``100 * i``; each cursor of
    ``acked`` acknowledged up to its seq; then the stream is closed."""
    s = open_stream(files, SEGMENTS)
    for name in acked:
        s.cursor(name)
    for i in range(1, 41):
        appended(s, record(i, received=100.0 * i))
    for name, seq in acked.items():
        s.ack(name, seq)
    s.close()


def reopened(files: PowerCutFiles, now: float, settings: StreamSettings = SEGMENTS,
             run: ManualRunner | None = None) -> Stream:
    """The stream opened again at ``now`` (a restart: nothing in memory)."""
    clock = Clock()
    clock.advance(now)
    if run is None:
        return open_stream(files, settings, clock)
    s = Stream("s", DIR, settings, files, run, clock)
    s.open()
    return s


class RestartTests(SynchronousTestCase):
    """After a restart the in-memory tail is empty: the oldest unacknowledged record's time is
    read from its segment."""

    def test_restart_with_an_empty_tail_and_an_old_segment(self) -> None:
        """A quiet gateway: its segment began two weeks ago with a record the cloud took;
        the records since were received a minute ago and wait for the cloud. After a restart
        the age is theirs (58 s), not the segment's (two weeks)."""
        files, clock = PowerCutFiles(), Clock()
        s = open_stream(files, clock=clock)
        self.successResultOf(s.cursor("cloud"))
        appended(s, record(1, received=1000.0))
        for i in range(2, 6):
            appended(s, record(i, received=1000.0 + 14 * DAY + i))
        read_all(s, "cloud")
        self.successResultOf(s.ack("cloud", 1))
        self.successResultOf(s.close())
        s = reopened(files, 1000.0 + 14 * DAY + 60, StreamSettings())
        self.assertEqual(len(s.tail), 0)
        snap = s.snapshot()
        self.assertEqual(snap.oldest_unacked_age_s, 58.0)  # seq 2, received at 1000 + 14 days + 2
        self.assertEqual(snap.oldest_age_s, 14 * DAY + 60)  # seq 1 is still kept

    def test_in_a_sealed_segment(self) -> None:
        """The oldest unacknowledged record in the middle of a sealed segment gives its own age."""
        files = PowerCutFiles()
        forty_records(files, {"cloud": 14})
        s = reopened(files, 10_000.0)
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8500.0)  # seq 15 (at 1500), not seq 11 (1100)

    def test_read_at_the_open_before_anyone_asks(self) -> None:
        """The time is read right after the stream opens, on the I/O thread: the first
        snapshot already has it and queues no read of its own."""
        files, run = PowerCutFiles(), ManualRunner()
        forty_records(files, {"cloud": 14})
        s = reopened(files, 10_000.0, run=run)
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8500.0)
        self.assertEqual(run.jobs, [])

    def test_several_cursors(self) -> None:
        """The oldest record over every cursor counts: cursor b's, then cursor a's once b has
        caught up past it."""
        files = PowerCutFiles()
        forty_records(files, {"a": 22, "b": 12})
        s = reopened(files, 10_000.0)
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8700.0)  # seq 13
        self.successResultOf(s.ack("b", 40))
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 7700.0)  # seq 23
        self.successResultOf(s.ack("a", 40))
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 0.0)

    def test_a_corrupt_oldest_record_ages_the_next_one_kept(self) -> None:
        """Bit rot took the oldest unacknowledged record: the age is that of the first record
        kept after it, the one the cloud still gets. Reading the time counts no loss: the
        reader counts the damage once when it passes it."""
        files = PowerCutFiles()
        forty_records(files, {"cloud": 14})
        files.names[segment_path(DIR, 11)].data[4 * FRAME + FRAME // 2] ^= 0xFF  # seq 15
        s = reopened(files, 10_000.0)
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8400.0)  # seq 16
        self.assertEqual(s.loss_report().entries, ())
        self.assertEqual(read_all(s, "cloud")[0].seq, 16)
        [entry] = s.loss_report().entries
        self.assertEqual((entry.reason, entry.first_seq, entry.last_seq), ("corrupt", 15, 15))

    def test_after_a_drop_the_first_record_kept(self) -> None:
        """Records the cloud never took were dropped (max-age): the age is the oldest kept one's."""
        files = PowerCutFiles()
        forty_records(files, {"cloud": 14})
        s = reopened(files, 10_000.0, StreamSettings(segment_bytes=10 * FRAME, max_age_s=7000.0))
        s.enforce_limits()  # seqs 1-20 go: the next segment's first, seq 21 (at 2100), is older than 7000 s
        self.assertEqual(s.stats().drops, {"max-age": 6})
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 7900.0)  # seq 21

    def test_clock_steps_before_the_restart_count(self) -> None:
        """The records were received on a clock that then stepped forward by years (the
        journal noted it): after a restart their age is counted on the clock as it is now,
        as ``oldest_age_s`` is (docs/journal.md), from the record's own time."""
        clock, files = SteppingClock(), PowerCutFiles()
        clock.advance(1000)
        s = open_stream(files, clock=clock)
        self.successResultOf(s.cursor("cloud"))
        appended(s, record(1, received=clock.seconds()))
        clock.advance(10 * DAY)
        for i in range(2, 6):
            appended(s, record(i, received=clock.seconds()))
        self.successResultOf(s.ack("cloud", 1))
        clock.step(56 * 365 * DAY)
        clock.advance(0)  # (the ledger is written at the end of the turn)
        self.successResultOf(s.close())
        s = reopened(files, clock.seconds() + 50, StreamSettings())
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 50.0)
        self.assertEqual(s.snapshot().oldest_age_s, 10 * DAY + 50)


class BehindTheTailTests(SynchronousTestCase):
    """A cursor far behind the records kept in memory: its record's time is read from disk too."""

    def test_until_read_the_closest_older_record_known(self) -> None:
        """While the read is queued, the age is that of the closest older record whose time is
        known (at worst its segment's first: never younger than the truth); exact once read."""
        files, run = PowerCutFiles(), ManualRunner()
        forty_records(files, {"cloud": 14})
        s = reopened(files, 10_000.0, run=run)
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8500.0)  # seq 15, read at the open
        s.ack("cloud", 17)
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8500.0)  # seq 15's is the closest known
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8200.0)  # seq 18
        s.ack("cloud", 24)
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 7900.0)  # seq 21 begins its segment
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 7500.0)  # seq 25

    def test_a_cursor_moving_on_is_followed_without_reading_again(self) -> None:
        """A cursor draining a segment: each read of a time goes on from where the last one
        stopped, so the segment is read about once, not from its start each time."""
        files = ReadsCounted()
        forty_records(files, {"cloud": 12})
        s = reopened(files, 10_000.0)
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8700.0)  # seq 13
        files.reads.clear()
        self.successResultOf(s.ack("cloud", 16))
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8300.0)  # seq 17
        self.assertEqual([(path, offset) for path, offset, _ in files.reads], [(segment_path(DIR, 11), 3 * FRAME)])

    def test_a_failed_read_is_logged_once_and_leaves_the_bound(self) -> None:
        """The segment cannot be read (EIO) when the time is read: a warning says so, once,
        the age is that of the closest older record known (the segment's first), and the
        read is not tried again at every snapshot; a record further on is tried again."""
        files, run = PowerCutFiles(), ManualRunner()
        forty_records(files, {"cloud": 14})
        broken = segment_path(DIR, 11)
        readable = files.read

        def read(path: str, offset: int, length: int) -> bytes:
            if path == broken:
                raise OSError(errno.EIO, "Input/output error", path)
            return readable(path, offset, length)

        s = reopened(files, 10_000.0, run=run)
        run.step()  # recovery
        files.read = read  # type: ignore[method-assign]
        events = capture_log_events(self)
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 8900.0)  # seq 11 begins the segment
        self.assertEqual(run.jobs, [])
        [warning] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertIn("journal s: reading when record 15 was received failed", warning)
        self.assertIn("Input/output error", warning)
        s.ack("cloud", 22)
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 7900.0)  # seq 21 begins the segment, until read
        run.drain()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 7700.0)  # seq 23, in a readable segment

    def test_in_reads_of_at_most_a_mebibyte(self) -> None:
        """A record deep in a big segment: the read goes in jobs of at most 1 MiB, so a write
        queued meanwhile waits for one of them, not for the whole scan."""
        files, run = ReadsCounted(), ManualRunner()
        big = StreamSettings(segment_bytes=16 << 20)
        s = open_stream(files, big)
        s.cursor("cloud")
        for i in range(1, 61):
            appended(s, record(i, size=64 << 10, received=100.0 * i))
        s.ack("cloud", 50)
        s.close()
        s = reopened(files, 10_000.0, big, run)
        for _ in range(2):  # recovery, the cursors
            run.step()
        files.reads.clear()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 9900.0)  # seq 1 begins the segment, until read
        write = s.append(record(61, received=9999.0))
        s.clock.advance(0)  # type: ignore[attr-defined]
        run.step()  # the first read
        self.assertEqual([length for _, _, length in files.reads], [LOOKUP_READ])
        run.step()  # the write, queued behind it
        self.assertEqual(self.successResultOf(write), 61)
        run.drain()
        self.assertGreaterEqual(len(files.reads), 3)  # 51 records of 64 KiB: 3.2 MiB
        self.assertTrue(all(length <= LOOKUP_READ for _, _, length in files.reads))
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 4900.0)  # seq 51


class BeingWrittenTests(SynchronousTestCase):
    """A record still being written (its batch on the I/O thread) has its time in memory."""

    def test_a_record_in_a_batch_in_flight(self) -> None:
        """The cursor has every written record; the next one's batch is being written: the
        age is that record's, not its segment's first record's, and nothing is read."""
        files, run = PowerCutFiles(), ManualRunner()
        clock = Clock()
        s = Stream("s", DIR, StreamSettings(), files, run, clock)
        s.open()
        s.cursor("cloud")
        run.drain()
        s.append(record(1, received=10.0))
        clock.advance(0)
        run.drain()
        s.ack("cloud", 1)
        run.drain()
        s.append(record(2, received=90.0))
        clock.advance(100)  # the batch of seq 2 is queued on the I/O thread
        self.assertEqual(len(run.jobs), 1)
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 10.0)  # seq 2, received at 90
        self.assertEqual(len(run.jobs), 1)
