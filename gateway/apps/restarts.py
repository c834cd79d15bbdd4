"""The restart schedule hosted programs and containers share (supervisord's semantics)."""

from __future__ import annotations

from typing import Any, Callable


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
        return float(min(self.initial * 2 ** (attempt - 1), self.maximum))

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
