"""One MQTT client connection: a Twisted protocol that frames bytes and hands them to amqtt."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.adapters import TransportReader, TransportWriter
from gateway.broker.framing import PacketFramer, ProtocolViolation

#: ``(reader, writer, listener_name) -> coroutine`` serving one connection (amqtt's
#: ``Broker.external_connected``).
SessionRunner = Callable[[TransportReader, TransportWriter, str], Coroutine[Any, Any, None]]


class MQTTConnection(Protocol):
    """Feeds one connection's bytes to an amqtt session, closing it on protocol violations.

    :param factory: the listener's :class:`MQTTListenerFactory`.
    """

    log = Logger()

    def __init__(self, factory: "MQTTListenerFactory") -> None:
        self.factory = factory
        self.framer = PacketFramer(factory.max_packet_size)
        self.reader: TransportReader | None = None
        self.writer: TransportWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self._connect_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """Start the amqtt session and the CONNECT deadline."""
        loop = self.factory.loop
        self.factory.connections.add(self)
        self.reader = TransportReader(loop, self.transport)
        self.writer = TransportWriter(loop, self.transport)
        self._connect_timer = self.factory.clock.callLater(self.factory.connect_timeout, self._connect_timed_out)
        self.task = loop.create_task(self.factory.run_session(self.reader, self.writer, self.factory.listener_name))
        self.task.add_done_callback(self._session_ended)

    def dataReceived(self, data: bytes) -> None:
        """Check framing, then pass the bytes on to amqtt."""
        try:
            self.framer.feed(data)
        except ProtocolViolation as exc:
            self.log.warn("closing {peer}: {reason}", peer=str(self.transport.getPeer()), reason=str(exc))
            self.factory.violations += 1
            self._cancel_connect_timer()
            self.transport.abortConnection()
            return
        if self._connect_timer is not None and self.framer.packets_complete:
            self._cancel_connect_timer()  # the CONNECT has arrived whole (the framer checked it came first)
        assert self.reader is not None
        self.reader.feed(data)

    def _connect_timed_out(self) -> None:
        self._connect_timer = None
        self.log.warn("closing {peer}: no CONNECT within {timeout} s",
                      peer=str(self.transport.getPeer()), timeout=self.factory.connect_timeout)
        self.transport.abortConnection()

    def _cancel_connect_timer(self) -> None:
        if self._connect_timer is not None and self._connect_timer.active():
            self._connect_timer.cancel()
        self._connect_timer = None

    def _session_ended(self, task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.failure("MQTT session failed", Failure(task.exception()))
        if self.writer is not None and not self.writer.closed:
            self.writer.closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        """Tell amqtt the stream ended; release the writer's waiters."""
        self._cancel_connect_timer()
        if self.reader is not None:
            self.reader.feed_eof()
        if self.writer is not None:
            self.writer.connection_lost()
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
    """

    def __init__(self, listener_name: str, run_session: SessionRunner, loop: asyncio.AbstractEventLoop,
                 clock: IReactorTime, max_packet_size: int, connect_timeout: float) -> None:
        self.listener_name = listener_name
        self.run_session = run_session
        self.loop = loop
        self.clock = clock
        self.max_packet_size = max_packet_size
        self.connect_timeout = connect_timeout
        self.connections: set[MQTTConnection] = set()
        self.violations = 0
        self._idle_waiters: list[Callable[[], None]] = []

    def buildProtocol(self, addr: Any) -> MQTTConnection:
        """A new connection on this listener."""
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
