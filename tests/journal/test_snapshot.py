"""The journal's read-side snapshot: depth, unacknowledged age, appends, fsync histogram, losses."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.settings import StreamSettings
from gateway.journal.stats import Histogram
from gateway.journal.snapshot import CursorSnapshot, LossCount
from tests.journal.helpers import appended, open_stream, read_all, record
from tests.journal.powercut import PowerCutFiles


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
