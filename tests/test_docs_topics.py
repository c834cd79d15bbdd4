"""docs/topics.md, as a client of the gateway's broker sees it: what the gateway publishes of
its own comes at QoS 1, retained exactly on the topics the page marks "(retained)", and each
request topic it listens on is answered where the page says, an error repeating a long part of the
request as its first 100 characters and its length."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway import config as gateway_config
from gateway.tree import build_service
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.test_tree import TreeHelpers

#: A request on each topic the gateway listens on (at QoS 2, the most a client may ask for),
#: and the topic of the answer the page promises.
REQUESTS: tuple[tuple[str, bytes, str], ...] = (
    ("edge/thing/request", b"who", "edge/thing/response"),
    ("edge/gateway/reports/request", b"no_such_report", "edge/gateway/reports/error"),
    ("edge/gateway/reports/request", b"engine_report", "edge/gateway/reports/engine_report"),
    ("e", json.dumps({"topic": "acme/gw1/things/twin/commands/retrieve", "path": "/"}).encode(),
     "command///req//retrieve-response"),
    ("edge/gateway/uploads/activate", b"{}", "edge/gateway/uploads/activate/response"),
    ("edge/gateway/updates/install", b'{"correlationId": "c1", "softwareModules": 5}',
     "edge/gateway/updates/lastOperation"),
)
#: The broker section of a tree these tests connect to without credentials.
ANONYMOUS = "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
#: The gateway's own topics the page marks retained that it has published once the requests
#: are answered (``usage_report`` comes with its period, ``lastUpload`` with the first upload).
RETAINED = {"edge/connection/remote/status", "edge/gateway/reports/device_info",
            "edge/gateway/reports/engine_report", "edge/gateway/updates/lastOperation",
            "edge/gateway/uploads/autoUpload"}
#: Published by the test after a late subscription: every retained message comes before it.
MARKER = "test/marker"


class TopicContractTests(TreeHelpers, TestCase):
    """The whole tree and real MQTT clients on its broker."""

    timeout = 60

    @inlineCallbacks
    def messages_until(self, client: TestClient, topics: set[str]) -> Any:
        """The messages ``client`` receives until it has had one on each of ``topics``."""
        got: dict[str, list[Any]] = {}
        while not topics <= set(got):
            message = yield client.next_message()
            got.setdefault(message.topic, []).append(message)
        return got

    @inlineCallbacks
    def test_qos_and_retain_of_what_the_gateway_publishes(self) -> None:
        """Every answer to a request comes at QoS 1 to a QoS 2 subscriber, not retained; a
        later subscriber gets the retained topics of the page (and no answer) at QoS 1."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        yield self.start_tree(work, "\n  tenant_id: acme\n  device_id: gw1\n", port, ANONYMOUS)
        watcher = yield self.client(port)
        yield watcher.subscribe("#", 2)
        app = yield self.client(port)
        for topic, payload, _ in REQUESTS:
            yield app.publish(topic, payload, qos=2)
        answers = {answer for _, _, answer in REQUESTS}
        got = yield self.messages_until(watcher, answers)
        for topic in sorted(answers):
            self.assertEqual([(m.qos, m.retain) for m in got[topic]][-1], (1, False), topic)
        self.assertEqual(json.loads(got["edge/thing/response"][-1].payload),
                         {"deviceId": "acme:gw1", "tenantId": "acme", "policyId": ""})
        later = yield self.client(port)
        yield later.subscribe("#", 2)
        yield app.publish(MARKER, b"", qos=1)
        retained = yield self.messages_until(later, {MARKER})
        self.assertEqual(set(retained) - {MARKER}, RETAINED)
        for topic in sorted(RETAINED):
            self.assertEqual([(m.qos, m.retain) for m in retained[topic]], [(1, True)], topic)

    @inlineCallbacks
    def test_a_retained_request_is_not_acted_on_again_after_a_restart(self) -> None:
        """A retained install request stays on the broker, but the restarted gateway does not
        take it again: the retained status is still the one of the request after it."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        root = yield self.start_tree(work, "\n", port, ANONYMOUS)
        app = yield self.client(port)
        yield app.subscribe("edge/gateway/updates/lastOperation", 1)
        for cid, retain in (("kept", True), ("after", False)):
            body = {"correlationId": cid, "softwareModules": 5}
            yield app.publish("edge/gateway/updates/install", json.dumps(body).encode(), 1, retain=retain)
            status = yield app.next_message()
            self.assertEqual(json.loads(status.payload)["correlationId"], cid)
        app.stop()
        yield root.stopService()
        again = build_service(gateway_config.load(work / "gateway.yaml"), reactor)
        yield again.startService()
        self.addCleanup(again.stopService)
        later = yield self.client(port)
        yield later.subscribe(MARKER, 1)
        yield later.subscribe("edge/gateway/updates/#", 1)
        yield later.publish(MARKER, b"", qos=1)
        retained = yield self.messages_until(later, {MARKER})
        [request] = retained["edge/gateway/updates/install"]
        self.assertEqual(json.loads(request.payload)["correlationId"], "kept")
        self.assertEqual([json.loads(m.payload)["correlationId"]
                          for m in retained["edge/gateway/updates/lastOperation"]], ["after"])

    @inlineCallbacks
    def test_clearing_a_retained_request_is_no_request(self) -> None:
        """An empty retained message, which removes a topic's retained message, on each request
        topic gets no answer and does nothing (it triggered an upload, switched periodic
        uploads on, and was answered with an identity and an unknown-report error)."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        yield self.start_tree(work, "\n", port, ANONYMOUS)
        watcher = yield self.client(port)
        yield watcher.subscribe(MARKER, 1)
        yield watcher.subscribe("edge/#", 1)
        yield watcher.publish(MARKER, b"", qos=1)
        yield self.messages_until(watcher, {MARKER})  # (the retained ones first)
        app = yield self.client(port)
        requests = {request for request, _, _ in REQUESTS} | {
            "edge/gateway/uploads/trigger", "edge/gateway/uploads/deactivate", "edge/gateway/updates/cancel"}
        for topic in sorted(requests):
            yield app.publish(topic, b"", qos=1, retain=True)
        # then one real request, whose answer comes after any the empty ones would have had
        yield app.publish("edge/gateway/uploads/deactivate", b"{}", qos=1)
        got = yield self.messages_until(watcher, {"edge/gateway/uploads/deactivate/response"})
        self.assertEqual(set(got) - requests, {"edge/gateway/uploads/deactivate/response",
                                               "edge/gateway/uploads/autoUpload"})
        self.assertEqual(len(got["edge/gateway/uploads/deactivate/response"]), 1)

    @inlineCallbacks
    def test_an_error_repeats_a_long_part_of_the_request_cut(self) -> None:
        """An answer that repeats part of a bad request (a name, a path, a value of the wrong
        type) repeats it as its first 100 characters and its length: a glob of 150 characters
        came back whole, and a list where a string belongs as six of its items and no length."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        yield self.start_tree(work, "\n  device_id: gw1\n", port, ANONYMOUS)
        watcher = yield self.client(port)
        yield watcher.subscribe("#", 1)
        app = yield self.client(port)
        long = "s" * 150
        listed = [long]
        requests = (
            ("edge/gateway/reports/request", {"report": listed}, "edge/gateway/reports/error"),
            ("edge/gateway/uploads/trigger", {"options": {"upload.files": "/" + long}},
             "edge/gateway/uploads/trigger/response"),
            ("e", {"topic": "default/gw1/things/twin/commands/retrieve", "path": listed},
             "command///req//errors-response"),
            ("command//gw1/req/r1/report", {"name": long}, "command//gw1/res/r1/404"),
        )
        for topic, body, _ in requests:
            yield app.publish(topic, json.dumps(body).encode(), qos=1)
        got = yield self.messages_until(watcher, {answer for _, _, answer in requests})
        for _, _, answer in requests:
            text = got[answer][-1].payload.decode()
            self.assertNotIn("s" * 101, text, answer)
            self.assertRegex(text, r"\.\.\. \(\d+ characters\)", answer)
