"""The whole service tree in one process: an OTA install command on a local topic downloads a
GWE app over HTTP and the apps service runs it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.logger import LogLevel, formatEvent
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site
from twisted.web.static import File

from gateway import config as gateway_config
from gateway import __version__, logbridge, tree
from gateway.config import Config
from gateway.tree import build_service
from gateway.updates.commands import UPDATE_TOPIC
from tests.apps.packages import gwe_package
from tests.apps.realtime import wait_until
from tests.logevents import capture_log_events
from tests.links.mosquitto import Mosquitto, downlink_subscribed
from tests.ports import free_port
from tests.mqttclient import TestClient



class TreeHelpers:
    """Start the whole tree and connect clients to it (for a :class:`TestCase`)."""

    addCleanup: Any

    @inlineCallbacks
    def start_tree(self, work: Path, gateway_keys: str, port: int, more: str, metrics: str = "") -> Any:
        """The whole service tree on a config: state in ``work``, broker on ``port``, the HTTP
        ingest on a free port (not its default 8090, which another gateway on the machine may
        hold), plain HTTP downloads allowed, plus ``gateway_keys`` and ``more`` sections;
        ``/metrics`` on the ``metrics`` endpoint (none by default)."""
        path = work / "gateway.yaml"
        path.write_text(
            f"telemetry:\n  metrics_endpoint: '{metrics}'\n"
            f"ingest:\n  endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            f"gateway:\n  state_dir: {work / 'state'}{gateway_keys}"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            f"{more}updates:\n  download:\n    allow_http: true\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        return root

    @inlineCallbacks
    def client(self, port: int, reconnect: tuple[float, float] | None = None) -> Any:
        """An MQTT test client connected to ``port``, stopped on cleanup (``reconnect``: as
        :class:`TestClient` takes it)."""
        client = TestClient(reactor, reconnect=reconnect)
        self.addCleanup(client.stop)
        yield client.connect(port)
        return client


class TreeTests(TreeHelpers, TestCase):
    """Services wired together by gateway.tree, as twistd runs them."""

    timeout = 60

    @inlineCallbacks
    def test_identity_answer_names_the_twins_thing(self):
        """edge/thing/request is answered with the gateway's thing id as deviceId (Kanto's apps
        split it into namespace and name): twin.thing_id when set."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        port = free_port()
        root = yield self.start_tree(work, "\n  device_id: gw-7\n  tenant_id: acme\n", port,
                                     "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: "
                                     "{allow_anonymous: true}\ntwin:\n  thing_id: org.acme:box-7\n")
        # (and the start line names the version and the configuration file: docs/install.md, Logs)
        self.assertEqual(root.about, tree.about(root.changer.config))
        app = yield self.client(port)
        yield app.subscribe("edge/thing/response", 1)
        yield app.publish("edge/thing/request", b"", 1)
        answer = json.loads((yield app.next_message(10)).payload)
        self.assertEqual((answer["deviceId"], answer["tenantId"]), ("org.acme:box-7", "acme"))

    @inlineCallbacks
    def test_a_change_of_the_process_settings_takes_effect(self) -> Any:
        """gateway.log_level changed while the gateway runs is the level amqtt and asyncio log
        at, and gateway.shutdown_timeout the time each service has to stop, once the tree has
        restarted (docs/configuration.md; docs/commands.md: the tree restarts with the new
        configuration); the process kept those twistd started with, though config.get
        answered the new ones. The new fleet service goes on at the pace of the one it replaced
        (docs/fleet.md)."""
        from gateway.fleet.service import FleetService

        followed: list[tuple[FleetService, FleetService]] = []
        self.patch(FleetService, "goes_on_from", lambda new, old: followed.append((new, old)))
        root_logger = logging.getLogger()
        level, handlers = root_logger.level, list(root_logger.handlers)
        self.addCleanup(lambda: (root_logger.setLevel(level), setattr(root_logger, "handlers", handlers)))
        logbridge.install("info")  # as tap.py does at start
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        root = yield self.start_tree(work, "\n", free_port(), "fleet:\n  enabled: true\n  auth: none\n  allow_http: true\n"
                                     f"  base_url: 'http://127.0.0.1:{free_port()}'\n  min_poll_interval: 60\n")
        fleet = root.parts.fleet
        result = yield root.changer.apply({"gateway.log_level": "debug", "gateway.shutdown_timeout": 9.5})
        self.assertTrue(result.applied, result)
        self.assertEqual(followed, [(root.parts.fleet, fleet)])
        self.assertEqual(root_logger.getEffectiveLevel(), logging.DEBUG)
        self.assertTrue(logging.getLogger("amqtt").isEnabledFor(logging.DEBUG))
        self.assertEqual(root.shutdown_timeout, 9.5)

    @inlineCallbacks
    def test_the_services_a_configuration_change_replaced_are_freed(self) -> Any:
        """Once a configuration change has restarted the tree, the services it replaced (their
        broker sessions and queues, journal tails, sites) are freed, not left to the cyclic
        collector: the gateway collects less often (gateway.gctuning), and an idle gateway kept
        a whole second tree, with every record its journal streams held in memory, for as long
        as it allocated too little to trigger a full collection (seen in the soak)."""
        import gc
        import weakref

        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.internet.task import deferLater

        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        run = Path(tempfile.mkdtemp(prefix="gwfree-"))  # short: a unix socket path is at most 107 bytes
        self.addCleanup(shutil.rmtree, run, True)
        root = yield self.start_tree(work, "\n", free_port(), f"admin:\n  socket: {run / 'admin.sock'}\n")

        class OverTheSocket:
            def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
                return UNIXClientEndpoint(reactor, str(run / "admin.sock"))

        admin = HTTPClient(Agent.usingEndpointFactory(reactor, OverTheSocket(),
                                                      pool=HTTPConnectionPool(reactor, persistent=False)))
        self.patch(tree, "COLLECT_REPLACED_AFTER", 0.5)
        old = [weakref.ref(service) for service in (root.parts.broker, root.parts.journal, root.parts.admin)]
        gc.disable()  # only what the gateway collects itself
        self.addCleanup(gc.enable)
        # as gatewayctl does: the request is answered by the admin API the change replaces
        response = yield admin.post("http://gateway/config/apply", json={"changes": {"gateway.log_level": "debug"}})
        self.assertEqual(response.code, 200, (yield response.content()))
        yield deferLater(reactor, 0.7, lambda: None)
        self.assertEqual([ref() for ref in old], [None, None, None])

    @inlineCallbacks
    def test_a_long_poll_across_a_configuration_change_gets_the_cloud_write(self) -> Any:
        """A GWE app's long-poll (Request-Timeout) held by the ingest while a configuration change
        restarts the services is answered with the value the cloud writes after the restart
        (docs/exosite.md): it waited on the old ingest's last values, which nothing wrote any
        more, and got a 304 at its timeout (a client without If-Modified-Since missed the write)."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        root = yield self.start_tree(work, "\n", free_port(), "")
        port = root.parts.ingest.port.getHost().port
        pool = HTTPConnectionPool(reactor, persistent=False)
        poll = HTTPClient(Agent(reactor, pool=pool)).get(
            f"http://127.0.0.1:{port}/onep:v1/stack/alias?setpoint",
            headers={"X-Exosite-CIK": "a" * 40, "Request-Timeout": "10000"})
        yield wait_until(lambda: root.parts.ingest.values.waiting == 1, what="the long-poll waiting")
        result = yield root.changer.apply({"gateway.log_level": "debug"})
        self.assertTrue(result.applied, result)
        for cloud_value in root.parts.links.cloud_values:  # an Exosite link's downlink after the restart
            cloud_value("setpoint", "42", reactor.seconds())
        response = yield poll
        self.assertEqual((response.code, (yield response.content())), (200, b"setpoint=42"))
        self.assertEqual(root.parts.ingest.values.get("setpoint").value, "42")

    @inlineCallbacks
    def test_no_new_journal_starts_while_the_old_one_closes(self) -> Any:
        """A configuration change whose old journal is still closing past
        gateway.shutdown_timeout does not start a new journal beside it: the change is not
        started and reverted, and the journal of the revert starts only once the old one has
        closed (docs/commands.md step 3); the new one started beside the old one, both
        writing the same segment files and cursors."""
        from gateway.journal.service import JournalService

        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        root = yield self.start_tree(work, "\n  shutdown_timeout: 0.1\n", free_port(), "")
        self.assertEqual(root.parts.broker.stop_grace, 0.05)  # (its stop's grace fits in the timeout: broker.md)
        old = root.parts.journal
        events: list[str] = []
        held: Deferred[None] = Deferred()
        close = old.stopService

        def held_close() -> Deferred[None]:
            return held.addCallback(lambda _: close()).addCallback(lambda _: events.append("old journal closed"))

        old.stopService = held_close
        start = JournalService.startService

        def recorded_start(journal: JournalService) -> Any:
            events.append("new journal started")
            return start(journal)

        self.patch(JournalService, "startService", recorded_start)
        replace = root.replace_children
        restarts: list[int] = []

        def second_restart_releases(*args: Any, **kwargs: Any) -> Any:
            restarts.append(1)
            if len(restarts) == 2:  # the revert's restart: the old journal finishes closing now
                reactor.callLater(0.01, held.callback, None)
            return replace(*args, **kwargs)

        root.replace_children = second_restart_releases

        result = yield root.changer.apply({"gateway.log_level": "debug"})
        self.assertEqual(result.outcome, "not_started", result)
        self.assertIn("the journal did not stop within 0.1 s", result.errors[0])
        self.assertEqual(events, ["old journal closed", "new journal started"])
        self.assertIsNot(root.parts.journal, old)
        self.assertTrue(root.parts.journal.running)

    @inlineCallbacks
    def test_a_stop_during_a_configuration_change_stops_the_new_services(self) -> Any:
        """SIGTERM (the root's stop) while a configuration change restarts the tree waits for the
        change to be applied, then stops every service of the new tree, as a stop does (docs/commands.md
        step 3; DESIGN.md: SIGTERM stops the whole tree cleanly). The stop stopped the services
        running at that moment and the change went on starting the rest of the new tree after
        "gateway shutdown completed": the updates, uploads, telemetry, commands and admin
        services ran on, on a stopped broker and journal."""
        from gateway.apps.service import AppsService

        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        root = yield self.start_tree(work, "\n", free_port(), "")
        stopping: list[Deferred[None]] = []
        start = AppsService.startService

        def stop_meanwhile(apps: AppsService) -> Any:
            if not stopping:  # the new tree's apps service: the gateway is told to stop now
                stopping.append(root.stopService())
            return start(apps)

        self.patch(AppsService, "startService", stop_meanwhile)
        result = yield root.changer.apply({"gateway.log_level": "debug"}, confirm_within=30)
        self.assertTrue(result.applied, result)
        yield stopping[0]
        self.assertEqual([child.name for child in root if child.running], [])
        self.assertIsNone(root.changer._poll)

    @inlineCallbacks
    def test_a_config_set_checked_as_the_stop_begins_is_refused(self) -> Any:
        """SIGTERM (the root's stop) while a remote config.set is being checked: it is answered
        409 saying that the gateway stops, and nothing changes (docs/commands.md). It was answered
        202, and its pending change and drop-in were written while the services stopped, with no
        restart and no ``applied`` report: the next start ran the change unannounced."""
        from gateway.commands.dispatcher import CommandError, CommandRequest

        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        root = yield self.start_tree(work, "\n", free_port(), "")
        check, stopping = root.changer.check, []

        def stop_meanwhile(changes: Any) -> Deferred[list[str]]:
            stopping.append(root.stopService())  # the gateway is told to stop as the check runs
            return check(changes)

        self.patch(root.changer, "check", stop_meanwhile)
        request = CommandRequest("config.set", "r1", b'{"key": "gateway.log_level", "value": "debug"}')
        failure = yield self.assertFailure(maybeDeferred(root.parts.commands.config_set, request), CommandError)
        yield stopping[0]
        self.assertEqual((failure.status, failure.message),
                         (409, "the gateway is stopping: nothing changed; send the change again once it is back"))
        yield deferLater(reactor, 0.1, lambda: None)  # (where the change began on the next turn)
        self.assertEqual([child.name for child in root if child.running], [])
        self.assertEqual(((work / "conf.d" / "90-remote.yaml").exists(),
                          (work / "state" / "commands" / "pending-config.json").exists()), (False, False))

    @inlineCallbacks
    def test_an_install_in_its_health_window_during_a_configuration_change_runs_one_copy(self) -> Any:
        """A configuration change while a new version of an app is in its health window: the
        install is rolled back (saying the apps service stopped) and exactly one copy of the
        previous version runs, the new apps service's (docs/apps.md: exactly one copy of each
        program; commands.md step 3). The stopped apps service's rollback started one more,
        which nobody supervised."""
        import os

        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        # (a short window: the first install waits it out; the change comes well within the second's,
        # a 50 ms poll after version 2 runs)
        root = yield self.start_tree(work, "\n", free_port(), "apps:\n  health_window: 2.5\n")
        conf = "[program:sensor]\ncommand=python3 run.py\nstartsecs=0\n"
        first = yield root.parts.apps.control.install(gwe_package(work, "sensor", "1", "import time\ntime.sleep(300)\n",
                                                                  conf))
        self.assertTrue(first.ok, first)
        results: list[Any] = []
        root.parts.apps.control.install(gwe_package(work, "sensor", "2", "import time\ntime.sleep(300)\n",
                                                    conf)).addBoth(results.append)
        yield wait_until(lambda: any(s.version == "2" and s.state.name == "RUNNING"
                                     for s in root.parts.apps.operations.status()), what="version 2 running")
        change = yield root.changer.apply({"gateway.log_level": "debug"})
        self.assertTrue(change.applied, change)
        self.assertEqual((results[0].outcome, results[0].previous), ("rolled-back", "1"))
        self.assertIn("the apps service stopped during the health window", results[0].message)

        def copies() -> list[int]:
            found = []
            for entry in os.listdir("/proc"):
                try:
                    environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                except (OSError, ValueError):
                    continue
                if f"GATEWAY_STATE_DIR={work / 'state'}".encode() in environ \
                        and b"GATEWAY_PROGRAM_NAME=sensor" in environ and b"GATEWAY_APP_VERSION=1" in environ:
                    found.append(int(entry))
            return found

        yield wait_until(lambda: len(copies()) == 1 and root.parts.apps.operations.status("sensor")[0].pid
                         in copies(), what="one copy, the new apps service's")

    @inlineCallbacks
    def test_a_change_declaring_a_program_named_like_an_installed_app_is_refused(self) -> Any:
        """A configuration change that declares a program under ``apps.programs`` named like an
        installed app's program is refused (400-style, every error listed) and the app runs on:
        it was reported applied, and the restarted apps service ran the configuration's program
        and no longer loaded the app (``cannot load sensor 1: program name 'sensor' is taken``),
        so the installed app stopped for good with only a log line to say so."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        root = yield self.start_tree(work, "\n", free_port(), "apps:\n  health_window: 0\n")
        conf = "[program:sensor]\ncommand=python3 run.py\nstartsecs=0\n"
        installed = yield root.parts.apps.control.install(
            gwe_package(work, "sensor", "1", "import time\ntime.sleep(300)\n", conf))
        self.assertTrue(installed.ok, installed)
        change = {"apps.programs.sensor": {"command": "sleep 300"}}
        errors = (yield root.changer.check(change)).errors
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith("apps.programs.sensor: 'sensor' is a program of the installed"
                                             " app sensor 1"), errors)
        result = yield root.changer.apply(change)
        self.assertEqual((result.applied, result.outcome, list(result.errors)), (False, "invalid", errors))
        [program] = root.parts.apps.operations.status("sensor")
        self.assertEqual((program.version, program.state.name), ("1", "RUNNING"))
        # a program of another name is fine
        result = yield root.changer.apply({"apps.programs.poller": {"command": "sleep 300"}})
        self.assertTrue(result.applied, result)
        self.assertEqual(sorted((s.name, s.version) for s in root.parts.apps.operations.status()),
                         [("poller", "config"), ("sensor", "1")])

    @inlineCallbacks
    def test_spool_package_named_like_a_container_is_refused_at_start(self) -> Any:
        """A package dropped into the spool while the gateway was down, named like a container
        app, is refused (filed in failed/) by the first look at the spool: the containers are
        loaded before it (however long podman takes), and the container stays the app of that name."""
        from gateway.apps.spool import SpoolWatcher
        from gateway.containers.operations import ContainerOperations

        order: list[str] = []
        load, start = ContainerOperations.load, SpoolWatcher.start

        def loaded(operations: ContainerOperations) -> Any:
            return load(operations).addCallback(lambda _: order.append("containers loaded"))

        def started(spool: SpoolWatcher) -> None:
            order.append("spool started")
            start(spool)

        self.patch(ContainerOperations, "load", loaded)
        self.patch(SpoolWatcher, "start", started)
        work = Path(self.mktemp()).resolve()
        incoming = work / "state" / "incoming"
        incoming.mkdir(parents=True)
        gwe_package(incoming, "web", "1", "print('hi')\n")
        sockets = Path(tempfile.mkdtemp(prefix="gw-tree-"))  # (a unix socket path is short)
        self.addCleanup(shutil.rmtree, sockets)
        path = work / "gateway.yaml"  # no TCP port: the broker on a unix socket, ingest and metrics off
        path.write_text(json.dumps({
            "gateway": {"state_dir": str(work / "state")},
            "broker": {"listeners": {"default": {"endpoint": f"unix:{sockets / 'mqtt.sock'}"}}},
            "admin": {"socket": str(sockets / "admin.sock")},
            "ingest": {"enabled": False}, "telemetry": {"metrics_endpoint": ""}, "apps": {"health_window": 0.5},
            "containers": {"enabled": True, "start_service": False, "socket": str(sockets / "podman.sock"),
                           "containers": {"web": {"image": "registry.invalid/web:1"}}}}))
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        self.assertEqual(order, ["containers loaded", "spool started"])
        yield wait_until(lambda: not (incoming / "web.v1.tar.gz").exists(), what="the spool's first look")
        self.assertTrue((incoming / "failed" / "web.v1.tar.gz").exists())
        self.assertIn("name of a container app", (incoming / "failed" / "web.v1.tar.gz.log").read_text())
        self.assertIsNone(root.parts.apps.operations.registry.current("web"))
        self.assertTrue(root.parts.containers.operations.owns("web"))

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
        root = yield self.start_tree(work, "\n", port,
                                     "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: "
                                     "{allow_anonymous: true}\napps:\n  health_window: 0.5\n")
        client = yield self.client(port)
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
        [program] = root.parts.apps.operations.status("sensor")
        self.assertEqual((program.version, program.state.name), ("1.0", "RUNNING"))

    @inlineCallbacks
    def test_a_failed_start_says_the_previous_run_did_not_stop_cleanly(self):
        """A start after an unclean stop that fails (its broker's port in use) says in its log
        that the previous run did not stop cleanly, as a start that works does once everything
        runs (docs/install.md, after a power cut or a kill): its own stop is clean, so the next
        start would not say it (only the count of unclean stops would)."""
        work = Path(self.mktemp()).resolve()
        (work / "state").mkdir(parents=True)
        (work / "state" / "run.json").write_text(json.dumps({
            "pid": 4107, "started_at": 1796200000.0, "boot_id": "an-earlier-boot", "stopped_at": None,
            "unclean_stops": 0, "last_unclean_at": None}))
        os.utime(work / "state" / "run.json", (1796211823, 1796211823))  # (its last mark of life)
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        path = work / "gateway.yaml"
        path.write_text(
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n"
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{taken.getHost().port}:interface=127.0.0.1'\n")
        events = capture_log_events(self)
        root = build_service(gateway_config.load(path), reactor, on_start_failure=lambda failure: None)
        root.startService()
        yield self.assertFailure(root.started, Exception)
        self.assertEqual([formatEvent(e) for e in events if "did not stop cleanly" in formatEvent(e)],
                         ["the previous run did not stop cleanly (pid 4107, started 2026-12-02T08:26:40Z, last known"
                          " alive 2026-12-02T11:43:43Z): the machine has started again since (a power cut, a kernel"
                          " panic, a watchdog reset); this state directory has seen that once"])
        [event] = [e for e in events if "previous_stop" in e]
        self.assertEqual((event["previous_stop"]["pid"], event["previous_stop"]["cause"]), (4107, "reboot"))
        record = json.loads((work / "state" / "run.json").read_text())
        self.assertEqual(record["unclean_stops"], 1)
        self.assertIsNotNone(record["stopped_at"])

    @inlineCallbacks
    def test_a_command_the_cloud_kept_while_the_gateway_was_down_is_run(self):
        """A command published to the gateway while it is down waits in its persistent session
        on the cloud broker, which sends it as soon as the link connects, while the rest of the
        tree is still starting: it is run and answered once the tree is up (it was acknowledged
        to the cloud before the command dispatcher had subscribed, and lost)."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        cloud = Mosquitto(reactor, work / "cloud", free_port())
        yield cloud.start()
        self.addCleanup(cloud.stop)
        link = (f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
                "      backoff_initial: 0.1\n")
        root = yield self.start_tree(work, "\n  device_id: gw-7\n", free_port(), link)
        yield wait_until(lambda: downlink_subscribed(root.parts.links.links["cloud"]), 20)
        yield root.stopService()
        backend = yield self.client(cloud.port)
        yield backend.subscribe("command//gw-7/res/#", 1)
        yield backend.publish("command//gw-7/req/while-down/ping", b"{}", 1)
        again = build_service(gateway_config.load(work / "gateway.yaml"), reactor)
        yield again.startService()
        self.addCleanup(again.stopService)
        reply = yield backend.next_message(20)
        self.assertEqual(reply.topic, "command//gw-7/res/while-down/200")

    @inlineCallbacks
    def test_cloud_command_is_answered_and_its_statuses_go_up(self):
        """A Kanto download command from the cloud (a Ditto envelope, through a real mosquitto
        and the link) is answered 204 on its reply topic, a malformed one 400 with the reason,
        and the operation's statuses reach the cloud as the gateway's telemetry."""
        work = Path(self.mktemp()).resolve()
        served = work / "served"
        served.mkdir(parents=True)
        (served / "blob.bin").write_bytes(b"firmware" * 4096)
        web = reactor.listenTCP(0, Site(File(str(served))), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        cloud = Mosquitto(reactor, work / "cloud", free_port())
        yield cloud.start()
        self.addCleanup(cloud.stop)
        link = f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
        root = yield self.start_tree(work, "\n  device_id: gw-7\n  tenant_id: acme\n", free_port(),
                                     link + "      backoff_initial: 0.1\n")
        backend = yield self.client(cloud.port)
        yield backend.subscribe("command//gw-7/res/#", 1)
        yield backend.subscribe("telemetry/acme/gw-7/gateway/updates/lastOperation", 1)
        yield wait_until(lambda: downlink_subscribed(root.parts.links.links["cloud"]), 20)
        url = f"http://127.0.0.1:{web.getHost().port}/blob.bin"
        request = {"correlationId": "op-cloud", "softwareModules": [{
            "softwareModule": {"name": "firmware", "version": "2"},
            "artifacts": [{"filename": "blob.bin", "download": {"HTTP": {"url": url}},
                           "checksums": {"SHA256": hashlib.sha256(b"firmware" * 4096).hexdigest()}}]}]}
        envelope = {"topic": "acme/gw-7/things/live/messages/download",
                    "path": "/features/SoftwareUpdatable/inbox/messages/download", "value": request}
        yield backend.publish("command//gw-7/req/r-1/download", json.dumps(envelope).encode(), 1)
        yield backend.publish("command//gw-7/req/r-2/install", b"{}", 1)
        replies, statuses = {}, []
        while len(replies) < 2 or not statuses or statuses[-1] not in ("FINISHED_SUCCESS", "FINISHED_ERROR"):
            message = yield backend.next_message(30)
            if message.topic.startswith("command//"):
                replies[message.topic] = json.loads(message.payload)
            else:
                statuses.append(json.loads(message.payload)["status"])
        self.assertEqual(statuses[-1], "FINISHED_SUCCESS", statuses)
        self.assertIn("DOWNLOADED", statuses)
        self.assertEqual(replies["command//gw-7/res/r-1/204"], {})
        self.assertIn("correlationId", replies["command//gw-7/res/r-2/400"]["error"])


class AboutTests(SynchronousTestCase):
    """What the start line says of the gateway besides its services."""

    def test_version_and_the_configuration_file_as_an_absolute_path(self) -> None:
        """``twistd gateway --config gateway.yaml`` was logged as ``config gateway.yaml``
        (seen on a real gateway), which says nothing to someone reading journald: the file is
        named by its absolute path, with the version."""
        self.assertEqual(tree.about(Config(path=Path("gateway.yaml"))),
                         f"version {__version__}, config {Path.cwd() / 'gateway.yaml'}")


class JournalUsersTests(SynchronousTestCase):
    """Which journal streams the configuration uses: the ones the operator may not drop."""

    def test_links_and_broker(self) -> None:
        """The broker's state log and each MQTT and HTTP link's stream, each with what uses it."""
        work = Path(self.mktemp())
        work.mkdir()
        path = work / "gateway.yaml"
        path.write_text(f"gateway:\n  state_dir: {work / 'state'}\n"
                        "links:\n  links:\n    cloud: {endpoint: 'tcp:host=127.0.0.1:port=1'}\n"
                        "http_links:\n  links:\n    exo: {mode: json, url: 'https://example.com'}\n")
        users = tree.journal_users(gateway_config.load(str(path)))
        self.assertEqual(users, {"broker-state": "the broker's state log", "link-cloud": "the link 'cloud'",
                                 "link-exo": "the link 'exo'"})


class NullEntryTests(SynchronousTestCase):
    """docs/configuration.md: the start warns of a link a file sets to null."""

    def test_a_link_set_to_null_is_a_warning_at_start(self) -> None:
        """A drop-in's ``eu:`` with nothing after it keeps the main file's link ``eu`` with every
        default (tcp:host=127.0.0.1:port=1883): building the services logs it, one warning."""
        work = Path(self.mktemp())
        (work / "conf.d").mkdir(parents=True)
        path = work / "gateway.yaml"
        path.write_text(f"gateway:\n  state_dir: {work / 'state'}\n"
                        "links:\n  links:\n    eu: {endpoint: 'tcp:host=127.0.0.1:port=30101'}\n")
        (work / "conf.d" / "50-off.yaml").write_text("links:\n  links:\n    eu:\n")
        events = capture_log_events(self)
        root = build_service(gateway_config.load(path), reactor)
        self.addCleanup(root.state.stopService)  # (releases the lock build_service took)
        said = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([line for line in said if "links.links.eu" in line], [
            "links.links.eu: set to null in a file, which keeps it as an MQTT link with every default (to"
            " tcp:host=127.0.0.1:port=1883, which may be the gateway's own broker) (null does not remove an"
            " entry): to remove it, delete its key from every file that sets it"])
