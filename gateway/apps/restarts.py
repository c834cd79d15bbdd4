"""The restart schedule hosted programs and containers share (supervisord's semantics)."""

from __future__ import annotations

from typing import Any, Callable

from gateway.logthrottle import LogThrottle

#: Seconds between two log lines about a program or container that keeps ending on its own (a
#: crash loop: it ran for less than ``backoff_max`` each time), at least.
CRASH_LOOP_LOG_INTERVAL = 600.0


class RestartSchedule:
    """Counts failed starts and quick exits, gives the delays (doubling from ``initial`` to
    ``maximum``), and holds the one pending timer (a restart, a start's grace period, a stop's
    kill deadline).

    :param clock: an IReactorTime.
    :param initial: the first restart delay.
    :param maximum: the delay's cap; an exit after less uptime than this counts as quick.
    """

    def __init__(self, clock: Any, initial: float, maximum: float) -> None:
        self.clock = clock
        self.initial = initial
        self.maximum = maximum
        #: automatic restarts scheduled so far.
        self.restarts = 0
        #: starts that failed in a row (reset once a start succeeds).
        self.failures = 0
        #: exits in a row that came less than ``maximum`` after their start.
        self.quick_exits = 0
        self._timer: Any = None  # an IDelayedCall

    def reset(self) -> None:
        """Forget past failures (an operator's start)."""
        self.failures = 0
        self.quick_exits = 0

    def delay(self, attempt: int) -> float:
        """The delay before restart number ``attempt`` (1, 2, ...)."""
        # (the exponent stops where a float still holds the power: a crash loop counts on for days)
        return min(self.initial * 2.0 ** min(attempt - 1, 1023), self.maximum)

    def start_failed(self) -> float:
        """Count a failed start; the delay before the next try."""
        self.failures += 1
        return self.delay(self.failures)

    def started(self) -> None:
        """A start succeeded: failed starts no longer count."""
        self.failures = 0

    def exited(self, uptime: float) -> float:
        """Count an exit after ``uptime`` seconds; the delay before the restart (0 when it ran
        long enough)."""
        self.quick_exits = self.quick_exits + 1 if uptime < self.maximum else 0
        return self.delay(self.quick_exits) if self.quick_exits else 0.0

    def later(self, delay: float, call: Callable[[], None]) -> None:
        """Run ``call`` after ``delay`` seconds (the one pending timer)."""
        self._timer = self.clock.callLater(delay, call)

    def restart_later(self, delay: float, call: Callable[[], None]) -> None:
        """Count a restart and run ``call`` after ``delay`` seconds."""
        self.restarts += 1
        self.later(delay, call)

    def fired(self) -> None:
        """The pending timer ran (call first in each timer's callable)."""
        self._timer = None

    def cancel(self) -> None:
        """Cancel the pending timer, if any."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class CrashLoopLog:
    """Which of a program's (or container's) ends on its own are logged: each one after a run of
    the schedule's ``maximum`` or more, and in a crash loop (shorter runs, restarted for ever)
    the first, then at most one every :data:`CRASH_LOOP_LOG_INTERVAL` seconds, saying how many
    ends it stands for.

    :param schedule: its restart schedule (its ``maximum`` tells a crash loop).
    :param now: a steady clock (``clockstep.steady_seconds``).
    """

    def __init__(self, schedule: RestartSchedule, now: Callable[[], float]) -> None:
        self._schedule = schedule
        self._lines = LogThrottle(CRASH_LOOP_LOG_INTERVAL, now)

    def note(self, uptime: float) -> str | None:
        """Count an end on its own after ``uptime`` seconds.

        :return: None when its line is held back, else what ends the line: ``""`` for an end
            that stands for itself alone, or the crash loop's count in parentheses.
        """
        if uptime >= self._schedule.maximum:
            self._lines.reset()  # (no crash loop: each such end is news)
        count = self._lines.note()
        if count is None:
            return None
        if count == 1:
            return ""
        return (f" ({count} times since the last such line: a crash loop, logged at most once every"
                f" {CRASH_LOOP_LOG_INTERVAL / 60:g} minutes while it goes on)")

    def reset(self) -> None:
        """Log the next end at once (an operator's start)."""
        self._lines.reset()
