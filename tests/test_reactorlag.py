"""The worst lateness of the reactor's timers over the last minute or two (gateway/reactorlag.py)."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.reactorlag import LagWindow, reactor_lag


class LagWindowTests(SynchronousTestCase):
    """A lateness stays visible for one to two windows, then is forgotten."""

    def test_the_worst_of_this_window_and_the_one_before(self) -> None:
        """The worst note counts while its window runs and through the next one; a window
        with no note shows nothing once the one before it has passed too."""
        window = LagWindow(60.0)
        self.assertEqual(window.worst(0.0), 0.0)
        window.note(10.0, 0.2)  # (a window from 10 s to 70 s)
        window.note(20.0, 5.4)
        window.note(30.0, 1.0)
        self.assertEqual(window.worst(30.0), 5.4)
        self.assertEqual(window.worst(100.0), 5.4)  # (the next window, from 100 s: the worst of the one before)
        window.note(110.0, 0.3)
        self.assertEqual(window.worst(159.0), 5.4)
        self.assertEqual(window.worst(161.0), 0.3)  # (5.4's window is two windows back)
        self.assertEqual(window.worst(400.0), 0.0)


class ReactorLagTests(SynchronousTestCase):
    """What a clock that does not measure its lateness shows."""

    def test_a_clock_without_the_measure_shows_none(self) -> None:
        """task.Clock (and Twisted's own reactors) show 0.0."""
        self.assertEqual(reactor_lag(Clock()), 0.0)
