"""A rate over the last seconds, from a running total sampled at most once a second."""

from __future__ import annotations

from collections import deque

#: Seconds the rate is taken over.
WINDOW = 10.0


class RateMeter:
    """Events per second over about the last :data:`WINDOW` seconds.

    ``add`` costs a comparison (and an append once a second); ``rate`` looks at at most
    eleven samples.
    """

    def __init__(self, now: float = 0.0) -> None:
        self.total = 0
        self._samples: deque[tuple[float, int]] = deque([(now, 0)], maxlen=int(WINDOW) + 1)
        self._last = float("-inf")  # when the last events were counted

    def add(self, n: int, now: float) -> None:
        """Count ``n`` events at ``now``."""
        self.total += n
        if n:
            self._last = now
        if now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, self.total))

    def rate(self, now: float) -> float:
        """Events per second from the oldest sample within the window (or the newest before it) to
        ``now``; 0 when no event was counted within the window (events counted after the newest
        sample have no sample of their own, so their time is checked here)."""
        if now - self._last > WINDOW:
            return 0.0
        since, base = self._samples[-1]
        for when, total in self._samples:
            if now - when <= WINDOW:
                since, base = when, total
                break
        return (self.total - base) / (now - since) if now > since else 0.0
