"""The whole service tree in one process: an OTA install command on a local topic downloads a
GWE app over HTTP and the apps service runs it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from twisted.web.static import File

from gateway import config as gateway_config
from gateway.tree import UPDATE_TOPIC, build_service
from tests.apps.packages import gwe_package
from tests.ports import free_port
from tests.mqttclient import TestClient



class TreeTests(TestCase):
    """Services wired together by gateway.tree, as twistd runs them."""

    timeout = 60

    @inlineCallbacks
    def test_update_command_installs_and_runs_an_app(self):
        """install on edge/gateway/updates/install: downloaded, verified, installed, RUNNING, reported."""
        work = Path(self.mktemp()).resolve()
        served = work / "served"
        served.mkdir(parents=True)
        package = gwe_package(served, "sensor", "1.0", "import time\ntime.sleep(300)\n",
                              "[program:sensor]\ncommand=python3 run.py\nstartsecs=0\n")
        web = reactor.listenTCP(0, Site(File(str(served))), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        port = free_port()
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "apps:\n  health_window: 0.5\n"
            "updates:\n  download:\n    allow_http: true\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(port)
        yield client.subscribe(f"{UPDATE_TOPIC}/lastOperation", 1)
        url = f"http://127.0.0.1:{web.getHost().port}/{package.name}"
        request = {"correlationId": "op-1", "softwareModules": [{
            "softwareModule": {"name": "sensor", "version": "1.0"},
            "artifacts": [{"filename": package.name, "download": {"HTTP": {"url": url}},
                           "checksums": {"SHA256": hashlib.sha256(package.read_bytes()).hexdigest()}}],
            "metadata": {"target": "app"}}]}
        yield client.publish(f"{UPDATE_TOPIC}/install", json.dumps(request).encode(), 1)
        statuses = []
        while not statuses or statuses[-1] not in ("FINISHED_SUCCESS", "FINISHED_ERROR"):
            message = yield client.next_message(30)
            statuses.append(json.loads(message.payload)["status"])
        self.assertEqual(statuses[-1], "FINISHED_SUCCESS", statuses)
        self.assertIn("INSTALLING", statuses)
        [program] = root.apps.operations.status("sensor")
        self.assertEqual((program.version, program.state.name), ("1.0", "RUNNING"))
