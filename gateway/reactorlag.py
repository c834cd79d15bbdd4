"""How late the reactor runs its timers: the worst lateness of the last minute or two, shown
in the gateway's status and ``/metrics``.

A timer runs late when the reactor is busy: a turn of it (reading every socket, handling
what came) runs to its end before the timers due meanwhile, so on a slow CPU under a flood
of PUBLISHes every answer (a PINGRESP, the admin API's, a PUBACK) waits as long. The
gateway's reactor (:class:`~gateway.clockstep.SteadyTimersReactor`) notes, each time it runs
its due timers, how long after the earliest one's time that is: it measures its timers as
they run, with no timer of its own, so an idle gateway wakes no more often for it.
"""

from __future__ import annotations

import math

#: Seconds of one window of :class:`LagWindow`: the worst of the window running and of the
#: one before it is shown, so a lateness stays visible for one to two windows.
LAG_WINDOW = 60.0


class LagWindow:
    """The worst lateness noted in the last one to two windows.

    :param window: seconds of one window.
    """

    def __init__(self, window: float = LAG_WINDOW) -> None:
        self._window = window
        self._start = -math.inf  # when the window running began (steady seconds)
        self._worst = 0.0  # the worst lateness of the window running
        self._before = 0.0  # the worst of the window before it

    def note(self, now: float, lateness: float) -> None:
        """A timer ran ``lateness`` seconds late at ``now`` (steady seconds)."""
        self._roll(now)
        if lateness > self._worst:
            self._worst = lateness

    def worst(self, now: float) -> float:
        """The worst lateness noted in the last one to two windows before ``now`` (steady
        seconds); 0.0 when none was."""
        self._roll(now)
        return max(self._worst, self._before)

    def _roll(self, now: float) -> None:
        if now >= self._start + self._window:
            # (the window that ended becomes the one before, unless no note came in a whole window since)
            self._before = self._worst if now < self._start + 2 * self._window else 0.0
            self._start, self._worst = now, 0.0


def reactor_lag(clock: object) -> float:
    """Seconds the reactor ``clock`` ran a timer late at worst in the last minute or two,
    when it measures that (:class:`~gateway.clockstep.SteadyTimersReactor`); else 0.0
    (``task.Clock``, Twisted's own reactors)."""
    worst = getattr(clock, "timers_late", None)
    return float(worst()) if worst is not None else 0.0
