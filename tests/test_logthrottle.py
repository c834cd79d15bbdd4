"""LogThrottle: the first event is logged, then at most one line per interval, each with the
count of the events it stands for; a burst's tail is counted in the next line (install.md)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.logthrottle import LogThrottle


class LogThrottleTests(SynchronousTestCase):
    """When a line is due and what it counts."""

    def test_a_burst_s_tail_is_counted_in_the_next_line(self) -> None:
        """A burst of 5 in one interval: the first is a line, the 4 after it are counted by the
        next event's line however late it comes (no timer logs them, install.md), that line
        counting itself too; a reset makes the next event a line at once."""
        clock = Clock()
        lines = LogThrottle(10.0, clock.seconds)
        self.assertEqual([lines.note() for _ in range(5)], [1, None, None, None, None])
        clock.advance(3600)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(lines.note(), 5)
        self.assertIsNone(lines.note(2))
        lines.reset()
        self.assertEqual(lines.note(), 1)
