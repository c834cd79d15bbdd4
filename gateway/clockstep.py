"""The gateway's reactor: timers that keep their delays when the wall clock steps.

Twisted's reactors schedule ``callLater`` (and so every ``LoopingCall``) on the wall clock,
``reactor.seconds()``, which is ``time.time()``. A gateway without a real-time clock boots
at 1970 (or at a time it saved) and NTP then steps its clock by years: stepped forward,
every pending timer would fire at once, long before its delay; stepped back, every pending
timer would wait the step out too, freezing keep-alives, reconnects, confirm windows and
report periods for as long. :class:`SteadyTimersReactor` is the asyncio reactor whose timers
keep the delays they were given: it compares the wall clock with a steady one (Linux's
``CLOCK_BOOTTIME``, which a suspend does not stop either) at every reading of the time and
moves every pending timer by the step it finds, before anything is scheduled or run.
``reactor.seconds()`` stays the wall clock, so timestamps are the time of day; durations
and deadlines kept in memory use :func:`steady_seconds`.

It also measures how late it runs its timers (:mod:`gateway.reactorlag`): the sign of a
CPU too slow for the load. (Its stop signals, as those of any reactor the gateway runs on, are
:mod:`gateway.stopsignals`'.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.reactorlag import LagWindow

#: Seconds the wall clock must move against the steady one to count as a step (only steps
#: move them apart: NTP's slewing moves both; a smaller step is not worth moving timers for).
STEP_TOLERANCE = 1.0

#: Seconds since the boot, suspends included (never steps). A partial, not a function: the
#: reactor reads it at every reading of the time.
boottime: Callable[[], float] = partial(time.clock_gettime, time.CLOCK_BOOTTIME)


def boot_id(proc: Path = Path("/proc")) -> str:
    """This boot's random id (``/proc/sys/kernel/random/boot_id``); "" where the kernel has none.

    :param proc: where procfs is mounted.
    """
    try:
        return (proc / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class BootClock:
    """The clock of one boot of the machine, for a deadline kept on disk that no step of the
    wall clock may move, before a restart or after it: its readings (:data:`boottime` by
    default) count from that boot, so they compare with those of a later process only while
    the machine has not rebooted, as its id tells.

    :ivar boot: the boot's id (:func:`boot_id`; "": unknown, its readings compare with none).
    :ivar seconds: reads the clock.
    """

    boot: str
    seconds: Callable[[], float] = boottime


def in_boot(boot: BootClock, saved: str) -> bool:
    """Whether a reading of a boot's clock saved with the boot id ``saved`` was taken in
    ``boot``, a known one (``""``: not known): then it compares with ``boot``'s readings."""
    return boot.boot != "" and saved == boot.boot


#: The wall clock as it read in a boot: the boot's id and the wall clock's offset from that
#: boot's clock (wall seconds less boot seconds), kept on disk beside times read off the wall
#: clock (:func:`clock_of`, :func:`same_clock`).
ClockOf = tuple[str, float]


def clock_of(boot: BootClock, wall: float) -> ClockOf:
    """The wall clock that reads ``wall`` now, in ``boot``."""
    return boot.boot, wall - boot.seconds()


def same_clock(saved: ClockOf | None, now: ClockOf) -> bool:
    """Whether times read on the wall clock ``saved`` (:func:`clock_of` then; None: not known)
    are on the wall clock ``now``: the same boot (a known one), and the wall clock not stepped
    against the boot's since by :data:`STEP_TOLERANCE` or more (a step while the gateway was
    stopped, which no observer of :func:`watch_steps` heard)."""
    return saved is not None and saved[0] == now[0] != "" and abs(saved[1] - now[1]) < STEP_TOLERANCE


#: A wall-clock time before this (2024-01-01 UTC, before this code was written; systemd takes its
#: build time so) was read off a clock that was not set yet: a gateway without a real-time
#: clock boots at 1970, and NTP steps it later.
CLOCK_SET_SINCE = 1704067200.0


def unset_clock(now: float) -> str | None:
    """The year of the wall clock's time ``now`` (``1970``) when it is before
    :data:`CLOCK_SET_SINCE` (the clock was not set yet), else None: a certificate is not valid yet
    by such a clock. (The year, not the time: a cause that holds is the same sentence at every
    attempt, and so logged once.)"""
    if now >= CLOCK_SET_SINCE:
        return None
    return time.strftime("%Y", time.gmtime(max(now, 0.0)))


#: Told each step of the wall clock, in seconds (negative: back), before any later reading
#: of the clock returns: the time read before it was off by that much.
StepObserver = Callable[[float], None]


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


def watch_steps(clock: object, observer: StepObserver) -> Callable[[], None]:
    """Have ``observer`` told each step of ``clock``'s wall clock, when the clock tells its
    steps (:class:`SteadyTimersReactor`, a test's stepping clock; ``task.Clock`` does not).

    :return: what stops the telling (nothing to stop when the clock does not tell).
    """
    on_step: Callable[[StepObserver], Callable[[], None]] | None = getattr(clock, "on_step", None)
    return on_step(observer) if on_step is not None else _nothing


def _nothing() -> None:
    """Nothing to undo."""


class StepObservers:
    """The observers of a clock's steps (:func:`watch_steps`), told in the order they came."""

    log = Logger()

    def __init__(self) -> None:
        self._observers: list[StepObserver] = []

    def add(self, observer: StepObserver) -> Callable[[], None]:
        """Tell ``observer`` each step from now; the result stops it."""
        self._observers.append(observer)
        return partial(self._remove, observer)

    def _remove(self, observer: StepObserver) -> None:
        if observer in self._observers:
            self._observers.remove(observer)

    def tell(self, step: float) -> None:
        """Tell every observer ``step``; one that raises is logged, the others still told."""
        for observer in tuple(self._observers):
            try:
                observer(step)
            except Exception:
                self.log.failure("an observer of the wall clock's steps failed")


def shift_timers(clock: IReactorTime, step: float) -> None:
    """Move every pending timer of ``clock`` by ``step`` seconds of wall time, so that each
    is due as long after now as it was before the wall clock stepped by ``step``."""
    now = clock.seconds()
    for call in clock.getDelayedCalls():
        call.reset(call.getTime() + step - now)


class SteadyTimersReactor(AsyncioSelectorReactor):
    """Twisted's asyncio reactor, its timers kept on their delays across wall-clock steps.

    Every reading of the clock (``seconds()``: every ``callLater``, ``DelayedCall.reset``,
    each run of the due timers) first compares the wall clock with the steady one and, when
    they moved apart by :data:`STEP_TOLERANCE` or more since the last step, moves the pending
    timers by that step: no timer is ever set or run against a step not yet seen. A step that
    comes while the due timers run is followed once they have run, not in the middle (Twisted
    compares them all with the time read as the run began): a reading of the clock in their
    callbacks gives the time as if the step came a moment later. No wake-up of its own is
    needed: the loop sleeps on asyncio's monotonic clock, and the reactor reads the time
    whenever it wakes. (The two clocks move apart only by steps: NTP's slewing and
    frequency corrections move both.)

    Each time it runs its due timers it notes how long after the earliest one's time that is
    (:meth:`timers_late`): no timer of its own measures it.

    :param eventloop: the asyncio loop it runs on.
    :param steady: a clock that never steps.
    :param wall: the wall clock.
    """

    log = Logger()

    def __init__(self, eventloop: asyncio.AbstractEventLoop, steady: Callable[[], float] = boottime,
                 wall: Callable[[], float] = time.time) -> None:
        self._wall, self._steady = wall, steady
        self._steady_offset = self._offset = wall() - steady()  # (the offset now: since the last step)
        self._step_observers = StepObservers()
        self._running_timers = False  # (in runUntilCurrent: a step is followed once it ends)
        self._timers_due: float | None = None  # when (steady seconds) the earliest timer is due, as last asked
        self._lateness = LagWindow()
        super().__init__(eventloop)

    def seconds(self) -> float:
        """The wall clock, once the pending timers have followed a step of it; while the due
        timers run, the time as if a step not followed before the run had not come yet."""
        wall = self._wall()
        steady = self._steady()
        step = wall - steady - self._offset
        if -STEP_TOLERANCE < step < STEP_TOLERANCE:
            return wall
        if self._running_timers:
            return steady + self._offset
        self._offset += step
        shift_timers(self, step)  # (its readings of the clock find no step: this one is followed)
        self._step_observers.tell(step)
        self.log.warn("the wall clock stepped {direction} by {step:.3f} s; timers keep their delays",
                      direction="forward" if step > 0 else "back", step=abs(step))
        return wall

    def on_step(self, observer: StepObserver) -> Callable[[], None]:
        """Tell ``observer`` each step of the wall clock from now, before the reading of the
        clock that found it returns (so nothing reads the new time first); the result stops
        it. See :func:`watch_steps`."""
        return self._step_observers.add(observer)

    def timeout(self) -> float | None:
        """Seconds the reactor may sleep; a step is followed before the first timer's time is
        read (the base class reads it before the clock).

        The loop's wake-up for the timers is set from this, at every ``callLater`` and after
        each run of them, and only ever brought forward until it comes: so is the time the
        lateness of the next run is counted from."""
        self.seconds()
        delay = super().timeout()
        if delay is not None:
            due = self.steady_seconds() + delay
            if self._timers_due is None or due < self._timers_due:
                self._timers_due = due
        return delay

    def runUntilCurrent(self) -> None:
        """Run the timers due, noting how late this is after the time they woke the loop for.

        A step is followed before they run and after, not while: Twisted compares each timer
        with the time it read as the run began, so timers moved back by a step a callback
        found would all be due by it (and a looping call set again after the new time, due
        again at once, for as long as the step)."""
        due, self._timers_due = self._timers_due, None
        if due is not None:
            now = self.steady_seconds()
            self._lateness.note(now, max(now - due, 0.0))
        self.seconds()
        self._running_timers = True
        try:
            super().runUntilCurrent()
        finally:
            self._running_timers = False
        self.seconds()

    def timers_late(self) -> float:
        """Seconds it ran a timer late at worst in the last minute or two
        (:class:`~gateway.reactorlag.LagWindow`): how long a busy turn held the timers up."""
        return self._lateness.worst(self.steady_seconds())

    def steady_seconds(self) -> float:
        """Seconds on the steady clock, counted from the wall clock's time when the reactor
        was made: for durations, never stepped (see :func:`steady_seconds`)."""
        return self._steady() + self._steady_offset
