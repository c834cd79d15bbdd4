"""Remote commands and confirm-or-revert through a real mosquitto "cloud" and the whole tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway import config as gateway_config
from gateway.commands.dropin import dropin_path
from gateway.journal.errors import JournalClosedError
from gateway.tree import build_service
from tests.apps.realtime import wait_until
from tests.links.mosquitto import Mosquitto, downlink_subscribed
from tests.mqttclient import TestClient
from tests.ports import closed_port, free_port

PROGRAM = "import os, time\nprint('line', flush=True)\nprint('hello', os.getpid(), flush=True)\ntime.sleep(300)\n"


class FakeRestart:
    """Stands in for the process restart (it would stop the test's reactor)."""

    def __init__(self) -> None:
        self.calls = 0

    def restart(self) -> str:
        self.calls += 1
        return "systemd"


class CloudGatewayCase(TestCase):
    """A gateway tree whose link reaches a real mosquitto "cloud", a backend client on it,
    and one hosted program, ``talker``, running :attr:`program`."""

    timeout = 90
    program = PROGRAM
    #: More keys of the config's ``gateway`` section (each line indented two spaces).
    gateway_keys = ""

    @inlineCallbacks
    def setUp(self) -> Any:
        # The forwarder of this branch may save its cursor on a timer after the old tree's
        # journal stopped (logged, a duplicate at worst); fix-links saves it at stop instead.
        self.addCleanup(lambda: self.flushLoggedErrors(JournalClosedError))
        self.work = Path(self.mktemp()).resolve()
        self.cloud = Mosquitto(reactor, self.work / "cloud", free_port())
        yield self.cloud.start()
        self.addCleanup(self.cloud.stop)
        self.port = free_port()
        (self.work / "app.py").parent.mkdir(parents=True, exist_ok=True)
        (self.work / "app.py").write_text(self.program)
        self.path = self.work / "gateway.yaml"
        self.path.write_text(
            f"gateway:\n  state_dir: {self.work / 'state'}\n  device_id: gw-7\n  tenant_id: acme\n{self.gateway_keys}"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{self.port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={self.cloud.port}'\n"
            "      backoff_initial: 0.1\n      backoff_max: 0.5\n"
            f"apps:\n  programs:\n    talker:\n      command: python3 {self.work / 'app.py'}\n"
            "      startsecs: 0\n"
            "commands:\n  confirm_window: 3\n"
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
        self.root = build_service(gateway_config.load(self.path), reactor)
        yield self.root.startService()
        self.addCleanup(self.root.stopService)
        self.root.parts.commands.restarter = FakeRestart()
        self.backend = TestClient(reactor)
        self.addCleanup(self.backend.stop)
        yield self.backend.connect(self.cloud.port)
        yield self.backend.subscribe("command//gw-7/res/#", 1)
        yield self.backend.subscribe("telemetry/acme/gw-7/#", 1)
        yield wait_until(lambda: downlink_subscribed(self.root.parts.links.links["cloud"]), 20,
                         what="the link is up and mosquitto has its SUBSCRIBE")
        self.received: list[Any] = []
        self.counter = 0

    @inlineCallbacks
    def next_from_cloud(self, predicate: Callable[[Any], bool]) -> Any:
        """The next message the backend receives that ``predicate`` accepts (others are kept)."""
        for message in self.received:
            if predicate(message):
                self.received.remove(message)
                return message
        while True:
            message = yield self.backend.next_message(20)
            if predicate(message):
                return message
            self.received.append(message)

    @inlineCallbacks
    def command(self, name: str, body: Any = None, raw: bytes | None = None) -> Any:
        """Send one command; its reply as ``(status, body)``."""
        self.counter += 1
        request_id = f"r-{self.counter}"
        payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        yield self.backend.publish(f"command//gw-7/req/{request_id}/{name}", payload, 1)
        prefix = f"command//gw-7/res/{request_id}/"
        message = yield self.next_from_cloud(lambda m: m.topic.startswith(prefix))
        return int(message.topic[len(prefix):]), json.loads(message.payload)

    @inlineCallbacks
    def local_client(self) -> Any:
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        code = yield client.connect(self.port)
        self.assertEqual(code, 0)
        return client


class RemoteCommandTests(CloudGatewayCase):
    """Commands sent by a backend to the gateway's device id through the cloud broker."""

    @inlineCallbacks
    def test_each_command_and_its_reply(self) -> Any:
        """ping, apps, app.start|stop|restart|logs, config.get|set, report, restart and the
        update service's install are answered on their reply topics; unknown 404, bad 400."""
        status, body = yield self.command("ping")
        self.assertEqual((status, body["pong"]), (200, True))
        status, body = yield self.command("apps")
        self.assertEqual(status, 200)
        self.assertIn("talker", json.dumps(body["apps"]))
        yield wait_until(lambda: self.root.parts.apps.operations.status("talker")[0].state.name == "RUNNING", 20,
                         what="talker runs")
        self.assertEqual((yield self.command("app.stop", {"name": "talker"})), (200, {"name": "talker",
                                                                                   "result": "stopped"}))
        self.assertEqual(self.root.parts.apps.operations.status("talker")[0].state.name, "STOPPED")
        self.assertEqual((yield self.command("app.start", {"name": "talker"}))[0], 200)
        self.assertEqual((yield self.command("app.restart", {"name": "talker"}))[0], 200)
        self.assertEqual(self.root.parts.apps.operations.status("talker")[0].state.name, "RUNNING")
        # Wait for the last line of the talker running now: an earlier talker's "hello" may be
        # in the log already, and the one started by app.start may have been stopped between its
        # "line" and its "hello", so the last line is only settled once this one has said hello.
        pid = self.root.parts.apps.operations.status("talker")[0].pid
        log = self.work / "state" / "logs" / "apps" / "talker.log"
        yield wait_until(lambda: log.exists() and f"hello {pid}\n" in log.read_text(), 20, what="talker logged")
        status, body = yield self.command("app.logs", {"name": "talker", "lines": 1})
        self.assertEqual((status, body["lines"], body["truncated"]), (200, [f"hello {pid}"], False))
        status, body = yield self.command("app.start", {"name": "nobody"})
        self.assertEqual(status, 404)
        self.assertIn("nobody", body["error"])
        status, body = yield self.command("app.logs", {"name": "talker", "lines": "all"})
        self.assertEqual(status, 400)
        self.assertIn("lines", body["error"])
        self.assertEqual((yield self.command("config.get", {"key": "gateway.device_id"})),
                         (200, {"key": "gateway.device_id", "value": "gw-7"}))
        status, body = yield self.command("config.get", {"key": "links.links.nowhere"})
        self.assertEqual(status, 404)
        status, body = yield self.command("config.set", {"changes": {"links.links.cloud.keepalive": 0,
                                                                     "gateway.log_level": "loud"}})
        self.assertEqual(status, 400)
        self.assertEqual(len(body["errors"]), 2, body)
        self.assertIn("keepalive: must be at least 1", " ".join(body["errors"]))
        status, body = yield self.command("report", {"name": "engine_report"})
        self.assertIn(status, (200, 503))
        status, body = yield self.command("restart")
        self.assertEqual((status, body), (202, {"restarting": True, "how": "systemd"}))
        self.assertEqual(self.root.parts.commands.restarter.calls, 1)
        status, body = yield self.command("install", {})
        self.assertEqual(status, 400)
        self.assertIn("correlationId", body["error"])
        status, body = yield self.command("reboot")
        self.assertEqual(status, 404)
        self.assertIn("unknown command 'reboot'", body["error"])
        status, body = yield self.command("ping", raw=b"{not json")
        self.assertEqual(status, 400)
        self.assertIn("not JSON", body["error"])

    @inlineCallbacks
    def test_dead_endpoint_is_reverted_and_nothing_is_lost(self) -> Any:
        """config.set pointing the link at a dead endpoint: applied, not confirmed within the
        window, reverted; the link reconnects, and every message published before, during and
        after reaches the cloud, with the reply and the reports."""
        client = yield self.local_client()
        sent = []
        for i in range(3):
            sent.append(f"before-{i}")
            yield client.publish("telemetry/t", sent[-1].encode(), 1)
        old_links = self.root.parts.links
        dead = f"tcp:host=127.0.0.1:port={closed_port(self)}"
        # The reply is journaled; with the link cut it goes up once the link is back.
        yield self.backend.publish("command//gw-7/req/set-1/config.set",
                                   json.dumps({"key": "links.links.cloud.endpoint", "value": dead}).encode(), 1)
        yield wait_until(lambda: self.root.parts.links is not old_links and self.root.changer.pending() is not None
                         and not self.root.changer.applying, 20, what="the change applied")
        self.assertEqual(self.root.changer.get("links.links.cloud.endpoint"), dead)
        self.assertIn(dead, dropin_path(self.path).read_text())
        client = yield self.local_client()  # the broker restarted with the tree
        for i in range(3):
            sent.append(f"during-{i}")
            yield client.publish("telemetry/t", sent[-1].encode(), 1)
        yield wait_until(lambda: self.root.changer.pending() is None and not self.root.changer.applying, 20,
                         what="the change reverted")
        self.assertFalse(dropin_path(self.path).exists())
        self.assertNotEqual(self.root.changer.get("links.links.cloud.endpoint"), dead)
        client = yield self.local_client()
        sent.append("after")
        yield client.publish("telemetry/t", b"after", 1)
        reply = yield self.next_from_cloud(lambda m: m.topic.startswith("command//gw-7/res/set-1/"))
        self.assertEqual((reply.topic, json.loads(reply.payload)["confirmWithin"]),
                         ("command//gw-7/res/set-1/202", 3.0))
        reports = []
        while len(reports) < 2:
            message = yield self.next_from_cloud(lambda m: m.topic.endswith("/gateway/config/lastChange"))
            reports.append(json.loads(message.payload))
        self.assertEqual([r["status"] for r in reports], ["applied", "reverted"])
        self.assertIn("no cloud link came back up within 3 s", reports[1]["reason"])
        self.assertEqual(reports[1]["keys"], ["links.links.cloud.endpoint"])
        arrived: set[str] = set()  # at least once: a record may come twice
        while not set(sent) <= arrived:
            message = yield self.next_from_cloud(lambda m: m.topic == "telemetry/acme/gw-7/t")
            arrived.add(message.payload.decode())
        self.assertEqual(arrived, set(sent))
        self.assertTrue(self.root.parts.links.links["cloud"].is_connected)

    @inlineCallbacks
    def test_change_that_keeps_the_link_up_stays(self) -> Any:
        """config.set of a key that keeps the link up: applied, confirmed once the link is
        back, and the drop-in stays."""
        old_links = self.root.parts.links
        status, body = yield self.command("config.set", {"key": "links.links.cloud.keepalive", "value": 30})
        self.assertEqual(status, 202)
        reports = []
        while len(reports) < 2:
            message = yield self.next_from_cloud(lambda m: m.topic.endswith("/gateway/config/lastChange"))
            reports.append(json.loads(message.payload))
        self.assertEqual([r["status"] for r in reports], ["applied", "confirmed"])
        self.assertIsNot(self.root.parts.links, old_links)
        self.assertIsNone(self.root.changer.pending())
        self.assertEqual(self.root.changer.get("links.links.cloud.keepalive"), 30)
        self.assertIn("keepalive: 30", dropin_path(self.path).read_text())
        self.assertFalse((self.work / "state" / "commands" / "pending-config.json").exists())
        status, body = yield self.command("ping")
        self.assertEqual(status, 200)


#: A program that ignores SIGTERM: the apps service takes ``gateway.shutdown_timeout`` to stop
#: it, so the services stop slowly and a command can arrive between the dispatcher's stop and
#: the links'.
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(300)\n"


class CommandsWhileStoppingTests(CloudGatewayCase):
    """A command that reaches the gateway while its services stop is run once they run again."""

    program = STUBBORN
    # The window for the command is the apps' stop: 1.5 s, not the default 4, is ample (the
    # command goes out within a 50 ms poll of the dispatcher's stop).
    gateway_keys = "  shutdown_timeout: 1.5\n"

    @inlineCallbacks
    def services_stopping(self) -> Any:
        """Wait until the command dispatcher has stopped while the links still run."""
        dispatcher = self.root.getServiceNamed("commands")
        links = self.root.parts.links
        yield wait_until(lambda: not dispatcher.running, 20, what="the command dispatcher stopped")
        self.assertTrue(links.running and links.links["cloud"].is_connected, "the link still runs")

    @inlineCallbacks
    def started_talker(self) -> Any:
        """Wait until talker runs and ignores SIGTERM."""
        log = self.work / "state" / "logs" / "apps" / "talker.log"
        yield wait_until(lambda: log.exists() and "up\n" in log.read_text(), 20, what="talker ignores SIGTERM")

    @inlineCallbacks
    def test_a_command_during_a_configuration_change_runs_after_it(self) -> Any:
        """A ping sent (QoS 1) while a config.set restarts the services, once the dispatcher
        has stopped and before the links have: not acknowledged by the old link, so the cloud
        broker sends it again to the new one and it is answered (it was acknowledged, never run)."""
        yield self.started_talker()
        status, _ = yield self.command("config.set", {"key": "links.links.cloud.keepalive", "value": 30})
        self.assertEqual(status, 202)
        yield self.services_stopping()
        yield self.backend.publish("command//gw-7/req/during/ping", b"{}", 1)
        reply = yield self.next_from_cloud(lambda m: m.topic.startswith("command//gw-7/res/during/"))
        self.assertEqual(reply.topic, "command//gw-7/res/during/200")
        self.assertEqual(self.root.changer.get("links.links.cloud.keepalive"), 30)

    @inlineCallbacks
    def test_a_command_during_the_stop_runs_at_the_next_start(self) -> Any:
        """A ping sent (QoS 1) while the gateway stops, once the dispatcher has stopped and
        before the links have, is answered by the next start of the gateway."""
        yield self.started_talker()
        stopped = self.root.stopService()
        yield self.services_stopping()
        yield self.backend.publish("command//gw-7/req/down/ping", b"{}", 1)
        yield stopped
        again = build_service(gateway_config.load(self.path), reactor)
        yield again.startService()
        self.addCleanup(again.stopService)
        reply = yield self.next_from_cloud(lambda m: m.topic.startswith("command//gw-7/res/down/"))
        self.assertEqual(reply.topic, "command//gw-7/res/down/200")
