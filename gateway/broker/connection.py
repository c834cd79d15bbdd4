"""One MQTT client connection: a Twisted protocol that frames bytes and hands packets on.

The first packet, CONNECT, goes to the broker (:meth:`ConnectionAcceptor.client_connecting`),
which answers with CONNACK and attaches a :class:`~gateway.broker.handler.SessionHandler`
(or refuses); every later packet goes to that handler. Packets that arrive while the
CONNECT is being decided (authentication is asynchronous) wait and are handed over in order,
also when the client has hung up meanwhile (§3.1.4: a client need not wait for CONNACK; a
CONNECT, PUBLISH, DISCONNECT sent in one go and closed is handled as mosquitto does), unless
the broker gave up on the CONNECT (its deadline passed). Once more than
:data:`UNREAD_LIMIT` bytes came meanwhile, the connection stops reading until the decision:
the rest waits in the socket, not in the broker's memory.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Protocol as TypingProtocol

from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.addresses import address_parts, address_text
from gateway.clockstep import steady_seconds, unset_clock
from gateway.directsend import DirectSender
from gateway.fdreserve import DescriptorReserve, ReserveRefusals
from gateway.gctuning import ReleaseAfterChurn
from gateway.logthrottle import LogThrottle
from gateway.mqtt.errors import TopicTooDeep
from gateway.netfailures import tls_reasons
from gateway.mqtt.framing import PacketFramer, ProtocolViolation
from gateway.mqtt.packets import CONNECT, Packet, connack

#: Seconds between two log lines about refused or broken connections of one listener.
VIOLATION_LOG_INTERVAL = 10.0
#: Bytes a connection may write while its send buffer is full (its client is not reading;
#: deliveries then wait in the session's queue, so these are answers: acknowledgements,
#: PINGRESPs, SUBACKs) before the broker stops reading from it until they are sent; without
#: a bound, a client that sends without ever reading grew the broker's memory by as much as
#: the answers to what it sent.
UNREAD_LIMIT = 64 << 10
#: Bytes a connection may have written in one reactor turn (sent together at its end) before
#: it counts as full, as if its send buffer were: deliveries then wait in the session's queue,
#: and a new subscription's retained messages where they are, until that write is sent. Without
#: it, the retained messages of a ``#`` subscription all went into one write, whatever their
#: number and size (100,000 of 100 bytes: 11 MB, held while the client did not read).
TURN_LIMIT = 1 << 20
#: Connections a full listener (at its ``max_connections``) still takes, each counted only once
#: its CONNECT finds a place (:meth:`MQTTListenerFactory.connect_arrived`): the event loop may
#: report a new connection before the close of one its client has just left (a client that
#: closes and connects again at once), and by the time the new one's CONNECT is read that close
#: has been. More than these at once are closed as soon as they are accepted.
FULL_LISTENER_WAITING = 16
#: Seconds a connection the broker's stop closes in order (:meth:`MQTTConnection.close_in_order`)
#: has to send what Twisted still holds of its bytes, and its client to close its side, before
#: it is aborted: a client that reads does both in milliseconds, one that does not read cannot
#: hold the stop up for longer.
STOP_GRACE = 1.0
#: The :meth:`MQTTConnection.pause_reading` key of a client that does not read its answers.
_UNREAD = "the client does not read"
#: The :meth:`MQTTConnection.pause_reading` key of a client that sent more than
#: :data:`UNREAD_LIMIT` bytes while its CONNECT is being decided.
_UNDECIDED = "its CONNECT is being decided"
#: The :meth:`MQTTConnection.pause_reading` key of a connection closed for a protocol violation.
_VIOLATED = "it broke the protocol"


class IConnectionTransport(ITCPTransport, IConsumer, IPushProducer):
    """What a client connection uses of its transport (TCP, TLS or the WebSocket adapter):
    a stream that can be aborted, takes a producer and pauses reading. For type checking:
    Twisted's transports provide these interfaces one by one, none declares this one."""


class PacketSink(TypingProtocol):
    """What takes a connection's packets after CONNECT (the session's handler)."""

    def packet_received(self, packet: Packet) -> None:
        """One validated packet (not a PUBACK)."""

    def puback_received(self, packet_id: int) -> None:
        """A PUBACK for ``packet_id``."""

    def packets_done(self) -> None:
        """The packets of one read (or of the batch released after a pause) are handed over."""

    def connection_lost(self) -> None:
        """The connection is gone."""

    def flush_outbox(self) -> None:
        """The send buffer drained: send what waits."""

    def when_answered(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the answers to the packets handed over so far are written
        (at once when none is still to come; never if the connection ends first)."""


class ConnectionAcceptor(TypingProtocol):
    """Who decides a CONNECT (the broker)."""

    def client_connecting(self, connection: "MQTTConnection", packet: Packet) -> None:
        """Answer ``packet`` (a validated CONNECT) with CONNACK and :meth:`MQTTConnection.attach`,
        or :meth:`MQTTConnection.refuse` it."""

    def connection_of(self, client_id: str) -> "MQTTConnection | None":
        """The connection the client ``client_id`` is served on now (an accepted CONNECT with
        that id takes it over), or ``None``."""


@implementer(IPushProducer)
class MQTTConnection(Protocol):
    """Frames one connection's bytes: CONNECT goes to the broker, later packets to the session's handler.

    Also enforces the CONNECT deadline and the keep-alive (§3.1.2.10): no packet within 1.5
    times the CONNECT's keep-alive closes the connection (and the broker publishes the
    client's will). Both are one :attr:`deadline` per connection, which the listener's
    sweep checks when the earliest one is due, a second at most after the sweep before it:
    a deadline is kept to within a second, and a listener whose clients are quiet sleeps
    until one's deadline comes. Only time the broker spends reading counts: while reading is paused
    (:meth:`pause_reading`) the client's packets wait unread in the socket, so its silence
    proves nothing; the keep-alive stops, and starts over in full when reading resumes.

    It is the transport's producer too: while Twisted's send buffer is full,
    :attr:`sending_paused` is true and deliveries wait in the session's queue. What the
    broker writes in one reactor turn leaves in one write at the end of the turn (the
    listener flushes every connection written to): a burst of PUBLISHes from one client
    becomes one write to each subscriber, and their PUBACKs one write back.

    On a plain TCP or Unix socket that write is a ``send`` on the socket itself, as
    mosquitto does (:class:`~gateway.directsend.DirectSender`): only what the kernel does
    not take goes to the transport, and until Twisted has sent it all
    :attr:`sending_paused` is true and deliveries wait in the session's queue.

    :param factory: the listener's :class:`MQTTListenerFactory`.
    """

    log = Logger()
    transport: IConnectionTransport  # set by makeConnection, before any method here runs
    sender: DirectSender  # what its bytes go out through (see the class); set by connectionMade

    def __init__(self, factory: "MQTTListenerFactory") -> None:
        self.factory = factory
        self.framer = PacketFramer(factory.max_packet_size, factory.max_topic_levels)
        #: the client id of its CONNECT (the one the broker gave it, for an empty one), for log lines
        self.client_id = ""
        self.handler: PacketSink | None = None
        self.pending: list[Packet | int] = []  # a PUBACK as its packet id (see PacketFramer.feed)
        self.lost = False
        #: the client broke the protocol: nothing more it sends is read, and the connection
        #: closes once the answers to what it sent before are written (:meth:`_close_violating`)
        self.violated = False
        #: the broker gave up on this connection's CONNECT (its deadline passed): a late
        #: decision must not make a session of it
        self.abandoned = False
        #: bytes received since the CONNECT, while it is being decided; -1 when it is not
        #: (no CONNECT yet, or decided): past UNREAD_LIMIT, reading stops until the decision
        self.undecided_bytes = -1
        self.sending_paused = False
        #: when the connection is closed unless a packet comes first (0: never); the
        #: listener's sweep checks it (:meth:`MQTTListenerFactory.sweep`).
        self.deadline = 0.0
        self._keepalive = 0.0
        self._pausers: set[Any] | None = None  # made by the first pause
        self._out: list[bytes] | None = None  # written this turn, not yet on the transport
        self._unsent = 0  # bytes written since the send buffer filled up (see UNREAD_LIMIT)
        self._out_bytes = 0  # bytes in _out
        self._turn_full = False  # sending_paused because _out passed TURN_LIMIT (see write)

    def connectionMade(self) -> None:
        """Start the CONNECT deadline; become the transport's producer (through its
        :class:`~gateway.directsend.DirectSender` on a plain socket); count against the
        listener's ``max_connections`` (or, the listener being full, wait for the CONNECT)."""
        self.factory.connection_made(self)
        self.sender = DirectSender.attach(self.transport, self)
        self._set_deadline(steady_seconds(self.factory.clock) + self.factory.connect_timeout)

    # -- what the broker and the handler use ----------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes: with everything else written this turn, in one write at its end; past
        :data:`TURN_LIMIT` of them, :attr:`sending_paused` until that write."""
        if self.lost:
            return
        out = self._out
        if out is None:
            self._out = out = []
            self._out_bytes = 0
            self.factory.written(self)
        out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes > TURN_LIMIT and not self.sending_paused:
            self.sending_paused = self._turn_full = True

    def flush(self) -> None:
        """Send what was written this turn; stop reading from a client that leaves more than
        :data:`UNREAD_LIMIT` bytes of it unread (until they are sent)."""
        out, self._out = self._out, None
        turn_full, self._turn_full = self._turn_full, False
        if out and not self.lost:
            data = out[0] if len(out) == 1 else b"".join(out)
            if turn_full:
                self.sending_paused = False
            paused = self.sending_paused  # (then what it writes is answers: deliveries wait in its queue)
            self.factory.bytes_sent += len(data)
            self.sender.write(data)
            if paused:
                self._unsent += len(data)
                if self._unsent > UNREAD_LIMIT:
                    self.pause_reading(_UNREAD)
            elif turn_full and not self.sending_paused:  # the socket took it all: what waited goes now
                self.resumeProducing()

    def close(self) -> None:
        """Close after what was written has been sent; it no longer counts against the
        listener's ``max_connections`` from now."""
        self.factory.serving.discard(self)
        if not self.lost:
            self.flush()
            self.sender.close()

    def close_in_order(self, grace: float | None = None) -> None:
        """Close in order, as mosquitto does, and handle nothing more: what was written, and
        what the kernel holds, reaches the client before the end of the stream (a reset would
        throw it away, and clients report a reset as an error). On a plain socket the sending
        side is closed and the client's close awaited
        (:meth:`~gateway.directsend.DirectSender.close_sending`); TLS sends its close alert, the
        WebSocket adapter its close frame. Reading resumes and what is read is dropped: a socket
        closed with bytes of the client's unread in it (a PINGREQ sent after its CONNECT, a
        packet after a bad one, one sent while reading was paused) is reset by the kernel.

        The broker closes so at its stop, after a refused CONNECT (its CONNACK goes first), a
        protocol violation (the answers to the packets before it go first, nothing after it),
        a takeover and a keep-alive expiry. A connection not closed within ``grace`` seconds
        (``connect_timeout`` by default; Twisted still holds bytes a client does not read, or a
        client does not close its side or answer the TLS or WebSocket close) is aborted by the
        listener's sweep (:meth:`expired`); one closing already is given no longer than that
        either."""
        at = steady_seconds(self.factory.clock) + (self.factory.connect_timeout if grace is None else grace)
        if not self.lost:
            self.factory.serving.discard(self)
            self.flush()
            self.transport.resumeProducing()  # (what it reads comes in a later turn: dropped)
            self.sender.close_sending()
            self.lost = True
        elif 0.0 < self.deadline <= at:
            return
        self._set_deadline(at)

    def abort(self) -> None:
        """Close now, dropping what was not sent yet; nothing more is read or written."""
        self.factory.serving.discard(self)
        self._out = None
        self.lost = True
        self.transport.abortConnection()

    def refuse(self, code: int) -> None:
        """Answer the CONNECT with CONNACK ``code`` (§3.2.2.3) and close; what came after the
        CONNECT is dropped."""
        self.undecided_bytes = -1
        self.pending = []
        self.resume_reading(_UNDECIDED)
        self.write(connack(False, code))
        self.close_in_order()

    def peer_address(self) -> tuple[str, int]:
        """The peer's address as ``(host, port)``; ``("unix:<path>", 0)`` for a unix socket."""
        return address_parts(self.transport.getPeer())

    def peer_text(self) -> str:
        """The peer's address as an operator writes it (``10.0.0.7:50412``, ``[::1]:50412``,
        ``unix:<path>``), for log lines."""
        return address_text(self.transport.getPeer())

    def peer_certificate(self) -> Any:
        """The peer's verified TLS certificate (pyOpenSSL), or ``None``."""
        getter = getattr(self.transport, "getPeerCertificate", None)
        return getter() if getter is not None else None

    # -- incoming bytes ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Check framing and the protocol rules, then pass the packets on (those before a
        violation too: then the connection is closed)."""
        if self.lost or self.violated:
            return
        self.factory.bytes_received += len(data)
        try:
            packets = self.framer.feed(data)
        except ProtocolViolation as exc:
            if self.framer.before_violation:
                self._received(self.framer.before_violation)
            if not self.lost:
                self._violation(exc)
            return
        if packets:
            self._received(packets)
        if self.undecided_bytes >= 0:
            self.undecided_bytes += len(data)
            if self.undecided_bytes > UNREAD_LIMIT:
                self.pause_reading(_UNDECIDED)

    def _received(self, packets: list[Packet | int]) -> None:
        """Pass whole packets on: CONNECT to the broker, the others to the handler (or wait for it)."""
        if self._keepalive and not self._pausers and self.handler is not None:
            self._set_deadline(steady_seconds(self.factory.clock) + self._keepalive)
        if self.handler is None or self.pending or self._pausers:
            for packet in packets:
                if not isinstance(packet, int) and packet.packet_type == CONNECT:
                    self._connect_received(packet)
                else:
                    self.pending.append(packet)
            return
        self._dispatch(packets)

    def _dispatch(self, packets: list[Packet | int]) -> None:
        """Hand packets to the handler; stop (keeping the rest) when reading is paused. Then
        tell the handler they are done (it persists a read's PUBLISHes together)."""
        first = self.handler
        try:
            for index, packet in enumerate(packets):
                handler = self.handler
                if handler is None:  # detached (taken over, or ended) meanwhile
                    return
                if isinstance(packet, int):
                    handler.puback_received(packet)
                else:
                    handler.packet_received(packet)
                if self._pausers:
                    self.pending[:0] = packets[index + 1:]
                    return
        finally:
            if first is not None:
                first.packets_done()

    def _violation(self, exc: ProtocolViolation) -> None:
        if exc.reply:  # §3.1.2.2: a refused protocol level is answered before closing
            self.write(exc.reply)
        if isinstance(exc, TopicTooDeep):
            self.factory.topics_too_deep += 1
            if self.framer.packets_complete:  # (a will topic's line names the client itself)
                self._close_violating(f"client {self.client_id!r}: {exc}")
                return
        self._close_violating(str(exc))

    def protocol_violation(self, what: str) -> None:
        """The session handler found the client breaking the protocol (``what`` it did) in a
        packet the framer passed: closed as the framer's violations are, and nothing the
        client sent after that packet is handled."""
        self._close_violating(what)

    def _close_violating(self, what: str) -> None:
        """Close for a violation, in order [MQTT-4.8.0-1]: read and handle nothing more, let
        the handler write the answers to the packets before the violation (a PUBACK waits for
        the journal), then close as :meth:`close_in_order` does. The handler gets
        ``connect_timeout`` for those answers: the journal may be stuck, and a client that
        broke the protocol does not hold a connection open for longer."""
        if not self.violated:  # (one line a connection: a packet handed over after it may break the rules too)
            self.factory.violation(f"closing {self.peer_text()}: {what}")
        self.violated = True
        self.factory.serving.discard(self)  # (closing: no longer counted against max_connections)
        handler = self.handler
        if handler is None:
            if self.undecided_bytes < 0:  # no CONNECT yet (or refused already): no answer is owed
                self.close_in_order()
            else:  # the CONNECT is being decided: nothing more is read; the packets before the
                # violation wait for its handler (:meth:`attach`), which answers them, then it closes
                self.pause_reading(_UNDECIDED)
            return
        self._close_when_answered(handler)

    def _close_when_answered(self, handler: PacketSink) -> None:
        """Close in order once ``handler`` has written the answers to the packets before the
        violation, or after ``connect_timeout`` without them (:meth:`expired`)."""
        self.pause_reading(_VIOLATED)  # the packets after it in the same read wait, never handled
        self._set_deadline(steady_seconds(self.factory.clock) + self.factory.connect_timeout)
        handler.when_answered(self._answered)

    def _answered(self) -> None:
        """The answers to the packets before the violation are written: close in order."""
        if not self.lost:
            self.close_in_order()

    def _connect_received(self, packet: Packet) -> None:
        # The CONNECT deadline holds until the broker has decided (authentication may take
        # a while); the keep-alive counts from the CONNACK (:meth:`attach`).
        if not self.factory.connect_arrived(self, packet.fields["client_id"]):
            return
        self._keepalive = 1.5 * packet.fields["keep_alive"]
        self.undecided_bytes = 0
        self.client_id = packet.fields["client_id"]
        self.factory.acceptor.client_connecting(self, packet)

    # -- keep-alive and read back-pressure ------------------------------------------------

    def _start_keepalive(self) -> None:
        """Count the keep-alive from now (at CONNACK, and when reading resumes after a pause)."""
        if self._keepalive and self.handler is not None and not self.lost and not self._pausers:
            self._set_deadline(steady_seconds(self.factory.clock) + self._keepalive)

    def _set_deadline(self, deadline: float) -> None:
        """Close the connection at ``deadline`` (steady seconds) unless a packet comes first;
        the listener sweeps by then."""
        self.deadline = deadline
        if deadline < self.factory.next_sweep:
            self.factory.sweep_by(deadline)

    def expired(self, now: float) -> None:
        """The deadline passed: no CONNECT (or no decision on it) in time: the connection is
        aborted (nothing is owed to the client). Or no packet within 1.5 keep-alives
        [MQTT-3.1.2-24]: the session ends at once, as when the network fails (the broker
        publishes the will), and the connection is closed in order (:meth:`close_in_order`:
        what was written to a client that is still there reaches it). Or a connection closed
        in order still has bytes its client does not read, or its client did not close its
        side: it is aborted. Or a connection closed for a violation still waits for
        the answers to the packets before it (the journal did not make a PUBLISH durable): it
        is closed in order without them."""
        self.deadline = 0.0
        if self.lost:
            self.abort()
            return
        if self.violated and self.handler is not None:  # the answers owed before the violation came too late
            self.close_in_order()
            return
        if self.handler is None:
            self.abandoned = True
            self.undecided_bytes = -1
            self.pending = []
            what = "no CONNECT" if not self.framer.packets_complete else "its CONNECT not decided (authentication)"
            self.factory.violation(f"closing {self.peer_text()}: {what} within "
                                   f"{self.factory.connect_timeout} s", count=False)
            self.abort()
            return
        self.log.info("closing {peer}: no packet within {limit:.1f} s (keep-alive {keep_alive} s) "
                      "[MQTT-3.1.2-24]", peer=self.peer_text(), limit=self._keepalive,
                      keep_alive=self._keepalive / 1.5)
        self._end_handler(closing=True)

    def attach(self, handler: PacketSink) -> None:
        """Send the packets after CONNECT to ``handler`` (those already here first); the
        keep-alive counts from now."""
        self.handler = handler
        self.deadline = 0.0
        self.undecided_bytes = -1
        self.resume_reading(_UNDECIDED)
        self._start_keepalive()
        self._release_pending()
        if self.lost:  # (the client hung up while its CONNECT was decided)
            self._end_handler()
        elif self.violated and self.handler is handler and _VIOLATED not in (self._pausers or ()):
            # It broke the protocol while its CONNECT was decided: the CONNACK and the answers
            # to the packets before the violation (just handed over) go out, then it closes.
            self._close_when_answered(handler)

    def _release_pending(self) -> None:
        if self.handler is not None and not self._pausers and self.pending:
            pending, self.pending = self.pending, []
            self._dispatch(pending)

    def detach(self, handler: PacketSink) -> None:
        """``handler`` is done with this connection."""
        if self.handler is handler:
            self.handler = None

    @property
    def reading_paused(self) -> bool:
        """Whether something holds :meth:`pause_reading` (the broker is not reading this client)."""
        return bool(self._pausers)

    def pause_reading(self, key: Any) -> None:
        """Stop reading from the socket until :meth:`resume_reading` with the same key.

        The keep-alive stops too: what the client sends now waits unread, so its silence
        is the broker's doing. (Before the CONNACK the CONNECT's deadline holds all the same:
        the decision does not wait for the client.)
        """
        if not self._pausers and not self.lost:
            self.transport.pauseProducing()
            if self._keepalive and self.handler is not None:
                self.deadline = 0.0  # what the client sends waits unread: its silence proves nothing
        if self._pausers is None:
            self._pausers = set()
        self._pausers.add(key)

    def resume_reading(self, key: Any) -> None:
        """Undo :meth:`pause_reading` for ``key``; reading (and the keep-alive) resume once no key holds it."""
        if self._pausers is None or key not in self._pausers:
            return
        self._pausers.discard(key)
        if not self._pausers:
            self._release_pending()
        if not self._pausers and not self.lost:
            self.transport.resumeProducing()
            self._start_keepalive()

    # -- send back-pressure (IPushProducer, called by the transport) -------------------------

    def pauseProducing(self) -> None:
        """Twisted: the send buffer is full; deliveries queue until it drains."""
        self.sending_paused = True

    def resumeProducing(self) -> None:
        """Twisted: the send buffer drained; send what queued, and read from the client again
        if its unread answers had stopped that."""
        self.sending_paused = False
        self._unsent = 0
        if self.handler is not None and not self.lost:
            self.handler.flush_outbox()
        self.resume_reading(_UNREAD)

    def stopProducing(self) -> None:
        """Twisted: the connection is going away."""
        self.sending_paused = True

    # -- the end ------------------------------------------------------------------------

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        """Tell the handler the stream ended. Without a handler yet (the CONNECT is being
        decided), the packets that came after the CONNECT are kept for it: :meth:`attach`
        hands them over, then tells the handler the stream ended."""
        self.lost = True
        self.deadline = 0.0
        if _tls_failure(reason) and not self.violated:
            self.factory.tls_failed(self.peer_text(), reason.value)
        self._end_handler()
        self.factory.connection_closed(self)

    def _end_handler(self, closing: bool = False) -> None:
        """Tell the handler, if any, that the stream ended, once: it is taken off first (so that
        :meth:`connectionLost`, when it comes, finds none), with the packets still waiting for it.

        :param closing: close the connection in order (:meth:`close_in_order`) before the
            handler is told, so that nothing it does then is written to this client.
        """
        handler, self.handler = self.handler, None
        if handler is None:
            return
        self.pending = []
        if closing:
            self.close_in_order()
        handler.connection_lost()


class MQTTListenerFactory(Factory):
    """Builds :class:`MQTTConnection` protocols for one named listener.

    :param listener_name: the listener's name in the config.
    :param acceptor: decides each CONNECT (the broker).
    :param clock: schedules the CONNECT deadline and keep-alives.
    :param max_packet_size: the largest packet accepted, in bytes.
    :param connect_timeout: seconds a client has to send CONNECT.
    :param max_topic_levels: the most levels of a client's PUBLISH or will topic (0: any); a
        client that sends one with more is closed as for any invalid topic.
    :param max_connections: connections served at once (a closing one no longer counts); while
        that many are, up to :data:`FULL_LISTENER_WAITING` more are taken and counted once their
        CONNECT finds a place or takes over its client's connection on this listener (see
        :meth:`connect_arrived`), closed without an answer when it does neither; more than those
        are closed on accept (0: no limit).
    :param churn: told of every closed connection (hands memory back after a wave), or ``None``.
    :param reserve: says when a new connection is to be closed on accept, for the gateway's
        reserve of file descriptors; the process's own by default.
    :ivar violations: connections closed for breaking the protocol.
    :ivar topics_too_deep: of those, the ones closed for a PUBLISH or will topic over ``max_topic_levels``.
    """

    log = Logger()
    #: Factory's "Starting factory <... object at 0x...>" and "Stopping factory ..." say
    #: nothing an operator can use, at every start, stop and configuration change; the
    #: broker logs each listener it opens ("broker listener default on ...").
    noisy = False

    def __init__(self, listener_name: str, acceptor: ConnectionAcceptor, clock: IReactorTime,
                 max_packet_size: int, connect_timeout: float, max_connections: int = 0,
                 churn: ReleaseAfterChurn | None = None, max_topic_levels: int = 0,
                 reserve: DescriptorReserve | None = None) -> None:
        self.listener_name = listener_name
        self.churn = churn
        self.acceptor = acceptor
        self.clock = clock
        self.max_packet_size = max_packet_size
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.max_topic_levels = max_topic_levels
        self.connections: set[MQTTConnection] = set()
        #: the connections counted against ``max_connections``: open, and not closing (one
        #: closing may wait for its client to read its last bytes, up to ``connect_timeout``)
        self.serving: set[MQTTConnection] = set()
        #: the connections taken while the listener was full, not counted until their CONNECT
        #: finds a place (:meth:`connect_arrived`)
        self.waiting: set[MQTTConnection] = set()
        self.violations = 0
        self.topics_too_deep = 0
        self.refused_full = 0  # connections closed (on accept, or at CONNECT) because the listener was full
        #: WebSocket handshakes refused (403) for their Origin (gateway.broker.wsorigin)
        self.origins_refused = 0
        self.bytes_received = 0
        #: bytes handed to the clients' sockets: every packet, resends and acknowledgements too
        self.bytes_sent = 0
        self._idle_waiters: list[Callable[[], None]] = []
        self._written: list[MQTTConnection] = []
        self._flush_call: IDelayedCall | None = None
        self._sweep_call: IDelayedCall | None = None
        #: when (steady seconds) the next sweep looks at the deadlines (infinity: none is due)
        self.next_sweep = math.inf
        self._last_sweep = -math.inf
        now = partial(steady_seconds, clock)
        #: the lines for connections closed: the clients' doing, and the gateway's own failures
        #: to keep what they sent (a full disk), apart so that neither kind hides the other
        self._violation_lines = LogThrottle(VIOLATION_LOG_INTERVAL, now)
        self._unacknowledged_lines = LogThrottle(VIOLATION_LOG_INTERVAL, now)
        #: closes new connections on accept while the gateway keeps its last file descriptors
        self.reserve_refusals = ReserveRefusals(f"listener {listener_name}", self.log, now, reserve)

    @property
    def sweep_interval(self) -> float:
        """The least seconds between two looks at the connections' deadlines (a deadline is
        kept to within this much): a second, or a quarter of ``connect_timeout`` when that is
        shorter."""
        return min(1.0, self.connect_timeout / 4)

    def sweep_by(self, deadline: float) -> None:
        """A connection's deadline is ``deadline`` (steady seconds), before the next sweep:
        sweep then, or :attr:`sweep_interval` after the last sweep if that is later (a burst of
        connections is swept together, not one by one)."""
        self._schedule(max(deadline, self._last_sweep + self.sweep_interval))

    def _schedule(self, at: float) -> None:
        if self._sweep_call is not None and self._sweep_call.active():
            self._sweep_call.cancel()
        self.next_sweep = at
        self._sweep_call = self.clock.callLater(max(0.0, at - steady_seconds(self.clock)), self.sweep, at)

    def sweep(self, due: float = -math.inf) -> None:
        """Close the connections whose deadline has passed, then sleep until the earliest one
        left (one timer per listener, not per connection; none while no deadline is set: an
        idle listener whose clients keep quiet for a minute wakes once in that minute, not
        every second).

        Deadlines are on the steady clock: the wall clock stepping forward (NTP on a gateway
        without a real-time clock) must not expire every connection at once, nor stepping back
        keep dead ones.

        A deadline found passed closes nothing yet: the reactor runs the timers due by the end
        of a turn after that turn's reads, and a turn can be long (a slow CPU under a flood of
        PUBLISHes; the process stopped by SIGSTOP, its cgroup frozen), so what a client sent
        while it ran waits unread. The connections past their deadline are closed in the
        reactor's next turn (:meth:`_expire`), once it has read the sockets: only those that
        sent nothing by the time this sweep ran.

        :param due: when the timer running it was due: its deadlines have passed, though the
            clock read now may be a rounding error short of them."""
        self._sweep_call, self.next_sweep = None, math.inf
        now = max(steady_seconds(self.clock), due)
        self._last_sweep = due if due > -math.inf else now  # (a late timer does not put the next one off)
        if any(0.0 < c.deadline <= now for c in self.connections):
            self.next_sweep = now
            self._sweep_call = self.clock.callLater(0, self._expire, now)
            return
        self._sleep()

    def _expire(self, passed: float) -> None:
        """The reactor's turn after a sweep found deadlines passed by ``passed`` (steady
        seconds), its sockets read: close the connections still past theirs."""
        self._sweep_call, self.next_sweep = None, math.inf
        for connection in [c for c in self.connections if 0.0 < c.deadline <= passed]:
            connection.expired(passed)
        self._sleep()

    def _sleep(self) -> None:
        """Sweep next at the earliest deadline (none: no timer)."""
        earliest = min((c.deadline for c in self.connections if c.deadline > 0.0), default=math.inf)
        if earliest < math.inf:
            self.sweep_by(earliest)
        else:
            self._unwatch()

    def _unwatch(self) -> None:
        call, self._sweep_call = self._sweep_call, None
        self.next_sweep = math.inf
        if call is not None and call.active():
            call.cancel()

    def written(self, connection: MQTTConnection) -> None:
        """``connection`` has bytes to send: flush it (with every other) at the end of this turn."""
        self._written.append(connection)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Hand what every connection written to this turn has to its transport."""
        call, self._flush_call = self._flush_call, None
        if call is not None and call.active():
            call.cancel()  # called directly (the listener is closing): no flush left behind
        written, self._written = self._written, []
        for connection in written:
            connection.flush()

    def violation(self, message: str, count: bool = True) -> None:
        """A connection is closed for ``message``: counted (unless ``count`` is false: a client
        too slow to send its CONNECT), logged at most once per :data:`VIOLATION_LOG_INTERVAL`
        (a flood of bad connections must not flood the log)."""
        if count:
            self.violations += 1
        self._log_closing(self._violation_lines, message)

    def not_acknowledged(self, message: str) -> None:
        """A connection is closed for ``message`` because the gateway could not keep what its
        client sent (the journal refused it: a full disk). Not counted as a violation; logged
        at most once per :data:`VIOLATION_LOG_INTERVAL`, apart from the violations, so that a
        flood of bad clients does not hide it."""
        self._log_closing(self._unacknowledged_lines, message)

    def tls_failed(self, peer: str, error: BaseException) -> None:
        """The TLS of a connection from ``peer`` failed (a handshake: a client certificate the
        ``cafile`` does not vouch for, a client speaking plain MQTT...): logged as a violation
        is, without counting one. A certificate that fails verification while the gateway's
        clock is not set yet (:func:`~gateway.clockstep.unset_clock`) is said to be the clock's
        doing: every client certificate is not valid yet by a clock at 1970."""
        reasons = ", ".join(tls_reasons(error)) or str(error)
        year = unset_clock(self.clock.seconds()) if "certificate verify failed" in reasons else None
        why = (f": the gateway's clock says {year}, it is not set yet (no real-time clock, and NTP has not set "
               "it), so client certificates are not valid yet by it" if year is not None else "")
        self.violation(f"closing {peer}: its TLS failed ({reasons}){why}", count=False)

    def _log_closing(self, lines: LogThrottle, message: str) -> None:
        count = lines.note()
        if count is not None:
            more = count - 1
            # (not the key "message": Twisted's legacy log observers replace it with ())
            self.log.warn("listener {listener}: {closing}{more}", listener=self.listener_name, closing=message,
                          more=f" (and {more} more closed since the last such line)" if more else "")

    @property
    def full(self) -> bool:
        """Whether the listener serves its ``max_connections``."""
        return 0 < self.max_connections <= len(self.serving)

    def buildProtocol(self, addr: Any) -> MQTTConnection | None:
        """A new connection on this listener, or ``None`` (Twisted closes it) when the gateway
        keeps its last file descriptors (:attr:`reserve_refusals`), or when the listener is
        full and :data:`FULL_LISTENER_WAITING` connections already wait for their CONNECT."""
        if self.reserve_refusals.refuses(addr):
            return None
        if self.full and len(self.waiting) >= FULL_LISTENER_WAITING:
            self._refused_full(address_text(addr))
            return None
        return MQTTConnection(self)

    def connection_made(self, connection: MQTTConnection) -> None:
        """``connection`` is up: counted against ``max_connections``, or, the listener being
        full, left to wait for its CONNECT (:meth:`connect_arrived`)."""
        self.connections.add(connection)
        (self.waiting if self.full else self.serving).add(connection)

    def connect_arrived(self, connection: MQTTConnection, client_id: str) -> bool:
        """``connection`` sent its CONNECT, with ``client_id``: whether it goes on to the broker.

        One taken while the listener was full counts from now if there is a place (the
        connections that made it full may have closed meanwhile), or if its client is served
        on this listener now: accepted, it takes that connection over (a device whose old
        connection the gateway has not seen close, after a network blip), and until then it
        counts beyond the limit. Otherwise it is closed without an answer, as on accept
        (mosquitto does the same), and nothing it sent is handled."""
        if connection not in self.waiting:
            return True
        self.waiting.discard(connection)
        if self.full and self.acceptor.connection_of(client_id) not in self.serving:
            self._refused_full(address_text(connection.transport.getPeer()))
            connection.close_in_order()
            return False
        self.serving.add(connection)
        return True

    def _refused_full(self, peer: str) -> None:
        self.refused_full += 1
        if self.refused_full % 100 == 1:  # the first, then every 100th: a flood must not flood the log
            self.log.warn("listener {listener} is full ({limit} connection{s}): closing {peer}"
                          " ({count} closed so far)", listener=self.listener_name,
                          limit=self.max_connections, s="" if self.max_connections == 1 else "s", peer=peer,
                          count=self.refused_full)

    def connection_closed(self, connection: MQTTConnection) -> None:
        """``connection`` is gone: it no longer counts; fire the waiters of :meth:`when_idle`
        once no connection is left."""
        self.connections.discard(connection)
        self.serving.discard(connection)
        self.waiting.discard(connection)
        if self.churn is not None:
            self.churn.connection_closed()
        if not self.connections:
            self._unwatch()
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every connection of this listener has closed."""
        if self.connections:
            self._idle_waiters.append(callback)
        else:
            callback()


def _tls_failure(reason: Failure) -> bool:
    """Whether ``reason`` is pyOpenSSL's (a failed handshake), without importing it: a broker
    without a TLS listener never loads it."""
    return type(reason.value).__module__.startswith("OpenSSL")
