"""The simulated world of ``bench/fleet.py``: a task.Clock with a heap, a reactor whose
``connectTCP`` reaches an in-memory MQTT broker that accepts at most R CONNECT/s, and
real :class:`gateway.links.mqtt.MQTTLink` s (their ClientService, reconnect policy,
protocol, forwarder and drain rate limit) over in-memory streams."""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Any

from twisted.internet.base import DelayedCall
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

CONNACK_OK = b"\x20\x02\x00\x00"
CONNACK_UNAVAILABLE = b"\x20\x02\x00\x03"


class HeapClock(Clock):
    """``task.Clock`` with its pending calls in a heap: the same semantics, and fast with
    tens of thousands of them (Clock sorts its whole list at every callLater)."""

    def __init__(self) -> None:
        super().__init__()
        self._heap: list[tuple[float, int, DelayedCall]] = []
        self._seq = 0

    def _push(self, call: DelayedCall) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (call.getTime(), self._seq, call))

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> DelayedCall:  # type: ignore[override]
        # A real clock moves on between two calls; one microsecond of resolution keeps a timer
        # that re-arms itself for a rounding error's worth of time from spinning at one instant.
        when = self.seconds() + (max(delay, 1e-6) if delay > 0 else 0.0)
        call = DelayedCall(when, callable, args, kw, lambda c: None, self._push, seconds=self.seconds)
        self._push(call)
        return call

    def getDelayedCalls(self) -> list[DelayedCall]:  # type: ignore[override]
        return [c for _, _, c in self._heap if not (c.cancelled or c.called)]

    def advance(self, amount: float) -> None:
        """Run every call due up to now + ``amount``, in time order, moving the time to each."""
        end = self.rightNow + amount
        while self._heap and self._heap[0][0] <= end:
            when, _, call = heapq.heappop(self._heap)
            if call.cancelled or call.called or call.getTime() != when:
                continue  # canceled, or reset (it has another entry)
            self.rightNow = max(self.rightNow, when)
            call.called = 1
            call.func(*call.args, **call.kw)
        self.rightNow = end


class Connector:
    """What ``connectTCP`` returns."""

    def __init__(self, call: DelayedCall) -> None:
        self.call = call

    def stopConnecting(self) -> None:
        if self.call.active():
            self.call.cancel()

    def disconnect(self) -> None:
        self.stopConnecting()

    def getDestination(self) -> Any:
        return None


class Transport:
    """One client connection inside the broker."""

    connected = True
    disconnecting = False

    def __init__(self, broker: Broker, protocol: Any) -> None:
        self.broker = broker
        self.protocol = protocol
        self.buffer = b""

    def write(self, data: bytes) -> None:
        if self.connected:
            self.buffer += data
            self.broker.received(self)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.drop(Failure(ConnectionDone()))

    abortConnection = loseConnection

    def drop(self, reason: Failure) -> None:
        if not self.connected:
            return
        self.connected = False
        self.broker.sessions.discard(self)
        self.broker.clock.callLater(0, self.protocol.connectionLost, reason)

    def getPeer(self) -> Any:
        return None

    getHost = getPeer

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Broker:
    """A cloud broker in memory: up or down; when up, accepts at most ``rate`` CONNECT per
    second (CONNACK 3 "server unavailable" to the rest); acknowledges QoS 1 publishes.

    :param clock: the simulation's clock.
    :param rate: CONNECTs accepted per second (0: no limit).
    :param latency: seconds of network and broker time per answer.
    """

    def __init__(self, clock: HeapClock, rate: int = 0, latency: float = 0.02) -> None:
        self.clock = clock
        self.rate = rate
        self.latency = latency
        self.up = True
        self.sessions: set[Transport] = set()
        self.attempts: Counter[int] = Counter()   # CONNECTs received per second
        self.refused: Counter[int] = Counter()
        self.tcp_refused = 0
        self.accepted_in: Counter[int] = Counter()
        self.published = 0

    def connect(self, factory: Any) -> Connector:
        """A TCP connect from a client."""
        def arrive() -> None:
            if not self.up:
                self.tcp_refused += 1
                factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
                return
            protocol = factory.buildProtocol(None)
            transport = Transport(self, protocol)
            self.sessions.add(transport)
            protocol.makeConnection(transport)

        connector = Connector(self.clock.callLater(self.latency, arrive))
        return connector

    def received(self, transport: Transport) -> None:
        data = transport.buffer
        while len(data) >= 2:
            length, shift, i = 0, 0, 1
            while True:
                if i >= len(data):
                    transport.buffer = data
                    return
                byte = data[i]
                length |= (byte & 0x7F) << shift
                shift += 7
                i += 1
                if not byte & 0x80:
                    break
            if len(data) < i + length:
                break
            kind, body, data = data[0] >> 4, data[i:i + length], data[i + length:]
            self._packet(transport, kind, data_flags=0, body=body)
        transport.buffer = data

    def _answer(self, transport: Transport, data: bytes) -> None:
        def deliver() -> None:
            if transport.connected:
                transport.protocol.dataReceived(data)
        self.clock.callLater(self.latency, deliver)

    def _packet(self, transport: Transport, kind: int, data_flags: int, body: bytes) -> None:
        second = int(self.clock.seconds())
        if kind == 1:  # CONNECT
            self.attempts[second] += 1
            if self.rate and self.accepted_in[second] >= self.rate:
                self.refused[second] += 1
                self._answer(transport, CONNACK_UNAVAILABLE)
            else:
                self.accepted_in[second] += 1
                self._answer(transport, CONNACK_OK)
        elif kind == 3:  # PUBLISH (QoS 1: topic length, topic, packet id)
            self.published += 1
            topic_length = int.from_bytes(body[:2], "big")
            packet_id = body[2 + topic_length:4 + topic_length]
            self._answer(transport, b"\x40\x02" + packet_id)
        elif kind == 8:  # SUBSCRIBE: granted QoS 1 for each filter
            packet_id, rest, granted = body[:2], body[2:], b""
            while rest:
                n = int.from_bytes(rest[:2], "big")
                rest = rest[3 + n:]
                granted += b"\x01"
            self._answer(transport, bytes([0x90, 2 + len(granted)]) + packet_id + granted)
        elif kind == 12:  # PINGREQ
            self._answer(transport, b"\xd0\x00")
        elif kind == 14:  # DISCONNECT
            transport.drop(Failure(ConnectionDone()))

    def go_down(self) -> None:
        """The broker stops: every connection drops, connects are refused."""
        self.up = False
        for transport in list(self.sessions):
            transport.drop(Failure(ConnectionLost("broker went away")))

    def come_back(self) -> None:
        """The broker is back."""
        self.up = True


class FleetReactor(HeapClock):
    """The clock, plus ``connectTCP`` to the broker (what Twisted's tcp: endpoints call)."""

    def __init__(self) -> None:
        super().__init__()
        self.broker = Broker(self)

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30, bindAddress: Any = None) -> Connector:
        return self.broker.connect(factory)
