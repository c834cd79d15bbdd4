"""Timers that keep their delays when the wall clock steps.

Twisted's reactors schedule ``callLater`` (and so every ``LoopingCall``) on the wall clock,
``reactor.seconds()``, which is ``time.time()``. A gateway without a real-time clock boots
at 1970 (or at a time it saved) and NTP then steps its clock by years: stepped forward,
every pending timer would fire at once, long before its delay; stepped back, every pending
timer would wait the step out too, freezing keep-alives, reconnects, confirm windows and
report periods for as long. :class:`SteadyTimersReactor` is the asyncio reactor whose timers
keep the delays they were given: it compares the wall clock with a steady one (Linux's
``CLOCK_BOOTTIME``, which a suspend does not stop either) and moves every pending timer by
the step it finds, before any timer runs and at least once a second.
``reactor.seconds()`` stays the wall clock, so timestamps are the time of day; durations
and deadlines kept in memory use :func:`steady_seconds`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

#: Seconds the wall clock must move against the steady one to count as a step (NTP slews
#: smaller offsets: at most 0.5 ms a second).
STEP_TOLERANCE = 1.0
#: Seconds between two looks at the clocks while no timer runs (a step back delays the
#: reactor's own wake-up, so a timer alone would not see it in time).
LOOK_INTERVAL = 1.0


def boottime() -> float:
    """Seconds since the boot, suspends included (never steps)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class StepDetector:
    """Tells how far the wall clock stepped since the previous look.

    :param wall: the wall clock (``reactor.seconds``).
    :param steady: a clock that never steps.
    :param tolerance: smaller differences are not steps.
    """

    def __init__(self, wall: Callable[[], float], steady: Callable[[], float] = boottime,
                 tolerance: float = STEP_TOLERANCE) -> None:
        self._wall, self._steady, self._tolerance = wall, steady, tolerance
        self._last_wall, self._last_steady = wall(), steady()

    def step(self) -> float:
        """Seconds the wall clock moved beyond the steady one since the last look (negative:
        it went back); 0.0 when it did not step."""
        wall, steady = self._wall(), self._steady()
        step = wall - (self._last_wall + (steady - self._last_steady))
        self._last_wall, self._last_steady = wall, steady
        return step if abs(step) >= self._tolerance else 0.0


class WallClock(Protocol):
    """A clock that tells the time of day (``IReactorTime``, the journal's clock)."""

    def seconds(self) -> float:
        """Now, in seconds since the epoch."""


def steady_seconds(clock: WallClock) -> float:
    """Seconds now on a clock that never steps, for durations and deadlines kept in memory
    (``clock.seconds()`` is the time of day, which NTP may step by years): the clock's own
    ``steady_seconds()`` when it has one (:class:`SteadyTimersReactor`, a test's stepping
    clock), else its ``seconds()`` (``task.Clock``, which only steps when told)."""
    own: Callable[[], float] | None = getattr(clock, "steady_seconds", None)
    return own() if own is not None else clock.seconds()


def shift_timers(clock: IReactorTime, step: float) -> None:
    """Move every pending timer of ``clock`` by ``step`` seconds of wall time, so that each
    is due as long after now as it was before the wall clock stepped by ``step``."""
    now = clock.seconds()
    for call in clock.getDelayedCalls():
        call.reset(call.getTime() + step - now)


class SteadyTimersReactor(AsyncioSelectorReactor):
    """Twisted's asyncio reactor, its timers kept on their delays across wall-clock steps.

    :param eventloop: the asyncio loop it runs on.
    :param steady: a clock that never steps.
    """

    log = Logger()

    def __init__(self, eventloop: asyncio.AbstractEventLoop, steady: Callable[[], float] = boottime) -> None:
        super().__init__(eventloop)
        self._steady = steady
        self._steady_offset = self.seconds() - steady()
        self._steps = StepDetector(self.seconds, steady)
        self._look_handle: asyncio.TimerHandle | None = None
        self.callWhenRunning(self._look)
        self.addSystemEventTrigger("after", "shutdown", self._stop_looking)

    def steady_seconds(self) -> float:
        """Seconds on the steady clock, counted from the wall clock's time when the reactor
        was made: for durations, never stepped (see :func:`steady_seconds`)."""
        return self._steady() + self._steady_offset

    def runUntilCurrent(self) -> None:
        """Move the timers by a step of the wall clock first, then run those due."""
        self._follow_steps()
        super().runUntilCurrent()

    def _follow_steps(self) -> None:
        step = self._steps.step()
        if step:
            shift_timers(self, step)
            self.log.warn("the wall clock stepped {direction} by {step:.3f} s; timers keep their delays",
                          direction="forward" if step > 0 else "back", step=abs(step))

    def _look(self) -> None:
        # On asyncio's own (monotonic) timer: a step back does not delay it.
        self._follow_steps()
        self._look_handle = self._asyncioEventloop.call_later(LOOK_INTERVAL, self._look)

    def _stop_looking(self) -> None:
        if self._look_handle is not None:
            self._look_handle.cancel()
            self._look_handle = None
