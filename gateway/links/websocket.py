"""MQTT over WebSocket for links: autobahn's stream-over-WebSocket wrapper as a client endpoint.

The URL is built anew for every connection (a SigV4 signature holds its date), the
subprotocol is ``mqtt``, and the MQTT protocol above sees an ordinary stream transport.
"""

from __future__ import annotations

from typing import Any, Callable

from autobahn.twisted.websocket import WrappingWebSocketClientFactory, WrappingWebSocketClientProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.logbridge import set_autobahn_level

set_autobahn_level()  # (autobahn is imported here, with a WebSocket link: its lines at the gateway's level)

class _MQTTOverWebSocket(WrappingWebSocketClientProtocol):
    """autobahn's adapter, with what the link's protocol also calls on its transport."""

    transport: ITCPTransport  # TCP or TLS to the server, set before any of these methods runs
    _proto: IProtocol  # the stream protocol inside (set by the factory, as autobahn's does)

    def onOpen(self) -> None:
        """Start the stream protocol with this adapter as its transport.

        ``makeConnection`` rather than autobahn's bare ``connectionMade``: the protocol may
        sit behind a proxy (``ClientService`` wraps it), and only ``makeConnection`` sets
        ``transport`` on the protocol itself.
        """
        self._opened = True
        self._proto.makeConnection(self)
        opened = self.factory.opened
        if not opened.called:
            opened.callback(self._proto)

    def abortConnection(self) -> None:
        """Drop the connection without a closing handshake (a dead peer)."""
        self.transport.abortConnection()

    def getPeerCertificate(self) -> Any:
        """The server certificate of a ``wss`` connection (``None`` over plain TCP)."""
        peer = getattr(self.transport, "getPeerCertificate", None)
        return peer() if peer is not None else None

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        """Tell the stream protocol once, if it was started; else fail the connection attempt."""
        if self.wasOpenHandshakeTimeout:
            failure = Failure(ConnectionError(
                f"the WebSocket opening handshake did not complete within {self.factory.openHandshakeTimeout:g} s"
                " (connect_timeout): is it a WebSocket endpoint, is the server overloaded?"))
        else:
            failure = Failure(ConnectionError(f"WebSocket closed: {code} {reason or ''}".strip()))
        if getattr(self, "_opened", False):
            if not getattr(self, "_told", False):
                self._told = True
                self._proto.connectionLost(failure)
        elif not self.factory.opened.called:
            self.factory.opened.errback(failure)


class _Factory(WrappingWebSocketClientFactory):
    """Builds one adapter; ``opened`` fires with the stream protocol once the WebSocket is open."""

    noisy = False  # (one factory per connection: Twisted's "Starting factory" line at each)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: Deferred[Any] = Deferred()
        # autobahn writes the Host header as f"{host}:{port}" with the URL's host unbracketed:
        # an IPv6 address needs its brackets there (RFC 7230), or nginx answers 400.
        if ":" in self.host:
            self.host = f"[{self.host}]"

    def buildProtocol(self, addr: Any) -> _MQTTOverWebSocket:
        proto = _MQTTOverWebSocket()
        proto.factory = self
        proto._proto = self._factory.buildProtocol(addr)
        return proto


@implementer(IStreamClientEndpoint)
class WebSocketEndpoint:
    """Connects ``inner`` (TCP or TLS), then opens a WebSocket and runs MQTT in it.

    :param inner: the endpoint to the server.
    :param url: returns the ``ws://`` or ``wss://`` URL for a new connection (its host and
        port are the Host header, always written ``host:port``; ``[::1]:port`` for an IPv6
        address).
    :param reactor: the reactor.
    :param handshake_timeout: seconds the server has to answer the opening handshake once the
        connection is up (the link's ``connect_timeout``; autobahn's own default is 5 s).
    """

    def __init__(self, inner: IStreamClientEndpoint, url: Callable[[], str], reactor: Any,
                 handshake_timeout: float = 30.0) -> None:
        self.inner = inner
        self.url = url
        self.reactor = reactor
        self.handshake_timeout = handshake_timeout
        #: Handshakes refused or failed, and the last reason (a link's state shows only
        #: sessions that came up).
        self.failures = 0
        self.last_error = ""

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """Open the WebSocket with a freshly built URL; fires with the stream protocol once the
        WebSocket handshake is done (fails when it is refused)."""
        factory = _Factory(protocolFactory, self.url(), reactor=self.reactor, enableCompression=False,
                           subprotocol="mqtt")
        factory.setProtocolOptions(openHandshakeTimeout=self.handshake_timeout)
        d = self.inner.connect(factory).addCallback(lambda _: factory.opened)

        def failed(failure: Failure) -> Failure:
            # (not logged here: the link logs each failed attempt's cause, throttled)
            self.failures += 1
            self.last_error = failure.getErrorMessage()
            return failure

        return d.addErrback(failed)
