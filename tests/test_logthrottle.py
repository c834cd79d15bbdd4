"""LogThrottle: the first event is logged, then at most one line per interval, each with the
count of the events it stands for; a burst's tail is counted in the next line (install.md)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.logthrottle import LogThrottle, not_published_since, refused_since, since_last_line


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


class SinceLastLineTests(SynchronousTestCase):
    """:func:`since_last_line`, the one end of every throttled line that counts its events."""

    def test_the_first_line_counts_nothing_since_a_line_that_never_was(self) -> None:
        """The first line of a kind (and the first after a quiet interval, which stands for its
        own event alone) says only how often the line comes; it said "(1 refused since the last
        such line; ...)" when there was no such line. A later line counts those it stands for."""
        lines = LogThrottle(10.0, Clock().seconds)
        first = lines.note()
        assert first is not None
        self.assertEqual(refused_since(first), "logged at most once every 10 s while they go on")
        self.assertEqual(not_published_since(first), "logged at most once every 10 minutes until one is")
        self.assertEqual(since_last_line(3, "refused", "logged at most once a minute"),
                         "3 refused since the last such line; logged at most once a minute")
        self.assertEqual(since_last_line(3, "", "logged at most once a minute"),
                         "3 since the last such line; logged at most once a minute")

    def test_a_first_line_of_several_events_counts_them_not_since_a_line(self) -> None:
        """A first line that stands for several events noted at once (QoS 0 messages refused
        together) counts them without "since the last such line" (:attr:`LogThrottle.first`);
        the next line counts those since it; a :meth:`LogThrottle.reset` makes the next first."""
        clock = Clock()
        lines = LogThrottle(10.0, clock.seconds)
        count = lines.note(3)
        assert count is not None
        self.assertEqual(since_last_line(count, "refused", "at most once every 10 s", lines.first),
                         "3 refused; at most once every 10 s")
        clock.advance(10)
        count = lines.note(2)
        assert count is not None
        self.assertEqual(since_last_line(count, "refused", "at most once every 10 s", lines.first),
                         "2 refused since the last such line; at most once every 10 s")
        lines.reset()
        lines.note(2)
        self.assertTrue(lines.first)
