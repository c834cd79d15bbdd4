"""A state directory an older build left is read by this one: what it acknowledged reaches the
cloud, persistent sessions get their queued messages, and no state is refused or set aside.

``tests/upgrade/<commit>-<stop>.tar.gz`` holds the state directory (``var/``) and the
``conf.d/`` that the build of ``<commit>`` left after real traffic (``tests/upgrade/produce.sh``
made them: docs/install.md, "What carries over"), stopped with SIGTERM (``term``) or SIGKILL
(``kill``): telemetry acknowledged while its cloud was down, a persistent session with five
queued messages, a retained message, the twin's things, the app ``hello`` installed twice,
a configuration change waiting for its confirmation, a download under way; the newest also
an update of ``hello`` killed in its health window by a fleet deployment whose feedback the
server had refused, and an upload waiting for the cloud's ``start``. The admin token in them
is a made-up one. Each runs the whole service tree in this process once.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from gateway import config as gateway_config
from gateway.admin.token import load_or_create_token
from gateway.fleet.state import FleetState
from gateway.tree import build_service
from tests.apps.realtime import wait_until
from tests.fleet.ddiserver import DDIServer
from tests.links.mosquitto import Mosquitto
from tests.logevents import capture_log_events
from tests.mqttclient import TestClient
from tests.ports import free_port

FIXTURES = Path(__file__).parent / "upgrade"
#: What the fixtures' gateway sent while its cloud was up (acknowledged: never sent again),
#: then acknowledged with its cloud down (sent after the upgrade).
SENT, WAITING = [f"phase1-{i}" for i in range(1, 4)], [f"phase2-{i}" for i in range(1, 21)]
#: The fixtures' admin token (made up; the gateway keeps a token file it finds).
TOKEN = b"upgrade-fixture-token-not-a-secret"
#: The beginnings of the lines every start on the fixtures may log: the fixtures' download
#: server (127.0.0.1:21306) is not there, and the deadline of their configuration change
#: (two minutes after they were made) has passed.
REVERTED = "config change by admin reverted: its confirm deadline passed while stopped"
EXPECTED = ("retrying http://127.0.0.1:21306/big.bin in ", REVERTED)


class UpgradeTests(TestCase):
    """The whole tree on each older build's state directory."""

    timeout = 60

    @inlineCallbacks
    def start_on(self, fixture: str, more: str = "") -> Any:
        """Unpack ``fixture``, start a cloud (mosquitto) with a subscriber, then the tree on
        the state; the tree, the subscriber and the log events."""
        work = Path(self.mktemp()).absolute()
        work.mkdir(parents=True)
        with tarfile.open(FIXTURES / f"{fixture}.tar.gz") as archive:
            # (our own fixtures; Debian 12's Python 3.11.2 has no extraction filters, 3.11.4 has)
            if hasattr(tarfile, "data_filter"):
                archive.extractall(work, filter="data")
            else:
                archive.extractall(work)
        cloud_port, broker_port = free_port(), free_port()
        cloud = Mosquitto(reactor, work / "cloud", cloud_port)
        yield cloud.start()
        self.addCleanup(cloud.stop)
        subscriber = TestClient(reactor)
        self.addCleanup(subscriber.stop)
        yield subscriber.connect(cloud_port)
        yield subscriber.subscribe("telemetry/#", qos=1)
        (work / "gateway.yaml").write_text(
            f"gateway:\n  state_dir: {work / 'var'}\n  device_id: gw1\n  tenant_id: acme\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker_port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud_port}'\n"
            "      client_id: gw1\n      clean_session: false\n      backoff_initial: 0.2\n      backoff_max: 1.0\n"
            f"ingest:\n  endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "telemetry:\n  metrics_endpoint: ''\n"
            "updates:\n  download:\n    allow_http: true\n    retry_initial_delay: 600\n    retry_max_delay: 600\n"
            + more)
        events = capture_log_events(self)
        root = build_service(gateway_config.load(work / "gateway.yaml"), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        root.broker_port, root.work = broker_port, work
        # The download resumed asks the fixtures' server, which is not there, once (the next try
        # in 600 s): its attempt ends first (a refused connection is a failure only once
        # HostnameEndpoint has waited 0.3 s for more addresses), not cut short by the stop.
        yield wait_until(lambda: any(formatEvent(e).startswith(EXPECTED[0]) for e in list(events)), timeout=10)
        return root, subscriber, events

    @inlineCallbacks
    def check_messages(self, root: Any, subscriber: TestClient) -> Any:
        """What the older build acknowledged with its cloud down reaches the cloud (what its
        cloud had taken is not sent again); the persistent session ``dev1`` gets the five
        messages queued for it, in order; the retained message is there."""
        received: list[str] = []
        while not set(WAITING) <= set(received):
            message = yield subscriber.next_message(10)
            received.append(message.payload.decode())
        self.assertEqual([m for m in received if m in SENT], [])
        device = TestClient(reactor, client_id="dev1", clean_session=False)
        self.addCleanup(device.stop)
        yield device.connect(root.broker_port)
        queued = []
        for _ in range(5):
            message = yield device.next_message(10)
            queued.append((message.topic, message.payload))
        self.assertEqual(queued, [("cmd/x", f"queued-{i}".encode()) for i in range(1, 6)])
        reader = TestClient(reactor)
        self.addCleanup(reader.stop)
        yield reader.connect(root.broker_port)
        yield reader.subscribe("status/dev1", qos=1)
        retained = yield reader.next_message(10)
        self.assertEqual((retained.payload, retained.retain), (b"online", True))

    def check_common_state(self, root: Any, events: list[dict[str, Any]]) -> None:
        """The twin's things (the gateway's and a child), the admin token, and the configuration
        change that waited for its confirmation: confirmed, the cloud link being up, while its
        deadline had not passed; else reverted at the start, the drop-in it made gone."""
        self.assertEqual(root.parts.twin.snapshot().things, 2)
        self.assertEqual(load_or_create_token(root.work / "var" / "admin" / "token"), TOKEN)
        self.assertFalse((root.work / "var" / "commands" / "pending-config.json").exists())
        drop_in = root.work / "conf.d" / "90-remote.yaml"
        if any(REVERTED in formatEvent(event) for event in events):
            self.assertFalse(drop_in.exists())
        else:
            self.assertIn("usage_report_interval: 600", drop_in.read_text())

    @inlineCallbacks
    def test_a_build_of_five_days_before_killed(self) -> Any:
        """232ec9ad (2026-12-02), killed with SIGKILL."""
        root, subscriber, events = yield self.start_on("232ec9ad-kill")
        yield self.check_messages(root, subscriber)
        self.check_common_state(root, events)
        self.assertEqual((operation(root, "dl-1").status, apps(root)), ("DOWNLOADING", [("hello", "2")]))
        self.assertEqual(warnings(events), [])

    @inlineCallbacks
    def test_the_first_build_stopped(self) -> Any:
        """ab731106 (2026-11-22: a journal, a broker keeping its state in broker/state.json
        alone, links and update operations), stopped with SIGTERM: its download goes on."""
        root, subscriber, events = yield self.start_on("ab731106-term")
        yield self.check_messages(root, subscriber)
        self.assertEqual(operation(root, "dl-1").status, "DOWNLOADING")
        self.assertEqual(warnings(events), [])

    @inlineCallbacks
    def test_a_build_of_the_day_before_killed_during_an_update(self) -> Any:
        """44a414ac (2026-12-06), killed with SIGKILL while a fleet deployment's update of
        ``hello`` was in its health window: the update is done again (not lost, not
        duplicated), the feedback the server had refused is still there to send, in order,
        and the upload waiting for the cloud's ``start`` is still waiting."""
        server = DDIServer()
        port = reactor.listenTCP(0, Site(server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        root, subscriber, events = yield self.start_on(
            "44a414ac-kill",
            f"fleet:\n  enabled: true\n  base_url: http://127.0.0.1:{port.getHost().port}\n  controller_id: gw-1\n"
            "  auth: none\n  allow_http: true\napps:\n  health_window: 0.1\n")
        refused = FleetState.load(root.work / "var" / "fleet" / "state.json").outbox
        yield self.check_messages(root, subscriber)
        self.check_common_state(root, events)
        self.assertEqual(operation(root, "dl-1").status, "DOWNLOADING")
        uploads = root.parts.uploads.snapshot()["uploads"]
        self.assertEqual([(u["correlationId"], u["state"]) for u in uploads], [("up-1", "PENDING")])
        yield wait_until(lambda: not operation(root, "ddi-7").active, timeout=20)
        self.assertEqual((operation(root, "ddi-7").status, apps(root)), ("FINISHED_SUCCESS", [("hello", "3")]))
        yield wait_until(lambda: any(body["status"]["execution"] == "closed" for _, _, body in server.feedback),
                         timeout=10)
        self.assertEqual([(kind, action, body["status"]) for kind, action, body in server.feedback[:len(refused)]],
                         [(f.kind, f.action_id, f.status) for f in refused])
        self.assertEqual(warnings(events, "apps: hello 3: its install was cut short by the gateway's end"), [])


def operation(root: Any, correlation_id: str) -> Any:
    """The update operation ``correlation_id`` in the tree's snapshot."""
    return next(o for o in root.parts.updates.snapshot().operations if o.correlation_id == correlation_id)


def apps(root: Any) -> list[tuple[str, str]]:
    """``(app, version)`` of every hosted program."""
    return [(a.app, a.version) for a in root.parts.apps.snapshot().apps]


def warnings(events: list[dict[str, Any]], *expected: str) -> list[str]:
    """The warnings and errors of ``events``, but for those beginning as :data:`EXPECTED` or
    ``expected`` ones do."""
    lines = [formatEvent(event) for event in events if event.get("log_level", LogLevel.info) >= LogLevel.warn]
    return [line for line in lines if not line.startswith(EXPECTED + expected)]
