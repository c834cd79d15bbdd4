"""A cloud link against a hostile cloud broker (a small Twisted server on 127.0.0.1 playing
a script per connection), with a real journal: whatever the cloud does, the link says why
it dropped, reconnects with its back-off, and loses nothing of its stream."""

from __future__ import annotations

import struct

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent
from twisted.trial.unittest import TestCase

from gateway.journal.record import Record
from gateway.links.mqtt import MQTTLink
from gateway.links.settings import LinkSettings
from gateway.mqtt import packets as codec
from tests.broker import packets
from tests.broker.harness import eventually
from tests.links.memory import start_journal
from tests.logevents import capture_log_events

COMMAND = "command//dev/req/1/ping"
COUNT = 20


class ScriptedCloud(Protocol):
    """One connection of :class:`HostileCloud`: its behaviour is the script for its number."""

    factory: "HostileCloud"

    def connectionMade(self) -> None:
        self.number = len(self.factory.connections)
        self.factory.connections.append(self)
        self.rest = b""
        self.published = False

    def dataReceived(self, data: bytes) -> None:
        found, self.rest = packets.split(self.rest + data)
        for first, body in found:
            self.factory.received.append((self.number, first, body))
            getattr(self, f"script_{self.number}", self.script_4)(first >> 4, first, body)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def script_0(self, kind: int, first: int, body: bytes) -> None:
        """Refuse (not authorized), and send a PINGRESP behind the refusal."""
        if kind == codec.CONNECT:
            self.send(codec.connack(False, 5) + codec.PINGRESP_PACKET)

    def script_1(self, kind: int, first: int, body: bytes) -> None:
        """Accept; acknowledge the first PUBLISH and an id never used, send a QoS 2 command
        (the downlink subscribes at QoS 1), release it once PUBREC'd, then a second CONNACK."""
        if kind == codec.CONNECT:
            self.send(codec.connack(False, 0))
        elif kind == codec.SUBSCRIBE:
            self.send(codec.suback(struct.unpack("!H", body[:2])[0], [1]))
        elif kind == codec.PUBLISH and not self.published:
            self.published = True
            message = packets.parse_publish(first, body)
            self.factory.acked.add(message[1])
            self.send(codec.ack(codec.PUBACK, message[3] or 0) + codec.ack(codec.PUBACK, 999)
                      + codec.publish(COMMAND, b"ping", 2, packet_id=42))
        elif kind == codec.PUBREC:
            self.send(codec.ack(codec.PUBREL, 42))
        elif kind == codec.PUBCOMP:
            self.send(codec.connack(False, 0))

    def script_2(self, kind: int, first: int, body: bytes) -> None:
        """Accept, then announce a packet of 268 MB."""
        if kind == codec.CONNECT:
            self.send(codec.connack(False, 0) + b"\x30\xff\xff\xff\x7f")

    def script_3(self, kind: int, first: int, body: bytes) -> None:
        """Accept, then close in the middle of a PUBLISH."""
        if kind == codec.CONNECT:
            self.send(codec.connack(False, 0) + codec.publish(COMMAND, b"cut", 1, packet_id=7)[:6])
            assert self.transport is not None
            self.transport.loseConnection()

    def script_4(self, kind: int, first: int, body: bytes) -> None:
        """A well-behaved broker: acknowledges every QoS 1 PUBLISH."""
        if kind == codec.CONNECT:
            self.send(codec.connack(False, 0))
        elif kind == codec.SUBSCRIBE:
            self.send(codec.suback(struct.unpack("!H", body[:2])[0], [1]))
        elif kind == codec.PUBLISH:
            message = packets.parse_publish(first, body)
            self.factory.acked.add(message[1])
            self.send(codec.ack(codec.PUBACK, message[3] or 0))
        elif kind == codec.PINGREQ:
            self.send(codec.PINGRESP_PACKET)


class HostileCloud(Factory):
    """The cloud broker: connection 0, 1... each plays ``ScriptedCloud.script_<n>``, 4 on."""

    protocol = ScriptedCloud

    def __init__(self) -> None:
        self.connections: list[ScriptedCloud] = []
        self.received: list[tuple[int, int, bytes]] = []
        self.acked: set[bytes] = set()


class HostileCloudTests(TestCase):
    """The link through five connections to a cloud that misbehaves four times."""

    timeout = 60

    @inlineCallbacks
    def test_nothing_in_the_journal_is_lost(self) -> None:
        """A refusal with a packet behind it, a second CONNACK (after a PUBACK for an id never
        used and a QoS 2 command), a 268 MB remaining length and a close mid-packet: each
        drop has a cause that says what happened, the link reconnects (with its back-off)
        every time, the command reaches the local broker once, and every record that was in
        the journal reaches the cloud and is acknowledged in the journal."""
        events = capture_log_events(self)
        cloud = HostileCloud()
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(cloud)
        self.addCleanup(port.stopListening)
        journal = yield start_journal(self, reactor)
        stream = journal.stream("link-cloud")
        payloads = [b"m%d" % i for i in range(COUNT)]
        for payload in payloads:
            yield stream.append(Record("telemetry/t/d/x", payload, 1, False, 0.0))
        causes: list[str] = []
        local: list[tuple[str, bytes, int, bool]] = []

        def local_publish(topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
            local.append((topic, payload, qos, retain))
            return succeed(None)

        settings = LinkSettings(endpoint=f"tcp:host=127.0.0.1:port={port.getHost().port}", loss_topic=None,
                                backoff_initial=0.05, backoff_max=0.2, min_connect_interval=0.05, window=4)
        link = MQTTLink("cloud", settings, stream, reactor, ("t", "dev"), local_publish,
                        lambda name, connected, cause: causes.append(cause))
        yield link.start()
        self.addCleanup(link.stop)
        yield eventually(reactor, lambda: cloud.acked == set(payloads) and stream.unacked("cloud") == 0,
                         timeout=30)
        self.assertEqual(len(cloud.connections), 5)
        lost = [cause for cause in causes if cause]
        self.assertEqual(lost[0], f"127.0.0.1:{port.getHost().port} refused the MQTT connection: not authorized "
                                  "(check the credentials and what the account may do)")
        self.assertIn("a second CONNACK", lost[1])
        self.assertIn("packet of 268435455 bytes is over the 1048576 limit", lost[2])
        self.assertEqual(lost[3], f"connection to 127.0.0.1:{port.getHost().port} closed")
        self.assertEqual([m for m in local if m[1] == b"ping"],
                         [(COMMAND, b"ping", 1, False), ("c//dev/q/1/ping", b"ping", 1, False)])
        self.assertNotIn(b"cut", [m[1] for m in local])
        assert link.reconnect is not None
        self.assertEqual(link.reconnect.failures, 4)  # each drop came soon after its CONNACK
        lines = "\n".join(formatEvent(event) for event in events)
        for line in (f"link cloud cannot connect: 127.0.0.1:{port.getHost().port} refused the MQTT connection: not "
                     "authorized (check the credentials and what the account may do)",
                     "closing the link connection: a second CONNACK",
                     f"link cloud cannot connect: malformed packet from 127.0.0.1:{port.getHost().port}: packet of "
                     "268435455 bytes is over the 1048576 limit",
                     f"link cloud disconnected: connection to 127.0.0.1:{port.getHost().port} closed"):
            self.assertIn(line, lines)
        pubcomps = [body for number, first, body in cloud.received if first == 0x70]
        self.assertEqual(pubcomps, [b"\x00\x2a"])
