"""A byte-level MQTT client for tests that must control exactly what is sent, acknowledged and read."""

from __future__ import annotations

from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from tests.broker import packets

WAIT = 10.0


class ScriptedClient(protocol.Protocol):
    """Records every packet from the broker; acknowledges QoS 1/2 PUBLISHes unless told not to.

    :ivar publishes: ``(topic, payload, qos, packet_id, retain, dup)`` of each PUBLISH received.
    :ivar others: ``(first byte, body)`` of every other packet.
    """

    def __init__(self, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.publishes: list[tuple[str, bytes, int, int | None, bool, bool]] = []
        self.others: list[tuple[int, bytes]] = []
        self.lost: Deferred[None] = Deferred()
        #: why the connection ended (ConnectionDone: closed in order; ConnectionLost: reset)
        self.reason: Any = None
        self._rest = b""
        self._waiters: list[tuple[Any, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        """Parse packets, acknowledge, wake waiters."""
        found, self._rest = packets.split(self._rest + data)
        for first, body in found:
            if first >> 4 == 3:
                message = packets.parse_publish(first, body)
                self.publishes.append(message)
                if self.auto_ack and message[2] == 1:
                    self.transport.write(packets.ack(4, message[3]))
                elif self.auto_ack and message[2] == 2:
                    self.transport.write(packets.ack(5, message[3]))
            else:
                self.others.append((first, body))
                if self.auto_ack and first >> 4 == 6:
                    self.transport.write(packets.ack(7, int.from_bytes(body[:2], "big")))
        for condition, waiter in list(self._waiters):
            if condition():
                self._waiters.remove((condition, waiter))
                waiter.callback(None)

    def until(self, condition: Any, reactor: Any, timeout: float = WAIT) -> Deferred[None]:
        """Fires once ``condition()`` holds (checked as packets arrive)."""
        d: Deferred[None] = Deferred()
        if condition():
            d.callback(None)
        else:
            self._waiters.append((condition, d))
        return d.addTimeout(timeout, reactor)

    def connectionLost(self, reason: Any = None) -> None:
        """Keep the reason, fire ``lost``."""
        self.reason = reason
        self.lost.callback(None)


def scripted_connect(reactor: Any, port: int, auto_ack: bool = True) -> Deferred[ScriptedClient]:
    """Open a TCP connection with a :class:`ScriptedClient` (nothing sent yet)."""
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), ScriptedClient(auto_ack))
