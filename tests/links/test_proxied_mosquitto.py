"""An MQTT link through a real HTTP proxy: tinyproxy (Debian's ``tinyproxy``, installed by
``make test-deps``) on 127.0.0.1, in front of a real mosquitto speaking TLS with client
certificates, as a corporate proxy in front of a cloud broker."""

from __future__ import annotations

import shutil
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from gateway.links.service import LinksService
from gateway.links.settings import LinkSettings, LinksSettings, RouteSettings
from gateway.proxysettings import ProxySettings
from tests.broker.harness import port_of, start_broker
from tests.links.memory import start_journal
from tests.links.mosquitto import Mosquitto
from tests.links.test_http_integration import until
from tests.mqttclient import TestClient
from tests.peerprocess import PeerProcess
from tests.ports import free_port
from tests.tlscerts import make_pki

ROUTES = (RouteSettings("telemetry/#", "cloud/{device}/{#}"),)


class ProxiedMosquittoTests(TestCase):
    """A ``tls:`` link whose only way out is tinyproxy's CONNECT tunnel."""

    timeout = 20

    @inlineCallbacks
    def test_a_tls_link_through_tinyproxy_delivers_and_a_refused_port_is_its_cause(self) -> None:
        """A message goes up a ``tls:`` link (the broker's name verified, a client certificate
        shown) in tinyproxy's tunnel; a link to a port tinyproxy does not tunnel to (its
        ``ConnectPort``) shows the proxy's refusal as its cause."""
        executable = shutil.which("tinyproxy")
        if executable is None:
            raise SkipTest("tinyproxy is not installed (apt-get install tinyproxy; make test-deps does)")
        work = Path(self.mktemp()).resolve()
        pki = make_pki(work / "pki")
        cloud = Mosquitto(reactor, work / "cloud", free_port(), pki)
        yield cloud.start()
        self.addCleanup(cloud.stop)
        proxy_port = free_port()
        conf = work / "tinyproxy.conf"
        conf.write_text(f"Port {proxy_port}\nListen 127.0.0.1\nTimeout 10\nAllow 127.0.0.1\nMaxClients 20\n"
                        f"ConnectPort {cloud.port}\nBasicAuth gw s3cr3t\nLogLevel Info\n")
        proxy = PeerProcess(reactor, proxy_port)
        proxy.spawn(executable, [executable, "-d", "-c", str(conf)])
        self.addCleanup(proxy.stop)
        yield proxy.wait_for_port("tinyproxy", 10, 0.05)

        subscriber = TestClient(reactor, client_id="cloud-sub")
        subscriber.tls(pki["ca"], pki["client_cert"], pki["client_key"])
        yield subscriber.connect(cloud.port, host="localhost")
        self.addCleanup(subscriber.stop)
        yield subscriber.subscribe("cloud/#", 1)

        tls = {"ca_file": pki["ca"], "cert_file": pki["client_cert"], "key_file": pki["client_key"],
               "routes": ROUTES, "downlink": (), "loss_topic": None}
        refused_port = free_port()
        settings = LinksSettings(links={
            "cloud": LinkSettings(endpoint=f"tls:host=localhost:port={cloud.port}", **tls),
            "refused": LinkSettings(endpoint=f"tls:host=localhost:port={refused_port}", **tls)})
        broker = yield start_broker(self, reactor)
        journal = yield start_journal(self, reactor)
        # (no_proxy names another host: localhost itself goes through the proxy)
        links = LinksService(settings, reactor, broker.bus, journal, identity=("t1", "gw1"),
                             retry_policy=lambda attempt: 0.2, durable_gate=broker.durable_gate,
                             proxy=ProxySettings(url=f"http://gw:s3cr3t@127.0.0.1:{proxy_port}",
                                                 no_proxy=("127.0.0.1",)))
        yield links.startService()
        self.addCleanup(links.stopService)
        device = TestClient(reactor)
        yield device.connect(port_of(broker))
        self.addCleanup(device.stop)
        yield device.publish("telemetry/secure", b"through the proxy", qos=1)
        message = yield subscriber.next_message(timeout=10)
        self.assertEqual((message.topic, message.payload), ("cloud/gw1/secure", b"through the proxy"))
        self.assertEqual(links.links["cloud"].protocol.transport.getPeer().port, proxy_port)  # (the tunnel's)

        refused = links.links["refused"]
        yield until(lambda: "refused the tunnel" in refused.cause, limit=10)
        self.assertRegex(refused.cause, rf"^the proxy http://127\.0\.0\.1:{proxy_port} refused the tunnel to "
                                        rf"localhost:{refused_port}: HTTP 403: .*the ports it tunnels to\)$")
        self.assertNotIn("s3cr3t", refused.cause)
