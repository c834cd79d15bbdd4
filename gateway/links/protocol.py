"""The MQTT 3.1.1 client protocol of a cloud link: CONNECT, keepalive, acks, downlink QoS flows.

The protocol knows the wire; what to publish and when (the window, the journal cursor)
belongs to its :class:`LinkHandler`, which outlives connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol as TypingProtocol, cast

from twisted.internet import error
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.clockstep import steady_seconds
from gateway.deadlinecall import DeadlineCall
from gateway.directsend import DirectSender
from gateway.links.causes import Peer, describe
from gateway.mqtt import packets as codec
from gateway.mqtt.errors import MalformedPacket
from gateway.mqtt.framing import PacketReader
from gateway.mqtt.packets import Publish
from gateway.mqtt.topics import topic_for_log
from gateway.tcpacked import acked_counter


@dataclass(frozen=True)
class SessionOptions:
    """What the client says in CONNECT and how it watches the connection.

    :ivar will: ``(topic, payload, qos, retain)`` or ``None``.
    """

    client_id: str
    keepalive: int = 60
    clean_session: bool = False
    username: str | None = None
    password: str | None = None
    will: tuple[str, bytes, int, bool] | None = None
    connect_timeout: float = 30.0
    ping_timeout: float = 10.0
    max_packet_size: int = 1 << 20


#: What to check for each CONNACK refusal.
_REMEDIES = {
    1: " (the server does not speak MQTT 3.1.1)", 2: " (check client_id)", 3: " (try again later)",
    4: " (check username and password)", 5: " (check the credentials and what the account may do)",
}


class LinkHandler(TypingProtocol):
    """What a connection reports to the link that owns it."""

    def connected(self, protocol: "MQTTClientProtocol", session_present: bool) -> None:
        """CONNACK accepted the session."""

    def pubacks(self, packet_ids: list[int]) -> None:
        """The server acknowledged these QoS 1 publishes (all the PUBACKs of one read, in order)."""

    def message(self, publish: Publish) -> Deferred[Any] | None:
        """A downlink message; the server gets its ack when the result fires."""

    def disconnected(self, protocol: "MQTTClientProtocol", cause: str) -> None:
        """The connection is gone (after :meth:`connected`, or instead of it)."""


class LinkTransport(TypingProtocol):
    """What the link's protocol uses of its transport (TCP, TLS or the WebSocket adapter)."""

    connected: int  # every Twisted transport's flag; no interface declares it

    def write(self, data: bytes) -> None:
        """Send bytes."""

    def loseConnection(self) -> None:
        """Close after the buffered bytes are sent."""

    def abortConnection(self) -> None:
        """Close at once."""


@implementer(IHandshakeListener)
class MQTTClientProtocol(Protocol):
    """One connection to a cloud broker.

    :param handler: the link this connection works for.
    :param options: CONNECT fields and timeouts.
    :param clock: for the CONNACK deadline and the keepalive.
    :param peer: where it connects, named in the causes it reports.
    :param link: the link's name, which its log lines begin with.
    """

    log = Logger()
    sender: DirectSender  # set by connectionMade, before anything is written

    def __init__(self, handler: LinkHandler, options: SessionOptions, clock: IReactorTime,
                 peer: Peer = Peer("the cloud broker", "the cloud broker"), link: str = "") -> None:
        self.handler = handler
        self.link = link
        self.options = options
        self.clock = clock
        self.peer = peer
        self.reader = PacketReader(options.max_packet_size)
        self._acked: list[int] = []  # PUBACK ids of the read being handled
        self.is_connected = False
        self.cause = ""  # why it closed, when it closed it (else from connectionLost's reason)
        self.refused_code: int | None = None  # the CONNACK return code, when the broker refused
        self.closed_by_server = False  # set when it ends: the server closed the accepted session cleanly
        self.subscriptions: dict[int, list[tuple[str, int]]] = {}
        self._qos2_in: set[int] = set()
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._deadline: DeadlineCall | None = None
        self._keepalive: IDelayedCall | None = None
        self._next_sub_id = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._handshaking = False  # over TLS, until its handshake completes (CONNECT waits for it)
        #: True once the server left a PINGREQ unanswered for ``ping_timeout``: the link
        #: warns of that loss (the server's own close, or the gateway's stop, is routine).
        self.peer_dead = False
        #: The bytes the server's TCP has acknowledged on this connection (None: not known);
        #: set by connectionMade for the socket under the transport.
        self.acked_bytes: Callable[[], int | None] = lambda: None
        self._ping_end = 0  # where that PINGREQ ends on the wire (the socket's bytes)
        self._wire_extra = 0  # the socket's bytes before the CONNECT (a TLS or WebSocket handshake)
        self._acked_mark: int | None = None  # acked_bytes() when that PINGREQ's deadline last began
        self._ping_behind = False  # that PINGREQ was seen waiting behind bytes the server took

    @property
    def _transport(self) -> LinkTransport:
        # Twisted declares ``transport`` as ``ITransport | None``; a connected protocol's is
        # set, and is one of the transports LinkTransport describes.
        return cast(LinkTransport, self.transport)

    # -- connection life ----------------------------------------------------------

    def connectionMade(self) -> None:
        """Send CONNECT; give the server ``connect_timeout`` seconds to answer."""
        self.sender = DirectSender.attach(self.transport)  # (a send on a plain socket: gateway.directsend)
        self.acked_bytes = acked_counter(self.transport)
        self._handshaking = ISSLTransport.providedBy(self.transport)
        o = self.options
        self.write(codec.connect(o.client_id, o.keepalive, o.clean_session, o.username, o.password, o.will))
        self._deadline = DeadlineCall(self.clock, o.connect_timeout, self._timed_out, "CONNACK")

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done: CONNECT goes out now."""
        self._handshaking = False

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        """Stop the timers and tell the link."""
        for call in (self._deadline, self._keepalive):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._keepalive = None
        # (the server ended an accepted session on its own, cleanly: not a reset, not the gateway)
        self.closed_by_server = bool(not self.cause and self.is_connected and reason.check(error.ConnectionDone))
        if not self.cause:
            self.cause = describe(reason, self.peer, self.is_connected)
        self.is_connected = False
        self.handler.disconnected(self, self.cause)

    def close(self, cause: str, abort: bool = False) -> None:
        """Close the connection, remembering why (sent as DISCONNECT when graceful)."""
        self.cause = cause
        if abort:
            self._transport.abortConnection()
        else:
            if self.is_connected:
                self.write(codec.DISCONNECT_PACKET)
            self.sender.close()

    def _timed_out(self, what: str) -> None:
        """The server's ``what`` (CONNACK, PINGRESP) did not come in time, the socket read
        (:mod:`gateway.deadlinecall`: :meth:`_heard`, or the CONNACK, cancels the verdict)."""
        self._deadline = None
        if what == "PINGRESP" and self._pingreq_on_its_way():
            self._deadline = DeadlineCall(self.clock, self.options.ping_timeout, self._timed_out, "PINGRESP")
            return
        timeout = self.options.connect_timeout if what == "CONNACK" else self.options.ping_timeout
        if what == "CONNACK" and self._handshaking:
            # the CONNECT never went: a server that takes the connection and stalls the handshake
            cause = (f"the TLS handshake with {self.peer.address} did not complete within {timeout:g} s "
                     "(connect_timeout): is it a TLS port, is the server overloaded?")
        elif what == "PINGRESP":
            self.peer_dead = True
            cause = (f"{self.peer.address} stopped answering: no PINGRESP within {timeout:g} s (ping_timeout); "
                     "the server is overloaded or the network to it stalled")
        else:
            cause = f"no CONNACK from {self.peer.address} within {timeout:g} s: is it an MQTT server?"
        # (no line here: the link logs the cause, naming itself; before a CONNACK as one of its
        # throttled "cannot connect" lines, as it does every failed attempt)
        self.close(cause, abort=True)

    def write(self, data: bytes) -> None:
        """Send bytes, noting the time for the keepalive."""
        self._last_sent = steady_seconds(self.clock)
        self.bytes_sent += len(data)
        self.sender.write(data)

    # -- keepalive ------------------------------------------------------------------

    def _schedule_keepalive(self, delay: float) -> None:
        self._keepalive = self.clock.callLater(delay, self._keepalive_due)

    def _keepalive_due(self) -> None:
        # Idle is without sending, or without hearing from the server: a connection that stalls
        # (a proxy holding it open, a stalled cellular link) while the gateway goes on sending
        # (QoS 0 publishes, the shadow sync's requests) must be noticed too, as paho does.
        now = steady_seconds(self.clock)
        idle = now - min(self._last_sent, self._last_heard)
        keepalive = self.options.keepalive
        if idle >= keepalive:
            self.write(codec.PINGREQ_PACKET)
            if self._deadline is None:
                self._deadline = DeadlineCall(self.clock, self.options.ping_timeout, self._timed_out, "PINGRESP")
                self._ping_end, self._acked_mark = self.bytes_sent + self._wire_extra, self.acked_bytes()
                self._ping_behind = False
            idle = 0.0
        self._schedule_keepalive(keepalive - idle)

    def _pingreq_on_its_way(self) -> bool:
        """Whether the server's TCP acknowledged more bytes since the last look while the
        PINGREQ was still on its way: a large message crawling over a slow link holds the
        PINGREQ behind it, and the server reading it is alive. A PINGREQ that got through
        after such a wait gives the server one ``ping_timeout`` more for its PINGRESP; one
        that was through at the first look (or a kernel that does not say) does not.

        Over TLS or a WebSocket the socket carries more bytes than the MQTT ones: those of the
        handshake, counted when the CONNACK came (by then the server's TCP had acknowledged
        them and the CONNECT), and a few per record or frame, which take a PINGREQ counted
        through a moment before it is.
        """
        acked = self.acked_bytes()
        mark, self._acked_mark = self._acked_mark, acked
        if acked is None or mark is None or acked <= mark:
            return False
        if acked < self._ping_end:
            self._ping_behind = True
            return True
        behind, self._ping_behind = self._ping_behind, False
        return behind

    # -- inbound --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Decode packets; a malformed one closes the connection at once.

        The PUBACKs of one read go to the handler together, after the other packets.
        """
        self.bytes_received += len(data)
        self._last_heard = steady_seconds(self.clock)
        try:
            if self.is_connected:
                acked, data = self.reader.take_pubacks(data)
                if acked:
                    self._heard()
                    self._acked += acked
            for packet in self.reader.feed(data):
                self._received(packet)
        except MalformedPacket as exc:
            # the PUBACKs before it in the same read are the server's: their messages are delivered
            self._acked += [codec.packet_id(p) for p in self.reader.before_violation if p.packet_type == codec.PUBACK]
            if self.is_connected:  # (before, the link's throttled "cannot connect" line tells it)
                self.log.warn("link {link}: closing the link connection: {error}", link=self.link, error=str(exc))
            self.close(f"malformed packet from {self.peer.address}: {exc}", abort=True)
        finally:
            if self._acked:
                acked, self._acked = self._acked, []
                self.handler.pubacks(acked)

    def _received(self, packet: codec.Packet) -> None:
        if self.refused_code is not None:
            return  # the connection is closing for the refusal, which stays its cause
        if packet.packet_type == codec.CONNACK:
            self._connack(packet)
            return
        if not self.is_connected:
            raise MalformedPacket(f"packet type {packet.packet_type} before CONNACK")
        self._heard()
        if packet.packet_type == codec.PUBACK:
            self._acked.append(codec.packet_id(packet))
        elif packet.packet_type == codec.PUBLISH:
            self._publish(codec.decode_publish(packet))
        elif packet.packet_type == codec.PUBREL:
            pid = codec.packet_id(packet)
            self._qos2_in.discard(pid)
            self.write(codec.ack(codec.PUBCOMP, pid))
        elif packet.packet_type == codec.SUBACK:
            self._suback(packet)
        elif packet.packet_type in (codec.PUBREC, codec.PUBCOMP):
            raise MalformedPacket(f"packet type {packet.packet_type} for a QoS 2 publish the link never sent")

    def _heard(self) -> None:
        """Anything from the server shows it is alive: drop the dead-peer deadline."""
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _connack(self, packet: codec.Packet) -> None:
        if self.is_connected:
            raise MalformedPacket("a second CONNACK")
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        code = packet.body[1]
        if code:
            self.refused_code = code  # (the link's reconnect policy backs off by it)
            reason = codec.CONNACK_REASONS.get(code, f"return code {code}")
            self.close(f"{self.peer.address} refused the MQTT connection: {reason}{_REMEDIES.get(code, '')}")
            return
        self.is_connected = True
        acked = self.acked_bytes()
        self._wire_extra = max(0, acked - self.bytes_sent) if acked is not None else 0
        self._schedule_keepalive(self.options.keepalive)
        self.handler.connected(self, bool(packet.body[0] & 1))

    def _publish(self, publish: Publish) -> None:
        if publish.qos == 2 and publish.packet_id in self._qos2_in:
            self.write(codec.ack(codec.PUBREC, publish.packet_id))  # a resend: delivered once already
            return
        if publish.qos == 2:
            self._qos2_in.add(publish.packet_id)
        d = maybeDeferred(self.handler.message, publish)
        if publish.qos:
            kind = codec.PUBACK if publish.qos == 1 else codec.PUBREC

            def ack(_: Any) -> None:
                if self._transport.connected:
                    self.write(codec.ack(kind, publish.packet_id))

            d.addCallback(ack)
        d.addErrback(lambda f: self.log.failure("link {link}: downlink message on {topic} not delivered", f,
                                                link=self.link, topic=topic_for_log(publish.topic)))

    def _suback(self, packet: codec.Packet) -> None:
        filters = self.subscriptions.pop(codec.packet_id(packet), [])
        for (topic_filter, _), code in zip(filters, packet.body[2:]):
            if code == 0x80:
                self.log.warn("link {link}: the cloud broker refused the subscription to {filter}", link=self.link,
                              filter=topic_for_log(topic_filter))

    # -- outbound -------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, dup: bool) -> None:
        """Send a PUBLISH (the handler owns packet ids and the window)."""
        self.write(codec.publish(topic, payload, qos, retain, packet_id, dup))

    def publish_all(self, publishes: list[tuple[str, bytes, int, bool, int, bool]]) -> None:
        """Send several PUBLISHes (``publish``'s arguments each) with one write."""
        encode = codec.publish
        self.write(b"".join([encode(*p) for p in publishes]))

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        """Send SUBSCRIBE for ``(filter, qos)`` pairs (packet ids from the top of the range)."""
        self._next_sub_id = self._next_sub_id % 1000 + 1
        packet_id = 65536 - self._next_sub_id  # publishes count up from 1; no clash below 64k-1000
        self.subscriptions[packet_id] = filters
        self.write(codec.subscribe(packet_id, filters))
