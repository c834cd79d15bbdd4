"""MQTT over WebSocket (``type: ws`` listeners) beside TCP ones, on autobahn."""


from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.address import IPv4Address
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker.websocket import without_origin
from tests.logevents import capture_log_events
from tests.broker.harness import ANONYMOUS, eventually, port_of, raw_connect, start_broker
from tests.ports import free_port
from tests.mqttclient import TestClient



class WebsocketListenerTests(TestCase):
    """A browser-style MQTT-over-websocket client talks to a TCP client through one broker."""

    timeout = 30

    @inlineCallbacks
    def test_websocket_and_tcp_clients_share_the_broker(self):
        """A ``type: ws`` listener's clients see TCP clients' messages."""
        ws_port = free_port()
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"},
                          "ws": {"type": "ws", "bind": f"127.0.0.1:{ws_port}"}},
            "plugins": ANONYMOUS})
        browser = TestClient(reactor, transport="websockets")
        self.addCleanup(browser.stop)
        self.assertEqual((yield browser.connect(ws_port)), 0)
        yield browser.subscribe("dashboard/#", 1)
        device = TestClient(reactor)
        self.addCleanup(device.stop)
        yield device.connect(port_of(service))
        yield device.publish("dashboard/temp", b"22", 1)
        self.assertEqual((yield browser.next_message()).payload, b"22")


def handshake(port: int, protocols: str, origin: str | None = None) -> bytes:
    """A WebSocket opening handshake asking for ``protocols``, from a browser page of
    ``origin`` (the ``Origin`` header; none, as non-browser clients send it, when ``None``)."""
    return (f"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + (f"Origin: {origin}\r\n" if origin is not None else "")
            + f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {protocols}\r\n\r\n").encode()


class WithoutOriginTests(SynchronousTestCase):
    """What of an opening handshake's head goes on to autobahn."""

    def test_origin_headers_and_their_continuations_go(self) -> None:
        """Every ``Origin`` (and ``Sec-WebSocket-Origin``) header is dropped, with the folded
        lines that continue it, whatever its case; the other headers stay as they were."""
        head = (b"GET /origin: HTTP/1.1\r\nHost: [::1]:8083\r\nORIGIN: http://::1:8083\r\n  more\r\n"
                b"Sec-WebSocket-Origin: x\r\nUser-Agent: a\r\n b\r\n\r\n")
        self.assertEqual(without_origin(head),
                         b"GET /origin: HTTP/1.1\r\nHost: [::1]:8083\r\nUser-Agent: a\r\n b\r\n\r\n")


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (clients mask, RFC 6455 §5.3), payload under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class WebsocketRulesTests(TestCase):
    """What a ws listener refuses, and what the snapshot shows of it."""

    timeout = 30

    @inlineCallbacks
    def start(self):
        ws_port = free_port()
        service = yield start_broker(self, reactor, {
            "listeners": {"ws": {"type": "ws", "bind": f"127.0.0.1:{ws_port}"}}, "plugins": ANONYMOUS})
        return service, ws_port

    @inlineCallbacks
    def test_other_subprotocols_are_refused(self):
        """A client that asks only for subprotocols other than MQTT's gets HTTP 406."""
        service, port = yield self.start()
        client = yield raw_connect(reactor, port)
        client.transport.write(handshake(port, "chat"))
        yield client.lost.addTimeout(10, reactor)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 406"), client.received[:60])

    @inlineCallbacks
    def test_any_origin_is_accepted(self):
        """A browser page's WebSocket is accepted whatever its ``Origin``: a page served from
        anywhere, and one opened from a file (browsers send ``null``, some app WebViews
        ``file://``); the CONNECT's credentials decide, as for any client. (The null origin got
        HTTP 400 from autobahn.) So is one autobahn cannot parse: paho-mqtt writes an IPv6
        address without brackets, ``http://::1:8083``, which got HTTP 400 ('HTTP Origin header
        invalid'), as did an Origin sent twice."""
        service, port = yield self.start()
        for origin in ("http://dashboard.example:8080", "null", "file://", f"http://::1:{port}",
                       "http://a.example\r\nOrigin: http://b.example"):
            client = yield raw_connect(reactor, port)
            client.transport.write(handshake(port, "mqtt", origin))
            yield eventually(reactor, lambda: b"\r\n\r\n" in client.received or client.lost.called)
            self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), (origin, client.received[:80]))
            client.received = b""
            client.transport.write(masked_frame(0x2, connect_packet(f"page-{len(origin)}")))
            yield eventually(reactor, lambda: client.received.endswith(b"\x20\x02\x00\x00"))
            client.transport.loseConnection()
            yield client.lost

    @inlineCallbacks
    def test_text_message_closes(self):
        """MQTT travels in binary messages: a text message gets a close frame saying so."""
        service, port = yield self.start()
        client = yield raw_connect(reactor, port)
        client.transport.write(handshake(port, "mqtt"))
        yield eventually(reactor, lambda: b"\r\n\r\n" in client.received)
        self.assertIn(b"Sec-WebSocket-Protocol: mqtt", client.received)
        client.received = b""
        events = capture_log_events(self)
        client.transport.write(masked_frame(0x1, b"hello"))
        yield eventually(reactor, lambda: client.received[:1] == b"\x88")
        self.assertEqual(client.received[4:], b"MQTT goes in binary messages")
        self.assertEqual(service.snapshot().listeners[0].violations, 1)
        # The client's address as an operator writes it (it was autobahn's "tcp:127.0.0.1:PORT",
        # "tcp6:::1:PORT" for an IPv6 client).
        peer = client.transport.getHost()
        self.assertIn(f"closing {peer.host}:{peer.port}: a text WebSocket message",
                      "\n".join(formatEvent(e) for e in events))

    @inlineCallbacks
    def test_connections_in_the_snapshot(self):
        """A connected WebSocket client counts in its listener's snapshot; the address says ws://."""
        from gateway.broker.settings import client_address

        service, port = yield self.start()
        browser = TestClient(reactor, transport="websockets")
        self.addCleanup(browser.stop)
        self.assertEqual((yield browser.connect(port)), 0)
        [listener] = service.snapshot().listeners
        self.assertEqual((listener.name, listener.connections), ("ws", 1))
        self.assertEqual(client_address(service.settings.listeners[0]), f"ws://127.0.0.1:{port}")


def connect_packet(client_id: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (CleanSession=1, keep-alive 60) with ``client_id``."""
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id.encode()
    return bytes([0x10, len(body)]) + body


class WebsocketPacketSizeTests(TestCase):
    """``max_packet_size`` bounds each MQTT packet over WebSocket, as over TCP (docs/configuration.md)."""

    timeout = 30

    @inlineCallbacks
    def start(self):
        ws_port = free_port()
        service = yield start_broker(self, reactor, {
            "listeners": {"ws": {"type": "ws", "bind": f"127.0.0.1:{ws_port}"}}, "plugins": ANONYMOUS,
            "max_packet_size": 64, "connect_timeout": 60})  # (no sweep cuts a connection off here)
        client = yield raw_connect(reactor, ws_port)
        client.transport.write(handshake(ws_port, "mqtt"))
        yield eventually(reactor, lambda: b"\r\n\r\n" in client.received)
        client.received = b""
        return service, client

    @inlineCallbacks
    def test_packets_within_the_limit_in_one_message(self):
        """One WebSocket message may carry several MQTT packets (MQTT 3.1.1 §6): each within
        max_packet_size, they are served even when together they are longer."""
        service, client = yield self.start()
        message = connect_packet("c" * 40) + b"\xc0\x00" * 12  # 54 + 24 bytes, each packet under 64
        client.transport.write(masked_frame(0x2, message))
        yield eventually(reactor, lambda: client.received.count(b"\xd0\x00") == 12)
        self.assertIn(b"\x20\x02\x00\x00", client.received)  # CONNACK 0
        self.assertEqual(service.snapshot().listeners[0].violations, 0)

    @inlineCallbacks
    def test_packet_over_the_limit_is_a_violation(self):
        """A PUBLISH over max_packet_size, in a message longer than the packet limit, closes the
        connection (the WebSocket closing handshake: a close frame) and counts as a violation,
        as over TCP."""
        service, client = yield self.start()
        client.transport.write(masked_frame(0x2, connect_packet("c")))
        yield eventually(reactor, lambda: b"\x20\x02\x00\x00" in client.received)
        publish = b"\x00\x01t" + b"x" * 97  # remaining length 100
        client.received = b""
        client.transport.write(masked_frame(0x2, bytes([0x30, len(publish)]) + publish))
        yield eventually(reactor, lambda: client.received[:1] == b"\x88")
        self.assertEqual(service.snapshot().listeners[0].violations, 1)

    @inlineCallbacks
    def test_violation_ends_in_the_closing_handshake(self):
        """A client closed for breaking the protocol gets a close frame; what it sends after
        the bad packet is dropped, and its answering close frame ends the connection at once
        (the closing handshake is done), as the end of the stream does over TCP. (The broker
        had stopped reading at the bad packet and never read that close frame: the client was
        left waiting until the listener's sweep cut it off, connect_timeout later; MQTT.js
        reported the close 11 s after its bad PUBLISH with the default of 10 s.)"""
        service, client = yield self.start()
        client.transport.write(masked_frame(0x2, connect_packet("c")))
        yield eventually(reactor, lambda: b"\x20\x02\x00\x00" in client.received)
        publish = b"\x00\x01t" + b"x" * 97  # remaining length 100, over max_packet_size
        client.received = b""
        client.transport.write(masked_frame(0x2, bytes([0x30, len(publish)]) + publish))
        yield eventually(reactor, lambda: client.received[:1] == b"\x88")
        client.transport.write(masked_frame(0x2, b"\xc0\x00"))  # PINGREQ: not handled any more
        client.transport.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
        yield client.lost.addTimeout(5, reactor)
        self.assertNotIn(b"\xd0\x00", client.received)  # no PINGRESP
        self.assertEqual(service.snapshot().listeners[0].violations, 1)


class WebsocketQuietTests(TestCase):
    """The broker's own line tells why it closes a WebSocket connection; autobahn added a
    warning of its own to every connection the broker aborted (``dropping connection to peer
    tcp:...:N with abort=True: None``: 19 in a half-hour soak), and twistd's log had
    ``Starting factory <gateway.broker.websocket.MQTTWebSocketFactory object at 0x...>``."""

    timeout = 30

    @inlineCallbacks
    def test_an_aborted_connection_is_no_line_of_autobahns(self):
        from tests.logevents import capture_log_events

        events = capture_log_events(self)
        ws_port = free_port()
        yield start_broker(self, reactor, {
            "listeners": {"ws": {"type": "ws", "bind": f"127.0.0.1:{ws_port}"}}, "plugins": ANONYMOUS,
            "connect_timeout": 0.2})
        client = yield raw_connect(reactor, ws_port)
        client.transport.write(handshake(ws_port, "mqtt"))  # and no CONNECT: aborted at connect_timeout
        yield client.lost.addTimeout(10, reactor)
        from twisted.logger import formatEvent

        texts = [formatEvent(e) for e in events]
        self.assertFalse([t for t in texts if "dropping connection" in t or "Starting factory <gateway" in t], texts)



class WebsocketReserveTests(SynchronousTestCase):
    """A WebSocket listener keeps the gateway's reserve of file descriptors as a TCP one does
    (``MQTTListenerFactory.reserve_refusals``): autobahn's factory built every connection."""

    def test_closed_on_accept_while_the_reserve_is_reached(self) -> None:
        from gateway.broker.connection import MQTTListenerFactory
        from gateway.broker.websocket import MQTTWebSocketFactory
        from gateway.fdreserve import DescriptorReserve
        from tests.steppingclock import SteppingClock

        lowest = [112]
        mqtt = MQTTListenerFactory("ws", None, SteppingClock(), 1 << 20, 5.0,  # type: ignore[arg-type]
                                   reserve=DescriptorReserve(lambda: 128, lambda: lowest[0]))
        factory = MQTTWebSocketFactory(mqtt)
        address = IPv4Address("TCP", "127.0.0.1", 40410)
        self.assertIsNone(factory.buildProtocol(address))
        self.assertEqual(mqtt.reserve_refusals.refused, 1)
        lowest[0] = 20
        self.assertIsNotNone(factory.buildProtocol(address))


class WebsocketHandshakeSizeTests(SynchronousTestCase):
    """An opening handshake (an HTTP request head) has at most ``MAX_HANDSHAKE`` bytes: a client
    sending an endless header got all of it gathered by autobahn (which has no limit) until the
    CONNECT deadline, 32 MB in 10 s on one connection, each chunk appended to and searched
    through the whole (the reactor busy for all of it)."""

    def connection(self):
        from twisted.internet.testing import StringTransport

        from gateway.broker.connection import MQTTListenerFactory
        from gateway.broker.websocket import MQTTWebSocketFactory
        from gateway.fdreserve import DescriptorReserve
        from tests.steppingclock import SteppingClock

        mqtt = MQTTListenerFactory("ws", None, SteppingClock(), 1 << 20, 5.0,  # type: ignore[arg-type]
                                   reserve=DescriptorReserve(lambda: -1))
        protocol = MQTTWebSocketFactory(mqtt).buildProtocol(IPv4Address("TCP", "127.0.0.1", 40410))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40410))
        protocol.makeConnection(transport)
        return mqtt, protocol, transport

    def test_an_endless_head_is_refused_431(self) -> None:
        from gateway.broker.websocket import MAX_HANDSHAKE

        from tests.logevents import capture_log_events
        from twisted.logger import formatEvent

        events = capture_log_events(self)
        mqtt, protocol, transport = self.connection()
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: ")
        for _ in range(MAX_HANDSHAKE // 4096 + 1):
            protocol.dataReceived(b"a" * 4096)
        self.assertEqual([formatEvent(e) for e in events], [
            "listener ws: closing 127.0.0.1:40410: a WebSocket opening handshake over 16384 bytes"])
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "), transport.value()[:80])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(mqtt.violations, 1)
        protocol.dataReceived(b"a" * 4096)  # what comes after is dropped, with no error
        self.assertEqual(mqtt.violations, 1)

    def test_a_whole_head_over_the_limit_in_one_read_is_refused_431(self) -> None:
        """A head over the limit that arrives whole, its end in the same read, is refused too:
        it was handled (101) since the handshake was over by the time its size was looked at."""
        from gateway.broker.websocket import MAX_HANDSHAKE

        mqtt, protocol, transport = self.connection()
        head = handshake(40410, "mqtt")
        protocol.dataReceived(head[:-2] + b"X-Pad: " + b"a" * MAX_HANDSHAKE + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "), transport.value()[:80])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(mqtt.violations, 1)

    def test_frames_after_a_head_within_the_limit_do_not_count(self) -> None:
        """Only the head counts: one within the limit, read with the client's first frame, is
        answered whatever that frame's size."""
        from gateway.broker.websocket import MAX_HANDSHAKE

        mqtt, protocol, transport = self.connection()
        head = handshake(40410, "mqtt")
        protocol.dataReceived(head + masked_frame(2, b"\x10") * (MAX_HANDSHAKE // 7 + 1))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value()[:80])

    def test_a_handshake_within_the_limit_is_answered(self) -> None:
        from gateway.broker.websocket import MAX_HANDSHAKE

        mqtt, protocol, transport = self.connection()
        head = handshake(40410, "mqtt")
        protocol.dataReceived(head[:-2] + b"X-Pad: " + b"a" * (MAX_HANDSHAKE - len(head) - 20) + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value()[:80])
        self.assertEqual(mqtt.violations, 0)
