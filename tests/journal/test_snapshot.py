"""The journal's read-side snapshot: depth, unacknowledged age, appends, fsync histogram, losses."""

from __future__ import annotations

import dataclasses
import errno

from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.degraded import Degraded
from gateway.journal.errors import JournalWriteError, StreamFullError
from gateway.journal.record import encode
from gateway.journal.segments import segment_path
from gateway.journal.settings import StreamSettings
from gateway.journal.stats import Histogram
from gateway.journal.snapshot import (CursorSnapshot, LossCount, StreamSnapshot, streams_ledger_failing,
                                     streams_refusing)
from gateway.journal.stream import WRITE_BACKOFF_S
from tests.journal.helpers import DIR, ManualRunner, appended, open_stream, read_all, record
from tests.journal.powercut import PowerCutFiles

FRAME = len(encode(record(1), 1))


class HistogramTests(SynchronousTestCase):
    """Observations land in the first bucket whose bound is at least their value (Prometheus' le)."""

    def test_buckets_are_cumulative_and_inclusive(self) -> None:
        """0.001 falls in le=0.001, 0.002 in le=0.005, 10 only in +Inf; counts accumulate."""
        h = Histogram((0.001, 0.005, 1.0))
        for value in (0.0005, 0.001, 0.002, 10.0):
            h.observe(value)
        snap = h.snapshot()
        self.assertEqual(snap.bounds, (0.001, 0.005, 1.0))
        self.assertEqual(snap.cumulative, (2, 3, 3, 4))
        self.assertEqual(snap.count, 4)
        self.assertAlmostEqual(snap.sum, 10.0035)


class StreamSnapshotTests(SynchronousTestCase):
    """Stream.snapshot() reads the stream's own counters; nothing is counted twice."""

    def test_counts_appends_fsyncs_and_cursors(self) -> None:
        """Three appends in three batches: three appends, three fsyncs in the histogram, and
        each cursor's unacknowledged records."""
        clock = Clock()
        s = open_stream(PowerCutFiles(), clock=clock)
        self.successResultOf(s.cursor("a"))
        self.successResultOf(s.cursor("b"))
        for i in range(1, 4):
            self.successResultOf(appended(s, record(i)))
        read_all(s, "a")
        self.successResultOf(s.ack("a", 3))
        snap = s.snapshot()
        self.assertEqual((snap.name, snap.records, snap.next_seq, snap.appends), ("s", 3, 4, 3))
        self.assertEqual(snap.fsyncs, 3)
        self.assertEqual(snap.fsync_latency.count, 3)
        self.assertEqual(snap.fsync_latency.cumulative[-1], 3)
        self.assertEqual(snap.cursors, (CursorSnapshot("a", 3, 0), CursorSnapshot("b", 0, 3)))
        self.assertEqual(snap.append_latency.count, 3)
        self.assertGreater(snap.bytes, 0)
        self.assertEqual(s.unacked("b"), 3)
        self.assertEqual(s.unacked("nobody"), 0)

    def test_ranges_acknowledged_above_are_not_unacknowledged(self) -> None:
        """Records acknowledged in ranges above the cursor (live records sent beside a
        backlog) are not counted as unacknowledged, in the snapshot (/metrics' backlog) as
        in stats()."""
        s = open_stream(PowerCutFiles())
        self.successResultOf(s.cursor("a"))
        for i in range(1, 11):
            self.successResultOf(appended(s, record(i)))
        read_all(s, "a")
        self.successResultOf(s.ack("a", 2, above=[(6, 7), (9, 10)]))
        self.assertEqual(s.unacked("a"), 4)  # 3, 4, 5 and 8
        self.assertEqual(s.snapshot().cursors, (CursorSnapshot("a", 2, 4),))
        self.assertEqual(s.stats().backlog, {"a": 4})

    def test_oldest_unacked_age_from_the_tail(self) -> None:
        """The oldest record some cursor has not acknowledged gives the age, exactly."""
        clock = Clock()
        s = open_stream(PowerCutFiles(), clock=clock)
        self.successResultOf(s.cursor("a"))
        for i, received in enumerate((10.0, 20.0, 30.0), 1):
            self.successResultOf(appended(s, record(i, received=received)))
        clock.advance(100)
        read_all(s, "a")
        self.successResultOf(s.ack("a", 1))
        snap = s.snapshot()
        self.assertEqual(snap.oldest_unacked_age_s, 80.0)  # seq 2, received at 20
        self.assertEqual(snap.oldest_age_s, 90.0)  # seq 1 is still on disk
        self.successResultOf(s.ack("a", 3))
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 0.0)

    def test_oldest_unacked_age_beyond_the_tail(self) -> None:
        """A record no longer in the in-memory tail is read from its segment: its own age, not
        its segment's first record's (more in test_unackedage)."""
        clock = Clock()
        s = open_stream(PowerCutFiles(), clock=clock)
        self.successResultOf(s.cursor("a"))
        for i, received in enumerate((10.0, 20.0, 30.0), 1):
            self.successResultOf(appended(s, record(i, received=received)))
        clock.advance(100)
        read_all(s, "a")
        self.successResultOf(s.ack("a", 1))
        s.tail.clear()
        self.assertEqual(s.snapshot().oldest_unacked_age_s, 80.0)  # seq 2, received at 20 (its segment began at 10)

    def test_losses_by_reason(self) -> None:
        """A rejected append shows as a loss with its reason."""
        s = open_stream(PowerCutFiles(), StreamSettings(max_bytes=1024, overflow="reject-new"))
        self.successResultOf(s.cursor("a"))
        for i in range(1, 40):
            d = appended(s, record(i, size=64))
            d.addErrback(lambda f: None)
        snap = s.snapshot()
        self.assertTrue(snap.losses)
        self.assertEqual([loss.reason for loss in snap.losses], ["rejected"])
        self.assertIsInstance(snap.losses[0], LossCount)
        self.assertEqual(snap.losses[0].records, s.stats().drops["rejected"])

    def test_cursor_saves_timed_from_hand_over_to_durable(self) -> None:
        """Each cursor save that works is timed on the clock from its hand-over to the I/O
        thread (the wait there included) until durable, in a histogram; a failed one is not."""
        clock = Clock()
        s = open_stream(PowerCutFiles(), clock=clock)
        self.successResultOf(s.cursor("a"))  # its creation: a save that took no time
        for i in range(1, 4):
            self.successResultOf(appended(s, record(i)))
        read_all(s, "a")
        s.run = runner = ManualRunner()
        acked = s.ack("a", 2)
        clock.advance(0.3)  # waiting behind other jobs, then writing
        runner.drain()
        self.successResultOf(acked)
        failed = s.ack("a", 3)
        clock.advance(2.0)
        _, _, d = runner.jobs.pop(0)
        d.errback(OSError(errno.ENOSPC, "No space left on device"))
        self.failureResultOf(failed, JournalWriteError)
        saves = s.snapshot().cursor_save_latency
        self.assertEqual((saves.count, saves.sum), (2, 0.3))
        by_bound = dict(zip(saves.bounds, saves.cumulative))
        self.assertEqual((by_bound[0.0005], by_bound[0.25], by_bound[0.5]), (1, 1, 2))


class RefusingTests(SynchronousTestCase):
    """A stream that refuses appends says so in its snapshot (``refusing``: why, since when,
    how many), and stops saying so once an append is written again. On a full disk every
    QoS 1 publish went unacknowledged while the snapshot (and so /status, /metrics) showed
    nothing wrong."""

    def test_a_full_disk(self) -> None:
        """A write refused with ENOSPC: ``disk-full`` with the error, since the first refusal;
        the appends refused during the back-off count on; a written append clears it, and
        ``refused_appends`` keeps counting from the start."""
        clock = Clock()
        clock.advance(1000)
        files = PowerCutFiles(capacity=2 * FRAME + 10)
        files.reported_free = 1 << 30  # others share the disk: the check cannot foresee it
        s = open_stream(files, StreamSettings(min_free_bytes=0), clock)
        for i in (1, 2):
            self.successResultOf(appended(s, record(i)))
        self.assertEqual((s.snapshot().refusing, s.snapshot().refused_appends), (None, 0))
        self.failureResultOf(appended(s, record(3)), JournalWriteError)
        clock.advance(WRITE_BACKOFF_S / 2)
        self.failureResultOf(appended(s, record(3)), JournalWriteError)  # backing off: refused at once
        snap = s.snapshot()
        error = f"[Errno 28] No space left on device: '{segment_path(DIR, 1)}'"
        self.assertEqual(snap.refusing, Degraded("disk-full", error, 1000.0, 2))
        self.assertEqual(snap.refused_appends, 2)
        files.capacity = 1 << 20
        clock.advance(WRITE_BACKOFF_S)
        self.assertEqual(self.successResultOf(appended(s, record(3))), 3)
        snap = s.snapshot()
        self.assertEqual((snap.refusing, snap.refused_appends), (None, 2))

    def test_an_io_error(self) -> None:
        """A write that fails with another error (EIO) is a ``write-error``."""

        class BadDisk(PowerCutFiles):
            def append(self, path: str, data: bytes) -> None:
                raise OSError(errno.EIO, "Input/output error", path)

        clock = Clock()
        s = open_stream(BadDisk(), StreamSettings(min_free_bytes=0), clock)
        self.failureResultOf(appended(s, record(1)), JournalWriteError)
        self.assertEqual(s.snapshot().refusing, Degraded(
            "write-error", f"[Errno 5] Input/output error: '{segment_path(DIR, 1)}'", 0.0, 1))

    def test_a_read_only_filesystem(self) -> None:
        """A write that fails with EROFS (the kernel remounted the state directory's
        filesystem read-only after an I/O error) is ``read-only``: it was a ``write-error``,
        which did not tell the user that remounting it read-write is what ends it."""

        class ReadOnlyDisk(PowerCutFiles):
            def append(self, path: str, data: bytes) -> None:
                raise OSError(errno.EROFS, "Read-only file system", path)

        s = open_stream(ReadOnlyDisk(), StreamSettings(min_free_bytes=0), Clock())
        self.failureResultOf(appended(s, record(1)), JournalWriteError)
        self.assertEqual(s.snapshot().refusing, Degraded(
            "read-only", f"[Errno 30] Read-only file system: '{segment_path(DIR, 1)}'", 0.0, 1))

    def test_a_limit_under_reject_new(self) -> None:
        """A stream at max_bytes under reject-new is ``max-bytes``; a loss report appended
        within the reserve (a link's, which must get through) does not end it, an append
        written once the cursor has let records go does."""
        clock = Clock()
        s = open_stream(PowerCutFiles(), StreamSettings(max_bytes=4096, min_free_bytes=0, overflow="reject-new"),
                        clock)
        self.successResultOf(s.cursor("a"))
        failures: list[Failure] = []
        for i in range(1, 100):
            appended(s, record(i, size=64)).addErrback(failures.append)
        self.assertEqual({f.type for f in failures}, {StreamFullError})
        refused = len(failures)
        snap = s.snapshot()
        self.assertEqual(snap.refusing, Degraded("max-bytes", "the stream holds its max_bytes (4096 bytes)", 0.0,
                                                 refused))
        clock.advance(5)
        self.successResultOf(appended(s, record(100)).addErrback(lambda f: None))  # (refused too)
        report = s.append(record(101), reserved=True)
        clock.advance(0)
        self.successResultOf(report)
        self.assertEqual(s.snapshot().refusing, Degraded(
            "max-bytes", "the stream holds its max_bytes (4096 bytes)", 0.0, refused + 1))
        last = read_all(s, "a")[-1].seq
        self.successResultOf(s.ack("a", last))
        self.successResultOf(appended(s, record(102)))
        self.assertIsNone(s.snapshot().refusing)
        self.assertEqual(s.snapshot().refused_appends, refused + 1)

    def test_a_full_stream_drained_by_its_cloud_takes_appends_again(self) -> None:
        """A reject-new stream at max_bytes whose cursor then acknowledges its records (the
        cloud came back and drained it) no longer says it refuses appends, before any append is
        written: it said ``max-bytes`` (and ``gateway_journal_refusing_appends`` 1, the journal
        degraded) until a publisher next appended, however long after."""
        s = open_stream(PowerCutFiles(), StreamSettings(max_bytes=4096, segment_bytes=1024, min_free_bytes=0,
                                                       overflow="reject-new"), Clock())
        self.successResultOf(s.cursor("a"))
        failures: list[Failure] = []
        for i in range(1, 100):
            appended(s, record(i, size=64)).addErrback(failures.append)
        self.assertTrue(failures)
        self.assertEqual(s.snapshot().refusing.reason, "max-bytes")  # type: ignore[union-attr]
        self.assertEqual(s.snapshot().refusing.failures, len(failures))  # type: ignore[union-attr]
        last = read_all(s, "a")[-1].seq
        self.successResultOf(s.ack("a", last))
        snap = s.snapshot()
        self.assertIsNone(snap.refusing)
        self.assertEqual(snap.refused_appends, len(failures))
        self.successResultOf(appended(s, record(100, size=64)))
        self.assertIsNone(s.snapshot().refusing)

    def test_room_again_during_a_write_back_off(self) -> None:
        """A limit's refusal made while the stream backs off after a failed write, then room
        again (its cursor acknowledged): the stream still refuses appends until the back-off
        ends (or a write works), so its snapshot still says it refuses. Room alone ended it:
        ``refusing`` went ``null`` while the next append was refused with the disk's error."""

        class FailingDisk(PowerCutFiles):
            fail = False

            def append(self, path: str, data: bytes) -> None:
                if self.fail and "/cursors/" not in path:  # (segments: the cursor's save works)
                    raise OSError(errno.EIO, "Input/output error", path)
                super().append(path, data)

        clock = Clock()
        files = FailingDisk()
        s = open_stream(files, StreamSettings(max_bytes=4096, segment_bytes=1024, min_free_bytes=0,
                                              overflow="reject-new"), clock)
        self.successResultOf(s.cursor("a"))
        for i in range(1, 31):
            self.successResultOf(appended(s, record(i, size=64)))
        files.fail = True
        self.failureResultOf(appended(s, record(31, size=64)), JournalWriteError)
        # (one turn: backing off, and full; then the cursor lets segments go)
        self.failureResultOf(s.append(record(32, size=2048)), StreamFullError)
        self.assertEqual(s.snapshot().refusing.reason, "max-bytes")  # type: ignore[union-attr]
        last = read_all(s, "a")[-1].seq
        self.successResultOf(s.ack("a", last))
        self.assertIsNotNone(s.snapshot().refusing)
        self.failureResultOf(s.append(record(33, size=2048)), JournalWriteError)
        files.fail = False
        clock.advance(WRITE_BACKOFF_S)
        self.successResultOf(appended(s, record(34, size=64)))
        self.assertIsNone(s.snapshot().refusing)

    def test_a_flood_past_the_limit_in_one_turn(self) -> None:
        """Appends of one turn (one socket read of PUBLISHes) that the stream takes, then refuses
        past max_bytes: the batch written at the turn's end does not end the refusals made after
        its appends. It did: ``refusing`` went ``null`` (then counted only the later refusals,
        5 of 13 on a real gateway) though the stream was full."""
        clock = Clock()
        s = open_stream(PowerCutFiles(), StreamSettings(max_bytes=4096, min_free_bytes=0, overflow="reject-new"),
                        clock)
        self.successResultOf(s.cursor("a"))
        failures: list[Failure] = []
        taken = [s.append(record(i, size=64)) for i in range(1, 100)]
        for d in taken:
            d.addErrback(failures.append)
        clock.advance(0)  # (the turn ends: the batch of those taken is written)
        self.assertTrue(failures)
        self.assertEqual(s.snapshot().refusing, Degraded(
            "max-bytes", "the stream holds its max_bytes (4096 bytes)", 0.0, len(failures)))

    def test_a_record_larger_than_max_bytes(self) -> None:
        """A record larger than max_bytes on its own, refused by an empty drop-oldest stream:
        ``refusing`` and the error say so, with its size and the limit; they said "the stream
        holds its max_bytes" (and "is full") of a stream that held nothing. The next append
        written ends it."""
        s = open_stream(PowerCutFiles(), StreamSettings(max_bytes=8192, min_free_bytes=0))
        big = record(1, size=9000)
        size = len(encode(big, 1))
        failure = self.failureResultOf(appended(s, big), StreamFullError)
        words = f"a record of {size} bytes is larger than max_bytes (8192 bytes)"
        self.assertEqual(s.snapshot().refusing, Degraded("max-bytes", words, 0.0, 1))
        self.assertEqual((str(failure.value), failure.value.limit),
                         (f"journal stream 's' refused the append (max-bytes): {words}", "max-bytes"))
        self.successResultOf(appended(s, record(2)))
        self.assertIsNone(s.snapshot().refusing)

    def test_a_loss_ledger_not_written(self) -> None:
        """A stream whose loss ledger (losses.json) the disk refuses says so in its snapshot
        (``ledger_failing``: ``ledger-not-saved``, the error, since the first failure, the
        failures since), and not once a write works again: the loss counts were not durable
        meanwhile and only the log said so."""

        class FullDisk(PowerCutFiles):
            full = True

            def write(self, path: str, data: bytes) -> None:
                if path.endswith("losses.json.tmp") and self.full:
                    raise OSError(errno.ENOSPC, "No space left on device", path)
                super().write(path, data)

        clock = Clock()
        clock.advance(1000)
        files = FullDisk()
        s = open_stream(files, StreamSettings(min_free_bytes=0), clock)
        self.assertIsNone(s.snapshot().ledger_failing)
        for _ in range(3):
            s.note_loss("rejected", 1, 10)
            clock.advance(1)
        error = f"[Errno 28] No space left on device: '{DIR}/losses.json.tmp'"
        # (since the first write that failed: at the end of the first note's turn)
        self.assertEqual(s.snapshot().ledger_failing, Degraded("ledger-not-saved", error, 1001.0, 3))
        self.assertIsNone(s.snapshot().refusing)  # (appends go on)
        files.full = False
        s.note_loss("rejected", 1, 10)
        clock.advance(1)
        self.assertIsNone(s.snapshot().ledger_failing)

    def test_the_journal_names_every_stream_whose_ledger_fails(self) -> None:
        """The journal's own ``ledger_failing``: as its ``refusing``, for loss ledgers."""
        def stream(name: str, state: Degraded | None) -> StreamSnapshot:
            return dataclasses.replace(open_stream(PowerCutFiles()).snapshot(), name=name, ledger_failing=state)

        full = Degraded("ledger-not-saved", "[Errno 28] No space left on device", 20.0, 3)
        older = dataclasses.replace(full, error="[Errno 5] Input/output error", since=10.0, failures=1)
        self.assertIsNone(streams_ledger_failing((stream("a", None),)))
        self.assertEqual(streams_ledger_failing((stream("a", full), stream("b", None), stream("c", older))), Degraded(
            "ledger-not-saved", "c's loss ledger: [Errno 5] Input/output error;"
            " a's loss ledger: [Errno 28] No space left on device", 10.0, 4))

    def test_the_journal_names_every_refusing_stream(self) -> None:
        """The journal's own ``refusing``: the reason and start of the stream refusing longest,
        each refusing stream's words, longest first, and their refusals together."""
        def stream(name: str, state: Degraded | None) -> StreamSnapshot:
            return dataclasses.replace(open_stream(PowerCutFiles()).snapshot(), name=name, refusing=state)

        full = Degraded("disk-full", "[Errno 28] No space left on device", 20.0, 3)
        limit = Degraded("min-free-disk", "5 bytes free on the disk, min_free_bytes is 10", 10.0, 4)
        self.assertIsNone(streams_refusing((stream("a", None),)))
        self.assertEqual(streams_refusing((stream("a", full), stream("b", None), stream("c", limit))), Degraded(
            "min-free-disk", "c refuses appends: 5 bytes free on the disk, min_free_bytes is 10;"
            " a refuses appends: [Errno 28] No space left on device", 10.0, 7))
