"""One MQTT client connection: a Twisted protocol that frames bytes and hands them to amqtt."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.adapters import IConnectionTransport, TransportReader, TransportWriter
from gateway.mqtt.framing import PacketFramer, ProtocolViolation
from gateway.mqtt.packets import CONNECT, Packet, encode_packet

#: ``(reader, writer, listener_name) -> coroutine`` serving one connection (amqtt's
#: ``Broker.external_connected``).
SessionRunner = Callable[[TransportReader, TransportWriter, str], Coroutine[Any, Any, None]]


class PacketSink(TypingProtocol):
    """What takes a connection's packets after CONNECT (the session's protocol handler)."""

    def packet_received(self, packet: Packet) -> None:
        """One validated packet."""

    def connection_lost(self) -> None:
        """The connection is gone."""


class MQTTConnection(Protocol):
    """Frames one connection's bytes: CONNECT goes to amqtt, later packets to the session's handler.

    Also enforces the keep-alive (§3.1.2.10): no packet within 1.5 times the CONNECT's
    keep-alive closes the connection, and amqtt then publishes the client's will. Only
    time the broker spends reading counts: while reading is paused (:meth:`pause_reading`,
    back-pressure) the client's packets wait unread in the socket, so its silence proves
    nothing; the keep-alive stops, and starts over in full when reading resumes.

    :param factory: the listener's :class:`MQTTListenerFactory`.
    """

    log = Logger()
    transport: IConnectionTransport  # set by makeConnection, before any method here runs

    def __init__(self, factory: "MQTTListenerFactory") -> None:
        self.factory = factory
        self.framer = PacketFramer(factory.max_packet_size)
        self.reader: TransportReader | None = None
        self.writer: TransportWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.handler: PacketSink | None = None
        self.pending: list[Packet] = []
        self.lost = False
        self._connect_timer: IDelayedCall | None = None
        self._keepalive_timer: IDelayedCall | None = None
        self._keepalive = 0.0
        self._last_packet = 0.0
        self._pausers: set[Any] = set()

    def connectionMade(self) -> None:
        """Start the amqtt session and the CONNECT deadline."""
        loop = self.factory.loop
        self.factory.connections.add(self)
        self.reader = TransportReader(loop, self.transport, self)
        self.writer = TransportWriter(loop, self.transport)
        self._connect_timer = self.factory.clock.callLater(self.factory.connect_timeout, self._connect_timed_out)
        self.task = loop.create_task(self.factory.run_session(self.reader, self.writer, self.factory.listener_name))
        self.task.add_done_callback(self._session_ended)

    def dataReceived(self, data: bytes) -> None:
        """Check framing and the protocol rules, then pass the packets on."""
        if self.lost:
            return
        self.factory.bytes_received += len(data)
        try:
            packets = self.framer.feed(data)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        if not packets:
            return
        if self._keepalive:
            self._last_packet = self.factory.clock.seconds()
        if self.handler is None or self.pending or self._pausers:
            for packet in packets:
                if packet.packet_type == CONNECT:
                    self._connect_received(packet)
                else:
                    self.pending.append(packet)
            return
        self._dispatch(packets)

    def _dispatch(self, packets: list[Packet]) -> None:
        """Hand packets to the handler; stop (keeping the rest) when back-pressure pauses us."""
        handler = self.handler
        assert handler is not None
        for index, packet in enumerate(packets):
            handler.packet_received(packet)
            if self._pausers:
                self.pending[:0] = packets[index + 1:]
                return

    def _violation(self, exc: ProtocolViolation) -> None:
        self.log.warn("closing {peer}: {reason}", peer=str(self.transport.getPeer()), reason=str(exc))
        self.factory.violations += 1
        self.lost = True
        self._cancel_timers()
        if exc.reply:  # §3.1.2.2: a refused protocol level is answered before closing
            self.transport.write(exc.reply)
            self.transport.loseConnection()
        else:
            self.transport.abortConnection()

    def _connect_received(self, packet: Packet) -> None:
        self._cancel_timers()
        keep_alive = packet.fields["keep_alive"]
        if keep_alive:
            self._keepalive = 1.5 * keep_alive
            self._start_keepalive()
        assert self.reader is not None
        self.reader.feed(encode_packet(packet))

    def _start_keepalive(self) -> None:
        """Count the keep-alive from now (at CONNECT, and when reading resumes after a pause)."""
        if not self._keepalive or self.lost or self._pausers:
            return
        clock = self.factory.clock
        self._last_packet = clock.seconds()
        if self._keepalive_timer is None or not self._keepalive_timer.active():
            self._keepalive_timer = clock.callLater(self._keepalive, self._keepalive_check)

    def _stop_keepalive(self) -> None:
        timer, self._keepalive_timer = self._keepalive_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _keepalive_check(self) -> None:
        # One timer per keep-alive period, not one per packet: it re-arms for what is left.
        clock = self.factory.clock
        idle = clock.seconds() - self._last_packet
        if idle < self._keepalive:
            self._keepalive_timer = clock.callLater(self._keepalive - idle, self._keepalive_check)
            return
        self._keepalive_timer = None
        self.log.info("closing {peer}: no packet for {idle:.1f} s (keep-alive {keep_alive} s) [MQTT-3.1.2-24]",
                      peer=str(self.transport.getPeer()), idle=idle, keep_alive=self._keepalive / 1.5)
        self.transport.abortConnection()

    def attach(self, handler: PacketSink) -> None:
        """Send the packets after CONNECT to ``handler`` (those already here first)."""
        self.handler = handler
        self._release_pending()
        if self.lost:
            handler.connection_lost()

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
        """Stop reading from the socket until :meth:`resume_reading` with the same key (back-pressure).

        The keep-alive stops too: what the client sends now waits unread, so its silence
        is the broker's doing.
        """
        if not self._pausers and not self.lost:
            self.transport.pauseProducing()
            self._stop_keepalive()
        self._pausers.add(key)

    def resume_reading(self, key: Any) -> None:
        """Undo :meth:`pause_reading` for ``key``; reading (and the keep-alive) resume once no key holds it."""
        if key not in self._pausers:
            return
        self._pausers.discard(key)
        if not self._pausers:
            self._release_pending()
        if not self._pausers and not self.lost:
            self.transport.resumeProducing()
            self._start_keepalive()

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        self.log.warn("closing {peer}: no CONNECT within {timeout} s",
                      peer=str(self.transport.getPeer()), timeout=self.factory.connect_timeout)
        self.transport.abortConnection()

    def _cancel_timers(self) -> None:
        for timer in (self._connect_timer, self._keepalive_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._connect_timer = self._keepalive_timer = None

    def _session_ended(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.failure("MQTT session failed", Failure(task.exception()))
        if self.writer is not None and not self.writer.closed:
            self.writer.closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        """Tell amqtt and the handler the stream ended; release the writer's waiters."""
        self.lost = True
        self._cancel_timers()
        if self.reader is not None:
            self.reader.feed_eof()
        if self.writer is not None:
            self.writer.connection_lost()
        if self.handler is not None:
            self.handler.connection_lost()
        self.factory.connections.discard(self)
        self.factory.connection_closed(self)


class MQTTListenerFactory(Factory):
    """Builds :class:`MQTTConnection` protocols for one named listener.

    :param listener_name: the amqtt listener the connections belong to.
    :param run_session: serves one connection (amqtt's ``external_connected``).
    :param loop: the asyncio loop amqtt runs on.
    :param clock: schedules the CONNECT deadline.
    :param max_packet_size: the largest packet accepted, in bytes.
    :param connect_timeout: seconds a client has to send CONNECT.
    :param max_connections: connections served at once; one more is closed on accept (0: no limit).
    """

    def __init__(self, listener_name: str, run_session: SessionRunner, loop: asyncio.AbstractEventLoop,
                 clock: IReactorTime, max_packet_size: int, connect_timeout: float,
                 max_connections: int = 0) -> None:
        self.listener_name = listener_name
        self.run_session = run_session
        self.loop = loop
        self.clock = clock
        self.max_packet_size = max_packet_size
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.connections: set[MQTTConnection] = set()
        self.violations = 0
        self.refused_full = 0  # connections closed on accept because the listener was full
        self.bytes_received = 0
        self._idle_waiters: list[Callable[[], None]] = []

    def buildProtocol(self, addr: Any) -> MQTTConnection | None:
        """A new connection on this listener, or ``None`` (Twisted closes it) when it is full."""
        if self.max_connections and len(self.connections) >= self.max_connections:
            self.refused_full += 1
            if self.refused_full % 100 == 1:  # the first, then every 100th: a flood must not flood the log
                MQTTConnection.log.warn("listener {listener} is full ({limit} connections): closing {peer}"
                                        " ({count} closed so far)", listener=self.listener_name,
                                        limit=self.max_connections, peer=str(addr), count=self.refused_full)
            return None
        return MQTTConnection(self)

    def connection_closed(self, connection: MQTTConnection) -> None:
        """Fire the waiters of :meth:`when_idle` once no connection is left."""
        if not self.connections:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter()

    def when_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every connection of this listener has closed."""
        if self.connections:
            self._idle_waiters.append(callback)
        else:
            callback()
