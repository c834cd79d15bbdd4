"""What clients connected across a configuration change see: the old services close their
connections (after answering what is in flight) and nothing acknowledged is lost
(docs/commands.md, step 3)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway import httpaccesslog, logbridge
from tests.ports import closed_port, free_port
from tests.test_tree import TreeHelpers

#: Anonymous MQTT clients on the tree's broker.
ANONYMOUS = "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"


class ConnectionsAcrossAChangeTests(TreeHelpers, TestCase):
    """A configuration change restarts the services under clients that stay connected."""

    timeout = 60

    @inlineCallbacks
    def start_with_link(self, port: int = 0, more: str = "", metrics: str = "") -> Any:
        """The tree with one MQTT cloud link (never connected: its stream fills), anonymous
        MQTT clients on ``port``, and ``more`` sections."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        # the tests change gateway.log_level to debug: the next tests get the default's logging back
        self.addCleanup(httpaccesslog.log_routine_reads, False)
        self.addCleanup(logbridge.install, "info")
        return (yield self.start_tree(work, "\n", port or free_port(), ANONYMOUS + more + (
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={closed_port(self)}'\n"),
            metrics=metrics))

    def keep_alive(self, unix: str = "") -> HTTPClient:
        """An HTTP client that keeps its connection open between requests (over the unix
        socket ``unix`` when given), as a GWE app, a scraper or a browser does."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        self.addCleanup(pool.closeCachedConnections)
        if not unix:
            return HTTPClient(Agent(reactor, pool=pool))

        class OverTheSocket:
            def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
                return UNIXClientEndpoint(reactor, unix)

        return HTTPClient(Agent.usingEndpointFactory(reactor, OverTheSocket(), pool=pool))

    @inlineCallbacks
    def journaled(self, root: Any, topic: str) -> Any:
        """The payloads on ``topic`` the running journal holds for the link (as the cloud gets them)."""
        stream = root.parts.journal.stream("link-cloud")
        yield stream.cursor("probe")
        records = yield stream.read("probe")
        return [record.payload for record in records if record.topic == f"telemetry/default/gateway/{topic}"]

    @inlineCallbacks
    def test_a_publish_while_the_links_stop_is_acknowledged_only_once_journaled(self) -> Any:
        """A QoS 1 PUBLISH the old broker reads after the old links stopped (the broker stops
        after them) gets no PUBACK there: the connection closes, the client sends it again to
        the new broker, and the PUBACK it then gets is for a message the journal holds. The old
        broker acknowledged it at once, the links' hook gone, and it was never journaled."""
        port = free_port()
        root = yield self.start_with_link(port)
        device = yield self.client(port, reconnect=(1, 120))  # (paho's own delays)
        yield device.publish("telemetry/x", b"before", 1)
        links = root.parts.links
        stop = links.stopService
        acked: list[Deferred[Any]] = []

        def stop_then_publish() -> Deferred[Any]:
            stopped = stop()
            acked.append(device.publish("telemetry/x", b"during", 1))
            # the old broker answers it (PUBACK, or closing the connection) before it stops
            answered = DeferredList([acked[0], device.disconnected()], fireOnOneCallback=True, consumeErrors=True)
            return DeferredList([stopped, answered])

        links.stopService = stop_then_publish
        result = yield root.changer.apply({"gateway.log_level": "debug"})
        self.assertTrue(result.applied, result)
        yield acked[0]  # the PUBACK (of the resent PUBLISH, by the new broker)
        self.assertEqual((yield self.journaled(root, "x")), [b"before", b"during"])

    @inlineCallbacks
    def test_a_gwe_apps_keep_alive_writes_go_to_the_new_ingest(self) -> Any:
        """A GWE app writing on a keep-alive connection opened before the change: its writes
        after the change get their 204 from the new ingest, once the new journal holds them
        (docs/exosite.md). The old ingest served that connection on: the writes got 204, went
        to the stopped links, and were in no journal."""
        root = yield self.start_with_link()
        app = self.keep_alive()
        url = f"http://127.0.0.1:{root.parts.ingest.port.getHost().port}/onep:v1/stack/alias"
        headers = {"X-Exosite-CIK": "a" * 40, "Content-Type": "application/x-www-form-urlencoded"}
        answers = []
        response = yield app.post(url, data=b"temp=1", headers=headers)
        answers.append((response.code, (yield response.content())))
        result = yield root.changer.apply({"gateway.log_level": "debug"})
        self.assertTrue(result.applied, result)
        for value in (b"2", b"3"):
            response = yield app.post(url, data=b"temp=" + value, headers=headers)
            answers.append((response.code, (yield response.content())))
        self.assertEqual(answers, [(204, b"")] * 3)
        self.assertEqual((yield self.journaled(root, "temp")), [b"1", b"2", b"3"])
        self.assertEqual(root.parts.ingest.snapshot().writes, 2)

    @inlineCallbacks
    def test_a_keep_alive_scrape_reads_the_new_services(self) -> Any:
        """A scraper's keep-alive connection to /metrics: after the change it is answered by
        the new telemetry service, about the new services (docs/telemetry.md). The old one
        answered on it, about the stopped services: the ingest was not listening. The new
        services' counters start at zero; the gateway's start time stays."""
        port = free_port()
        root = yield self.start_with_link(metrics=f"tcp:{port}:interface=127.0.0.1")
        ingest = f"http://127.0.0.1:{root.parts.ingest.port.getHost().port}/onep:v1/stack/alias"
        response = yield self.keep_alive().post(ingest, data=b"temp=1")  # no CIK: 4xx, counted bad
        yield response.content()
        scraper = self.keep_alive()
        wanted = ("gateway_ingest_listening", "gateway_ingest_bad_requests_total", "gateway_start_time_seconds")
        pages = []
        for _ in range(2):
            response = yield scraper.get(f"http://127.0.0.1:{port}/metrics")
            samples = dict(line.split(" ", 1) for line in (yield response.content()).decode().splitlines()
                           if line.split(" ", 1)[0] in wanted)
            pages.append(samples)
            if len(pages) == 1:
                result = yield root.changer.apply({"gateway.log_level": "debug"})
                self.assertTrue(result.applied, result)
        before, after = pages
        start = before.pop("gateway_start_time_seconds")
        self.assertEqual(before, {"gateway_ingest_listening": "1.0", "gateway_ingest_bad_requests_total": "1.0"})
        self.assertEqual(after, {"gateway_ingest_listening": "1.0", "gateway_ingest_bad_requests_total": "0.0",
                                 "gateway_start_time_seconds": start})

    @inlineCallbacks
    def test_keep_alive_admin_requests_reach_the_new_admin_api(self) -> Any:
        """A keep-alive connection to the admin API, on its unix socket and on TCP: after the
        change it is answered by the new admin API, about the new services (docs/admin.md).
        The old one answered on it, from the stopped services (the ingest not listening)."""
        run = Path(tempfile.mkdtemp(prefix="gwchg-"))  # short: a unix socket path is at most 107 bytes
        self.addCleanup(shutil.rmtree, run, True)
        tcp = free_port()
        root = yield self.start_with_link(more=f"admin:\n  socket: {run / 'admin.sock'}\n"
                                               f"  tcp: 'tcp:{tcp}:interface=127.0.0.1'\n")
        token = {"Authorization": f"Bearer {root.parts.admin.token.decode()}"}
        clients = [(self.keep_alive(unix=str(run / "admin.sock")), "http://gateway/ingest", {}),
                   (self.keep_alive(), f"http://127.0.0.1:{tcp}/ingest", token)]
        listening = []
        for change in (True, False):
            for client, url, headers in clients:
                response = yield client.get(url, headers=headers)
                listening.append(json.loads((yield response.content()))["listening"])
            if change:
                result = yield root.changer.apply({"gateway.log_level": "debug"})
                self.assertTrue(result.applied, result)
        self.assertEqual(listening, [True] * 4)
