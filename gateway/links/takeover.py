"""Sees a link's session being taken over: the cloud closing connection after connection soon
after accepting it, as a broker does when another client connects with the same client id.

MQTT 3.1.1 (§3.1.4-2) has the server close an existing connection when a client connects with
its client id. Two gateways given the same id (cloned boxes, one ``device_id`` typed into both)
then take the session from each other at every reconnect, for ever: each side only sees its
connection closed a few seconds after its CONNACK, and reconnects. Nothing in the protocol
says why, so the link infers it from the pattern and says so, with the remedy, in a warning
at most once per interval, and in its status (:attr:`TakeoverWatch.taken_over`) until a
connection lasts; an info line says when it ended.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.degraded import Degraded, Failing
from gateway.logthrottle import LogThrottle

#: Connections in a row the cloud closed soon after accepting them before the link warns.
TAKEOVER_THRESHOLD = 3
#: Seconds between two such warnings, at least.
TAKEOVER_LOG_INTERVAL = 600.0
#: The :class:`~gateway.degraded.Degraded` reason of a link whose session is taken over.
TAKEN_OVER = "session-taken-over"


class TakeoverWatch:
    """Counts a link's accepted connections that the cloud closed within ``stable_after``
    seconds of their CONNACK, in a row, and warns once there are :data:`TAKEOVER_THRESHOLD`.

    A connection that lasts, a failed attempt, or one the gateway or the network ended (a
    timeout, a reset) breaks the row: only a server that keeps accepting the link and then
    closing it cleanly looks like a takeover. The warning is repeated at most once per
    :data:`TAKEOVER_LOG_INTERVAL` while the takeovers go on (with the count so far), and at
    once for takeovers that start again after a connection lasted. From the warning on, the
    link's status says so too (:attr:`taken_over`), until the row is broken or the connection
    of the moment has lasted ``stable_after``; then one info line says that it ended, and why.

    :param link: the link's name, for the log.
    :param client_id: the client id it connects with.
    :param stable_after: a connection closed sooner than this after its CONNACK counts (s).
    :param now: a steady clock (``clockstep.steady_seconds`` of the reactor).
    :param clock: the reactor: its wall clock says when the takeovers began, its timer when
        a connection has lasted ``stable_after``.
    :param shares_with: the other links of this gateway that connect to the same broker with the
        same client id (:mod:`gateway.links.sharedsessions`): the warning names them as the
        likely cause, not another gateway.
    """

    log = Logger()

    def __init__(self, link: str, client_id: str, stable_after: float, now: Callable[[], float],
                 clock: IReactorTime, shares_with: tuple[str, ...] = ()) -> None:
        self.link = link
        self.shares_with = shares_with
        self.client_id = client_id
        self.stable_after = stable_after
        self._now = now
        self._clock = clock
        self._accepted_at: float | None = None
        self._lasting: Any = None  # while taken over and connected: an IDelayedCall at stable_after
        #: accepted connections closed early by the server, in a row.
        self.in_row = 0
        self._row_began = 0.0  # (wall clock) when the row's first close happened
        self._failing = Failing()
        self._lines = LogThrottle(TAKEOVER_LOG_INTERVAL, now)

    @property
    def taken_over(self) -> Degraded | None:
        """While the link's session is taken over (:data:`TAKEOVER_THRESHOLD` early closes in a
        row, or more, and the connection of the moment, if any, has not lasted ``stable_after``):
        reason :data:`TAKEN_OVER`, what to do, since the row's first close and its closes; else
        ``None``."""
        accepted_at = self._accepted_at
        if accepted_at is not None and self._now() - accepted_at >= self.stable_after:
            return None  # (this connection lasts: whatever took the session over has stopped)
        return self._failing.now

    def _row_broken(self, why: str) -> None:
        """The row of early closes is over (``why``): said in one info line when it was told."""
        self._forget_lasting()
        taken = self._failing.now
        self.in_row = 0
        self._failing.recovered()
        if taken is not None:
            self.log.info("link {link}: its session is no longer taken over: {why} (after {closes} connections in a"
                          " row the cloud closed within {stable:g} s of accepting them)", link=self.link, why=why,
                          closes=taken.failures, stable=self.stable_after)

    def _forget_lasting(self) -> None:
        if self._lasting is not None and self._lasting.active():
            self._lasting.cancel()
        self._lasting = None

    def accepted(self) -> None:
        """A CONNACK accepted the session now."""
        self._accepted_at = self._now()
        if self._failing.now is not None:  # (its status clears once this lasts: say so then)
            self._lasting = self._clock.callLater(self.stable_after, self._lasted)

    def _lasted(self) -> None:
        self._lasting = None
        self._row_broken(f"a connection has lasted {self.stable_after:g} s")
        self._lines.reset()  # (a takeover after this one is a new story: told at once)

    def failed(self) -> None:
        """An attempt failed (no connection, a refusal, no CONNACK): not a takeover."""
        self._row_broken("a connection attempt failed")

    def ended(self, closed_by_server: bool) -> None:
        """An accepted connection ended; ``closed_by_server``: the server closed it cleanly
        (not the gateway, not a reset or a timeout)."""
        accepted_at, self._accepted_at = self._accepted_at, None
        if accepted_at is None:
            return
        if self._now() - accepted_at >= self.stable_after:
            self._row_broken(f"a connection lasted {self.stable_after:g} s")
            self._lines.reset()  # (a takeover after this one is a new story: told at once)
            return
        if not closed_by_server:
            self._row_broken("a connection ended otherwise than by the cloud's clean close (a reset, a timeout,"
                             " the gateway's own close)")
            return
        self._forget_lasting()  # (closed early again: the takeovers go on)
        if not self.in_row:
            self._row_began = self._clock.seconds()
        self.in_row += 1
        if self.in_row < TAKEOVER_THRESHOLD:
            return
        self._failing.failed(
            TAKEN_OVER, f"the cloud closes each connection within {self.stable_after:g} s of accepting it: another "
            f"client is probably connecting with the same client id {self.client_id!r} ({self._suspect()}): "
            f"{self._remedy()}", self._row_began, self.in_row if self._failing.now is None else 1)
        if self._lines.note() is not None:
            self.log.warn(
                "link {link}: the cloud closed {in_row} connections in a row within {stable:g} s of accepting "
                "them: another client is probably connecting with the same "
                "client id {client_id!r}, each taking the session over from the other ({suspect}): {remedy} "
                "(links.md); if not, the cloud broker's log says why it closes them",
                link=self.link, in_row=self.in_row, stable=self.stable_after,
                client_id=self.client_id, suspect=self._suspect(), remedy=self._remedy())

    def _suspect(self) -> str:
        """Who probably takes the session over: this gateway's links that share it, or another gateway."""
        if not self.shares_with:
            return "two gateways with the same gateway.device_id?"
        names = ", ".join(self.shares_with)
        return (f"this gateway's link {names} connects to the same broker with it" if len(self.shares_with) == 1
                else f"this gateway's links {names} connect to the same broker with it")

    def _remedy(self) -> str:
        """What to do about it."""
        if self.shares_with:
            return "give each link its own client_id"
        return "give each gateway its own device_id, or the link its own client_id"
