"""Journal stream depths over the last hour, sampled in memory for the status page's sparklines."""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

#: Streams remembered at most (a new stream beyond this is not sampled).
MAX_STREAMS = 64


def pick(item: Any, *names: str, default: Any = None) -> Any:
    """The first of ``names`` present in the mapping ``item`` (snapshots' field names)."""
    if isinstance(item, dict):
        for name in names:
            if name in item and item[name] is not None:
                return item[name]
    return default


def stream_depth(stream: Any) -> int:
    """Records of a journal stream not yet acknowledged by its slowest cursor (all of its
    records when it has no cursor)."""
    cursors = pick(stream, "cursors", default=[])
    if cursors:
        return max(int(pick(c, "unacked", default=0)) for c in cursors)
    return int(pick(stream, "records", default=0))


class DepthHistory:
    """A bounded ring of ``(time, depth)`` samples per journal stream.

    :param window: seconds of history kept (an hour).
    :param interval: seconds between samples; ``window / interval`` samples are kept.
    :param max_streams: streams remembered at most.
    """

    def __init__(self, window: float = 3600.0, interval: float = 30.0,
                 max_streams: int = MAX_STREAMS) -> None:
        self.window = window
        self.interval = interval
        self._size = max(2, int(window / interval) + 1)
        self._max_streams = max_streams
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def resized(self, interval: float) -> "DepthHistory":
        """The same samples in a history for one every ``interval`` seconds over the same
        window (a configuration change of ``admin.history_interval`` goes on with them), so
        that the window is still covered at the new pace (the newest are kept when fewer fit).
        """
        history = DepthHistory(self.window, interval, self._max_streams)
        history._samples = {name: deque(ring, maxlen=history._size) for name, ring in self._samples.items()}
        return history

    def sample(self, now: float, depths: Iterable[tuple[str, int]]) -> None:
        """Record each stream's depth at ``now``; forget streams that are gone.

        :param now: the clock's time.
        :param depths: ``(stream name, records waiting)`` pairs.
        """
        seen = set()
        for name, depth in depths:
            seen.add(name)
            ring = self._samples.get(name)
            if ring is None:
                if len(self._samples) >= self._max_streams:
                    continue
                ring = self._samples[name] = deque(maxlen=self._size)
            ring.append((now, depth))
        for name in list(self._samples):
            if name not in seen:
                del self._samples[name]

    def series(self, name: str, now: float) -> list[tuple[float, int]]:
        """The samples of stream ``name`` within the window before ``now``, oldest first."""
        return [(t, d) for t, d in self._samples.get(name, ()) if now - t <= self.window]

    def streams(self) -> list[str]:
        """The names of the streams sampled."""
        return sorted(self._samples)
