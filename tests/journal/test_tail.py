"""Reads of records written a moment ago are served from memory, exactly as the disk would."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import encode, with_seq
from gateway.journal.settings import StreamSettings
from gateway.journal.stream import Stream
from gateway.journal.tail import RecentTail, Written
from tests.journal.helpers import ManualRunner, open_stream, read_all, record
from tests.journal.powercut import PowerCutFiles

FRAME = len(encode(record(1), 1))


def _written_stream(n: int, settings: StreamSettings | None = None) -> tuple[Stream, ManualRunner, PowerCutFiles]:
    files, runner = PowerCutFiles(), ManualRunner()
    s = open_stream(files, settings, run=runner)
    s.cursor("c")
    runner.drain()
    for i in range(1, n + 1):
        s.append(record(i))
        s.clock.advance(0)
        runner.drain()
    return s, runner, files


class TailReadTests(SynchronousTestCase):
    """A caught-up cursor reads without a job on the I/O thread; the disk takes over seamlessly."""

    def test_read_served_from_memory_then_disk_continues(self) -> None:
        """Records 1-4 come from memory (no job); with the tail gone, 5-10 come from disk."""
        s, runner, files = _written_stream(10)
        from_memory = s.read("c", 4)
        self.assertEqual(runner.jobs, [])
        self.assertEqual(self.successResultOf(from_memory), read_all(open_stream(files), "x")[:4])
        s.tail.clear()
        from_disk = s.read("c")
        self.assertEqual(len(runner.jobs), 1)
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(from_disk)], list(range(5, 11)))

    def test_a_stream_that_keeps_no_tail_reads_from_disk(self) -> None:
        """After ``keep_no_tail`` the records written are not kept in memory; a read still
        gets all of them, from disk."""
        s, runner, files = _written_stream(0)
        s.keep_no_tail()
        for i in range(1, 11):
            s.append(record(i))
            s.clock.advance(0)
            runner.drain()
        self.assertEqual(len(s.tail), 0)
        d = s.read("c")
        self.assertEqual(len(runner.jobs), 1)
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(d)], list(range(1, 11)))

    def test_across_segments(self) -> None:
        """A tail read that crosses a segment boundary leaves a position the disk reader continues from."""
        s, runner, _ = _written_stream(25, StreamSettings(segment_bytes=10 * FRAME))
        self.assertEqual([r.seq for r in self.successResultOf(s.read("c", 15))], list(range(1, 16)))
        s.tail.clear()
        rest = s.read("c")
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(rest)], list(range(16, 26)))

    def test_older_records_come_from_disk(self) -> None:
        """A cursor further behind than the tail reaches reads from disk."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        s.tail = RecentTail(max_records=3)
        s.cursor("c")
        runner.drain()
        for i in range(1, 11):
            s.append(record(i))
        s.clock.advance(0)
        runner.drain()
        d = s.read("c")
        self.assertEqual(len(runner.jobs), 1)
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(d)], list(range(1, 11)))

    def test_dropped_segments_not_served(self) -> None:
        """Records of a segment dropped for space are never returned from memory."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME)
        s, runner, _ = _written_stream(25, settings)
        self.assertEqual(s.stats().drops, {"max-bytes": 10})
        d = s.read("c")
        runner.drain()
        self.assertEqual(self.successResultOf(d)[0].seq, 11)


class RecentTailTests(SynchronousTestCase):
    """The window itself: bounded by count and bytes, never with a hole."""

    def _batch(self, first: int, n: int, size: int = 10) -> list[Written]:
        return [(with_seq(record(i, size), i), i, 1, i * 100) for i in range(first, first + n)]

    def test_bounds(self) -> None:
        """Beyond max_records the oldest records leave the window; beyond max_bytes the
        oldest batches do, but never the newest."""
        tail = RecentTail(max_records=5, max_bytes=1000)
        tail.add(self._batch(1, 8), 80)
        self.assertEqual(len(tail), 5)
        self.assertIsNone(tail.take(3, 1, 10, 1 << 20))
        self.assertIsNone(tail.take(4, 1, 0, 1 << 20))  # (no record asked for: not an IndexError)
        records, position = tail.take(4, 1, 10, 1 << 20)  # type: ignore[misc]
        self.assertEqual([r.seq for r in records], [4, 5, 6, 7, 8])
        self.assertEqual((position.segment, position.offset, position.want), (1, 800, 9))
        tail.add(self._batch(9, 2), 600)
        self.assertEqual(len(tail), 5)
        tail.add(self._batch(11, 3), 1200)  # alone over max_bytes: kept, everything older goes
        self.assertEqual(len(tail), 3)
        self.assertEqual([r.seq for r in tail.take(11, 1, 10, 1 << 20)[0]], [11, 12, 13])  # type: ignore[index]
        tail.add(self._batch(14, 1), 100)
        self.assertEqual([r.seq for r in tail.take(14, 1, 10, 1 << 20)[0]], [14])  # type: ignore[index]
        self.assertIsNone(tail.take(13, 1, 10, 1 << 20))

    def test_compaction_keeps_the_window(self) -> None:
        """Forgotten records are compacted away without moving what is still served."""
        tail = RecentTail(max_records=4, max_bytes=1 << 20)
        for first in range(1, 40, 3):
            tail.add(self._batch(first, 3), 30)
        self.assertEqual(len(tail), 4)
        self.assertEqual([r.seq for r in tail.take(36, 1, 10, 1 << 20)[0]], [36, 37, 38, 39])  # type: ignore[index]
        self.assertLess(len(tail._items), 12)

    def test_forgotten_records_are_let_go_soon(self) -> None:
        """The window holds at most a quarter more than max_records, forgotten ones included
        (compaction only past max_records held up to twice that: about 16 MB for a stream's
        16384 records of a soak's small messages, not the 8 MB said)."""
        tail = RecentTail(max_records=100, max_bytes=1 << 20)
        for first in range(1, 1001):
            tail.add(self._batch(first, 1), 10)
            self.assertLessEqual(len(tail._items), 125)
        self.assertEqual(len(tail), 100)
        self.assertEqual([r.seq for r in tail.take(901, 1, 200, 1 << 20)[0]], list(range(901, 1001)))  # type: ignore[index]

    def test_limits_and_gaps(self) -> None:
        """A take stops at max_records and max_bytes; a batch after a gap empties the window."""
        tail = RecentTail()
        tail.add(self._batch(1, 10), 100)
        self.assertEqual([r.seq for r in tail.take(2, 1, 3, 1 << 20)[0]], [2, 3, 4])  # type: ignore[index]
        self.assertEqual([r.seq for r in tail.take(2, 1, 10, 15)[0]], [2, 3])  # type: ignore[index]
        self.assertIsNone(tail.take(11, 1, 10, 1 << 20))
        tail.add(self._batch(20, 2), 20)
        self.assertEqual(len(tail), 2)
        self.assertIsNone(tail.take(5, 1, 10, 1 << 20))
