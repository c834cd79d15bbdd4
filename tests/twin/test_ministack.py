"""The twin synced with AWS IoT device shadows for real: the gateway's tree (and a real
``twistd gateway`` killed with SIGKILL) with an MQTT link over WebSocket (SigV4-signed URL)
to ministack on 127.0.0.1, and boto3 on its HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor, ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.protocols.portforward import ProxyFactory
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.broker.harness import eventually
from tests.gatewayprocess import spawn_gateway
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.tlscerts import make_pki
from tests.twin.ministack import CREDENTIALS, IOT_HOST, REGION, Ministack
from tests.twin.test_integration import twin_app

THING = "gw1"


def gateway_yaml(work: Path, broker: int, cloud: int, key: tuple[str, str] = ("test", "test"),
                 endpoint: str = "", ca_file: str = "") -> Path:
    credentials = work / "aws-credentials"
    credentials.write_text(CREDENTIALS.format(key=key[0], secret=key[1]))
    path = work / "gateway.yaml"
    path.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n  tenant_id: acme\n  device_id: {THING}\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker}:interface=127.0.0.1'\n"
        "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
        "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n"
        "links:\n  links:\n    aws:\n"
        f"      endpoint: '{endpoint or f'tcp:host=127.0.0.1:port={cloud}'}'\n"
        + (f"      ca_file: '{ca_file}'\n" if ca_file else "") +
        "      clean_session: true\n      backoff_initial: 0.2\n      backoff_max: 1.0\n"
        f"      aws: {{websocket: true, credentials_file: '{credentials}', region: {REGION}, host: {IOT_HOST}}}\n"
        "twin:\n  shadow_link: aws\n  request_timeout: 5\n")
    return path


def modify(path: str, value: Any) -> bytes:
    return json.dumps({"topic": f"acme/{THING}/things/twin/commands/modify", "path": path, "value": value,
                       "headers": {"response-required": True}}).encode()


class MinistackShadowTests(TestCase):
    """Reported state up, desired state down, conflicts, outages."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        if not Ministack.available():
            raise SkipTest("ministack is not installed: run `make tools-venv`")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        self.ministack = Ministack(reactor, free_port())
        yield self.ministack.start()
        self.addCleanup(lambda: self.ministack.stop())
        port = free_port()
        config = gateway_yaml(work, port, self.ministack.port)
        self.root = build_service(gateway_config.load(config), reactor)
        yield self.root.startService()
        self.addCleanup(self.root.stopService)
        self.app = TestClient(reactor)
        self.addCleanup(self.app.stop)
        self.assertEqual((yield self.app.connect(port)), 0)
        yield self.app.subscribe("command///req/#", 1)
        self.link = self.root.parts.links.links["aws"]
        yield eventually(reactor, lambda: self.link.is_connected, timeout=20)

    @inlineCallbacks
    def until(self, fetch: Callable[[], Any], check: Callable[[Any], bool], attempts: int = 60) -> Any:
        """Poll ``fetch()`` (0.25 s apart, bounded) until ``check`` holds; its last value."""
        value = None
        for _ in range(attempts):
            value = yield fetch()
            if check(value):
                return value
            yield deferLater(reactor, 0.25, lambda: None)
        self.fail(f"never held; last value: {value!r}")

    def reported(self, shadow: str) -> Any:
        return self.ministack.shadow("get", THING, shadow).addCallback(
            lambda doc: ((doc or {}).get("state") or {}).get("reported"))

    @inlineCallbacks
    def message(self, topic: str) -> Any:
        """The next local message on ``topic`` (others skipped)."""
        while True:
            message = yield self.app.next_message(timeout=20)
            if message.topic == topic:
                return json.loads(message.payload)

    @inlineCallbacks
    def test_reported_up_and_desired_down(self) -> None:
        """A local modify reaches the named shadow's reported state (read with boto3); a desired
        change made over HTTP reaches the app as a `merged` event of desiredProperties."""
        yield self.app.publish("e", modify("/features/meter/properties", {"kwh": 12.5}), qos=1)
        response = yield self.message("command///req//modify-response")
        self.assertEqual(response["status"], 201)
        yield self.until(lambda: self.reported("meter"), lambda r: r == {"kwh": 12.5})
        snapshot = self.root.parts.twin.snapshot()
        self.assertEqual((snapshot.root, snapshot.things, snapshot.sync.thing), (f"acme:{THING}", 1, THING))
        yield self.app.publish("e", modify("/attributes/site", "north"), qos=1)
        yield self.until(lambda: self.reported(""), lambda r: r == {"site": "north"})
        yield self.ministack.shadow("update", THING, "lamp", {"state": {"desired": {"on": True}}})
        event = yield self.message("command///req//merged")
        self.assertEqual((event["path"], event["value"]), ("/features/lamp/desiredProperties", {"on": True}))
        self.assertEqual(self.root.parts.twin.store.things[f"acme:{THING}"]["features"]["lamp"]["desiredProperties"],
                         {"on": True})

    @inlineCallbacks
    def test_conflict_then_fresh_get(self) -> None:
        """A request with a stale version is refused 409 by the shadow service; the sync reads
        the shadow and sends it again with the current version: the value arrives."""
        sync = self.root.getServiceNamed("shadow-sync").sync
        versions_heard: list[int] = []  # versions in the pump shadow's update/documents the sync took
        take = sync.cloud_message

        def noting(publish: Any) -> bool:
            if publish.topic == f"$aws/things/{THING}/shadow/name/pump/update/documents":
                versions_heard.append(((json.loads(publish.payload).get("current") or {}).get("version")))
            return take(publish)

        self.patch(sync, "cloud_message", noting)
        yield self.app.publish("e", modify("/features/pump/properties/rpm", 1), qos=1)
        yield self.until(lambda: self.reported("pump"), lambda r: r == {"rpm": 1})
        yield self.ministack.shadow("update", THING, "pump", {"state": {"desired": {"rpm": 5}}})
        # The HTTP answer can reach this reactor before the MQTT notifications of that update
        # (accepted, delta, documents, each with version 2), which would set the version again
        # after the line below: wait for the last of them (documents) to have reached the sync.
        yield eventually(reactor, lambda: 2 in versions_heard, timeout=20)
        sync.versions["pump"] = 1  # as if the desired change's messages had been missed
        gets = sync.requests._get_count
        yield self.app.publish("e", modify("/features/pump/properties/rpm", 5), qos=1)
        yield self.until(lambda: self.reported("pump"), lambda r: r == {"rpm": 5})
        self.assertGreater(sync.versions["pump"], 2)
        self.assertEqual(sync.requests._get_count, gets + 1, "the 409 was answered by reading the shadow again")

    @inlineCallbacks
    def test_offline_edits_synced_after_reconnect(self) -> None:
        """With the cloud down the twin still answers; the edits reach the shadows after it is back,
        a shadow's as one merged request (twin.md, Offline: the shadow's first version), its null
        taken as a delete."""
        yield self.ministack.stop()
        yield eventually(reactor, lambda: not self.link.is_connected, timeout=20)
        delete = json.dumps({"topic": f"acme/{THING}/things/twin/commands/delete",
                             "path": "/features/door/properties/code"}).encode()
        for command, answer in ((modify("/features/door/properties/open", True), "modify"),
                                (modify("/features/door/properties/code", 5), "modify"), (delete, "delete"),
                                (modify("/features/door/properties/open", False), "modify")):
            yield self.app.publish("e", command, qos=1)
            response = yield self.message(f"command///req//{answer}-response")
            self.assertIn(response["status"], (201, 204))
        yield self.ministack.start()
        yield eventually(reactor, lambda: self.link.is_connected, timeout=30)
        yield self.until(lambda: self.reported("door"), lambda r: r == {"open": False})
        shadow = yield self.ministack.shadow("get", THING, "door")
        self.assertEqual(shadow["version"], 1)


class SignatureCheckedTests(TestCase):
    """ministack with AUTH=true checks the URL's SigV4 signature (Host header as sent) for an
    IAM user's key."""

    timeout = 120

    @inlineCallbacks
    def start(self, right_secret: bool) -> Any:
        if not Ministack.available():
            raise SkipTest("ministack is not installed: run `make tools-venv`")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        ministack = Ministack(reactor, free_port(), auth=True)
        yield ministack.start()
        self.addCleanup(ministack.stop)
        key, secret = yield ministack.iam_key()
        if not right_secret:
            secret = secret[::-1]
        root = build_service(gateway_config.load(gateway_yaml(work, free_port(), ministack.port, (key, secret))),
                             reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        return root.parts.links.links["aws"]

    @inlineCallbacks
    def test_signed_url_accepted(self) -> None:
        """The right secret: the signature checks out and the MQTT session comes up."""
        link = yield self.start(True)
        yield eventually(reactor, lambda: link.is_connected, timeout=20)

    @inlineCallbacks
    def test_wrong_secret_refused(self) -> None:
        """A wrong secret: the handshake is refused, the link retries and says why."""
        link = yield self.start(False)
        yield eventually(reactor, lambda: link.endpoint.failures >= 2 or link.connects > 0, timeout=20)
        self.assertEqual(link.connects, 0)
        self.assertIn("WebSocket", link.endpoint.last_error)


class SecureWebSocketTests(TestCase):
    """wss: a tls: endpoint with aws.websocket, through a TLS server (certificate for
    localhost from a test CA) in front of ministack's port."""

    timeout = 120

    @inlineCallbacks
    def test_wss_reported_state_arrives(self) -> None:
        """The link verifies the server, opens the WebSocket inside TLS, and the shadow sync works."""
        if not Ministack.available():
            raise SkipTest("ministack is not installed: run `make tools-venv`")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        pki = make_pki(work / "pki")
        ministack = Ministack(reactor, free_port())
        yield ministack.start()
        self.addCleanup(ministack.stop)
        server = ssl.PrivateCertificate.loadPEM(Path(pki["server_cert"]).read_bytes()
                                                + Path(pki["server_key"]).read_bytes())
        front = yield SSL4ServerEndpoint(reactor, 0, server.options(), interface="127.0.0.1").listen(
            ProxyFactory("127.0.0.1", ministack.port))
        self.addCleanup(front.stopListening)
        broker = free_port()
        config = gateway_yaml(work, broker, ministack.port, endpoint=f"tls:host=localhost:port={front.getHost().port}",
                              ca_file=pki["ca"])
        root = build_service(gateway_config.load(config), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        link = root.parts.links.links["aws"]
        yield eventually(reactor, lambda: link.is_connected, timeout=20)
        self.assertIsNotNone(link.server_certificate)
        app = TestClient(reactor)
        self.addCleanup(app.stop)
        yield app.connect(broker)
        yield app.publish("e", modify("/features/valve/properties/open", False), qos=1)
        for _ in range(60):
            doc = yield ministack.shadow("get", THING, "valve")
            if doc and doc["state"].get("reported") == {"open": False}:
                break
            yield deferLater(reactor, 0.25, lambda: None)
        else:
            self.fail(f"reported state never arrived: {doc!r}")


class KilledWhileOfflineTests(TestCase):
    """A real ``twistd gateway`` process, killed with SIGKILL right after answering a twin
    change it made while the cloud was unreachable (twin.md, Durability and Offline)."""

    timeout = 180

    @inlineCallbacks
    def test_change_answered_offline_survives_sigkill_and_reaches_the_shadow(self) -> None:
        """ministack is down: the twin still answers 201; the gateway is then killed with
        SIGKILL. Once restarted it still holds the change (a retrieve answers it), and once
        ministack is up the change, journaled before it was answered, reaches the shadow."""
        if not Ministack.available():
            raise SkipTest("ministack is not installed: run `make tools-venv`")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        ministack = Ministack(reactor, free_port())  # not started yet: the cloud is unreachable
        config = gateway_yaml(work, port, ministack.port)

        def start_gateway() -> Any:
            gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
            return gateway.ready.addCallback(lambda _: gateway)

        @inlineCallbacks
        def response(app: Any, topic: str) -> Any:
            while True:
                message = yield app.next_message(timeout=20)
                if message.topic == topic:
                    return json.loads(message.payload)

        gateway = yield start_gateway()
        app = yield twin_app(self, port)
        yield app.publish("e", modify("/features/valve/properties/open", True), qos=1)
        self.assertEqual((yield response(app, "command///req//modify-response"))["status"], 201)
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        app.stop()
        yield ministack.start()
        self.addCleanup(ministack.stop)
        yield start_gateway()
        app = yield twin_app(self, port)
        yield app.publish("e", json.dumps({"topic": f"acme/{THING}/things/twin/commands/retrieve",
                                           "path": "/features/valve/properties"}).encode(), qos=1)
        self.assertEqual((yield response(app, "command///req//retrieve-response"))["value"], {"open": True})
        for _ in range(120):
            document = yield ministack.shadow("get", THING, "valve")
            if ((document or {}).get("state") or {}).get("reported") == {"open": True}:
                break
            yield deferLater(reactor, 0.25, lambda: None)
        else:
            self.fail(f"the change never reached the shadow: {document!r}")
