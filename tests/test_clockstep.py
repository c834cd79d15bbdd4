"""The reactor's timers across steps of the wall clock (gateway/clockstep.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.trial.unittest import SynchronousTestCase

from gateway.clockstep import StepDetector, SteadyTimersReactor

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


def reactor_on(clocks: Clocks, cls: type[AsyncioSelectorReactor]) -> AsyncioSelectorReactor:
    """A reactor of ``cls`` (not installed, never run) whose wall clock is ``clocks.wall``."""

    class OnTestClocks(cls):  # type: ignore[misc, valid-type]
        def seconds(self) -> float:
            return clocks.wall

    loop = asyncio.new_event_loop()
    if cls is SteadyTimersReactor:
        reactor = OnTestClocks(loop, steady=lambda: clocks.steady)
    else:
        reactor = OnTestClocks(loop)
    return reactor


class StepDetectorTests(SynchronousTestCase):
    """How far the wall clock stepped since the previous look."""

    def test_steps_and_time_passing(self) -> None:
        clocks = Clocks()
        steps = StepDetector(lambda: clocks.wall, lambda: clocks.steady)
        clocks.run(30)
        self.assertEqual(steps.step(), 0.0)
        clocks.wall += 56 * YEAR
        clocks.run(1)
        self.assertEqual(steps.step(), 56 * YEAR)
        self.assertEqual(steps.step(), 0.0)
        clocks.wall -= 3600
        self.assertEqual(steps.step(), -3600)
        clocks.wall += 0.4  # a slew, not a step
        self.assertEqual(steps.step(), 0.0)


class SteadyTimersTests(SynchronousTestCase):
    """A timer is due as long after it was set as asked, however the wall clock steps."""

    def setUp(self) -> None:
        self.clocks = Clocks()
        self.fired: list[str] = []

    def reactor(self, cls: type[AsyncioSelectorReactor]) -> AsyncioSelectorReactor:
        reactor = reactor_on(self.clocks, cls)
        self.addCleanup(reactor._asyncioEventloop.close)
        self.addCleanup(reactor.waker.connectionLost, None)  # (its pipe)
        self.addCleanup(reactor.removeAll)
        return reactor

    def test_a_step_forward_does_not_fire_timers_early(self) -> None:
        """NTP steps a clock booted at 1970 by 56 years: a 10 s timer set before still waits
        its 10 s. (Twisted's own asyncio reactor fires it at once, below.)"""
        reactor = self.reactor(SteadyTimersReactor)
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
        """The clock steps back an hour: a 10 s timer is due in 10 s, not in an hour and 10 s,
        seen by the once-a-second look even though no timer runs."""
        reactor = self.reactor(SteadyTimersReactor)
        reactor.callLater(10, self.fired.append, "retry")
        self.clocks.wall -= 3600
        reactor._look()
        self.assertAlmostEqual(reactor.timeout(), 10)
        self.clocks.run(10)
        reactor.runUntilCurrent()
        self.assertEqual(self.fired, ["retry"])

    def test_twisteds_reactor_fires_early_and_freezes(self) -> None:
        """What the gateway's reactor is for: Twisted's asyncio reactor schedules on the wall
        clock, so a step forward fires a pending timer at once and a step back delays it by
        the step."""
        reactor = self.reactor(AsyncioSelectorReactor)
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
