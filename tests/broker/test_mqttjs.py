"""MQTT.js, the client browser dashboards and Node services use, against a real ``twistd
gateway``: a dashboard over WebSocket (``type: ws`` listener, as a page opened from a file,
``Origin: null``, which its ``allowed_origins`` lists) and a device over TCP (tests/broker/mqttjs_interop.js; docs/broker.md,
"Client libraries")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from tests.gatewayprocess import spawn_gateway
from tests.peerprocess import PeerProcess
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
#: Where ``make test-deps`` installs MQTT.js (pinned in the Makefile).
NODE_MODULES = ROOT / ".venv-tools" / "node_modules"
SCRIPT = Path(__file__).with_name("mqttjs_interop.js")
#: Every check the script reports, in its order; a script that stops early misses some.
CHECKS = ["ws connect", "one SUBSCRIBE, three filters",
          "QoS 0 tcp -> ws", "QoS 0 ws -> tcp", "QoS 1 tcp -> ws", "QoS 1 ws -> tcp",
          "QoS 2 tcp -> ws", "QoS 2 ws -> tcp", "1 MB payload", "retained", "will on a dropped WebSocket",
          "keep-alive pings answered", "persistent session resumed", "queued while offline, delivered",
          "reconnect resubscribes", "user name and password", "wrong password: CONNACK 5",
          "MQTT 5: CONNACK 1", "a bad PUBLISH closes the WebSocket at once"]
#: How long the script may take (it needs about 5 s).
SCRIPT_TIMEOUT = 60


class MQTTjsTests(TestCase):
    """MQTT.js's MQTT 3.1.1 features, each as the library reports it."""

    timeout = 150

    @inlineCallbacks
    def test_mqttjs_dashboard_over_websocket(self) -> Any:
        """QoS 0/1/2 both ways, one SUBSCRIBE of three filters, a 1 MB payload, retained
        messages, a will, keep-alive, a persistent session with a message queued while away,
        reconnect with resubscribe, user name and password; a wrong password is reported as
        CONNACK 5 and MQTT 5 (protocolVersion 5) as CONNACK 1, unacceptable protocol version;
        a PUBLISH the broker refuses (a topic of 202 levels) closes the WebSocket at once."""
        node = shutil.which("node")
        if node is None:
            raise SkipTest("node is not installed (make test-deps installs it)")
        if not (NODE_MODULES / "mqtt" / "package.json").exists():
            raise SkipTest(f"MQTT.js is missing from {NODE_MODULES}: run make test-deps")
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        (work / "passwd").write_text(f"alice:{PasswordHash((Argon2Hasher(),)).hash('s3cret')}\n")
        tcp, ws = free_port(), free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{tcp}:interface=127.0.0.1'\n"
            f"    ws:\n      type: ws\n      bind: 127.0.0.1:{ws}\n      allowed_origins: ['null']\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"    amqtt.plugins.authentication.FileAuthPlugin: {{password_file: {work / 'passwd'}}}\n"
            "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)

        script = PeerProcess(reactor, ws)
        output = script.spawn(node, [node, str(SCRIPT), f"ws://127.0.0.1:{ws}/mqtt", f"mqtt://127.0.0.1:{tcp}",
                                     "alice", "s3cret"],
                              env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
        self.addCleanup(script.stop)
        yield output.ended.addTimeout(SCRIPT_TIMEOUT, reactor).addErrback(
            lambda failure: self.fail(f"{failure.value}: {output.output.decode(errors='replace')[-3000:]}"))
        lines = output.output.decode(errors="replace").splitlines()
        results = [json.loads(line) for line in lines if line.startswith("{")]
        failed = [result for result in results if not result["ok"]]
        self.assertEqual(failed, [], "\n".join(lines[-40:]))
        self.assertEqual([result["check"] for result in results], CHECKS, "\n".join(lines[-40:]))
        self.assertEqual(lines[-1:], ["done"])
