"""HTTP connections a listening service closes when it stops, after what is in flight.

Twisted's ``stopListening`` stops accepting but leaves open connections be: a keep-alive
client (a GWE app writing every second, a Prometheus scraper, a status page) went on being
served by the stopped service's site, whose resources point at stopped services, after a
configuration change had started new ones. A factory with :class:`ClosesChannels` keeps
its open :class:`ClosingChannel` connections and :meth:`~ClosesChannels.close_connections`
closes them: an idle one at once, a busy one once the response in progress has been sent
(with ``Connection: close``), so the client's next request opens a connection to whoever
listens now.

Imported with ``twisted.web.http``, by the modules that build a site (not by an idle gateway).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel


class ClosingChannel(HTTPChannel):
    """An HTTP/1.1 connection that its factory can close once its responses are sent.

    (A plain ``HTTPChannel``, not the HTTP/2-negotiating one a ``Site`` makes by default: no
    listener of the gateway offers HTTP/2 through ALPN.)

    :param open_channels: the factory's open connections; this one is in it while connected.
    """

    def __init__(self, open_channels: set[ClosingChannel]) -> None:
        super().__init__()
        self._open = open_channels
        self.closing = False

    def connectionMade(self) -> None:
        """Count as open."""
        super().connectionMade()
        self._open.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """No longer open."""
        self._open.discard(self)
        super().connectionLost(reason)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """Once closing, a request that arrives is the connection's last (``Connection: close``)."""
        if self.closing:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def close_when_done(self) -> None:
        """Close now when no request is in progress, else once its response is sent (a
        pipelined request after it is not answered: the client sends it again)."""
        self.closing = True
        if not self.requests:
            self.loseConnection()
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])


class ClosesChannels:
    """Mixin for an ``HTTPFactory`` (a ``Site``) whose connections can be closed when its
    service stops; put it first among the bases."""

    #: builds the connections: :class:`ClosingChannel` (typed loosely: a ``Site`` declares the
    #: HTTP/2-negotiating wrapper it makes by default)
    protocol: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_channels: set[ClosingChannel] = set()
        self.protocol = partial(ClosingChannel, self.open_channels)

    def close_connections(self) -> None:
        """Close every open connection: at once when idle, else after its response in progress."""
        for channel in list(self.open_channels):
            channel.close_when_done()
