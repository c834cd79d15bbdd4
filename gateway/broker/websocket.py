"""MQTT over WebSocket (``type: ws`` listeners), on autobahn's Twisted WebSocket server.

Each WebSocket connection carries one MQTT connection: binary messages are the MQTT byte
stream (a packet may span messages, a message may hold several packets), fed to the same
:class:`~gateway.broker.connection.MQTTConnection` as a TCP client's, so framing, limits,
the CONNECT deadline, keep-alive and back-pressure are the same. The MQTT connection is
made with the TCP connection: the CONNECT deadline covers the WebSocket handshake too. The WebSocket
subprotocol is ``mqtt`` (or ``mqttv3.1``) when the client asks for one; a client that asks
only for others is refused with HTTP 406. A browser page's handshake whose ``Origin`` the
listener's ``allowed_origins`` does not take is refused with HTTP 403
(:mod:`gateway.broker.wsorigin`), logged as the HTTP listeners log theirs
(:class:`~gateway.browserguard.BrowserGuard`); autobahn never reads ``Origin`` (see
:func:`~gateway.broker.wsorigin.without_origin`). A text message breaks the MQTT-over-WebSocket
rules: the WebSocket is closed (code 1000, reason "MQTT goes in binary messages"; autobahn
lets an application send no other code below 3000). An opening handshake (its HTTP request
head) over :data:`MAX_HANDSHAKE` bytes is refused with HTTP 431: autobahn gathers a head with
no limit, appending each chunk to it and searching the whole for its end. Every refused
handshake is answered with its reason as a one-line plain-text body too, and a request
without ``Upgrade`` (a browser opening the URL) with HTTP 426, not autobahn's status page.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure

from gateway.addresses import address_text
from gateway.broker.connection import MQTTConnection, MQTTListenerFactory
from gateway.broker.wsorigin import AllowedOrigins, without_origin
from gateway.browserguard import BrowserGuard
from gateway.clockstep import steady_seconds
from gateway.httpchannels import SERVER
from gateway.logbridge import set_autobahn_level
from gateway.shown import shown

set_autobahn_level()  # (autobahn is imported here, with a ws listener: its lines at the gateway's level)

#: WebSocket subprotocols MQTT 3.1.1 clients ask for, in our order of preference.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")
#: The close reason a text message gets.
BINARY_ONLY = "MQTT goes in binary messages"
#: The most bytes an opening handshake may take (twisted.web's limit for a request's head).
MAX_HANDSHAKE = 16384


def status_text(text: str) -> str:
    """``text`` as an HTTP status line may carry it: printable ASCII, anything else escaped
    (``\\x0b``, ``\\xe9``), so that what a client sent cannot break the line."""
    return "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}"
                   for ch in text)


class WebSocketStream:
    """The byte-stream transport an :class:`MQTTConnection` writes to, over one WebSocket.

    :param protocol: the WebSocket connection.
    """

    def __init__(self, protocol: "MQTTWebSocketProtocol") -> None:
        self._protocol = protocol

    def _tcp(self) -> Any:
        return self._protocol.transport

    def write(self, data: bytes) -> None:
        """Send ``data`` as one binary message."""
        self._protocol.sendMessage(data, isBinary=True)

    def writeSequence(self, data: list[bytes]) -> None:
        """Send the pieces as one binary message."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close the WebSocket: the close frame goes after what was written; autobahn drops
        the TCP connection when the client's close frame answers it. Reading resumes for that
        when the MQTT connection had stopped it (a protocol violation, a CONNECT being decided,
        a client not reading): what comes before the client's close frame is dropped (the MQTT
        connection has ended). Without it the handshake would wait for the listener's sweep."""
        self._protocol.sendClose()
        self._tcp().resumeProducing()

    def abortConnection(self) -> None:
        """Drop the TCP connection now. (The TCP transport's own abort: autobahn's
        ``dropConnection`` adds a warning of its own, ``dropping connection to peer ... with
        abort=True: None``, to the broker's line that says why; autobahn learns of the end
        from ``connectionLost``, as for a client that goes.)"""
        self._tcp().abortConnection()

    def getPeer(self) -> IAddress:
        """The client's address."""
        return self._tcp().getPeer()

    def getHost(self) -> IAddress:
        """The listener's address."""
        return self._tcp().getHost()

    def getPeerCertificate(self) -> Any:
        """The client's TLS certificate (``wss``), or ``None``."""
        getter = getattr(self._tcp(), "getPeerCertificate", None)
        return getter() if getter is not None else None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The MQTT connection produces what is sent: back-pressure from the TCP send buffer."""
        self._tcp().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """Stop being told about the send buffer."""
        self._tcp().unregisterProducer()

    def pauseProducing(self) -> None:
        """Stop reading from the client."""
        self._tcp().pauseProducing()

    def resumeProducing(self) -> None:
        """Read from the client again."""
        self._tcp().resumeProducing()

    def stopProducing(self) -> None:
        """Drop the connection."""
        self.abortConnection()


class MQTTWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection carrying one MQTT connection (see the module docstring)."""

    factory: "MQTTWebSocketFactory"

    def __init__(self) -> None:
        super().__init__()
        self.mqtt: MQTTConnection | None = None
        self._binary = False  # the message being received is binary (MQTT bytes)
        self._head: bytes | None = b""  # the opening handshake's head so far; None once it ended
        self._refused = False  # answered 431: what comes is dropped

    def dataReceived(self, data: bytes) -> None:
        """Refuse an opening handshake whose head (up to its blank line; not the frames a client
        may send right after it) is over :data:`MAX_HANDSHAKE` bytes, with HTTP 431, before
        autobahn handles it, whether it comes whole or without end; what comes once it is
        refused is dropped. The head goes to autobahn once whole (autobahn waits for its end
        too), without its ``Origin`` headers (:func:`~gateway.broker.wsorigin.without_origin`),
        unless its ``Origin`` is refused (HTTP 403)."""
        if self._refused:
            return
        if self._head is not None and self.state == self.STATE_CONNECTING:
            searched = max(0, len(self._head) - 3)  # (its end may straddle two reads)
            self._head += data
            end = self._head.find(b"\r\n\r\n", searched)
            if (len(self._head) if end < 0 else end + 4) > MAX_HANDSHAKE:
                self._refuse()
                return
            if end < 0:
                return
            whole, self._head = self._head, None
            head, rest = whole[:end + 4], whole[end + 4:]
            why = self.factory.origins.refusal(head)
            if why is not None:
                self._refuse_origin(head, why)
                return
            data = without_origin(head) + rest
        super().dataReceived(data)

    def _refuse(self) -> None:
        """Answer 431 to a head over :data:`MAX_HANDSHAKE` bytes and close, as a violation."""
        # (not autobahn's failHandshake: it logs two lines per connection, and the broker's
        # own line is logged at most once per interval however many clients do this)
        tcp = self.transport
        assert tcp is not None
        self.factory.mqtt.violation(f"closing {address_text(tcp.getPeer())}: a WebSocket opening handshake"
                                    f" over {MAX_HANDSHAKE} bytes")
        self._close_with(431, f"Request Header Fields Too Large (over {MAX_HANDSHAKE} bytes)")

    def _refuse_origin(self, head: bytes, why: str) -> None:
        """Answer 403 to a browser page's handshake whose ``Origin`` is refused, and close:
        counted in the listener's ``origins_refused``, logged by its guard (throttled)."""
        tcp = self.transport
        assert tcp is not None
        self.factory.mqtt.origins_refused += 1
        target = head.split(b"\r\n", 1)[0].rsplit(b" ", 1)[0].decode("latin-1")  # ("GET /mqtt")
        reason = self.factory.guard.refused(f"WebSocket {status_text(shown(target))} from "
                                            f"{address_text(tcp.getPeer())}", status_text(why))
        self._close_with(403, reason)

    def _close_with(self, status: int, reason: str) -> None:
        """Answer the opening handshake with HTTP ``status`` (``reason``) and close; what comes
        after is dropped."""
        self._refused = True
        self._head = None
        self.sendHttpErrorResponse(status, reason)
        tcp = self.transport
        assert tcp is not None
        tcp.loseConnection()

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """Answer a refused opening handshake (autobahn's refusals: a malformed request line or
        header, a method other than GET, HTTP/1.0, no ``Upgrade``, a bad key; and this
        listener's 403 and 431) with its reason on the status line, its control and non-ASCII
        characters escaped, and as a one-line plain-text body: autobahn sent the status line
        alone. It says ``Server: gateway``, as the accepted handshake does."""
        line = status_text(reason)
        body = (line + "\n").encode()
        headers = [("Server", SERVER), ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                   ("Connection", "close"), *(responseHeaders or ())]
        if code == 426:  # (RFC 9110 section 15.5.22: a 426 names the protocol to upgrade to)
            headers.append(("Upgrade", "websocket"))
        super().sendHttpErrorResponse(code, line, headers)
        self.sendData(body)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """Pick the MQTT subprotocol; refuse clients that want only others."""
        if not request.protocols:
            return None
        for name in SUBPROTOCOLS:
            if name in request.protocols:
                return name
        raise ConnectionDeny(ConnectionDeny.NOT_ACCEPTABLE, f"MQTT only (subprotocol {' or '.join(SUBPROTOCOLS)})")

    def connectionMade(self) -> None:
        """The TCP connection is up: the MQTT connection starts (its CONNECT deadline too)."""
        super().connectionMade()
        tcp = self.transport
        assert tcp is not None
        connection = self.factory.mqtt.buildProtocol(tcp.getPeer())
        if connection is None:  # the listener is full
            tcp.loseConnection()
            return
        self.mqtt = connection
        connection.makeConnection(WebSocketStream(self))

    def onMessageBegin(self, isBinary: bool) -> None:
        """A message starts: a binary one's bytes go to the MQTT connection as they come; a
        text one closes the WebSocket."""
        self._binary = isBinary
        if self.mqtt is not None and not isBinary:
            self.factory.mqtt.violation(f"closing {self.mqtt.peer_text()}: a text WebSocket message "
                                        "(MQTT goes in binary messages)")
            self.sendClose(1000, BINARY_ONLY)

    def onMessageFrameBegin(self, length: int) -> None:
        """A frame starts: nothing is gathered, so no WebSocket size limit applies; the MQTT
        framer bounds each packet by ``max_packet_size`` however the packets are framed."""

    def onMessageFrameData(self, payload: bytes) -> None:
        """Feed a binary message's bytes to the MQTT connection as they arrive."""
        if self.mqtt is not None and self._binary:
            self.mqtt.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        """Nothing to do: the frame's bytes went on as they came."""

    def onMessageEnd(self) -> None:
        """Nothing to do: the message's bytes went on as they came."""

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """The WebSocket is gone: so is the MQTT connection."""
        connection, self.mqtt = self.mqtt, None
        if connection is not None:
            connection.connectionLost(Failure(ConnectionError(f"WebSocket closed ({code})")))


class MQTTWebSocketFactory(WebSocketServerFactory):
    """Serves MQTT over WebSocket for one listener, wrapping its :class:`MQTTListenerFactory`.

    :param mqtt: the listener's MQTT factory (limits, counters, the broker).
    """

    protocol = MQTTWebSocketProtocol  # type: ignore[assignment]
    noisy = False  # (no "Starting factory <... object at 0x...>" line: the listener's own line says it)

    def __init__(self, mqtt: MQTTListenerFactory, allowed_origins: tuple[str, ...] = ()) -> None:
        super().__init__(server=SERVER)  # (autobahn's own named it and its version)
        self.mqtt = mqtt
        #: which browser pages' handshakes are taken (the listener's ``allowed_origins``)
        self.origins = AllowedOrigins(allowed_origins)
        #: logs the handshakes refused for their ``Origin``, at most once per interval
        self.guard = BrowserGuard(f"listener {mqtt.listener_name}", partial(steady_seconds, mqtt.clock))
        # Messages are not gathered (MQTTWebSocketProtocol feeds their bytes on as they come),
        # so autobahn's size limits stay off: a message may hold several packets (MQTT 3.1.1
        # §6), and the MQTT framer refuses one over max_packet_size, counted as over TCP.
        # autobahn's own timers are off: the MQTT connection's CONNECT deadline and keep-alive
        # cover the handshake and the silence, and a close ends in an abort at worst.
        # autobahn never sees an Origin (without_origin): the listener checks it itself. Told
        # nothing, autobahn would refuse a page opened from a file (allowNullOrigin defaults to
        # False; it takes "file://" for the origin "null") whatever allowed_origins says.
        # A request without Upgrade (a browser or curl opening the URL) is refused 426, not
        # served autobahn's HTML status page (200, naming autobahn and its version).
        self.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, allowNullOrigin=True,
                                webStatus=False)

    def buildProtocol(self, addr: Any) -> Any:
        """A new connection, or ``None`` (Twisted closes it) while the gateway keeps its last
        file descriptors (:attr:`MQTTListenerFactory.reserve_refusals`)."""
        if self.mqtt.reserve_refusals.refuses(addr):
            return None
        return super().buildProtocol(addr)

    @property
    def connections(self) -> set[MQTTConnection]:
        """The MQTT connections of this listener."""
        return self.mqtt.connections
