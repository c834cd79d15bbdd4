"""The link's MQTT client protocol over StringTransport, and the forwarder's window and resends."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt import packets as codec
from gateway.links.endpoint import full_jitter_backoff
from gateway.links.forwarder import CURSOR_ACK_INTERVAL, MAX_PACKET_ID, Forwarder, TokenBucket
from gateway.links.protocol import MQTTClientProtocol, SessionOptions
from gateway.journal.record import Record
from tests.links.memory import MemoryStream
from tests.steppingclock import SteppingClock

CONNACK_OK = b"\x20\x02\x00\x00"


class Handler:
    """Records what the protocol reports."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.delivery: Deferred[None] | None = None

    def connected(self, protocol: Any, session_present: bool) -> None:
        self.events.append(("connected", session_present))

    def pubacks(self, packet_ids: list[int]) -> None:
        self.events.extend(("puback", packet_id) for packet_id in packet_ids)

    def message(self, publish: codec.Publish) -> Any:
        self.events.append(("message", publish.topic, publish.payload, publish.qos))
        return self.delivery

    def disconnected(self, protocol: Any, cause: str) -> None:
        self.events.append(("disconnected", cause))


def connect(handler: Any = None, **options: Any) -> tuple[MQTTClientProtocol, StringTransport, Clock, Any]:
    clock = Clock()
    handler = handler or Handler()
    protocol = MQTTClientProtocol(handler, SessionOptions("gw1", **options), clock)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, handler


def lose(protocol: MQTTClientProtocol, transport: StringTransport) -> None:
    """StringTransport does not call connectionLost itself."""
    if transport.disconnecting or getattr(transport, "disconnected", False):
        from twisted.python.failure import Failure
        protocol.connectionLost(Failure(ConnectionError("closed")))


class ConnectTests(SynchronousTestCase):
    """CONNECT, CONNACK and its refusals."""

    def test_connect_packet(self) -> None:
        """CONNECT carries client id, keepalive, clean session, will and credentials."""
        protocol, transport, _, _ = connect(keepalive=30, clean_session=True, username="u", password="p",
                                            will=("w/t", b"gone", 1, True))
        self.assertEqual(transport.value(), codec.connect("gw1", 30, True, "u", "p", ("w/t", b"gone", 1, True)))
        self.assertEqual(transport.value()[:2], b"\x10" + bytes((len(transport.value()) - 2,)))
        self.assertEqual(transport.value()[8:12], b"MQTT"[0:0] + bytes((4, 0xC2 | 0x04 | 0x08 | 0x20, 0, 30)))

    def test_accepted(self) -> None:
        """CONNACK 0 reports the session-present flag."""
        protocol, _, _, handler = connect()
        protocol.dataReceived(b"\x20\x02\x01\x00")
        self.assertEqual(handler.events, [("connected", True)])

    def test_refused(self) -> None:
        """A refusal closes the connection, with the reason as the cause."""
        protocol, transport, _, handler = connect()
        protocol.dataReceived(b"\x20\x02\x00\x05")
        self.assertTrue(transport.disconnecting)
        lose(protocol, transport)
        self.assertEqual(handler.events, [("disconnected", "the cloud broker refused the MQTT connection: "
                                                           "not authorized (check the credentials and what the "
                                                           "account may do)")])

    def test_a_refusal_stays_the_cause_whatever_follows_it(self) -> None:
        """Packets after a refusing CONNACK in the same read (a PUBLISH, a second CONNACK) are
        not handled: the connection closes in order for the refusal, with its reason and
        remedy. They were taken for packets before CONNACK: the status said "malformed packet
        ... before CONNACK" and the connection was aborted."""
        for after in (codec.publish("c", b"x", 0), b"\x20\x02\x00\x00", codec.PINGRESP_PACKET):
            protocol, transport, _, handler = connect()
            protocol.dataReceived(b"\x20\x02\x00\x04" + after)
            self.assertTrue(transport.disconnecting)
            self.assertFalse(getattr(transport, "disconnected", False), "closed in order, not aborted")
            self.assertEqual(protocol.cause, "the cloud broker refused the MQTT connection: bad user name or "
                                             "password (check username and password)")
            self.assertEqual((protocol.refused_code, handler.events), (4, []))

    def test_connack_timeout(self) -> None:
        """No CONNACK within connect_timeout aborts the connection."""
        protocol, transport, clock, handler = connect(connect_timeout=5)
        clock.advance(5)
        self.assertTrue(transport.disconnecting)

    def test_packet_before_connack(self) -> None:
        """Anything before CONNACK is a protocol violation."""
        protocol, transport, _, _ = connect()
        protocol.dataReceived(b"\xd0\x00")
        self.assertTrue(transport.disconnecting)
        self.assertIn("before CONNACK", protocol.cause)


class MalformedTests(SynchronousTestCase):
    """Malformed packets from the server close the connection."""

    def check(self, data: bytes, fragment: str) -> None:
        protocol, transport, _, _ = connect()
        protocol.dataReceived(CONNACK_OK)
        protocol.dataReceived(data)
        self.assertTrue(transport.disconnecting, data)
        self.assertIn(fragment, protocol.cause)

    def test_reserved_type(self) -> None:
        """Packet type 0 and client-only types."""
        self.check(b"\x00\x00", "packet type 0")
        self.check(b"\x10\x00", "packet type 1")

    def test_bad_flags_and_lengths(self) -> None:
        """Wrong fixed-header flags, wrong sizes, QoS 3, a 5-byte length."""
        self.check(b"\x41\x02\x00\x01", "flags")
        self.check(b"\x40\x03\x00\x01\x00", "2 bytes")
        self.check(b"\x36\x05\x00\x01a\x00\x01", "QoS 3")
        self.check(b"\x30\xff\xff\xff\xff\x7f", "4 bytes")
        self.check(b"\x30\x03\x00\x05a", "shorter")
        self.check(b"\x20\x02\x00\x00", "second CONNACK")


class MaxPacketSizeTests(SynchronousTestCase):
    """The link takes packets from the cloud up to its ``max_packet_size``, no bigger."""

    def publish(self, remaining: int) -> bytes:
        """A QoS 0 PUBLISH to ``t`` whose remaining length is ``remaining``."""
        return codec.publish("t", b"x" * (remaining - 3), 0, False)

    def test_at_the_limit_taken_above_it_closed_with_both_sizes(self) -> None:
        protocol, transport, _, handler = connect(max_packet_size=100)
        protocol.dataReceived(CONNACK_OK)
        protocol.dataReceived(self.publish(100))
        self.assertEqual(handler.events[-1], ("message", "t", b"x" * 97, 0))
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(self.publish(101))
        self.assertTrue(transport.disconnecting)
        self.assertIn("packet of 101 bytes is over the 100 limit", protocol.cause)

    def test_a_link_takes_its_settings_value(self) -> None:
        """``links.links.<name>.max_packet_size`` reaches the link's connections (1 MiB by default)."""
        from gateway.links.mqtt import MQTTLink
        from gateway.links.settings import LinkSettings

        def link(settings: LinkSettings) -> MQTTLink:
            return MQTTLink("cloud", settings, MemoryStream(), Clock(), ("t", "d"), lambda *a: None, lambda *a: None)

        self.assertEqual(link(LinkSettings(loss_topic=None)).options.max_packet_size, 1 << 20)
        self.assertEqual(link(LinkSettings(loss_topic=None, max_packet_size=5000)).options.max_packet_size, 5000)

    def test_will_topic_placeholders_are_filled(self) -> None:
        """The will a link's CONNECT carries has ``{tenant}`` and ``{device}`` of its topic filled
        in (docs/links.md's example ``event/{tenant}/{device}/gone``), with the will keys' values."""
        from gateway.links.mqtt import MQTTLink
        from gateway.links.settings import LinkSettings

        settings = LinkSettings(loss_topic=None, will_topic="event/{tenant}/{device}/gone", will_payload="bye",
                                will_qos=2, will_retain=True)
        link = MQTTLink("cloud", settings, MemoryStream(), Clock(), ("t", "d"), lambda *a: None, lambda *a: None)
        self.assertEqual(link.options.will, ("event/t/d/gone", b"bye", 2, True))


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


class PubackReadTests(SynchronousTestCase):
    """Reads made of PUBACKs (taken in one pass) mean what the same packets mean one by one."""

    def acked(self, *reads: bytes) -> tuple[list[int], Any]:
        protocol, transport, _, handler = connect()
        protocol.dataReceived(CONNACK_OK)
        for data in reads:
            protocol.dataReceived(data)
        return [e[1] for e in handler.events if e[0] == "puback"], transport

    def test_every_split_of_a_stream(self) -> None:
        """PUBACKs with a PINGRESP and a PUBLISH among them, cut at every byte: same ids, in order."""
        publish = codec.publish("c/x", b"p", 0, False, 0, False)
        stream = puback(1) + puback(2) + puback(300) + b"\xd0\x00" + puback(4) + publish + puback(65535)
        for cut in range(len(stream) + 1):
            ids, transport = self.acked(stream[:cut], stream[cut:])
            self.assertEqual(ids, [1, 2, 300, 4, 65535], cut)
            self.assertFalse(transport.disconnecting, cut)

    def test_long_run(self) -> None:
        """A read of 1000 PUBACKs (ids wrapping nowhere) gives 1000 ids."""
        ids, _ = self.acked(b"".join(puback(i) for i in range(1, 1001)))
        self.assertEqual(ids, list(range(1, 1001)))

    def test_before_connack(self) -> None:
        """A PUBACK before CONNACK is still a protocol violation."""
        protocol, transport, _, handler = connect()
        protocol.dataReceived(puback(1) + puback(2))
        self.assertTrue(transport.disconnecting)
        self.assertIn("before CONNACK", protocol.cause)
        self.assertEqual([e for e in handler.events if e[0] == "puback"], [])

    def test_malformed_after_run(self) -> None:
        """Whole PUBACKs before a malformed packet count; the malformed one closes the link."""
        ids, transport = self.acked(puback(7) + puback(8) + b"\x40\x03\x00\x01\x00")
        self.assertEqual(ids, [7, 8])
        self.assertTrue(transport.disconnecting)

    def test_pubacks_behind_another_packet_before_a_malformed_one_count(self) -> None:
        """PUBACKs the one-pass path does not take (a PINGRESP before them) and a malformed
        packet in the same read: the PUBACKs still count, then the link closes. They were
        dropped with the read, so the link sent those messages again (duplicates)."""
        ids, transport = self.acked(b"\xd0\x00" + puback(7) + puback(8) + b"\xf0\x00")
        self.assertEqual(ids, [7, 8])
        self.assertTrue(transport.disconnecting)

    def test_keeps_dead_peer_away(self) -> None:
        """PUBACKs taken in one pass still show the server is alive."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        protocol.dataReceived(CONNACK_OK)
        clock.advance(10)  # PINGREQ sent, the dead-peer deadline starts
        protocol.dataReceived(puback(1))
        clock.advance(5)
        self.assertFalse(transport.disconnecting)


class KeepaliveTests(SynchronousTestCase):
    """PINGREQ when idle; no answer means a dead peer."""

    def test_ping_and_dead_peer(self) -> None:
        """After keepalive idle seconds a PINGREQ goes; ping_timeout later the link is dropped."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        protocol.dataReceived(CONNACK_OK)
        transport.clear()
        clock.advance(10)
        self.assertEqual(transport.value(), codec.PINGREQ_PACKET)
        clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no PINGRESP", protocol.cause)

    def test_pingresp_keeps_alive(self) -> None:
        """A PINGRESP cancels the deadline; traffic both ways postpones the next PINGREQ."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        protocol.dataReceived(CONNACK_OK)
        clock.advance(10)
        protocol.dataReceived(b"\xd0\x00")
        clock.advance(5)
        protocol.publish("a", b"x", 1, False, 1, False)
        protocol.dataReceived(puback(1))
        transport.clear()
        clock.advance(5)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        clock.advance(5)
        self.assertEqual(transport.value(), codec.PINGREQ_PACKET)

    def test_a_busy_reactor_reads_the_pingresp_before_it_gives_up(self) -> None:
        """The PINGRESP's deadline passing during a long turn of the reactor (a slow CPU
        reading a flood of local PUBLISHes) is judged in the next turn, after its reads: the
        timer runs at the end of that turn, while the PINGRESP that came in time waits in the
        socket. The link was closed for 'no PINGRESP' (and the cloud called overloaded) for
        its own reactor's lag. A PINGRESP that did not come by then still closes it."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        protocol.dataReceived(CONNACK_OK)
        clock.advance(10)  # PINGREQ
        clock.advance(2)
        # A turn runs from 12 to 13.5 s; the PINGRESP comes at 12.5 s and waits for the next
        # turn, which reads it at 13.5 s, after the deadline due at 13 s has run at the end of
        # this one (the clock runs what is due in the order of the times it was due at).
        clock.callLater(1.2, protocol.dataReceived, codec.PINGRESP_PACKET)
        clock.advance(1.5)
        self.assertFalse(transport.disconnecting)
        clock.advance(10)  # the next PINGREQ, left unanswered
        clock.advance(3)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no PINGRESP within 3 s", protocol.cause)

    def test_a_busy_reactor_reads_the_connack_before_it_gives_up(self) -> None:
        """The same for the CONNACK's deadline (``connect_timeout``)."""
        protocol, transport, clock, handler = connect(connect_timeout=30)
        clock.advance(29)
        clock.callLater(1.5, protocol.dataReceived, CONNACK_OK)  # read in the turn after the deadline's
        clock.advance(2)
        self.assertFalse(transport.disconnecting)
        self.assertTrue(protocol.is_connected)

    def test_a_connection_that_stalls_while_the_gateway_sends_is_closed(self) -> None:
        """The server stops answering (a proxy holding the connection open, a stalled cellular
        link) while the gateway goes on sending QoS 0 publishes (the shadow sync's requests,
        sent again every request_timeout): a PINGREQ went only after keepalive seconds without
        sending, so the dead connection was never noticed. Now keepalive seconds without
        hearing from the server send one too, and ping_timeout later the link is dropped."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        protocol.dataReceived(CONNACK_OK)
        transport.clear()
        for _ in range(2):
            clock.advance(4)
            protocol.publish("a", b"x", 0, False, 0, False)
        clock.advance(2)  # 10 s after the CONNACK, the last word heard
        self.assertTrue(transport.value().endswith(codec.PINGREQ_PACKET))
        clock.advance(2.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no PINGRESP within 3 s", protocol.cause)

    def test_a_pingreq_behind_a_message_the_server_is_still_receiving_waits_for_it(self) -> None:
        """A 60 kB message over a 20 kbit/s cellular link takes 24 s to reach the server; its
        PUBACK, and the PINGREQ written behind it once keepalive seconds passed without a word
        from the server, come after that. The link called the server dead ping_timeout after
        the PINGREQ while its TCP was acknowledging the message's bytes, reconnected, sent the
        message again, and again: the message never got through (measured: keepalive 10 s,
        ping_timeout 5 s, a connection closed every 15-18 s, each ending the 'seq sent and not
        acknowledged' warning). Now the deadline starts over while the server's TCP
        acknowledges more of the bytes before the PINGREQ, and once more when the PINGREQ
        itself is through; the PINGRESP then has a whole ping_timeout."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        acked = [0]
        protocol.acked_bytes = lambda: acked[0]
        protocol.dataReceived(CONNACK_OK)
        protocol.publish("big", b"x" * 60000, 1, False, 1, False)
        acked[0] = len(transport.value()) - 60000  # the CONNECT and the message's first bytes
        clock.advance(10)  # no word from the server: the PINGREQ goes behind the message
        ping_end = len(transport.value())
        for _ in range(7):
            acked[0] += 7500  # 20 kbit/s: 7.5 kB in each 3 s
            clock.advance(3.1)
            self.assertFalse(transport.disconnecting)
        acked[0] = ping_end  # the PINGREQ is through: ping_timeout more for its PINGRESP
        clock.advance(3.1)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(puback(1) + codec.PINGRESP_PACKET)
        clock.advance(3.1)
        self.assertFalse(transport.disconnecting)

    def test_a_pingreq_the_server_took_without_answering_ends_the_connection(self) -> None:
        """The PINGREQ reached the server (its TCP acknowledged it) and no PINGRESP follows: the
        server is alive at the TCP level only, and ping_timeout after it is through the link
        gives up, however many bytes the server's TCP goes on acknowledging after it."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        acked = [0]
        protocol.acked_bytes = lambda: acked[0]
        protocol.dataReceived(CONNACK_OK)
        clock.advance(10)
        acked[0] = len(transport.value())  # everything, the PINGREQ too, acknowledged at once
        clock.advance(3.1)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no PINGRESP within 3 s", protocol.cause)

    def test_a_stall_behind_a_message_ends_the_connection(self) -> None:
        """The link stalls while a message crawls to the server: no byte more is acknowledged,
        and ping_timeout after the last look the server counts as dead."""
        protocol, transport, clock, _ = connect(keepalive=10, ping_timeout=3)
        acked = [0]
        protocol.acked_bytes = lambda: acked[0]
        protocol.dataReceived(CONNACK_OK)
        protocol.publish("big", b"x" * 60000, 1, False, 1, False)
        clock.advance(10)
        acked[0] += 7500
        clock.advance(3.1)
        self.assertFalse(transport.disconnecting)
        clock.advance(3.1)  # nothing acknowledged in these 3 s
        self.assertTrue(transport.disconnecting)
        self.assertIn("no PINGRESP within 3 s", protocol.cause)

    def test_a_step_back_of_the_wall_clock_does_not_hold_the_pingreq(self) -> None:
        """NTP steps the clock back an hour while the link is idle: the PINGREQ still goes
        after keepalive idle seconds. Counted on the wall clock, the link looked idle for
        minus an hour, sent nothing for that hour, and the cloud broker dropped it after
        1.5 keep-alives."""
        clock = SteppingClock()
        protocol = MQTTClientProtocol(Handler(), SessionOptions("gw1", keepalive=10, ping_timeout=3), clock)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(CONNACK_OK)
        transport.clear()
        clock.advance(4)
        clock.step(-3600.0)
        clock.advance(6)
        self.assertEqual(transport.value(), codec.PINGREQ_PACKET)


class DownlinkFlowTests(SynchronousTestCase):
    """Inbound publishes are acked when delivered; QoS 2 is delivered once."""

    def test_qos1_acked_after_delivery(self) -> None:
        """PUBACK goes only when the handler's Deferred fires."""
        handler = Handler()
        handler.delivery = Deferred()
        protocol, transport, _, _ = connect(handler)
        protocol.dataReceived(CONNACK_OK)
        transport.clear()
        protocol.dataReceived(codec.publish("command//d/req/1/on", b"go", 1, packet_id=7))
        self.assertEqual(handler.events[-1], ("message", "command//d/req/1/on", b"go", 1))
        self.assertEqual(transport.value(), b"")
        handler.delivery.callback(None)
        self.assertEqual(transport.value(), codec.ack(codec.PUBACK, 7))

    def test_qos2_once(self) -> None:
        """A resent QoS 2 publish is not delivered again; PUBREL gets PUBCOMP."""
        protocol, transport, _, handler = connect()
        protocol.dataReceived(CONNACK_OK)
        transport.clear()
        packet = codec.publish("c", b"x", 2, packet_id=9)
        protocol.dataReceived(packet + codec.publish("c", b"x", 2, packet_id=9, dup=True))
        self.assertEqual(len([e for e in handler.events if e[0] == "message"]), 1)
        protocol.dataReceived(codec.ack(codec.PUBREL, 9))
        self.assertEqual(transport.value(), codec.ack(codec.PUBREC, 9) * 2 + codec.ack(codec.PUBCOMP, 9))


class Wire:
    """A forwarder's connection: records what is published."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int, int, bool]] = []
        self.writes = 0

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, dup: bool) -> None:
        self.sent.append((topic, payload, qos, packet_id, dup))

    def publish_all(self, publishes: list[tuple[str, bytes, int, bool, int, bool]]) -> None:
        self.writes += 1
        for publish in publishes:
            self.publish(*publish)


def filled(n: int, qos: int = 1) -> MemoryStream:
    stream = MemoryStream()
    stream.cursor("cloud")
    for i in range(n):
        stream.append(Record("t", b"%d" % i, qos, received=-1.0))
    return stream


class ForwarderTests(SynchronousTestCase):
    """The window, cursor acks, resends after reconnect, the rate limit, live interleave."""

    def test_window(self) -> None:
        """At most ``window`` publishes in flight; each PUBACK lets one more go."""
        stream = filled(10)
        forwarder = Forwarder(stream, "cloud", 4, Clock())
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual([s[1] for s in wire.sent], [b"0", b"1", b"2", b"3"])
        forwarder.pubacks([wire.sent[0][3]])
        self.assertEqual(len(wire.sent), 5)
        self.assertEqual(stream.acked["cloud"], 1)

    def test_packet_ids_wrap_and_skip_those_in_flight(self) -> None:
        """Packet ids go up to MAX_PACKET_ID, start over at 1, and never reuse one in flight."""
        stream = filled(6)
        forwarder = Forwarder(stream, "cloud", 3, Clock())
        forwarder._next_id = MAX_PACKET_ID - 1  # (as after 64,534 publishes)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual([s[3] for s in wire.sent], [MAX_PACKET_ID, 1, 2])
        forwarder._next_id = MAX_PACKET_ID - 1  # the next candidate is still in flight
        forwarder.pubacks([1, 2])
        self.assertEqual([s[3] for s in wire.sent[3:]], [1, 2])

    def test_cursor_acks_only_whole_prefix(self) -> None:
        """An out-of-order PUBACK does not move the cursor past an unacked record: it is
        saved as a range above the cursor."""
        stream = filled(3)
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 8, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        forwarder.pubacks([wire.sent[1][3]])
        self.assertEqual((stream.acked["cloud"], stream.above["cloud"]), (0, [(2, 2)]))
        forwarder.pubacks([wire.sent[0][3]])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual((stream.acked["cloud"], stream.above["cloud"]), (2, []))

    def test_resend_with_dup_in_order(self) -> None:
        """After a reconnect the unacked window goes again, in order, DUP set, same ids."""
        stream = filled(5)
        forwarder = Forwarder(stream, "cloud", 3, Clock())
        first = Wire()
        forwarder.attach(first)  # type: ignore[arg-type]
        forwarder.pubacks([first.sent[0][3]])
        forwarder.detach()
        second = Wire()
        forwarder.attach(second)  # type: ignore[arg-type]
        self.assertEqual([(s[1], s[4]) for s in second.sent[:3]], [(b"1", True), (b"2", True), (b"3", True)])
        self.assertEqual([s[3] for s in second.sent[:3]], [s[3] for s in first.sent[1:4]])

    def test_restart_resends_from_cursor(self) -> None:
        """A new forwarder (gateway restart) starts after the acknowledged records."""
        stream = filled(5)
        forwarder = Forwarder(stream, "cloud", 2, Clock())
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        forwarder.pubacks([wire.sent[0][3]])
        stream.rewind("cloud")
        again = Forwarder(stream, "cloud", 2, Clock())
        wire2 = Wire()
        again.attach(wire2)  # type: ignore[arg-type]
        self.assertEqual([s[1] for s in wire2.sent], [b"1", b"2"])
        again.pubacks([wire2.sent[0][3]])
        self.assertEqual(stream.acked["cloud"], 2)

    def test_rate_limit_backlog_but_not_live(self) -> None:
        """The backlog drains at the bucket's rate; live records pass beside it."""
        clock = Clock()
        stream = filled(10)
        forwarder = Forwarder(stream, "cloud", 100, clock, TokenBucket(2, 0, clock))
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 2)  # one second of burst
        live = stream.append(Record("t", b"live", 1))
        forwarder.offer(Record("t", b"live", 1, seq=self.successResultOf(live)))
        self.assertEqual(wire.sent[-1][1], b"live")
        clock.advance(1)
        self.assertEqual(len(wire.sent), 5)
        clock.pump([1] * 10)
        self.assertEqual(len(wire.sent), 11)
        self.assertEqual([s[1] for s in wire.sent].count(b"live"), 1)  # not sent again from the cursor
        for s in wire.sent:
            forwarder.pubacks([s[3]])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual(stream.acked["cloud"], 11)

    def test_a_step_back_of_the_wall_clock_does_not_stop_the_rate(self) -> None:
        """NTP steps the clock back an hour: the backlog goes on at the bucket's rate. Counted
        on the wall clock, the bucket lost an hour of tokens and sent nothing for that hour."""
        clock = SteppingClock()
        forwarder = Forwarder(filled(10), "cloud", 100, clock, TokenBucket(2, 0, clock))
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 2)
        clock.step(-3600.0)
        clock.advance(1)
        self.assertEqual(len(wire.sent), 4)

    def test_a_backlog_received_at_a_later_time_of_day_is_still_rate_limited(self) -> None:
        """A gateway without a real-time clock restarts at 1970 with a backlog received in
        2026: its records were stored before the link connected, so they are backlog, drained
        at the bucket's rate. Told apart by their received times, every one counted as live
        and went at once, past the rate limit that keeps the cloud from cutting the link."""
        clock = Clock()  # 1970
        stream = MemoryStream()
        stream.cursor("cloud")
        for i in range(10):
            stream.append(Record("t", b"%d" % i, 1, received=56 * 365 * 86400.0))
        forwarder = Forwarder(stream, "cloud", 100, clock, TokenBucket(2, 0, clock))
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 2)  # one second of burst
        self.assertTrue(forwarder.behind)
        clock.advance(1)
        self.assertEqual(len(wire.sent), 4)

    def test_a_step_back_of_the_wall_clock_does_not_make_live_records_backlog(self) -> None:
        """NTP steps the clock back an hour while the link drains a backlog: a record stored
        after it, read from the cursor, is live and goes at once, beside the rate-limited
        backlog. Told apart by received times, it was older than the connection, so backlog,
        queued behind the rest at the bucket's rate."""
        clock = SteppingClock()
        clock.advance(7200)
        stream = filled(10)
        forwarder = Forwarder(stream, "cloud", 100, clock, TokenBucket(2, 0, clock))
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 2)
        clock.step(-3600.0)
        stream.append(Record("t", b"live", 1, received=clock.seconds()))
        clock.advance(0)
        self.assertEqual([s[1] for s in wire.sent], [b"0", b"1", b"live"])

    def test_a_step_back_of_the_wall_clock_does_not_hold_the_cursor_save(self) -> None:
        """NTP steps the clock back an hour between two saves: the acknowledged records'
        cursor is saved CURSOR_ACK_INTERVAL later, not an hour later."""
        stream = filled(4)
        clock = SteppingClock()
        forwarder = Forwarder(stream, "cloud", 64, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        forwarder.pubacks([wire.sent[0][3]])  # saved at once: the first save
        self.assertEqual(stream.acked["cloud"], 1)
        clock.step(-3600.0)
        forwarder.pubacks([s[3] for s in wire.sent[1:]])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual(stream.acked["cloud"], 4)
        forwarder.stop()

    def test_cursor_saves_leave_a_slow_disk_to_the_appends(self) -> None:
        """A cursor save is a write and two fsyncs on the journal's I/O thread, which the
        appends (every local PUBACK) wait on: where a save takes 200 ms (fsync at 100 ms, an
        SD card), the next timed save starts four times as long after it ended, not
        CURSOR_ACK_INTERVAL after it began (at once: saves ran back to back, and every append
        queued behind one)."""
        stream = filled(4)
        saves: list[Deferred[None]] = []
        stream.ack = lambda cursor, seq, above=(): saves.append(Deferred()) or saves[-1]  # type: ignore[method-assign]
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 64, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        forwarder.pubacks([wire.sent[0][3]])
        self.assertEqual(len(saves), 1)  # the first save: at once
        forwarder.pubacks([wire.sent[1][3]])
        clock.advance(0.2)
        saves[0].callback(None)  # it took 200 ms
        self.assertEqual(len(saves), 1)
        clock.advance(4 * 0.2 - 0.001)
        self.assertEqual(len(saves), 1)
        clock.advance(0.001)
        self.assertEqual(len(saves), 2)
        saves[1].callback(None)  # a fast save: the interval again
        forwarder.pubacks([wire.sent[2][3]])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual(len(saves), 3)
        saves[2].callback(None)

    def test_offers_taken_only_while_behind(self) -> None:
        """While the cursor is in the backlog, live records are offered; once it reads live
        ones itself (from the journal's tail), offers are declined and nothing is sent twice."""
        clock = Clock()
        stream = filled(3)
        forwarder = Forwarder(stream, "cloud", 100, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertTrue(forwarder.behind)
        seq = self.successResultOf(stream.append(Record("t", b"live", 1)))
        self.assertEqual(len(wire.sent), 3)  # the wake-up is handled on the next reactor turn
        clock.advance(0)
        self.assertEqual([s[1] for s in wire.sent], [b"0", b"1", b"2", b"live"])
        self.assertFalse(forwarder.behind)
        stream.append(Record("t", b"next", 1))
        forwarder.offer(Record("t", b"next", 1, seq=seq + 1))
        clock.advance(0)
        self.assertEqual([s[1] for s in wire.sent], [b"0", b"1", b"2", b"live", b"next"])

    def test_records_held_in_memory_are_bounded_when_the_cloud_is_slower(self) -> None:
        """Connected to a cloud slower than the local publishers, the forwarder read every record
        appended into memory (its live queue), up to the whole stream (512 MiB by default): 127,000
        records held, RSS up 24 MiB, in bench/bounds.py. Reads now wait while LIVE_LIMIT live
        records are held, the rest stay in the journal, and every record still goes, in order."""
        from gateway.links.forwarder import LIVE_LIMIT
        clock = Clock()
        stream = filled(0)
        forwarder = Forwarder(stream, "cloud", 8, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        total = LIVE_LIMIT + 3000
        for n in range(total):
            stream.append(Record("t", b"%d" % n, 1))
            if n % 500 == 0:
                clock.advance(0)  # (the stream wakes the forwarder now and then)
        clock.advance(0)
        self.assertLessEqual(forwarder.pending, LIVE_LIMIT + 256 + 8)
        while len(wire.sent) < total:
            sent = len(wire.sent)
            forwarder.pubacks(list(forwarder.inflight))
            clock.advance(0)
            self.assertGreater(len(wire.sent), sent)
            self.assertLessEqual(forwarder.pending, LIVE_LIMIT + 256 + 8)
        self.assertEqual([s[1] for s in wire.sent], [b"%d" % n for n in range(total)])

    def test_linger_gathers_live_records(self) -> None:
        """Caught up, the forwarder waits ``linger`` after the stream wakes it: records stored
        meanwhile leave with the first, in one write."""
        clock = Clock()
        stream = filled(0)
        forwarder = Forwarder(stream, "cloud", 100, clock, linger=0.005)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        stream.append(Record("t", b"a", 1))
        clock.advance(0.004)
        stream.append(Record("t", b"b", 1))
        self.assertEqual(wire.sent, [])
        clock.advance(0.001)
        self.assertEqual(([s[1] for s in wire.sent], wire.writes), ([b"a", b"b"], 1))
        stream.append(Record("t", b"c", 1))
        clock.advance(0.005)
        self.assertEqual(([s[1] for s in wire.sent], wire.writes), ([b"a", b"b", b"c"], 2))
        stream.append(Record("t", b"d", 1))
        forwarder.stop()
        self.assertEqual(clock.getDelayedCalls(), [])  # nothing left waiting to fire

    def test_pubacks_of_one_read_together(self) -> None:
        """Several PUBACKs free several window slots, filled with one write."""
        stream = filled(6)
        forwarder = Forwarder(stream, "cloud", 2, Clock())
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        forwarder.pubacks([wire.sent[0][3], wire.sent[1][3], 999])  # 999: unknown, ignored
        self.assertEqual(([s[1] for s in wire.sent], forwarder.acked), ([b"0", b"1", b"2", b"3"], 2))

    def test_qos0_records(self) -> None:
        """QoS 0 records go without a window slot and count as done."""
        stream = filled(3, qos=0)
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 1, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 3)
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual(stream.acked["cloud"], 3)

    def test_cursor_saves_are_batched(self) -> None:
        """Cloud acknowledgements arriving together cost one durable cursor save per interval."""
        stream = filled(50)
        saves = []
        real_ack = stream.ack
        stream.ack = lambda cursor, seq, above=(): saves.append(seq) or real_ack(cursor, seq, above)  # type: ignore[method-assign]
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 64, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        for s in wire.sent:
            forwarder.pubacks([s[3]])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertLessEqual(len(saves), 2)
        self.assertEqual(stream.acked["cloud"], 50)
        forwarder.stop()


class BackoffTests(SynchronousTestCase):
    """Reconnect delays: exponential ceiling, full jitter, capped."""

    def test_full_jitter(self) -> None:
        """Delays are drawn from 0 to min(cap, 1 s x 2^n)."""
        ceilings: list[float] = []
        policy = full_jitter_backoff(1.0, 2.0, 120.0, lambda lo, hi: ceilings.append(hi) or hi / 2)
        self.assertEqual([policy(n) for n in range(9)], [0.5, 1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(ceilings[:3], [1.0, 2.0, 4.0])
        self.assertEqual(policy(10_000), 60.0)


class LogLinesNameTheLinkTests(SynchronousTestCase):
    """A gateway with several links logged what one connection saw without saying whose it
    was (``closing the link connection: ...``, ``the cloud broker refused the subscription
    to ...``); each line now begins with the link's name."""

    def test_a_refused_subscription_and_a_dead_peer_name_the_link(self) -> None:
        from twisted.logger import LogLevel, formatEvent

        from tests.logevents import capture_log_events

        events = capture_log_events(self)
        clock = Clock()
        protocol = MQTTClientProtocol(Handler(), SessionOptions("gw1", keepalive=10, ping_timeout=3), clock,
                                      link="hono")
        protocol.makeConnection(StringTransport())
        protocol.dataReceived(b"\x20\x02\x00\x00")
        protocol.subscribe([("command//+/req/#", 1)])
        protocol.dataReceived(b"\x90\x03\xff\xff\x80")  # (subscriptions count down from 65535)
        clock.advance(10)
        clock.advance(3)
        self.assertEqual([str(formatEvent(e)) for e in events if e["log_level"] >= LogLevel.warn], [
            "link hono: the cloud broker refused the subscription to command//+/req/#"])
        # (a dead peer is no line of the connection's: the link logs its disconnection, naming itself)
        self.assertIn("no PINGRESP within 3 s", protocol.cause)
