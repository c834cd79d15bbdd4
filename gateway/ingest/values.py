"""The last value of each alias the gateway saw, written locally or received from the cloud.

Reads on the ingest are answered from here; a long-poll waits here for the next change.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.internet.defer import Deferred

from gateway.journal.stream import Clock

#: Characters (aliases and values) the last values hold at most: beyond it, the values
#: changed longest ago go (10,000 values of 64 KiB, the default ``max_body``, held 640 MB).
MAX_CHARACTERS = 16 * 1024 * 1024


class Value(NamedTuple):
    """One alias's last value and when it changed (epoch seconds)."""

    value: str
    modified: float


class LastValues:
    """Last values by alias, with waiters for the next change of one alias.

    :param clock: for long-poll timeouts.
    :param limit: aliases kept at most (the oldest change goes first beyond it; so too beyond
        :data:`MAX_CHARACTERS`, but for the newest value, which is always kept).
    """

    def __init__(self, clock: Clock, limit: int = 10000) -> None:
        self.clock = clock
        self.limit = limit
        self.values: dict[str, Value] = {}
        self._characters = 0  # of the aliases and values held
        self._waiters: dict[str, list[Deferred[Value | None]]] = {}

    def get(self, alias: str) -> Value | None:
        """The last value of ``alias``, if any."""
        return self.values.get(alias)

    def set(self, alias: str, value: str, modified: float | None = None) -> None:
        """Note a new value and wake whoever waits for ``alias``.

        :param modified: when it changed (default: now). An alias's times never go back: a
            value set with an earlier time than the one it replaces (NTP stepped the clock
            back since) gets that one's, so that a long-poll's ``If-Modified-Since`` of the
            old value does not hide the new one until the clock catches up."""
        when = self.clock.seconds() if modified is None else modified
        old = self.values.get(alias)
        current = Value(value, when if old is None else max(when, old.modified))
        self._forget_value(alias)
        self.values[alias] = current
        self._characters += len(alias) + len(value)
        while len(self.values) > 1 and (len(self.values) > self.limit or self._characters > MAX_CHARACTERS):
            self._forget_value(next(iter(self.values)))
        for waiter in self._waiters.pop(alias, []):
            waiter.callback(current)

    def _forget_value(self, alias: str) -> None:
        old = self.values.pop(alias, None)
        if old is not None:
            self._characters -= len(alias) + len(old.value)

    def wait(self, alias: str, since: float | None, timeout: float) -> Deferred[Value | None]:
        """The value of ``alias`` once it is newer than ``since`` (at once if it is already).

        :param since: epoch seconds (``If-Modified-Since``), or ``None``: wait for the next change.
        :param timeout: seconds to wait at most; then it fires with ``None``.
        """
        current = self.values.get(alias)
        d: Deferred[Value | None] = Deferred(lambda d: self._forget(alias, d))
        if current is not None and since is not None and int(current.modified) > int(since):
            d.callback(current)
            return d
        self._waiters.setdefault(alias, []).append(d)
        call = self.clock.callLater(timeout, self._expire, alias, d)

        def cancel_timer(result: Any) -> Any:
            if call.active():
                call.cancel()
            return result

        return d.addBoth(cancel_timer)

    def _expire(self, alias: str, d: Deferred[Value | None]) -> None:
        self._forget(alias, d)
        if not d.called:
            d.callback(None)

    def _forget(self, alias: str, d: Deferred[Value | None]) -> None:
        waiters = self._waiters.get(alias)
        if waiters and d in waiters:
            waiters.remove(d)
            if not waiters:
                del self._waiters[alias]

    @property
    def waiting(self) -> int:
        """Long-polls waiting now."""
        return sum(len(w) for w in self._waiters.values())
