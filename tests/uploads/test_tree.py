"""The upload service in the whole tree: a Kanto backend behind a real mosquitto triggers an
upload by cloud command, receives the request as an event, starts it, and sees SUCCESS."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.apps.realtime import wait_until
from tests.links.mosquitto import Mosquitto, downlink_subscribed
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.uploads.test_http import Sink, sign


class UploadTreeTests(TestCase):
    """Cloud command -> request event -> start -> lastUpload telemetry, through the links."""

    timeout = 60

    @inlineCallbacks
    def test_kanto_backend_drives_an_upload(self) -> Any:
        """upload.trigger (a Ditto envelope) is answered 204 on the outbox path; the request
        comes up as an event; upload.start sends the file; SUCCESS comes up as telemetry."""
        work = Path(self.mktemp()).resolve()
        logs = work / "logs"
        logs.mkdir(parents=True)
        (logs / "app.log").write_bytes(b"line\n" * 20000)
        sink = Sink()
        web = reactor.listenTCP(0, Site(sink), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        cloud = Mosquitto(reactor, work / "cloud", free_port())
        yield cloud.start()
        self.addCleanup(cloud.stop)
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n  device_id: 'org.acme:gw-7'\n  tenant_id: acme\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
            f"      backoff_initial: 0.1\n"
            f"uploads:\n  files: ['{logs}/*.log']\n  allow_http: true\n  checksum: true\n"
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        backend = TestClient(reactor)
        self.addCleanup(backend.stop)
        yield backend.connect(cloud.port)
        yield backend.subscribe("command//org.acme:gw-7/res/#", 1)
        yield backend.subscribe("event/acme/org.acme:gw-7/gateway/uploads/request", 1)
        yield backend.subscribe("telemetry/acme/org.acme:gw-7/gateway/uploads/lastUpload", 1)
        yield wait_until(lambda: downlink_subscribed(root.parts.links.links["cloud"]), 20)
        trigger = {"topic": "org.acme/gw-7/things/live/messages/trigger", "headers": {"correlation-id": "c1"},
                   "path": "/features/AutoUploadable/inbox/messages/trigger", "value": {"correlationId": "logs-1"}}
        yield backend.publish("command//org.acme:gw-7/req/r-1/upload.trigger", json.dumps(trigger).encode(), 1)
        replies: dict[str, Any] = {}
        states: list[str] = []
        started = False
        while not states or states[-1] not in ("SUCCESS", "FAILED", "CANCELED"):
            message = yield backend.next_message(30)
            value = json.loads(message.payload)
            if message.topic.startswith("command//"):
                replies[message.topic] = value
            elif message.topic.endswith("/request") and not started:
                started = True
                request = value["value"]
                self.assertEqual(request["options"]["file.path"], str(logs / "app.log"))
                url = f"http://127.0.0.1:{web.getHost().port}/up/app.log?{sign('/up/app.log', 2**31)}"
                start = {"correlationId": request["correlationId"], "options": {"https.url": url}}
                yield backend.publish("command//org.acme:gw-7/req/r-2/upload.start", json.dumps(start).encode(), 1)
            elif message.topic.endswith("/lastUpload"):
                states.append(value["state"])
        self.assertEqual(states[-1], "SUCCESS", states)
        self.assertEqual(replies["command//org.acme:gw-7/res/r-1/204"]["path"],
                         "/features/AutoUploadable/outbox/messages/trigger")
        self.assertEqual(replies["command//org.acme:gw-7/res/r-2/204"], {})
        self.assertEqual(sink.stored["/up/app.log"], (logs / "app.log").read_bytes())
        self.assertEqual(value["files"][0]["sha256"], hashlib.sha256(sink.stored["/up/app.log"]).hexdigest())
        # the link's last acknowledgements reach the journal before the stop
        yield wait_until(lambda: all_acked(root.parts.links.stats()["cloud"]), 10,
                         what="the cloud acknowledged everything")


def all_acked(stats: dict[str, Any]) -> bool:
    """Whether a link has sent nothing the cloud has not acknowledged, and holds nothing more."""
    return bool(stats["sent"] == stats["acked"] and not stats["pending"])
