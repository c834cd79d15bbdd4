"""Containers in the whole service tree: an update operation with ``metadata.target: container``
installs one from the test registry, and the remote commands apps / app.stop / app.start /
app.logs work on it through the shared apps operations."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from twisted.web.static import File

from gateway import config as gateway_config
from gateway.apps.process import ProgramState
from gateway.containers.podman import unix_http_client
from gateway.tree import build_service
from gateway.updates.commands import UPDATE_TOPIC
from tests.apps.realtime import wait_until
from tests.containers.test_podman_real import world
from tests.containers.world import PodmanCli
from tests.mqttclient import TestClient
from tests.ports import free_port


class TreeContainerTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def command(self, client: TestClient, request_id: int, name: str, args: dict[str, Any]) -> Any:
        yield client.publish(f"command//gw-1/req/{request_id}/{name}", json.dumps(args).encode(), 1)
        message = yield client.next_message(30)
        return message.topic.rsplit("/", 1)[1], json.loads(message.payload)

    @inlineCallbacks
    def test_update_installs_a_container_and_commands_control_it(self) -> None:
        """install with target container -> FINISHED_SUCCESS and RUNNING; app.stop, app.start,
        app.logs and apps answer for it like for a hosted program."""
        registry = world()
        work = Path(self.mktemp()).absolute()
        served = work / "served"
        served.mkdir(parents=True)
        (served / "hello.json").write_text(json.dumps({"image": registry.image("1"), "network_mode": "none",
                                                       "stop_timeout": 1, "startsecs": 0.3}))
        web = reactor.listenTCP(0, Site(File(str(served))), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        short = Path(tempfile.mkdtemp(prefix="gw-podman-"))
        podman = PodmanCli(short)
        self.addCleanup(podman.destroy)
        port = free_port()
        path = work / "gateway.yaml"
        path.write_text(json.dumps({
            "gateway": {"state_dir": str(work / "state"), "device_id": "gw-1"},
            "broker": {"listeners": {"default": {"endpoint": f"tcp:{port}:interface=127.0.0.1"}},
                       "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}},
            "apps": {"health_window": 0.5, "backoff_initial": 0.1},
            "updates": {"download": {"allow_http": True}},
            "admin": {"socket": str(short / "admin.sock")},
            "ingest": {"endpoint": f"tcp:{free_port()}:interface=127.0.0.1"}, "telemetry": {"metrics_endpoint": ""},
            "containers": {"enabled": True, "socket": str(short / "api.sock"), "podman_command": list(podman.command),
                           "insecure_registries": [registry.address]}}))
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(port)
        yield client.subscribe(f"{UPDATE_TOPIC}/lastOperation", 1)
        body = (served / "hello.json").read_bytes()
        request = {"correlationId": "op-1", "softwareModules": [{
            "softwareModule": {"name": "hello", "version": "1"},
            "artifacts": [{"filename": "hello.json",
                           "download": {"HTTP": {"url": f"http://127.0.0.1:{web.getHost().port}/hello.json"}},
                           "checksums": {"SHA256": hashlib.sha256(body).hexdigest()}}],
            "metadata": {"target": "container"}}]}
        yield client.publish(f"{UPDATE_TOPIC}/install", json.dumps(request).encode(), 1)
        statuses = []
        while not statuses or statuses[-1]["status"] not in ("FINISHED_SUCCESS", "FINISHED_ERROR"):
            message = yield client.next_message(60)
            statuses.append(json.loads(message.payload))
        self.assertEqual(statuses[-1]["status"], "FINISHED_SUCCESS", statuses)
        units = root.parts.containers.supervisor.units
        self.assertIs(units["hello"].state, ProgramState.RUNNING)

        yield client.subscribe("command//gw-1/res/#", 1)
        code, listed = yield self.command(client, 1, "apps", {})
        [entry] = [a for a in listed["apps"]["apps"] if a["name"] == "hello"]
        self.assertEqual((code, entry["kind"], entry["status"]), ("200", "container", "RUNNING"))
        code, _ = yield self.command(client, 2, "app.stop", {"name": "hello"})
        self.assertEqual((code, units["hello"].state), ("200", ProgramState.STOPPED))
        code, _ = yield self.command(client, 3, "app.start", {"name": "hello"})
        self.assertEqual(code, "200")
        yield wait_until(lambda: units["hello"].state is ProgramState.RUNNING)
        log = work / "state/logs/apps/hello.log"  # (written as podman's log stream delivers it)
        yield wait_until(lambda: log.exists() and b"hello from v1\nhello from v1" in log.read_bytes())
        code, logs = yield self.command(client, 4, "app.logs", {"name": "hello"})
        self.assertEqual((code, logs["lines"]), ("200", ["hello from v1", "hello from v1"]))
        code, missing = yield self.command(client, 5, "app.stop", {"name": "nobody"})
        self.assertEqual(code, "404")
        code, report = yield self.command(client, 6, "report", {"name": "engine_report"})
        [entry] = [e["hello"] for e in report["apps"] if "hello" in e]
        self.assertEqual((code, entry["kind"], entry["image"], entry["status"]),
                         ("200", "container", registry.image("1"), "RUNNING"))
        self.assertTrue(entry["image_digest"].startswith("sha256:"))

        # The admin API (gatewayctl's door) lists and restarts it through the same operations.
        admin = unix_http_client(reactor, str(short / "admin.sock"))
        response = yield admin.get("http://gateway/apps")
        listed = yield response.json()
        [row] = [a for a in listed["apps"] if a["name"] == "hello"]
        self.assertEqual((row["kind"], row["status"]), ("container", "RUNNING"))
        response = yield admin.post("http://gateway/apps/hello/restart")
        body = yield response.json()
        self.assertEqual(response.code, 200, body)
        yield wait_until(lambda: units["hello"].state is ProgramState.RUNNING)
