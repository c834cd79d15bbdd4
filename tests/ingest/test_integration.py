"""The ingest for real: an HTTP client with keep-alive against the service tree, and a gateway
process SIGKILLed right after its 204s that still sends every acknowledged value upstream."""

from __future__ import annotations

from pathlib import Path

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.gatewayprocess import spawn_gateway
from tests.links.mosquitto import Mosquitto
from tests.mqttclient import TestClient
from tests.ports import closed_port, free_port

CIK = {"X-Exosite-CIK": "0123456789abcdef0123456789abcdef01234567",
       "Content-Type": "application/x-www-form-urlencoded"}


def gateway_yaml(work: Path, broker: int, ingest: int, cloud: int) -> Path:
    """A config: broker, ingest and an MQTT link to ``cloud`` routing telemetry/# to up/#."""
    path = work / "gateway.yaml"
    path.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker}:interface=127.0.0.1'\n"
        "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
        f"ingest:\n  endpoint: 'tcp:{ingest}:interface=127.0.0.1'\n"
        "telemetry:\n  metrics_endpoint: ''\n"
        f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud}'\n"
        "      backoff_initial: 0.1\n      backoff_max: 0.5\n"
        "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n")
    return path


def http_client(test: TestCase) -> HTTPClient:
    """A treq client with a keep-alive pool, closed on cleanup."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    test.addCleanup(pool.closeCachedConnections)
    return HTTPClient(Agent(reactor, pool=pool))


class IngestServiceTests(TestCase):
    """The service tree with the ingest on a real socket."""

    timeout = 60

    @inlineCallbacks
    def test_writes_over_keep_alive_land_in_the_journal(self):
        """Writes on one kept-alive connection get 204s; the link's stream holds them in order."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        ingest = free_port()
        root = build_service(gateway_config.load(gateway_yaml(work, free_port(), ingest, free_port())), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        self.assertTrue(root.parts.ingest.listening)
        client = http_client(self)
        url = f"http://127.0.0.1:{ingest}/onep:v1/stack/alias"
        for i in range(20):
            response = yield client.post(url, data=f"temp={i}&hum={100 - i}".encode(), headers=CIK)
            self.assertEqual(response.code, 204)
            yield treq.content(response)
        response = yield client.get(url + "?temp&hum", headers=CIK)
        self.assertEqual((yield treq.content(response)), b"temp=19&hum=81")
        stream = root.parts.journal.stream("link-cloud")
        yield stream.cursor("test")
        records = yield stream.read("test", max_records=100)
        self.assertEqual([(r.topic, r.payload) for r in records][:4],
                         [("up/temp", b"0"), ("up/hum", b"100"), ("up/temp", b"1"), ("up/hum", b"99")])
        self.assertEqual(len(records), 40)
        self.assertEqual(root.parts.ingest.snapshot().writes, 20)

    @inlineCallbacks
    def test_port_taken_is_logged_not_fatal(self):
        """Another process on the ingest's port (gmq during a migration): the gateway still starts."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        from twisted.internet.protocol import Factory
        taken = yield reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        root = build_service(gateway_config.load(
            gateway_yaml(work, free_port(), taken.getHost().port, free_port())), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        self.assertFalse(root.parts.ingest.listening)
        self.assertIn("Address already in use", root.parts.ingest.error)

    @inlineCallbacks
    def test_full_stream_under_reject_new_is_503_with_retry_after(self):
        """A real journal stream at max_bytes with overflow: reject-new: 503 + Retry-After, and
        every value answered 204 before is in the stream."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        ingest = free_port()
        path = gateway_yaml(work, free_port(), ingest, free_port())
        path.write_text(path.read_text() + "journal:\n  streams:\n    link-cloud:\n      max_bytes: 8192\n"
                        "      segment_bytes: 4096\n      overflow: reject-new\n      min_free_bytes: 0\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        client = http_client(self)
        url = f"http://127.0.0.1:{ingest}/onep:v1/stack/alias"
        stored = 0
        for i in range(200):
            response = yield client.post(url, data=f"v={i:04d}{'x' * 100}".encode(), headers=CIK)
            body = yield treq.content(response)
            if response.code == 503:
                break
            self.assertEqual(response.code, 204)
            stored += 1
        else:
            self.fail("the stream never refused")
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["5"])
        self.assertIn(b"full", body)
        stream = root.parts.journal.stream("link-cloud")
        yield stream.cursor("test")
        records = yield stream.read("test", max_records=1000)
        self.assertEqual([r.payload[:4] for r in records], [f"{i:04d}".encode() for i in range(stored)])


    @inlineCallbacks
    def test_old_record_timestamps_do_not_expire_fresh_values(self):
        """Records stamped long ago (a backlog an app sends late) keep their timestamps without
        aging the journal: the fresh values before them stay (an old stamp starting a segment
        made age expiry drop the whole segment before it, fresh and unsent, as max-age)."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        ingest = free_port()
        path = gateway_yaml(work, free_port(), ingest, closed_port(self))  # (the cloud is down: nothing is acked)
        path.write_text(path.read_text() + "journal:\n  streams:\n    link-cloud:\n      segment_bytes: 4096\n"
                        "      max_age_s: 3600\n      min_free_bytes: 0\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        client = http_client(self)
        url = f"http://127.0.0.1:{ingest}/onep:v1/stack/alias"
        old = int(reactor.seconds()) - 86400
        for i in range(40):
            response = yield client.post(url, data=f"fresh={i:04d}{'x' * 100}".encode(), headers=CIK)
            yield treq.content(response)
            self.assertEqual(response.code, 204)
            response = yield client.post(url + "/old", data=f"{old + i}={i:04d}{'x' * 100}".encode(), headers=CIK)
            yield treq.content(response)
            self.assertEqual(response.code, 204)
        stream = root.parts.journal.stream("link-cloud")
        self.assertGreater(stream.stats().segments, 2)
        stream.enforce_limits()
        self.assertEqual(stream.stats().drops, {})
        yield stream.cursor("test")
        records = yield stream.read("test", max_records=1000)
        self.assertEqual(len(records), 80)


class IngestCrashTests(TestCase):
    """SIGKILL right after the 204s: what was acknowledged survives and goes upstream."""

    timeout = 120

    @inlineCallbacks
    def test_sigkill_after_204_loses_nothing(self):
        """Values answered 204 are in the journal after a SIGKILL and reach the cloud after restart."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        cloud_port, ingest = free_port(), free_port()
        config = gateway_yaml(work, free_port(), ingest, cloud_port)
        args = ("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        proc = spawn_gateway(self, reactor, *args)
        yield proc.ready.addTimeout(60, reactor)
        client = http_client(self)
        url = f"http://127.0.0.1:{ingest}/onep:v1/stack/alias"
        acked = []
        for i in range(30):
            response = yield client.post(url, data=f"v={i}".encode(), headers=CIK)
            yield treq.content(response)
            if response.code == 204:
                acked.append(str(i))
        proc.transport.signalProcess("KILL")  # no clean stop: only what is on disk counts
        yield proc.ended
        self.assertEqual(len(acked), 30)
        cloud = Mosquitto(reactor, work / "cloud", cloud_port)
        yield cloud.start()
        self.addCleanup(cloud.stop)
        subscriber = TestClient(reactor, client_id="cloud-sub")
        self.addCleanup(subscriber.stop)
        yield subscriber.connect(cloud.port)
        yield subscriber.subscribe("up/#", 1)
        proc = spawn_gateway(self, reactor, *args)
        yield proc.ready.addTimeout(60, reactor)
        received: list[str] = []
        while len(set(received)) < len(acked):
            message = yield subscriber.next_message(30)
            self.assertEqual(message.topic, "up/v")
            received.append(message.payload.decode())
        self.assertEqual(list(dict.fromkeys(received)), acked)
