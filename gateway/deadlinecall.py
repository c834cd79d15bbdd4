"""A deadline judged once the reactor has read its sockets: a timer whose call runs in the
reactor's turn after the one its delay ends in.

The reactor runs the timers due by the end of a turn after that turn's reads, and a turn can
be long (a slow CPU under a flood of PUBLISHes; the process stopped by SIGSTOP, its cgroup
frozen): what a peer sent in time, while it ran, waits unread. "Nothing came by the deadline"
is a fair verdict only in the next turn, once that is read; what it brings cancels the call.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IDelayedCall


class DeadlineCall:
    """Calls ``f(*args)`` in the reactor's turn after ``delay`` seconds have passed, unless
    cancelled before.

    :param clock: an IReactorTime.
    :param delay: seconds until the deadline.
    :param f: the verdict.
    :param args: its arguments.
    """

    def __init__(self, clock: Any, delay: float, f: Callable[..., object], *args: Any) -> None:
        self._clock = clock
        self._call: IDelayedCall = clock.callLater(delay, self._due, f, args)

    def _due(self, f: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._call = self._clock.callLater(0, f, *args)

    def active(self) -> bool:
        """Whether the call is still to come (neither run nor cancelled)."""
        return self._call.active()

    def cancel(self) -> None:
        """Cancel the call still to come (as ``IDelayedCall.cancel``: an error once it is not active)."""
        self._call.cancel()
