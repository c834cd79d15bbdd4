"""The broker over real sockets on 127.0.0.1, with a real MQTT client library (paho-mqtt)."""

from __future__ import annotations

from typing import Any

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase

from gateway.errors import BrokerError
from tests.broker import packets
from tests.broker.harness import ANONYMOUS, RawClient, eventually, raw_connect, start_broker, port_of
from tests.mqttclient import TestClient
from tests.tlscerts import make_pki

CONNECT = bytes([0x10, 0x0C, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x00])


class BrokerTestCase(TestCase):
    """Shared helpers: clients are disconnected before the broker stops."""

    timeout = 30

    def client(self, **kwargs: object) -> TestClient:
        client = TestClient(reactor, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(client.stop)
        return client

    def start_with_password_file(self) -> Any:
        """A broker on a free port that admits only ``alice`` with password ``s3cret`` (amqtt's
        password file, argon2), no anonymous clients."""
        passwd = Path(self.mktemp())
        passwd.write_text(f"alice:{PasswordHash((Argon2Hasher(),)).hash('s3cret')}\n")
        return start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
                        "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(passwd)}}})


class PublishSubscribeTests(BrokerTestCase):
    """MQTT 3.1.1 basics through the Twisted-owned listener."""

    @inlineCallbacks
    def test_qos_0_1_2_publish_and_subscribe(self):
        """Messages at every QoS reach a subscriber; QoS 1/2 publishes are acknowledged."""
        service = yield start_broker(self, reactor)
        sub, pub = self.client(), self.client()
        self.assertEqual((yield sub.connect(port_of(service))), 0)
        self.assertEqual(list((yield sub.subscribe("a/#", 2))), [2])
        self.assertEqual((yield pub.connect(port_of(service))), 0)
        for qos in (0, 1, 2):
            yield pub.publish(f"a/{qos}", f"payload {qos}".encode(), qos)
        received = []
        for _ in range(3):
            received.append((yield sub.next_message()).payload)
        received.sort()
        self.assertEqual(received, [b"payload 0", b"payload 1", b"payload 2"])

    @inlineCallbacks
    def test_retained_message_reaches_new_subscriber(self):
        """A retained message is delivered, flagged retained, to a later subscriber."""
        service = yield start_broker(self, reactor)
        pub = self.client()
        yield pub.connect(port_of(service))
        yield pub.publish("state/door", b"open", 1, retain=True)
        sub = self.client()
        yield sub.connect(port_of(service))
        yield sub.subscribe("state/#", 1)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload, message.retain), ("state/door", b"open", True))

    @inlineCallbacks
    def test_will_message_on_abrupt_disconnect(self):
        """A client that vanishes without DISCONNECT has its will published."""
        service = yield start_broker(self, reactor)
        watcher, doomed = self.client(), TestClient(reactor)
        yield watcher.connect(port_of(service))
        yield watcher.subscribe("wills/#", 1)
        yield doomed.connect(port_of(service), will=("wills/doomed", b"gone", 1))
        doomed.stop(drop=True)
        message = yield watcher.next_message()
        self.assertEqual((message.topic, message.payload), ("wills/doomed", b"gone"))

    @inlineCallbacks
    def test_wildcard_subscriptions(self):
        """``+`` matches one level only; other topics are not delivered."""
        service = yield start_broker(self, reactor)
        sub, pub = self.client(), self.client()
        yield sub.connect(port_of(service))
        yield sub.subscribe("sensors/+/temp", 1)
        yield pub.connect(port_of(service))
        yield pub.publish("sensors/1/humidity", b"no", 1)
        yield pub.publish("sensors/1/temp/raw", b"no", 1)
        yield pub.publish("sensors/2/temp", b"yes", 1)
        message = yield sub.next_message()
        self.assertEqual((message.topic, message.payload), ("sensors/2/temp", b"yes"))
        self.assertEqual(len(sub.messages.pending), 0)


class ListenerTests(BrokerTestCase):
    """TLS, client certificates and unix sockets, all owned by Twisted."""

    def setUp(self) -> None:
        self.pki = make_pki(Path(self.mktemp()))

    def tls_section(self, **listener: object) -> dict:
        endpoint = (f"ssl:0:interface=127.0.0.1:privateKey={self.pki['server_key']}"
                    f":certKey={self.pki['server_cert']}")
        return {"listeners": {"default": {"endpoint": endpoint, **listener}}, "plugins": ANONYMOUS}

    @inlineCallbacks
    def test_tls(self):
        """A TLS client that verifies the server certificate publishes and subscribes."""
        service = yield start_broker(self, reactor, self.tls_section())
        client = self.client()
        client.tls(self.pki["ca"])
        self.assertEqual((yield client.connect(port_of(service), host="localhost")), 0)
        yield client.subscribe("t", 1)
        yield client.publish("t", b"over tls", 1)
        self.assertEqual((yield client.next_message()).payload, b"over tls")

    @inlineCallbacks
    def test_tls_connection_closed_by_the_broker_ends_at_once(self):
        """A connection the broker closes over TLS (here for a packet only servers send, a
        PINGRESP) ends at once and in order: the close alert and the end of the stream come
        right after the answers, as over plain TCP. (The connection registers itself as the TLS
        transport's producer, and Twisted's TLS waits for that to be unregistered before it
        closes: the client, MQTT.js too, was left hanging until the listener's sweep reset the
        connection, connect_timeout later.)"""
        section = self.tls_section()
        section["connect_timeout"] = 60  # (no sweep cuts the connection off here)
        service = yield start_broker(self, reactor, section)
        endpoint = wrapClientTLS(optionsForClientTLS("localhost", Certificate.loadPEM(
            Path(self.pki["ca"]).read_bytes())), TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(service)))
        client = yield connectProtocol(endpoint, RawClient())
        client.transport.write(CONNECT)
        yield eventually(reactor, lambda: client.received == b"\x20\x02\x00\x00")
        client.transport.write(b"\xc0\x00\xd0\x00")  # PINGREQ, then a PINGRESP
        yield client.lost.addTimeout(5, reactor)
        client.reason.trap(ConnectionDone)
        self.assertEqual(client.received, b"\x20\x02\x00\x00\xd0\x00")  # the PINGREQ answered first

    @inlineCallbacks
    def test_certificate_files_are_read_when_the_broker_starts(self):
        """The certificates in the snapshot (device_info's, /metrics') are those read when the
        broker started: a renewed file at the same path shows once the broker starts again (the
        gateway's restart, or a configuration change, which starts new services), not before
        (docs/telemetry.md)."""
        first = yield start_broker(self, reactor, self.tls_section())
        [server] = first.snapshot().certificates
        self.assertEqual((server.role, server.subject), ("broker listener default server", "CN=localhost"))
        shutil.copyfile(self.pki["client_cert"], self.pki["server_cert"])  # the renewed pair
        shutil.copyfile(self.pki["client_key"], self.pki["server_key"])
        self.assertEqual(first.snapshot().certificates[0].subject, "CN=localhost")
        yield first.stopService()
        again = yield start_broker(self, reactor, self.tls_section())
        self.assertEqual(again.snapshot().certificates[0].subject, "CN=device-1")

    @inlineCallbacks
    def test_client_certificate_required(self):
        """With require_client_cert, a client without a certificate is refused; one with it gets in."""
        section = self.tls_section(cafile=self.pki["ca"], require_client_cert=True)
        section["plugins"] = {"gateway.broker.auth.ClientCertificateAuthPlugin": {}}
        service = yield start_broker(self, reactor, section)
        anonymous = self.client()
        anonymous.tls(self.pki["ca"])
        self.assertNotEqual((yield anonymous.connect(port_of(service), host="localhost")), 0)
        device = self.client()
        device.tls(self.pki["ca"], self.pki["client_cert"], self.pki["client_key"])
        self.assertEqual((yield device.connect(port_of(service), host="localhost")), 0)
        yield device.subscribe("d", 1)
        yield device.publish("d", b"mutual tls", 1)
        self.assertEqual((yield device.next_message()).payload, b"mutual tls")

    @inlineCallbacks
    def test_unix_socket(self):
        """A unix-socket listener serves MQTT; the socket and lock a gateway killed long ago
        left there, its pid taken by another process since (pid 1 here: a reboot, pids wrapped
        around), do not stop it. The start failed for good ('Couldn't listen on ...mqtt.sock:
        Cannot acquire lock')."""
        directory = tempfile.mkdtemp(prefix="gw-")  # AF_UNIX paths are short; trial's temp dirs are not
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "mqtt.sock")
        with socket.socket(socket.AF_UNIX) as left:
            left.bind(path)
        os.symlink("1", path + ".lock")
        os.utime(path + ".lock", (time.time() - 3600,) * 2, follow_symlinks=False)
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": f"unix:{path}:mode=600"}}, "plugins": ANONYMOUS})
        client = self.client(transport="unix")
        self.assertEqual((yield client.connect_unix(path)), 0)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(service.snapshot().listeners[0].address, f"unix:{path}")
        self.assertEqual(os.readlink(path + ".lock"), str(os.getpid()))
        yield client.subscribe("u", 1)
        yield client.publish("u", b"local", 1)
        self.assertEqual((yield client.next_message()).payload, b"local")

    @inlineCallbacks
    def test_port_in_use_is_a_clear_error(self):
        """A listener that cannot bind fails the start with the listener's name, and the process
        holding the port when it can be seen (here, this one)."""
        first = yield start_broker(self, reactor)
        # (the read side names where the first listens as an operator writes it, not a Python repr)
        self.assertEqual(first.snapshot().listeners[0].address, f"127.0.0.1:{port_of(first)}")
        service = None
        try:
            section = {"listeners": {"busy": {"endpoint": f"tcp:{port_of(first)}:interface=127.0.0.1"}},
                       "plugins": ANONYMOUS}
            service = yield start_broker(self, reactor, section)
        except BrokerError as exc:
            self.assertIn("listener busy", str(exc))
            self.assertIn(f"Address already in use; held by pid {os.getpid()} (", str(exc))
        else:
            self.fail(f"second broker started on a busy port: {service}")


class AuthenticationTests(BrokerTestCase):
    """Password files in amqtt's format; anonymous only when configured."""

    @inlineCallbacks
    def test_password_file(self):
        """The right password is accepted; a wrong one and anonymous are refused (CONNACK 4/5)."""
        service = yield self.start_with_password_file()
        good = self.client(username="alice", password="s3cret")
        self.assertEqual((yield good.connect(port_of(service))), 0)
        wrong = self.client(username="alice", password="guess")
        self.assertIn((yield wrong.connect(port_of(service))), (4, 5, 134, 135, -1))
        anonymous = self.client()
        self.assertIn((yield anonymous.connect(port_of(service))), (4, 5, 134, 135, -1))


class BadInputTests(BrokerTestCase):
    """Garbage, oversized packets and stalled clients lose their connection; others carry on."""

    @inlineCallbacks
    def check_still_serving(self, service):
        client = self.client()
        self.assertEqual((yield client.connect(port_of(service))), 0)
        yield client.subscribe("ok", 1)
        yield client.publish("ok", b"still serving", 1)
        self.assertEqual((yield client.next_message()).payload, b"still serving")

    @inlineCallbacks
    def test_garbage_closes_connection(self):
        """Bytes that are not MQTT close that connection without a reply."""
        service = yield start_broker(self, reactor)
        bystander = self.client()
        yield bystander.connect(port_of(service))
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        yield raw.lost.addTimeout(5, reactor)
        self.assertEqual(raw.received, b"")
        yield bystander.subscribe("ok", 1)
        yield bystander.publish("ok", b"bystander fine", 1)
        self.assertEqual((yield bystander.next_message()).payload, b"bystander fine")

    @inlineCallbacks
    def test_oversized_packet_closes_connection(self):
        """A packet over max_packet_size closes the connection before its body arrives."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
            "max_packet_size": 1024})
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(CONNECT + bytes([0x30, 0x80, 0x10]))  # a 2048-byte PUBLISH
        yield raw.lost.addTimeout(5, reactor)
        self.assertIn(raw.received, (b"", b"\x20\x02\x00\x00"))  # at most the CONNACK
        yield self.check_still_serving(service)

    @inlineCallbacks
    def test_max_connections_closes_one_more(self):
        """A listener with max_connections: 1 closes a second connection when its CONNECT
        arrives, without an answer, serving the first."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1", "max_connections": 1}},
            "plugins": ANONYMOUS})
        first = self.client()
        yield first.connect(port_of(service))
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(CONNECT)
        yield raw.lost.addTimeout(5, reactor)
        self.assertEqual(raw.received, b"")
        self.assertEqual(service.factories["default"].refused_full, 1)
        yield first.subscribe("ok", 1)
        yield first.publish("ok", b"first still served", 1)
        self.assertEqual((yield first.next_message()).payload, b"first still served")

    @inlineCallbacks
    def test_max_connections_lets_a_client_take_its_connection_over(self):
        """A listener with max_connections: 1 serving the client ``dev`` lets a new connection
        of ``dev`` in (its old one may be half-open after a network blip): CONNACK 0, and the
        old connection is closed as taken over. It was closed on accept, the device turned
        away until the old connection's keep-alive ran out."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1", "max_connections": 1}},
            "plugins": ANONYMOUS})
        old = self.client(client_id="dev")
        yield old.connect(port_of(service))
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.connect("dev"))
        yield eventually(reactor, lambda: raw.received == packets.CONNACK_ACCEPTED)
        yield old.disconnected()
        factory = service.factories["default"]
        self.assertEqual((len(factory.serving), factory.refused_full), (1, 0))

    @inlineCallbacks
    def test_stalled_connect_is_closed(self):
        """A client that sends no CONNECT within connect_timeout is disconnected."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS,
            "connect_timeout": 0.3})
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(CONNECT[:5])
        yield raw.lost.addTimeout(5, reactor)
        self.assertEqual(raw.received, b"")
        yield self.check_still_serving(service)

    @inlineCallbacks
    def test_a_violation_closes_in_order(self):
        """[MQTT-4.8.0-1] as mosquitto closes: the client gets the answers to its packets
        before the violation (here a SUBSCRIBE filter holding U+0000, §1.5.3), then the end
        of the stream, not a reset (which loses those answers: clients report it as an error)."""
        service = yield start_broker(self, reactor)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.CONNECT_OK)
        yield eventually(reactor, lambda: raw.received == packets.CONNACK_ACCEPTED)
        raw.transport.write(packets.PINGREQ + packets.subscribe(("a\x00b", 0)))
        yield raw.lost.addTimeout(5, reactor)
        self.assertEqual(raw.received, packets.CONNACK_ACCEPTED + b"\xd0\x00")
        raw.reason.trap(ConnectionDone)
        self.assertEqual(service.factories["default"].violations, 1)

    @inlineCallbacks
    def test_protocol_violations_close_only_that_connection(self):
        """§2.2.2, §3.1, §3.3, §3.8: a violating client is closed without a reply; others carry on."""
        service = yield start_broker(self, reactor)
        cases = [packets.connect(flags=0x03),  # reserved CONNECT flag
                 packets.CONNECT_OK + packets.publish("t", qos=1, packet_id=0),
                 packets.CONNECT_OK + packets.subscribe(),
                 packets.CONNECT_OK + packets.packet(0x36, packets.string("t") + b"\x00\x01"),
                 packets.CONNECT_OK + b"\x20\x02\x00\x00",  # a client-sent CONNACK
                 packets.CONNECT_OK + packets.CONNECT_OK]
        for case in cases:
            raw = yield raw_connect(reactor, port_of(service))
            raw.transport.write(case)
            yield raw.lost.addTimeout(5, reactor)
            self.assertIn(raw.received, (b"", packets.CONNACK_ACCEPTED), case)
        raw = yield raw_connect(reactor, port_of(service))
        raw.transport.write(packets.connect(level=3))
        yield raw.lost.addTimeout(5, reactor)
        self.assertEqual(raw.received, b"\x20\x02\x00\x01")  # [MQTT-3.1.2-2]
        self.assertEqual(service.factories["default"].violations, len(cases) + 1)
        yield self.check_still_serving(service)
