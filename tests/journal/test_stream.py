"""Streams: group commit, roll-over, cursors, retention, overflow, losses, policies."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.errors import JournalWriteError, StreamFullError, UnknownCursorError
from gateway.journal.record import encode
from gateway.journal.segments import segment_path
from gateway.journal.settings import StreamSettings
from tests.journal.helpers import DIR, ManualRunner, appended, open_stream, read_all, record
from tests.journal.powercut import PowerCutFiles

FRAME = len(encode(record(1), 1))


def _segments(files: PowerCutFiles) -> list[str]:
    return sorted(p for p in files.names if p.endswith(".seg"))


class GroupCommitTests(SynchronousTestCase):
    """Appends arriving while a write is in flight share the next write and fsync."""

    def test_appends_share_one_batch(self) -> None:
        """Appends of one reactor turn share a write; those made while it is in flight share
        the next; each fires after its own batch's fsync."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        ds = [s.append(record(i)) for i in range(1, 101)]
        self.assertEqual(runner.jobs, [])  # written when the turn ends, not per append
        s.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        more = [s.append(record(i)) for i in range(101, 151)]
        s.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)  # the first batch is in flight: these wait
        for d in ds + more:
            self.assertNoResult(d)
        seqs: list[int] = []
        for d in ds + more:
            d.addCallback(seqs.append)
        runner.step()
        self.assertEqual(seqs, list(range(1, 101)))
        self.assertEqual(len(runner.jobs), 1)
        runner.step()
        self.assertEqual(seqs, list(range(1, 151)))
        self.assertEqual((s.stats().batch_records.count, s.stats().batch_records.max), (2, 100))
        path = segment_path(DIR, 1)
        self.assertEqual(files.names[path].synced, bytes(files.names[path].data))

    def test_interval_policy_acks_at_once_and_syncs_on_timer(self) -> None:
        """sync: interval fires appends at once and fsyncs every sync_interval_ms."""
        files, clock = PowerCutFiles(), Clock()
        s = open_stream(files, StreamSettings(sync="interval", sync_interval_ms=50), clock)
        self.assertEqual(self.successResultOf(s.append(record(1))), 1)
        self.assertNotIn(segment_path(DIR, 1), files.names)
        clock.advance(0.05)
        inode = files.names[segment_path(DIR, 1)]
        self.assertEqual(inode.synced, bytes(inode.data))
        self.assertEqual(len(inode.data), FRAME)

    def test_none_policy_writes_without_fsync(self) -> None:
        """sync: none writes on the next turn and never fsyncs, until close."""
        files, clock = PowerCutFiles(), Clock()
        s = open_stream(files, StreamSettings(sync="none"), clock)
        self.successResultOf(s.append(record(1)))
        clock.advance(0)
        inode = files.names[segment_path(DIR, 1)]
        self.assertEqual((len(inode.data), inode.synced), (FRAME, b""))
        self.successResultOf(s.close())
        self.assertEqual(len(inode.synced), FRAME)


class SegmentTests(SynchronousTestCase):
    """Segments roll over at segment_bytes and are deleted once every cursor passed them."""

    def test_roll_over_and_delete_acked(self) -> None:
        """Ten records per segment; acking past a segment deletes it, the tail stays."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(segment_bytes=10 * FRAME))
        self.successResultOf(s.cursor("a"))
        self.successResultOf(s.cursor("b"))
        for i in range(1, 26):
            appended(s, record(i))
        self.assertEqual(len(_segments(files)), 3)
        self.assertEqual([r.seq for r in read_all(s, "a")], list(range(1, 26)))
        self.successResultOf(s.ack("a", 25))
        self.assertEqual(len(_segments(files)), 3)
        self.successResultOf(s.ack("b", 20))
        self.assertEqual(_segments(files), [segment_path(DIR, 21)])
        self.assertEqual(s.stats().backlog, {"a": 0, "b": 5})


class CursorTests(SynchronousTestCase):
    """Cursors persist; a restart re-delivers what was in flight and skips nothing."""

    def test_restart_redelivers_unacked(self) -> None:
        """Read 10, ack 6, restart: reading resumes at 7."""
        files = PowerCutFiles()
        s = open_stream(files)
        self.successResultOf(s.cursor("link"))
        for i in range(1, 11):
            appended(s, record(i))
        self.assertEqual(len(self.successResultOf(s.read("link", 10))), 10)
        self.successResultOf(s.ack("link", 6))
        self.assertEqual(self.successResultOf(s.read("link")), [])
        s = open_stream(files)
        self.assertEqual([r.seq for r in self.successResultOf(s.read("link"))], [7, 8, 9, 10])

    def test_rewind_and_limits(self) -> None:
        """max_records and max_bytes bound a read; rewind goes back to the last ack."""
        s = open_stream(PowerCutFiles())
        self.successResultOf(s.cursor("c"))
        for i in range(1, 11):
            appended(s, record(i))
        self.assertEqual([r.seq for r in self.successResultOf(s.read("c", 3))], [1, 2, 3])
        self.assertEqual([r.seq for r in self.successResultOf(s.read("c", max_bytes=64))], [4, 5])
        s.rewind("c")
        self.assertEqual(self.successResultOf(s.read("c", 1))[0].seq, 1)

    def test_rewind_during_read(self) -> None:
        """A rewind while a read is in flight wins: the next read starts after the ack."""
        runner = ManualRunner()
        s = open_stream(PowerCutFiles(), run=runner)
        s.cursor("c")
        for i in range(1, 4):
            s.append(record(i))
        runner.drain()
        s.clock.advance(0)
        runner.drain()
        s.tail.clear()  # so the read goes to the I/O thread, where the rewind overtakes it
        first = s.read("c")
        s.rewind("c")
        runner.drain()
        self.assertEqual(len(self.successResultOf(first)), 3)
        again = s.read("c")
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(again)], [1, 2, 3])

    def test_unknown_cursor(self) -> None:
        """Reading with a cursor never created fails precisely."""
        s = open_stream(PowerCutFiles())
        self.failureResultOf(s.read("nope"), UnknownCursorError)

    def test_wait_fires_on_append(self) -> None:
        """wait() fires once a record for the cursor is durable."""
        s = open_stream(PowerCutFiles())
        self.successResultOf(s.cursor("c"))
        d = s.wait("c")
        self.assertNoResult(d)
        appended(s, record(1))
        self.successResultOf(d)


class OverflowTests(SynchronousTestCase):
    """Limits: drop-oldest deletes and reports, reject-new refuses precisely."""

    def test_drop_oldest_on_max_bytes(self) -> None:
        """Over max_bytes, the oldest segment goes; the unread records count as lost, durably."""
        files = PowerCutFiles()
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=40 * FRAME)
        s = open_stream(files, settings)
        self.successResultOf(s.cursor("link"))
        for i in range(1, 46):
            self.successResultOf(appended(s, record(i, received=float(i))))
        [entry] = s.loss_report().entries
        self.assertEqual((entry.reason, entry.records, entry.first_seq, entry.last_seq),
                         ("max-bytes", 10, 1, 10))
        self.assertEqual((entry.first_time, entry.last_time), (1.0, 11.0))
        self.assertEqual(self.successResultOf(s.read("link", 1))[0].seq, 11)
        self.assertEqual(open_stream(files, settings).loss_report().entries, (entry,))
        report = s.loss_report()
        self.successResultOf(s.clear_losses(report))
        self.assertEqual(open_stream(files, settings).loss_report().entries, ())

    def test_reject_new_on_max_bytes(self) -> None:
        """reject-new fails the append with StreamFullError naming the limit, and counts it."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME, overflow="reject-new")
        s = open_stream(PowerCutFiles(), settings)
        for i in range(1, 21):
            self.successResultOf(appended(s, record(i)))
        err = self.failureResultOf(appended(s, record(21)), StreamFullError)
        self.assertEqual((err.value.stream, err.value.limit), ("s", "max-bytes"))
        self.assertEqual(s.stats().drops, {"rejected": 1})
        self.assertEqual(s.next_seq, 21)

    def test_min_free_disk(self) -> None:
        """Below min_free_bytes, reject-new refuses; drop-oldest frees space by dropping."""
        files = PowerCutFiles(capacity=100 * FRAME)
        base = dict(segment_bytes=10 * FRAME, min_free_bytes=70 * FRAME)
        s = open_stream(files, StreamSettings(overflow="reject-new", **base))
        for i in range(1, 31):
            self.successResultOf(appended(s, record(i)))
        self.assertEqual(self.failureResultOf(appended(s, record(31)), StreamFullError).value.limit, "min-free-disk")
        s = open_stream(files, StreamSettings(**base))
        self.successResultOf(appended(s, record(31)))
        self.assertEqual(s.stats().drops, {"min-free-disk": 10})

    def test_max_age(self) -> None:
        """Sealed segments whose records are all older than max_age_s expire, counted."""
        clock = Clock()
        clock.advance(1020)
        s = open_stream(PowerCutFiles(), StreamSettings(segment_bytes=10 * FRAME, max_age_s=100), clock)
        for i in range(1, 26):
            appended(s, record(i, received=900.0 + i))
        s.enforce_limits()
        self.assertEqual(s.stats().drops, {"max-age": 10})
        self.assertEqual(s.stats().records, 15)


class DiskFullTests(SynchronousTestCase):
    """A failed write fails its appends cleanly and damages nothing stored."""

    def test_enospc_then_resume(self) -> None:
        """ENOSPC: appends fail with JournalWriteError, stored records intact, appends resume with freed space."""
        files = PowerCutFiles(capacity=5 * FRAME + 10)
        files.reported_free = 1 << 30  # others share the disk: the check cannot foresee it
        s = open_stream(files, StreamSettings(min_free_bytes=0))
        for i in range(1, 6):
            self.successResultOf(appended(s, record(i)))
        err = self.failureResultOf(appended(s, record(6)), JournalWriteError)
        self.assertEqual(err.value.cause.errno, 28)
        self.assertEqual(len(files.names[segment_path(DIR, 1)].data), 5 * FRAME)
        files.capacity = 1 << 20
        self.assertEqual(self.successResultOf(appended(s, record(6))), 6)
        self.assertEqual([r.seq for r in read_all(open_stream(files))], [1, 2, 3, 4, 5, 6])


class OpeningTests(SynchronousTestCase):
    """Work handed to a stream before it finished opening waits for it, in order."""

    def test_appends_and_cursor_before_open(self) -> None:
        """Appends and a cursor made while recovery runs complete after it, with seqs in call order."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        pending = [s.append(record(i)) for i in range(1, 4)]
        cursor = s.cursor("c")
        for d in pending + [cursor]:
            self.assertNoResult(d)
        runner.drain()
        s.clock.advance(0)
        runner.drain()
        self.assertEqual([self.successResultOf(d) for d in pending], [1, 2, 3])
        self.successResultOf(cursor)
        read = s.read("c")
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(read)], [1, 2, 3])
