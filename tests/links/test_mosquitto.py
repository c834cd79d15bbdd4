"""End to end against a real mosquitto on 127.0.0.1: outages, restarts under load, TLS."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase

from gateway.links.service import LinksService
from gateway.links.settings import LinkSettings, LinksSettings, RouteSettings
from tests.links.memory import start_journal
from tests.broker.harness import port_of, start_broker
from tests.links.mosquitto import Mosquitto
from tests.ports import free_port
from tests.mqttclient import TestClient
from tests.tlscerts import make_pki, make_server

ROUTES = (RouteSettings("telemetry/#", "cloud/{device}/{#}"),)


class MosquittoTests(TestCase):
    """The link carries every acknowledged message to a real cloud broker."""

    timeout = 60

    @inlineCallbacks
    def setUpLinks(self, make_link: Callable[[int], LinkSettings], pki: dict[str, str] | None = None,
                   options: tuple[str, ...] = ()) -> Any:
        self.cloud = Mosquitto(reactor, Path(self.mktemp()), free_port(), pki, options)
        link = make_link(self.cloud.port)
        self.addCleanup(self.cloud.stop)
        self.broker = yield start_broker(self, reactor)
        settings = LinksSettings(links={"cloud": link})
        self.journal = yield start_journal(self, reactor)
        self.links = LinksService(settings, reactor, self.broker.bus, self.journal,
                                  identity=("t1", "gw1"), retry_policy=lambda attempt: 0.1,
                                  durable_gate=self.broker.durable_gate)
        yield self.links.startService()
        self.addCleanup(self.links.stopService)
        self.device = TestClient(reactor)
        yield self.device.connect(port_of(self.broker))
        self.addCleanup(self.device.stop)

    @inlineCallbacks
    def cloud_subscriber(self, pki: dict[str, str] | None = None) -> Any:
        """A persistent subscriber on the cloud side (it connects again by itself after each
        restart of mosquitto), made while mosquitto runs."""
        subscriber = TestClient(reactor, client_id="cloud-sub", clean_session=False, reconnect=(0.05, 0.2))
        if pki:
            subscriber.tls(pki["ca"], pki["client_cert"], pki["client_key"])
        yield self.cloud.start()
        yield subscriber.connect(self.cloud.port, host="localhost" if pki else "127.0.0.1")
        yield subscriber.subscribe("cloud/#", 1)
        self.addCleanup(subscriber.stop)
        return subscriber

    @inlineCallbacks
    def receive(self, subscriber: TestClient, n: int, redelivered: list[int] | None = None) -> Any:
        """The payloads of the first ``n`` distinct messages (duplicates counted apart).

        Duplicates that mosquitto itself sent again (DUP set: its redelivery to the
        subscriber after a restart) are counted in ``redelivered[0]`` when given, not in
        the duplicates returned, which are the copies mosquitto received twice.
        """
        seen: list[bytes] = []
        known: set[bytes] = set()
        duplicates = 0
        while len(known) < n:
            message = yield subscriber.next_message(timeout=20)
            if message.payload in known:
                if redelivered is not None and message.dup:
                    redelivered[0] += 1
                else:
                    duplicates += 1
            known.add(message.payload)
            seen.append(message.payload)
        return seen, duplicates

    def link(self, port: int, **extra: Any) -> LinkSettings:
        return LinkSettings(endpoint=f"tcp:host=127.0.0.1:port={port}", routes=ROUTES, downlink=(),
                            keepalive=5, **extra)

    @inlineCallbacks
    def test_outage_then_all_in_order(self) -> None:
        """N QoS 1 messages acknowledged while the cloud is down all arrive, in order, once up."""
        yield self.setUpLinks(lambda port: self.link(port))
        subscriber = yield self.cloud_subscriber()
        yield self.cloud.stop()
        n = 300
        yield gatherResults([self.device.publish("telemetry/s1", b"%05d" % i, qos=1) for i in range(n)])
        self.assertFalse(self.links.links["cloud"].is_connected)
        yield self.cloud.start()
        seen, duplicates = yield self.receive(subscriber, n)
        self.assertEqual(seen, [b"%05d" % i for i in range(n)])
        self.assertEqual(duplicates, 0)

    @inlineCallbacks
    def test_ten_restarts_under_load(self) -> None:
        """mosquitto stopped and started 10 times while devices publish: nothing is lost."""
        yield self.setUpLinks(lambda port: self.link(port, window=16))
        subscriber = yield self.cloud_subscriber()
        n, published = 1000, []
        for round_ in range(10):
            batch = [self.device.publish("telemetry/load", b"%05d" % (round_ * 100 + i), qos=1) for i in range(100)]
            yield deferLater(reactor, 0.05, lambda: None)
            yield self.cloud.stop()
            yield self.cloud.start()
            published.extend((yield gatherResults(batch)))
        redelivered = [0]
        seen, duplicates = yield self.receive(subscriber, n, redelivered)
        self.assertEqual(sorted(set(seen)), [b"%05d" % i for i in range(n)])
        # The link sends every record once, and again only what was in flight at a stop
        # (at most its window of 16 per restart).
        forwarder = self.links.links["cloud"].forwarder
        self.assertEqual(forwarder.sent, n)
        self.assertLessEqual(forwarder.resent, 10 * 16)
        # A copy mosquitto received twice reaches the subscriber as a new message: only the
        # link's resends can cause one. mosquitto's own redelivery to its subscriber after a
        # restart (DUP set) depends on how far the subscriber's session had got when mosquitto
        # saved it, which is mosquitto's business: once it reached 750 in a loaded run.
        self.assertLessEqual(duplicates, forwarder.resent)

    @inlineCallbacks
    def test_a_wrong_password_is_not_authorized(self) -> None:
        """mosquitto answers a wrong password with CONNACK code 5: the link's cause says
        ``not authorized``, as links.md now says; it promised an app the sentence of code 4,
        ``bad user name or password``, for every refused password."""
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise SkipTest("mosquitto_passwd is not installed")
        directory = Path(self.mktemp())
        directory.mkdir()
        passwords = directory / "passwords"
        subprocess.run([tool, "-c", "-b", str(passwords), "gw", "right"], check=True, capture_output=True)
        passwords.chmod(0o600)
        yield self.setUpLinks(lambda port: self.link(port, username="gw", password="wrong"),
                              options=("allow_anonymous false", f"password_file {passwords}"))
        yield self.cloud.start()
        status = self.links.status
        for _ in range(200):
            if "refused the MQTT connection" in status["cloud"]["cause"]:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(status["cloud"]["cause"],
                         f"127.0.0.1:{self.cloud.port} refused the MQTT connection: not authorized"
                         " (check the credentials and what the account may do)")
        self.assertFalse(self.links.links["cloud"].is_connected)

    @inlineCallbacks
    def test_tls_with_client_certificate(self) -> None:
        """tls: with hostname verification, a CA file and a client certificate."""
        pki = make_pki(Path(self.mktemp()))
        yield self.setUpLinks(lambda port: LinkSettings(
            endpoint=f"tls:host=localhost:port={port}", ca_file=pki["ca"], cert_file=pki["client_cert"],
            key_file=pki["client_key"], routes=ROUTES, downlink=()), pki)
        subscriber = yield self.cloud_subscriber(pki)
        yield self.device.publish("telemetry/secure", b"hello", qos=1)
        message = yield subscriber.next_message()
        self.assertEqual((message.topic, message.payload), ("cloud/gw1/secure", b"hello"))

    @inlineCallbacks
    def test_tls_certificate_not_valid_yet_then_valid(self) -> None:
        """A cloud broker whose certificate is not valid yet by the gateway's clock (as every
        certificate is for a gateway without a real-time clock at 1970, before NTP): the link's
        cause says it is the clock, with the clock's reading and the certificate's window (it
        said only that the CAs do not vouch for the certificate, or that it has expired); a
        message acknowledged meanwhile waits in the journal. Once the broker's certificate is
        valid by the clock, the link connects on its own retries, without a restart, and the
        cloud acknowledges the message."""
        root = Path(self.mktemp())
        pki = make_pki(root / "pki")
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        future = make_server(root / "future", pki, "future", now + datetime.timedelta(days=400),
                             now + datetime.timedelta(days=800))
        live = dict(pki, server_cert=str(root / "live.pem"), server_key=str(root / "live.key"))
        shutil.copy(future["server_cert"], live["server_cert"])
        shutil.copy(future["server_key"], live["server_key"])
        yield self.setUpLinks(lambda port: LinkSettings(
            endpoint=f"tls:host=localhost:port={port}", ca_file=pki["ca"], cert_file=pki["client_cert"],
            key_file=pki["client_key"], routes=ROUTES, downlink=()), live)
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "cannot connect" in event.get("log_format", ""):
                lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        yield self.cloud.start()
        yield self.device.publish("telemetry/early", b"kept", qos=1)  # (acknowledged: journaled)
        status = self.links.status
        for _ in range(100):
            if "not valid yet" in status["cloud"]["cause"]:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        yield deferLater(reactor, 0.5, lambda: None)  # (attempts every 0.1 s: the same cause, no new line)
        self.assertEqual(len([line for line in lines if "not valid yet" in line]), 1, lines)
        start = (now + datetime.timedelta(days=400)).strftime("%Y-%m-%d %H:%M:%S UTC")
        end = (now + datetime.timedelta(days=800)).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.assertEqual(status["cloud"]["cause"], (
            f"TLS certificate verification failed: the certificate of localhost:{self.cloud.port} (CN=localhost) is "
            f"not valid yet by the gateway's clock: it is valid from {start} to {end}, and the clock reads "
            f"{now:%Y-%m-%d}; if the clock is behind, set it (NTP); if it is right, the certificate is for a later "
            "time; the link tries again on its backoff and connects once the clock and the certificate agree"))
        self.assertEqual(self.links.snapshot().links[0].last_error, status["cloud"]["cause"])
        self.assertEqual(self.links.snapshot().links[0].backlog, 1)
        yield self.cloud.stop()
        shutil.copy(pki["server_cert"], live["server_cert"])
        shutil.copy(pki["server_key"], live["server_key"])
        yield self.cloud.start()
        for _ in range(100):
            if self.links.snapshot().links[0].acked:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        snapshot = self.links.snapshot().links[0]
        self.assertEqual((snapshot.state, snapshot.acked, snapshot.backlog), ("connected", 1, 0))
