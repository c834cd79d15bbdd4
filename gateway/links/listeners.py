"""Telling what a link was handed from outside (its status listener, its extensions): a bug
in one is logged, and the link goes on."""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from gateway.logthrottle import LogThrottle

#: Seconds between two lines about one outside callback that keeps failing, at least.
LISTENER_FAILURE_LOG_INTERVAL = 600.0


class ListenerCalls:
    """Calls what a link was handed from outside. One that raises (a bug in it) is logged with
    its traceback the first time (``link LINK: telling WHAT failed``), then at most once per
    :data:`LISTENER_FAILURE_LOG_INTERVAL` with the count since the last line, per callback: a
    listener that fails at each status change writes no traceback per change. The caller goes
    on either way.

    A link tells its listeners where a connection or a loop handles a change or a failure
    (a CONNACK, a lost connection, a failed request): an error raised there would end the
    loop for good, close the connection it just accepted, or leave the link half in its new
    state.

    :param log: the link's logger.
    :param link: the link's name, which the lines begin with.
    :param now: the clock the lines are counted on (a steady one: ``clockstep.steady_seconds``).
    """

    def __init__(self, log: Logger, link: str, now: Callable[[], float]) -> None:
        self.log = log
        self.link = link
        self._now = now
        #: per callback (what is told, and the callback's code: each instance of one class
        #: has the same bug), when its failures are logged next
        self._lines: dict[tuple[str, str], LogThrottle] = {}

    def tell(self, what: str, listener: Callable[..., object], *args: Any) -> None:
        """Call ``listener(*args)``; log it if it raises, and go on.

        :param what: what is told, for the line (``its status``).
        :param listener: the callable handed to the link.
        :param args: its arguments.
        """
        try:
            listener(*args)
        except Exception as exc:
            key = (what, getattr(listener, "__qualname__", type(listener).__qualname__))
            lines = self._lines.get(key)
            if lines is None:
                self._lines[key] = lines = LogThrottle(LISTENER_FAILURE_LOG_INTERVAL, self._now)
                lines.note()
                self.log.failure("link {link}: telling {what} failed", link=self.link, what=what)
                return
            count = lines.note()
            if count is not None:
                self.log.warn("link {link}: telling {what} failed again: {error} ({count} time{s} since the last"
                              " such line; logged at most once every {interval:g} minutes)", link=self.link,
                              what=what, error=repr(exc), count=count, s="" if count == 1 else "s",
                              interval=LISTENER_FAILURE_LOG_INTERVAL / 60)
