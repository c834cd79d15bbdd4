"""A real ``twistd gateway`` restarted while its cloud is unreachable: ``/metrics`` gives the
age of the records waiting for the cloud, not that of the segment they are in
(docs/readside.md ``oldest_unacked_age_s``, docs/telemetry.md's alert on it)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.filelayer import OSFiles
from gateway.journal.settings import StreamSettings
from gateway.links.stream import CURSOR
from tests.gatewayprocess import spawn_gateway
from tests.journal.helpers import appended, open_stream, record
from tests.mqttclient import TestClient
from tests.ports import closed_port, free_port

#: How long before the test the quiet gateway's segment began (its first record, which the
#: cloud took): far more than the test takes, far less than the default max_age_s (7 days).
SEGMENT_AGE = 2 * 86400.0
METRIC = re.compile(rb'^gateway_journal_oldest_unacked_age_seconds\{stream="link-cloud"\} (\S+)$', re.M)


def seed_quiet_stream(state: Path) -> None:
    """The link's stream as a quiet gateway leaves it: one record received two days ago,
    which the cloud acknowledged; nothing since."""
    clock = Clock()
    clock.advance(time.time())
    s = open_stream(OSFiles(), StreamSettings(), clock, directory=str(state / "journal" / "link-cloud"))
    s.cursor(CURSOR)
    appended(s, record(1, received=clock.seconds() - SEGMENT_AGE))
    s.ack(CURSOR, 1)
    s.close()
    s.files.close_all()


class RestartTests(TestCase):
    """SIGTERM and a restart with records waiting for an unreachable cloud."""

    timeout = 120

    @inlineCallbacks
    def test_metrics_after_a_restart_give_the_records_age(self) -> Any:
        """Records published to a gateway whose cloud is down go into a segment that began
        two days ago. After SIGTERM and a restart (nothing in memory) the metric is their
        age, seconds, not the segment's two days."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        seed_quiet_stream(work / "state")
        mqtt_port, metrics_port = free_port(), free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: '{work / 'state'}'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{mqtt_port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={closed_port(self)}'\n"
            "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n"
            "ingest:\n  enabled: false\n"
            f"telemetry:\n  metrics_endpoint: 'tcp:{metrics_port}:interface=127.0.0.1'\n")
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))

        pages = []

        @inlineCallbacks
        def unacked_age() -> Any:
            response = yield http.get(f"http://127.0.0.1:{metrics_port}/metrics")
            page = yield response.content()
            pages.append(page)
            match = METRIC.search(page)
            self.assertIsNotNone(match, page.decode(errors="replace")[-2000:])
            return float(match.group(1))

        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        device = TestClient(reactor)
        self.addCleanup(device.stop)
        yield device.connect(mqtt_port)
        published = time.time()
        for i in range(3):
            yield device.publish(f"telemetry/dev1/{i}", b"21.5", 1).addTimeout(30, reactor)  # PUBACK: durable
        self.assertLess((yield unacked_age()), time.time() - published + 5)
        device.stop()
        gateway.transport.signalProcess("TERM")
        yield gateway.ended.addTimeout(60, reactor)

        again = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield again.ready.addTimeout(60, reactor)
        age = yield unacked_age()
        self.assertGreaterEqual(age, 0.0)
        self.assertLess(age, time.time() - published + 5, f"aged as the segment ({SEGMENT_AGE} s)?")
        # (a SIGTERM is a clean stop: docs/install.md, after a power cut or a kill)
        self.assertIn(b"\ngateway_unclean_stops_total 0.0\n", pages[-1])
        self.assertNotIn(b"did not stop cleanly", again.output)
        again.transport.signalProcess("TERM")
        yield again.ended.addTimeout(60, reactor)
