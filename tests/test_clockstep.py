"""The reactor's timers across steps of the wall clock (gateway/clockstep.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import SynchronousTestCase

from gateway.clockstep import SteadyTimersReactor

ROOT = Path(__file__).resolve().parent.parent
YEAR = 365 * 86400.0


class Clocks:
    """A wall clock the test steps, and a steady one."""

    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.steady = 50.0

    def run(self, seconds: float) -> None:
        """Time passes: both clocks move."""
        self.wall += seconds
        self.steady += seconds


def twisteds_reactor(clocks: Clocks) -> AsyncioSelectorReactor:
    """Twisted's asyncio reactor (not installed, never run) on ``clocks.wall``."""

    class OnTestClocks(AsyncioSelectorReactor):  # type: ignore[misc]
        def seconds(self) -> float:
            return clocks.wall

    return OnTestClocks(asyncio.new_event_loop())


class SteadyTimersTests(SynchronousTestCase):
    """A timer is due as long after it was set as asked, however the wall clock steps."""

    def setUp(self) -> None:
        self.clocks = Clocks()
        self.fired: list[str] = []

    def reactor(self, twisteds: bool = False) -> AsyncioSelectorReactor:
        """The gateway's reactor on the test's clocks (not installed, never run), or Twisted's."""
        clocks = self.clocks
        reactor = twisteds_reactor(clocks) if twisteds else \
            SteadyTimersReactor(asyncio.new_event_loop(), steady=lambda: clocks.steady, wall=lambda: clocks.wall)
        self.addCleanup(reactor._asyncioEventloop.close)
        self.addCleanup(reactor.waker.connectionLost, None)  # (its pipe)
        self.addCleanup(reactor.removeAll)
        return reactor

    def test_a_step_forward_does_not_fire_timers_early(self) -> None:
        """NTP steps a clock booted at 1970 by 56 years: a 10 s timer set before still waits
        its 10 s. (Twisted's own asyncio reactor fires it at once, below.)"""
        reactor = self.reactor()
        reactor.callLater(10, self.fired.append, "keepalive")
        self.clocks.run(2)
        self.clocks.wall += 56 * YEAR
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, [])
        self.assertAlmostEqual(reactor.timeout(), 8)
        self.clocks.run(8)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["keepalive"])

    def test_a_step_back_does_not_freeze_timers(self) -> None:
        """The clock steps back an hour: a 10 s timer is due in 10 s, not in an hour and 10 s."""
        reactor = self.reactor()
        reactor.callLater(10, self.fired.append, "retry")
        self.clocks.wall -= 3600
        self.assertAlmostEqual(reactor.timeout(), 10)
        self.clocks.run(10)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["retry"])

    def test_a_timer_set_right_after_a_step_is_not_moved_by_it(self) -> None:
        """A timer set (or reset) after the step, before any timer ran (an I/O callback: the
        broker's flush of the turn, an HTTP channel's idle timeout), is set against the new
        time and not moved again: the step is seen at that reading of the clock."""
        reactor = self.reactor()
        reactor.callLater(10, self.fired.append, "before")
        reset = reactor.callLater(60, self.fired.append, "reset")
        self.clocks.wall += YEAR
        reactor.callLater(0, self.fired.append, "flush")
        reset.reset(3)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["flush"])
        self.clocks.run(3)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["flush", "reset"])
        self.clocks.run(7)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["flush", "reset", "before"])

    def test_a_step_back_seen_while_timers_run_fires_none_early(self) -> None:
        """The clock steps back while the reactor runs its due timers, and a timer's callback
        is the first to read the clock after it: no other timer runs before its time, and a
        looping call ticks once, not in a loop. (Twisted compares each timer with the time it
        read when the run began: timers moved back by the step were all due by it, and a
        looping call set again for 5 s after the new time was due at once, again and again,
        holding the reactor: seen under libfaketime, a gateway stepped back 56 years spun
        for minutes and ignored SIGTERM.) A reading of the clock inside that run gives the
        time as if the step had not come yet; the timers follow the step once it ends."""
        reactor = self.reactor()
        heard: list[float] = []
        reactor.on_step(heard.append)
        ticks: list[float] = []

        def tick() -> None:
            ticks.append(reactor.seconds())
            if len(ticks) >= 100:
                loop.stop()  # (the storm, bounded, for the test to end)

        loop = LoopingCall(tick)
        loop.clock = reactor
        loop.start(5, now=False)
        reactor.callLater(30, self.fired.append, "report")

        def stepped() -> None:
            self.clocks.wall -= 3600
            self.fired.append(f"stepped at {reactor.seconds()}")
            reactor.callLater(10, self.fired.append, "retry")

        reactor.callLater(4, stepped)
        self.clocks.run(5)
        reactor.runUntilCurrent()
        self.assertEqual((self.fired, ticks), (["stepped at 1000005.0"], [1_000_005.0]))
        self.assertEqual(heard, [-3600.0])
        self.assertAlmostEqual(reactor.timeout(), 5)
        self.clocks.run(5)
        reactor.runUntilCurrent()
        self.assertEqual((self.fired, ticks), (["stepped at 1000005.0"], [1_000_005.0, 1_000_010.0 - 3600]))
        self.clocks.run(20)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["stepped at 1000005.0", "retry", "report"])

    def test_small_differences_are_not_steps(self) -> None:
        """Moves of the wall clock under a second move no timer; once they add up to a second
        they are a step, and the timers follow all of it."""
        reactor = self.reactor()
        call = reactor.callLater(10, self.fired.append, "t")
        self.clocks.wall += 0.6
        reactor.runUntilCurrent()
        self.assertEqual(call.getTime(), 1_000_010.0)
        self.clocks.wall += 0.6
        reactor.runUntilCurrent()
        self.assertAlmostEqual(call.getTime(), 1_000_011.2)

    def test_observers_are_told_each_step_before_the_new_time_is_read(self) -> None:
        """``on_step`` observers hear each step once, with its size, inside the reading of the
        clock that found it; one that raises is logged and the others still hear it; one that
        was removed hears nothing more."""
        reactor = self.reactor()
        heard: list[tuple[str, float]] = []

        def failing(step: float) -> None:
            raise RuntimeError("observer failed")

        stop_failing = reactor.on_step(failing)
        stop = reactor.on_step(lambda step: heard.append(("a", step)))
        reactor.on_step(lambda step: heard.append(("b", step)))
        self.clocks.wall += YEAR
        self.assertEqual(reactor.seconds(), 1_000_000.0 + YEAR)
        self.assertEqual(heard, [("a", YEAR), ("b", YEAR)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        stop()
        stop_failing()
        self.clocks.wall -= 60
        reactor.seconds()
        reactor.seconds()
        self.assertEqual(heard, [("a", YEAR), ("b", YEAR), ("b", -60.0)])

    def test_steady_seconds_do_not_step(self) -> None:
        """``steady_seconds`` starts at the wall clock's time and only runs."""
        reactor = self.reactor()
        self.assertEqual(reactor.steady_seconds(), 1_000_000.0)
        self.clocks.run(5)
        self.clocks.wall -= 3600
        self.assertEqual((reactor.seconds(), reactor.steady_seconds()), (1_000_005.0 - 3600, 1_000_005.0))

    def test_it_notes_how_late_it_runs_its_timers(self) -> None:
        """Each run of the due timers notes how long after the time the loop was woken for it
        comes: a turn busy for 3.5 s runs a timer due 1 s into it 2.5 s late, and one set to
        run at once (``callLater(0)``) 1 s before the turn ends, 1 s late. A later timer set
        meanwhile does not move the time the lateness counts from; an idle reactor shows
        none; the worst is shown for a minute or two (gateway/reactorlag.py)."""
        reactor = self.reactor()
        self.assertEqual(reactor.timers_late(), 0.0)
        reactor.callLater(1, self.fired.append, "sweep")
        reactor.callLater(30, self.fired.append, "report")
        self.clocks.run(3.5)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["sweep"])
        self.assertAlmostEqual(reactor.timers_late(), 2.5)
        reactor.timeout()  # (as the reactor asks after each run, to set its wake-up)
        self.clocks.run(1)
        reactor.callLater(0, self.fired.append, "flush")
        self.clocks.run(1)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["sweep", "flush"])
        self.assertAlmostEqual(reactor.timers_late(), 2.5)  # (the worst of the last minute or two)
        self.clocks.run(121)
        self.assertEqual(reactor.timers_late(), 0.0)

    def test_twisteds_reactor_fires_early_and_freezes(self) -> None:
        """What the gateway's reactor is for: Twisted's asyncio reactor schedules on the wall
        clock, so a step forward fires a pending timer at once and a step back delays it by
        the step."""
        reactor = self.reactor(twisteds=True)
        reactor.callLater(10, self.fired.append, "early")
        self.clocks.wall += YEAR
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["early"])
        reactor.callLater(10, self.fired.append, "frozen")
        self.clocks.wall -= 3600
        self.assertAlmostEqual(reactor.timeout(), 3610)

    def test_the_gateway_runs_on_it(self) -> None:
        """``twistd gateway`` installs it (tap.install_reactor)."""
        script = "from gateway.tap import install_reactor; print(type(install_reactor()[0]).__name__)"
        out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True,
                             timeout=50, cwd=ROOT)
        self.assertEqual(out.stdout.strip(), "SteadyTimersReactor")
