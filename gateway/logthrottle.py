"""At most one log line per interval for a kind of event, with a count of those in between."""

from __future__ import annotations

from typing import Callable


class LogThrottle:
    """Decides when a kind of event (a refused client, a closed connection) is logged: the
    first time, then at most once per ``interval`` seconds of ``now``; each line says how
    many events it stands for, so a flood neither floods the log nor goes unseen.

    No timer logs a burst's tail: the events after its last line are counted in the next
    line, whenever an event comes again (docs/install.md, "Logs"). A timer would need a
    line of its own for each of the throttled kinds and a cancel at each owner's stop.

    :param interval: seconds between two lines, at least.
    :param now: the clock to count them on (a steady one: ``clockstep.steady_seconds``).
    """

    def __init__(self, interval: float, now: Callable[[], float]) -> None:
        self.interval = interval
        self._now = now
        self._unlogged = 0
        self._logged_at = float("-inf")
        #: whether the last line due is the first of its kind: none before it (or since
        #: :meth:`reset`), so that it counts nothing "since the last such line".
        self.first = False

    def note(self, events: int = 1) -> int | None:
        """Count ``events``; when a line is due, start a new interval and return how many
        events it stands for (these and the ones since the last line), else None."""
        self._unlogged += events
        now = self._now()
        if now - self._logged_at < self.interval:
            return None
        return self._taken(now)

    def take(self) -> int:
        """The events counted since the last line, for a line the caller writes now whether due
        or not (the last one, at a stop); the interval starts again from now."""
        return self._taken(self._now())

    def _taken(self, now: float) -> int:
        self.first = self._logged_at == float("-inf")
        count, self._unlogged, self._logged_at = self._unlogged, 0, now
        return count

    def reset(self) -> None:
        """Forget the events counted and the last line: the next event is logged at once (the
        failures it counted are over)."""
        self._unlogged = 0
        self._logged_at = float("-inf")


def more_of_a_batch(count: int, batch: int) -> str:
    """The end of a throttled line that names the first of ``batch`` events noted together:
    how many more it stands for, those since the last such line (before the batch) apart from
    the batch's others, which come after the one it names (``" (and 3 more since the last such
    line, and 1 more after it)"``; ``""`` for none).

    :param count: what :meth:`LogThrottle.note` returned for the line (the batch included).
    :param batch: the events noted with it, the one named included.
    """
    before, after = count - batch, batch - 1
    parts = ([f"{before} more since the last such line"] if before > 0 else []) + \
        ([f"{after} more after it"] if after > 0 else [])
    return f" (and {', and '.join(parts)})" if parts else ""


def since_last_line(count: int, what: str, cadence: str, first: bool = False) -> str:
    """The end of a throttled line (in its parentheses): how many events it stands for since the
    last such line, then ``cadence``, how often the line comes (``"3 refused since the last such
    line; logged at most once every 10 s while they go on"``). A line that stands for its own
    event alone (the first, or the first after a quiet interval: none was held back) says the
    cadence only: it said "1 refused since the last such line" when there was no such line.

    :param count: what :meth:`LogThrottle.note` returned for the line.
    :param what: the events counted, as the count's noun or participle (``refused``,
        ``failed attempts``); ``""`` for the count alone.
    :param cadence: how often the line comes (``logged at most once a minute``).
    :param first: the line is the first of its kind (:attr:`LogThrottle.first`), for a line of
        events noted several at once: it counts them, not as since a line that never was.
    """
    if count <= 1:
        return cadence
    if first:
        return f"{count} {what}; {cadence}" if what else f"{count}; {cadence}"
    return f"{count} {what} since the last such line; {cadence}" if what else \
        f"{count} since the last such line; {cadence}"


#: Seconds between two log lines about the gateway's own messages the broker or the journal
#: refused (a stream full for hours, a stopped broker), at least.
NOT_PUBLISHED_LOG_INTERVAL = 600.0


def not_published_since(count: int) -> str:
    """The end of a throttled "... not published: <why>" line: how many were not published
    since the last such line, and how often the line comes while they go on being refused
    (:func:`since_last_line`).

    :param count: what :meth:`LogThrottle.note` returned for the line.
    """
    return since_last_line(count, "not published", f"logged at most once every {NOT_PUBLISHED_LOG_INTERVAL / 60:g}"
                           " minutes until one is")


#: Seconds between two log lines about what a local or cloud client sent that the gateway
#: refused (a bad request, an unknown command, a CONNECT or SUBSCRIBE refused, a write the
#: journal refused), at least: a client in a loop sends thousands a second, and each was a line.
REFUSED_LOG_INTERVAL = 10.0


def refused_since(count: int) -> str:
    """The end of a throttled "... refused ..." line about what clients sent: how many were
    refused since the last such line (this one included), and how often the line comes
    (:func:`since_last_line`).

    :param count: what :meth:`LogThrottle.note` returned for the line.
    """
    return since_last_line(count, "refused", f"logged at most once every {REFUSED_LOG_INTERVAL:g} s while they go on")
