"""MQTT over WebSocket (``type: ws`` listeners) beside TCP ones, on autobahn."""


from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.address import IPv4Address
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker.wsorigin import without_origin
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


def handshake(port: int, protocols: str, origin: str | None = None, host: str = "127.0.0.1") -> bytes:
    """A WebSocket opening handshake asking for ``protocols``, from a browser page of
    ``origin`` (the ``Origin`` header; none, as non-browser clients send it, when ``None``), to
    ``host:port`` (its ``Host`` header)."""
    return (f"GET /mqtt HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
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
    def test_a_page_of_another_site_is_refused_an_allowed_one_is_served(self):
        """A browser page's WebSocket whose ``Origin`` is neither the listener's host nor in its
        ``allowed_origins`` gets HTTP 403 with the reason and is closed, counted in the snapshot
        (it was served: any web page the operator opened could publish on the local topics that
        drive the gateway); a listed one is served, whatever autobahn made of it (one sent twice
        got HTTP 400 from autobahn)."""
        ws_port = free_port()
        service = yield start_broker(self, reactor, {
            "listeners": {"ws": {"type": "ws", "bind": f"127.0.0.1:{ws_port}",
                                 "allowed_origins": ["http://dashboard.example:8080"]}}, "plugins": ANONYMOUS})
        for origin in ("http://dashboard.example:8080", "http://dashboard.example:8080\r\nOrigin: http://127.0.0.1"):
            client = yield raw_connect(reactor, ws_port)
            client.transport.write(handshake(ws_port, "mqtt", origin))
            yield eventually(reactor, lambda: b"\r\n\r\n" in client.received or client.lost.called)
            self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "), (origin, client.received[:80]))
            client.received = b""
            client.transport.write(masked_frame(0x2, connect_packet(f"page-{len(origin)}")))
            yield eventually(reactor, lambda: client.received.endswith(b"\x20\x02\x00\x00"))
            client.transport.loseConnection()
            yield client.lost
        client = yield raw_connect(reactor, ws_port)
        client.transport.write(handshake(ws_port, "mqtt", "http://evil.example"))
        yield client.lost.addTimeout(10, reactor)
        self.assertEqual(client.received, refused(b"403", b"cross-site browser requests are refused: Origin "
                                                  b"http://evil.example is not this listener's (host 127.0.0.1:%d) "
                                                  b"nor in its allowed_origins" % ws_port))
        [listener] = service.snapshot().listeners
        self.assertEqual((listener.origins_refused, listener.violations), (1, 0))
        yield eventually(reactor, lambda: not service.snapshot().listeners[0].connections)

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


def ws_factory(allowed_origins: tuple[str, ...] = (), clock: Any = None) -> Any:
    """A ws listener's WebSocket factory (its MQTT factory: ``.mqtt``), on ``clock`` (else a
    stepping one)."""
    from gateway.broker.connection import MQTTListenerFactory
    from gateway.broker.websocket import MQTTWebSocketFactory
    from gateway.fdreserve import DescriptorReserve
    from tests.steppingclock import SteppingClock

    mqtt = MQTTListenerFactory("ws", None, clock or SteppingClock(), 1 << 20, 5.0,  # type: ignore[arg-type]
                               reserve=DescriptorReserve(lambda: -1))
    return MQTTWebSocketFactory(mqtt, allowed_origins)


def refused(status: bytes, reason: bytes) -> bytes:
    """What a refused opening handshake is answered: ``reason`` on the status line and as a
    one-line plain-text body, saying ``Server: gateway`` as every answer of the listener does."""
    return (b"HTTP/1.1 %s %s\r\nServer: gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s\n" % (status, reason, len(reason) + 1, reason))


def ws_connect(factory: Any) -> tuple[Any, Any]:
    """A WebSocket connection to ``factory`` on a ``StringTransport``, from 127.0.0.1:40410."""
    from twisted.internet.testing import StringTransport

    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40410))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40410))
    protocol.makeConnection(transport)
    return protocol, transport


class WebsocketOriginTests(SynchronousTestCase):
    """Which browser pages a ws listener serves: by default those of its own host (as the
    request's ``Host`` names it, any port), and the clients that send no ``Origin``; others get
    HTTP 403 (any page the operator opened could publish on the local topics that drive the
    gateway: installs, app commands, its configuration)."""

    def answer(self, head: bytes, allowed_origins: tuple[str, ...] = ()) -> bytes:
        """The status line a handshake of ``head`` gets."""
        protocol, transport = ws_connect(ws_factory(allowed_origins))
        protocol.dataReceived(head)
        return transport.value().split(b"\r\n", 1)[0]

    def test_the_listeners_own_host_and_clients_without_origin_are_served(self) -> None:
        """No ``Origin`` (paho-mqtt without one, aiomqtt, Node clients), and one whose host is the
        ``Host`` the request names, on any port and scheme (a dashboard on 127.0.0.1:8080 next to
        ws://127.0.0.1:9001); paho-mqtt's IPv6 form without brackets in both headers too."""
        for origin, host in ((None, "127.0.0.1"), ("http://127.0.0.1:8080", "127.0.0.1"),
                             ("https://127.0.0.1", "127.0.0.1"), ("http://GW.local:80", "gw.local"),
                             ("http://[::1]:8080", "[::1]"), ("http://::1:9001", "::1")):
            self.assertTrue(self.answer(handshake(9001, "mqtt", origin, host)).startswith(b"HTTP/1.1 101 "),
                            (origin, host))

    def test_other_origins_are_refused_403(self) -> None:
        """Another site's page (one that ends like or starts with the host too), a page opened from
        a file (``null``; ``file://`` from some WebViews), an origin sent in the drafts' header,
        a second origin of another site, and an origin without ``Host`` to compare it to are
        refused, with the reason on the status line."""
        for origin, host in (("http://evil.example", "127.0.0.1"), ("http://127.0.0.1.evil.example", "127.0.0.1"),
                             ("null", "127.0.0.1"), ("file://", "127.0.0.1"),
                             ("http://127.0.0.1\r\nSec-WebSocket-Origin: http://evil.example", "127.0.0.1"),
                             ("http://::1:8080", "::1")):
            answer = self.answer(handshake(9001, "mqtt", origin, host))
            self.assertTrue(answer.startswith(b"HTTP/1.1 403 cross-site browser requests are refused: Origin "),
                            (origin, answer))
        head = handshake(9001, "mqtt", "http://127.0.0.1").replace(b"Host: 127.0.0.1:9001\r\n", b"")
        self.assertEqual(self.answer(head), b"HTTP/1.1 403 cross-site browser requests are refused: Origin "
                                            b"http://127.0.0.1 is not this listener's (a request without Host) "
                                            b"nor in its allowed_origins")

    def test_listed_origins_and_any(self) -> None:
        """``allowed_origins`` adds origins (scheme, host and port as listed; ``null`` for pages
        opened from files); ``*`` takes any."""
        listed = ("https://dash.example", "null")
        for origin in ("https://dash.example", "https://DASH.example:443", "null"):
            self.assertTrue(self.answer(handshake(9001, "mqtt", origin), listed).startswith(b"HTTP/1.1 101 "),
                            origin)
        for origin in ("http://dash.example", "https://dash.example:8443"):
            self.assertTrue(self.answer(handshake(9001, "mqtt", origin), listed).startswith(b"HTTP/1.1 403 "),
                            origin)
        for origin in ("http://evil.example", "null", "file://"):
            self.assertTrue(self.answer(handshake(9001, "mqtt", origin), ("*",)).startswith(b"HTTP/1.1 101 "),
                            origin)

    def test_a_refusal_is_closed_counted_and_logged_once_per_interval(self) -> None:
        """A refused handshake closes the connection (nothing it sent after is read), counts in
        ``origins_refused`` (not as a violation), and is logged as the HTTP listeners' guards log
        theirs: at most once per 10 s, with how many since; what the page sent is escaped in the
        status line and the log."""
        from twisted.internet.task import Clock

        events = capture_log_events(self)
        clock = Clock()
        clock.advance(1000)
        factory = ws_factory(clock=clock)
        protocol, transport = ws_connect(factory)
        protocol.dataReceived(handshake(9001, "mqtt", "http://e\x0bvil.example") + masked_frame(2, b"\x10"))
        self.assertEqual(transport.value(), refused(b"403", b"cross-site browser requests are refused: Origin "
                                                    b"http://e\\x0bvil.example is not this listener's (host "
                                                    b"127.0.0.1:9001) nor in its allowed_origins"))
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(masked_frame(2, b"\x10"))  # dropped
        for _ in range(2):
            ws_connect(factory)[0].dataReceived(handshake(9001, "mqtt", "http://evil.example"))
        self.assertEqual((factory.mqtt.origins_refused, factory.mqtt.violations), (3, 0))
        clock.advance(10)
        ws_connect(factory)[0].dataReceived(handshake(9001, "mqtt", "http://evil.example"))
        # (the StringTransports stay open: their CONNECT deadlines pass, in lines of their own)
        self.assertEqual([formatEvent(e) for e in events if "cross-site" in formatEvent(e)], [
            "listener ws: cross-site browser request refused: WebSocket GET /mqtt from 127.0.0.1:40410: Origin "
            "http://e\\x0bvil.example is not this listener's (host 127.0.0.1:9001) nor in its allowed_origins "
            "(logged at most once every 10 s while they go on)",
            "listener ws: cross-site browser request refused: WebSocket GET /mqtt from 127.0.0.1:40410: Origin "
            "http://evil.example is not this listener's (host 127.0.0.1:9001) nor in its allowed_origins "
            "(3 refused since the last such line; logged at most once every 10 s while they go on)"])


class WebsocketHandshakeSizeTests(SynchronousTestCase):
    """An opening handshake (an HTTP request head) has at most ``MAX_HANDSHAKE`` bytes: a client
    sending an endless header got all of it gathered by autobahn (which has no limit) until the
    CONNECT deadline, 32 MB in 10 s on one connection, each chunk appended to and searched
    through the whole (the reactor busy for all of it)."""

    def connection(self):
        factory = ws_factory()
        protocol, transport = ws_connect(factory)
        return factory.mqtt, protocol, transport

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

    def test_the_handshake_names_no_library_and_no_version(self) -> None:
        """The handshake's answer says ``Server: gateway``: it said ``AutobahnPython/<version>``
        to anyone on the network."""
        _, protocol, transport = self.connection()
        protocol.dataReceived(handshake(40410, "mqtt"))
        head = transport.value().partition(b"\r\n\r\n")[0].lower()
        self.assertIn(b"\r\nserver: gateway\r\n", head)
        self.assertNotIn(b"autobahn", head)

    def test_a_handshake_within_the_limit_is_answered(self) -> None:
        from gateway.broker.websocket import MAX_HANDSHAKE

        mqtt, protocol, transport = self.connection()
        head = handshake(40410, "mqtt")
        protocol.dataReceived(head[:-2] + b"X-Pad: " + b"a" * (MAX_HANDSHAKE - len(head) - 20) + b"\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value()[:80])
        self.assertEqual(mqtt.violations, 0)


class WebsocketRefusalTests(SynchronousTestCase):
    """A handshake the listener refuses is answered with a status line and a one-line
    plain-text body saying why, and closed; a plain GET (a browser opening the URL) got
    autobahn's HTML status page with 200, and other refusals a status line alone."""

    def answer(self, head: bytes) -> tuple[bytes, bytes]:
        protocol, transport = ws_connect(ws_factory())
        protocol.dataReceived(head)
        status, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(transport.disconnecting, transport.value())
        self.assertIn(b"\r\nContent-Type: text/plain; charset=utf-8\r\n", status)
        self.assertIn(b"\r\nServer: gateway\r\n", status)  # (it said none: the accepted handshake's does)
        return status.split(b"\r\n", 1)[0], body

    def test_a_request_without_upgrade_is_426(self) -> None:
        protocol, transport = ws_connect(ws_factory())
        protocol.dataReceived(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value(), refused(b"426", b"HTTP Upgrade header missing").replace(
            b"Connection: close\r\n", b"Connection: close\r\nUpgrade: websocket\r\n"))  # (RFC 9110 15.5.22)
        self.assertTrue(transport.disconnecting)

    def test_malformed_handshakes_say_why_in_one_line(self) -> None:
        for head, status in ((b"GARBAGE\r\n\r\n", b"HTTP/1.1 400 "), (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 405 "),
                             (handshake(9001, "mqtt").replace(b"HTTP/1.1", b"HTTP/9.9"), b"HTTP/1.1 505 "),
                             (b"GET / HTTP/1.1\r\n" + b"X-A: a\r\n" * 5000, b"HTTP/1.1 431 ")):
            with self.subTest(head=head[:20]):
                line, body = self.answer(head)
                self.assertTrue(line.startswith(status), line)
                self.assertEqual(body, line.split(b" ", 2)[2] + b"\n")


class WebsocketHeadReadsTests(SynchronousTestCase):
    """The head the listener gathers before autobahn sees it: however the reads split it, what
    comes after it in the same read goes on to the MQTT connection."""

    def test_a_head_in_single_bytes_then_a_pipelined_connect_is_handed_on(self) -> None:
        """A head with its own ``Origin`` sent a byte a read, its end (across reads) in the read
        that also holds the client's first frame (an MQTT CONNECT sent before the 101): answered
        101, and the frame's bytes reach the MQTT connection once, whole."""
        protocol, transport = ws_connect(ws_factory())
        received: list[bytes] = []
        assert protocol.mqtt is not None
        protocol.mqtt.dataReceived = received.append
        head = handshake(9001, "mqtt", "http://127.0.0.1:8080")
        for index in range(len(head) - 2):
            protocol.dataReceived(head[index:index + 1])
        protocol.dataReceived(head[-2:] + masked_frame(2, connect_packet("c1")))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 101 "), transport.value()[:80])
        self.assertEqual(b"".join(received), connect_packet("c1"))
