"""The retry of a failed stream read: one timer, a throttled line, a streak that ends."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.links.readretry import ReadRetry


class ReadRetryTests(SynchronousTestCase):
    """A failed read is read again after the retry interval, logged the first time and then at
    most once per log interval; a success ends the streak."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.reads = 0
        self.retry = ReadRetry(self.clock, self.read, 1.0, 60.0)

    def read(self) -> None:
        self.reads += 1

    def test_read_again_once_after_the_interval(self) -> None:
        """Two failures before the retry is due make one read, a second later."""
        self.assertEqual(self.retry.failed(), 1)
        self.assertIsNone(self.retry.failed())
        self.clock.advance(0.9)
        self.assertEqual(self.reads, 0)
        self.clock.advance(0.1)
        self.assertEqual(self.reads, 1)
        self.assertEqual(self.retry.failures, 2)
        self.clock.advance(10)
        self.assertEqual(self.reads, 1)

    def test_a_line_at_most_once_per_log_interval(self) -> None:
        """The first failure is due a line; the next one due stands for the failures since."""
        self.assertEqual(self.retry.failed(), 1)
        for _ in range(59):
            self.clock.advance(1.0)
            self.assertIsNone(self.retry.failed())
        self.clock.advance(1.0)
        self.assertEqual(self.retry.failed(), 60)

    def test_success_ends_the_streak(self) -> None:
        """A success says how many reads failed before it; the next failure is due a line at once."""
        self.retry.failed()
        self.retry.failed()
        self.assertEqual(self.retry.succeeded(), 2)
        self.assertEqual(self.retry.succeeded(), 0)
        self.assertEqual(self.retry.failed(), 1)

    def test_no_read_after_stop(self) -> None:
        """A stop cancels the read due, and a failure after it schedules none."""
        self.retry.failed()
        self.retry.stop()
        self.retry.failed()
        self.clock.advance(5)
        self.assertEqual(self.reads, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
