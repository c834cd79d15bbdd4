"""A rate over the last seconds, from events counted per second."""

from __future__ import annotations

from collections import deque
from math import floor

#: Seconds the rate is taken over.
WINDOW = 10.0


class RateMeter:
    """Events per second over the last :data:`WINDOW` seconds (over the time since the meter
    started, while that is shorter).

    Events are counted per second of the clock, with the times of the first and the last of
    them, so a burst after a pause counts over the whole window, not over its own second.
    ``add`` costs a comparison and an addition; ``rate`` looks at at most eleven seconds.
    """

    def __init__(self, now: float = 0.0) -> None:
        self.total = 0
        self._start = now
        #: [second, events, first event's time, last event's time], oldest first.
        self._seconds: deque[list[float]] = deque(maxlen=int(WINDOW) + 1)
        self._last = float("-inf")  # when the last events were counted

    def add(self, n: int, now: float) -> None:
        """Count ``n`` events at ``now``."""
        if not n:
            return
        self.total += n
        self._last = now
        seconds = self._seconds
        second = floor(now)
        if seconds and seconds[-1][0] == second:
            counted = seconds[-1]
            counted[1] += n
            counted[3] = now
        else:
            seconds.append([second, n, now, now])

    def rate(self, now: float) -> float:
        """Events per second over the last :data:`WINDOW` seconds to ``now``; 0 when no event
        was counted within them. Of the second the window starts in, the events are taken as
        spread evenly between its first and last event."""
        if now - self._last > WINDOW:
            return 0.0
        start = now - WINDOW
        events = 0.0
        for _, n, first, last in self._seconds:
            if first >= start:
                events += n
            elif last > start:
                events += n * (last - start) / (last - first)
        span = min(WINDOW, now - self._start)
        return events / span if span > 0 else 0.0
