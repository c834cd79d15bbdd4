"""Sees a link's session being taken over: the cloud closing connection after connection soon
after accepting it, as a broker does when another client connects with the same client id.

MQTT 3.1.1 (§3.1.4-2) has the server close an existing connection when a client connects with
its client id. Two gateways given the same id (cloned boxes, one ``device_id`` typed into both)
then take the session from each other at every reconnect, for ever: each side only sees its
connection closed a few seconds after its CONNACK, and reconnects. Nothing in the protocol
says why, so the link infers it from the pattern and says so, with the remedy, in a warning
at most once per interval.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from gateway.logthrottle import LogThrottle

#: Connections in a row the cloud closed soon after accepting them before the link warns.
TAKEOVER_THRESHOLD = 3
#: Seconds between two such warnings, at least.
TAKEOVER_LOG_INTERVAL = 600.0


class TakeoverWatch:
    """Counts a link's accepted connections that the cloud closed within ``stable_after``
    seconds of their CONNACK, in a row, and warns once there are :data:`TAKEOVER_THRESHOLD`.

    A connection that lasts, a failed attempt, or one the gateway or the network ended (a
    timeout, a reset) breaks the row: only a server that keeps accepting the link and then
    closing it cleanly looks like a takeover. The warning is repeated at most once per
    :data:`TAKEOVER_LOG_INTERVAL` while the takeovers go on (with the count so far), and at
    once for takeovers that start again after a connection lasted.

    :param link: the link's name, for the log.
    :param client_id: the client id it connects with.
    :param stable_after: a connection closed sooner than this after its CONNACK counts (s).
    :param now: a steady clock (``clockstep.steady_seconds`` of the reactor).
    """

    log = Logger()

    def __init__(self, link: str, client_id: str, stable_after: float, now: Callable[[], float]) -> None:
        self.link = link
        self.client_id = client_id
        self.stable_after = stable_after
        self._now = now
        self._accepted_at: float | None = None
        #: accepted connections closed early by the server, in a row.
        self.in_row = 0
        self._lines = LogThrottle(TAKEOVER_LOG_INTERVAL, now)

    def accepted(self) -> None:
        """A CONNACK accepted the session now."""
        self._accepted_at = self._now()

    def failed(self) -> None:
        """An attempt failed (no connection, a refusal, no CONNACK): not a takeover."""
        self.in_row = 0

    def ended(self, closed_by_server: bool) -> None:
        """An accepted connection ended; ``closed_by_server``: the server closed it cleanly
        (not the gateway, not a reset or a timeout)."""
        accepted_at, self._accepted_at = self._accepted_at, None
        if accepted_at is None:
            return
        if self._now() - accepted_at >= self.stable_after:
            self.in_row = 0
            self._lines.reset()  # (a takeover after this one is a new story: told at once)
            return
        if not closed_by_server:
            self.in_row = 0
            return
        self.in_row += 1
        if self.in_row < TAKEOVER_THRESHOLD:
            return
        if self._lines.note() is not None:
            self.log.warn(
                "link {link}: the cloud closed {in_row} connections in a row within {stable:g} s of accepting "
                "them: another client is probably connecting with the same "
                "client id {client_id!r}, each taking the session over from the other (two gateways with the "
                "same gateway.device_id?): give each gateway its own device_id, or the link its own client_id "
                "(links.md); if not, the cloud broker's log says why it closes them",
                link=self.link, in_row=self.in_row, stable=self.stable_after,
                client_id=self.client_id)
