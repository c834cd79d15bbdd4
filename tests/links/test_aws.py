"""The AWS link profile's TLS forms on real sockets: a client certificate against mosquitto
with TLS, and ALPN ``x-amzn-mqtt-ca`` negotiated with a TLS front that, like AWS IoT on
443, selects that protocol and requires a client certificate (mosquitto 2.0 selects no
ALPN protocol itself), in front of mosquitto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor, ssl
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import TestCase

from gateway.links.aws_settings import AWSSettings
from gateway.links.settings import AWS_ROUTES, LinkSettings
from tests.broker.harness import eventually
from tests.links.memory import start_links
from tests.links.mosquitto import Mosquitto
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.tlscerts import make_pki


class AWSLinkTLSTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def start_link(self, link: LinkSettings) -> Any:
        links, _, device = yield start_links(self, reactor, {"aws": link})
        return links, device

    @inlineCallbacks
    def cloud(self, pki: dict[str, str] | None) -> Any:
        cloud = Mosquitto(reactor, Path(self.mktemp()), free_port(), pki)
        yield cloud.start()
        self.addCleanup(cloud.stop)
        subscriber = TestClient(reactor)
        if pki:
            subscriber.tls(pki["ca"], pki["client_cert"], pki["client_key"])
        yield subscriber.connect(cloud.port, host="localhost" if pki else "127.0.0.1")
        yield subscriber.subscribe("#", 1)
        self.addCleanup(subscriber.stop)
        return cloud, subscriber

    @inlineCallbacks
    def test_client_certificate_and_kanto_topics(self) -> None:
        """tls: with a client certificate to mosquitto (TLS, certificates required); with aws:
        and no routes, telemetry goes up on its local topic, as it is (docs/aws.md), and
        so do the upload service's requests and statuses (without them an upload triggered
        through AWS never reached the cloud's start) and the telemetry reports."""
        pki = make_pki(Path(self.mktemp()))
        cloud, subscriber = yield self.cloud(pki)
        link = LinkSettings(endpoint=f"tls:host=localhost:port={cloud.port}", ca_file=pki["ca"],
                            cert_file=pki["client_cert"], key_file=pki["client_key"], downlink=(), aws=AWSSettings())
        self.assertEqual(link.routes, AWS_ROUTES)
        links, device = yield self.start_link(link)
        statuses = ["edge/gateway/uploads/request", "edge/gateway/uploads/lastUpload", "edge/gateway/uploads/autoUpload",
                   "edge/gateway/reports/device_info", "edge/gateway/reports/usage_report",
                   "edge/gateway/reports/engine_report"]
        for topic in statuses:
            yield device.publish(topic, b"{}", qos=1)
        yield device.publish("telemetry/meter", b"42", qos=1)
        received = []
        while not received or received[-1][0] != "telemetry/meter":
            message = yield subscriber.next_message()
            received.append((message.topic, message.payload))
        self.assertEqual(received, [(topic, b"{}") for topic in statuses] + [("telemetry/meter", b"42")])

    @inlineCallbacks
    def test_alpn_negotiated(self) -> None:
        """aws.alpn: the link offers x-amzn-mqtt-ca; the server selected it (seen on both ends)
        and the link's MQTT session works through it."""
        pki = make_pki(Path(self.mktemp()))
        cloud, subscriber = yield self.cloud(None)
        server_key = Path(pki["server_key"]).read_bytes()
        server = ssl.PrivateCertificate.loadPEM(Path(pki["server_cert"]).read_bytes() + server_key)
        ca = ssl.Certificate.loadPEM(Path(pki["ca"]).read_bytes())
        options = ssl.CertificateOptions(privateKey=server.privateKey.original, certificate=server.original,
                                         verify=True, caCerts=[ca.original], requireCertificate=True,
                                         acceptableProtocols=[b"x-amzn-mqtt-ca"])
        front = ProxyFactory("127.0.0.1", cloud.port)
        accepted: list[Any] = []
        build = front.buildProtocol
        front.buildProtocol = lambda addr: accepted.append(build(addr)) or accepted[-1]  # type: ignore[method-assign]
        port = yield SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(front)
        self.addCleanup(port.stopListening)
        link = LinkSettings(endpoint=f"tls:host=localhost:port={port.getHost().port}", ca_file=pki["ca"],
                            cert_file=pki["client_cert"], key_file=pki["client_key"], downlink=(),
                            aws=AWSSettings(alpn=True))
        links, device = yield self.start_link(link)
        yield device.publish("t/x", b"over-alpn", qos=1)
        message = yield subscriber.next_message()
        self.assertEqual((message.topic, message.payload), ("t/x", b"over-alpn"))
        aws = links.links["aws"]
        yield eventually(reactor, lambda: aws.protocol is not None)
        self.assertEqual(aws.protocol.transport.negotiatedProtocol, b"x-amzn-mqtt-ca")
        self.assertEqual(accepted[0].transport.negotiatedProtocol, b"x-amzn-mqtt-ca")

    @inlineCallbacks
    def test_no_alpn_without_the_option(self) -> None:
        """Without aws.alpn nothing is offered, so such a server selects nothing."""
        pki = make_pki(Path(self.mktemp()))
        cloud, subscriber = yield self.cloud(pki)
        link = LinkSettings(endpoint=f"tls:host=localhost:port={cloud.port}", ca_file=pki["ca"],
                            cert_file=pki["client_cert"], key_file=pki["client_key"], downlink=())
        links, device = yield self.start_link(link)
        yield device.publish("telemetry/y", b"1", qos=1)
        yield subscriber.next_message()
        self.assertIsNone(links.links["aws"].protocol.transport.negotiatedProtocol)
