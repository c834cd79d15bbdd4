"""The gateway's own ``.deb`` installed while the gateway is busy: a real ``twistd gateway``
with a hosted app running, a QoS 1 publisher whose messages a link carries to a cloud
mosquitto, a persistent session with messages queued for it, a retained message and a twin
thing, restarted in the middle of the install as the package's maintainer scripts restart it
(docs/updates.md, docs/install.md: What carries over)."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from gateway.updates.commands import UPDATE_TOPIC
from tests.apps.packages import gwe_package
from tests.gatewayprocess import GatewayProcess, spawn_gateway
from tests.links.mosquitto import Mosquitto
from tests.links.test_crash import NO_FIXED_PORTS, started_or_why
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.updates.realservers import Nginx, nginx_available

#: The statuses of a gateway package install that the package's restart interrupts, as they reach
#: the cloud (docs/updates.md: Statuses, After a restart or power cut).
SELF_UPDATE = [("STARTED", "accepted"), ("DOWNLOADING", ""), ("DOWNLOADED", "all artifacts verified"),
               ("INSTALLING", "gateway {v}"), ("INSTALLING", "gateway {v} resumed after restart"),
               ("INSTALLED", "gateway package {v} installed"), ("FINISHED_SUCCESS", "done")]

FINAL = ("FINISHED_SUCCESS", "FINISHED_ERROR", "FINISHED_CANCELED")
#: The cloud topic of the update statuses (default routes, tenant ``default``, device ``gateway``).
CLOUD_STATUS = "telemetry/default/gateway/gateway/updates/lastOperation"
#: A hosted program that runs until stopped.
TICKER = "import time\nwhile True:\n    time.sleep(0.2)\n"
SUPERVISOR = "[program:{name}]\ncommand=python3 run.py\nautostart=true\nstartsecs=1\n"
#: The installer the gateway runs in place of dpkg: records that it runs, waits for the test's
#: release file (30 s at most), exits with the status in the file ``code`` (0 when none),
#: saying so when it is not 0.
FAKE_DPKG = ("echo \"$0\" >> {started}; i=0; "
             "while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
             "code=$(cat {code} 2>/dev/null || echo 0); [ $code = 0 ] || echo 'dpkg: refused'; exit $code")


class BusySelfUpdateTests(TestCase):
    """A self-update (``deb_installer: helper``, an installer standing in for dpkg, the test
    restarting the gateway as the package's postinst would) with apps, a link, sessions and the
    twin in use."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        if not nginx_available() or shutil.which("mosquitto") is None:
            raise SkipTest("nginx or mosquitto is not installed (make test-deps)")
        self.work = Path(self.mktemp()).resolve()
        self.www = self.work / "www"
        self.www.mkdir(parents=True)
        self.nginx = Nginx(self.www, self.work / "nginx")
        self.addCleanup(self.nginx.stop)
        self.cloud = Mosquitto(reactor, self.work / "cloud", free_port())
        yield self.cloud.start()
        self.addCleanup(self.cloud.stop)
        self.upstream = self.client(client_id="cloud-sub", clean_session=False)
        yield self.upstream.connect(self.cloud.port)
        yield self.upstream.subscribe("#", 1)
        self.started = self.work / "installer-started"
        self.release = self.work / "installer-release"
        self.code = self.work / "installer-code"
        self.addCleanup(self.release.touch)  # an installer still waiting ends at once
        run = Path(tempfile.mkdtemp(prefix="gwdeb-"))  # short: a unix socket path is at most 107 bytes
        self.addCleanup(shutil.rmtree, run, True)
        self.admin = str(run / "admin.sock")
        self.port = free_port()
        self.config = self.work / "gateway.yaml"
        command = FAKE_DPKG.format(started=self.started, release=self.release, code=self.code)
        self.config.write_text(
            f"gateway:\n  state_dir: {self.work / 'state'}\n"
            f"broker:\n  max_queued_messages: 100000\n  listeners:\n    default:\n      endpoint: 'tcp:{self.port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={self.cloud.port}'\n"
            "      backoff_initial: 0.05\n      backoff_max: 0.2\n      min_connect_interval: 0.05\n"
            "      drain_order: oldest\n"
            f"admin:\n  socket: {self.admin}\n"
            # (each app install waits out its health window: 3 s, not the default 10, still far
            # longer than the test takes to restart the gateway once it sees an install under way)
            "apps:\n  health_window: 3\n"
            "updates:\n  deb_installer: helper\n  use_systemd_run: false\n"
            f"  deb_install_command: ['/bin/sh', '-c', {json.dumps(command)}]\n"
            "  download:\n    allow_http: true\n" + NO_FIXED_PORTS)
        self.cloud_statuses: list[dict[str, Any]] = []
        self.cloud_payloads: list[bytes] = []
        self.local_seen: list[tuple[str, str]] = []

    def client(self, **kwargs: Any) -> TestClient:
        """A paho client, stopped at the end of the test."""
        client = TestClient(reactor, **kwargs)
        self.addCleanup(client.stop)
        return client

    @inlineCallbacks
    def start_gateway(self) -> Any:
        """Start ``twistd gateway``; fires with it once it is up."""
        proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(self.config))
        log = self.work / f"gateway-{len(list(self.work.glob('gateway-*.log')))}.log"
        log.touch()
        self.addCleanup(lambda: log.write_bytes(proc.output))
        yield proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc)
        return proc

    @inlineCallbacks
    def restart(self, proc: GatewayProcess) -> Any:
        """Stop the gateway with SIGTERM (as ``systemctl restart`` in the package's postinst
        does) and start it again."""
        proc.transport.signalProcess("TERM")
        yield proc.ended
        started = yield self.start_gateway()
        return started

    @inlineCallbacks
    def api(self, method: str, path: str, body: bytes = b"") -> Any:
        """The admin API's answer: (code, JSON body)."""
        socket = self.admin

        class OverTheSocket:
            def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
                return UNIXClientEndpoint(reactor, socket)

        agent = Agent.usingEndpointFactory(reactor, OverTheSocket())
        response = yield agent.request(method.encode(), b"http://localhost" + path.encode(),
                                       Headers({b"content-type": [b"application/octet-stream"]}),
                                       FileBodyProducer(BytesIO(body)) if body else None)
        data = yield readBody(response)
        try:
            return response.code, json.loads(data)
        except ValueError:
            return response.code, data

    def deb_request(self, cid: str, version: str = "9.9") -> bytes:
        """A Kanto install request for a gateway package served by nginx (not a real package:
        the installer stands in for dpkg)."""
        body = f"not really a package {version}".encode()
        filename = f"gateway_{version}_all.deb"
        (self.www / filename).write_bytes(body)
        return json.dumps({"correlationId": cid, "softwareModules": [{
            "softwareModule": {"name": "gateway", "version": version},
            "artifacts": [{"filename": filename, "size": len(body),
                           "download": {"HTTP": {"url": f"http://127.0.0.1:{self.nginx.port}/{filename}"}},
                           "checksums": {"SHA256": hashlib.sha256(body).hexdigest()}}],
            "metaData": {"target": "gateway"}}]}).encode()

    @inlineCallbacks
    def poll(self, what: str, condition: Any, seconds: float = 30) -> Any:
        """Fire once ``condition()`` holds (checked every 50 ms)."""
        deadline = reactor.seconds() + seconds
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def cloud_final(self, cid: str) -> Any:
        """Collect what reaches the cloud until operation ``cid``'s final status; fire with it."""
        while True:
            for status in self.cloud_statuses:
                if status.get("correlationId") == cid and status["status"] in FINAL:
                    return status
            try:
                message = yield self.upstream.next_message(30)
            except TimeoutError:
                self.fail(f"no final status of {cid} at the cloud: {self.statuses(cid)}")
            self.take(message)

    def take(self, message: Any) -> None:
        """Keep what the cloud received: an update status (once, however often the link sends
        it), or a payload of ``telemetry/load``."""
        if message.topic == CLOUD_STATUS:
            status = json.loads(message.payload)
            # (the link carries statuses at least once: one whose PUBACK the restart cut off is
            # sent again, the same payload, timestamp and all; a status published anew has its
            # own timestamp)
            if status not in self.cloud_statuses:
                self.cloud_statuses.append(status)
        elif message.topic.startswith("telemetry/default/gateway/load"):
            self.cloud_payloads.append(message.payload)

    def statuses(self, cid: str) -> list[tuple[str, str]]:
        """Operation ``cid``'s statuses at the cloud so far, (status, message) in arrival order."""
        return [(s["status"], s["message"]) for s in self.cloud_statuses if s.get("correlationId") == cid]

    def app_request(self, cid: str, package: Path) -> bytes:
        """A Kanto install request for a hosted app's package served by nginx."""
        body = package.read_bytes()
        (self.www / package.name).write_bytes(body)
        return json.dumps({"correlationId": cid, "softwareModules": [{
            "softwareModule": {"name": "ticker", "version": "2.0"},
            "artifacts": [{"filename": package.name, "size": len(body),
                           "download": {"HTTP": {"url": f"http://127.0.0.1:{self.nginx.port}/{package.name}"}},
                           "checksums": {"SHA256": hashlib.sha256(body).hexdigest()}}]}]}).encode()

    def sequence(self, version: str) -> list[tuple[str, str]]:
        """:data:`SELF_UPDATE` for the package of ``version``."""
        return [(status, message.format(v=version)) for status, message in SELF_UPDATE]

    @inlineCallbacks
    def programs(self) -> Any:
        """The admin API's programs: name -> (version, status, pid)."""
        code, answer = yield self.api("GET", "/apps")
        self.assertEqual(code, 200, answer)
        return {p["name"]: (p["version"], p["status"], p["pid"]) for p in answer["apps"]}

    @inlineCallbacks
    def install_ticker(self) -> Any:
        """Install the hosted app ``ticker`` 1.0 through the admin API; fire once it runs."""
        ticker = gwe_package(self.work, "ticker", "1.0", TICKER, SUPERVISOR.format(name="ticker"))
        code, answer = yield self.api("POST", "/apps/install?filename=ticker.v1.0.tar.gz", ticker.read_bytes())
        self.assertEqual(code, 200, answer)

    @inlineCallbacks
    def test_nothing_is_lost_across_a_busy_self_update(self) -> None:
        """A publisher sends QoS 1 all along, before, during and after the restart; an app
        upgrade (an update operation) comes while the package installs and is cut short by the
        restart. Afterwards: every acknowledged message is at the cloud and in the offline
        persistent session's queue, the retained message and the twin's property are there, the
        app runs its new version, and both operations' statuses reached the cloud as documented."""
        gateway = yield self.start_gateway()
        yield self.install_ticker()
        offline = self.client(client_id="offline", clean_session=False)
        yield offline.connect(self.port)
        yield offline.subscribe("telemetry/#", 1)
        offline.stop()
        yield offline.disconnected()
        local = yield self.local_client(client_id="publisher")
        yield local.publish("telemetry/state/door", b"open", 1, retain=True)
        yield local.publish("e", json.dumps({"topic": "default/gateway/things/twin/commands/modify",
                                             "path": "/features/meter/properties/kwh", "value": 12.5}).encode(), 1)
        acked: set[bytes] = set()
        pending: list[Deferred[Any]] = []
        publishing = [True]

        @inlineCallbacks
        def publish() -> Any:
            sent = 0
            while publishing[0]:
                if local.client.is_connected():
                    payload = str(sent).encode()
                    sent += 1
                    try:
                        ack = local.publish("telemetry/load", payload, 1)
                    except RuntimeError:  # the connection closed meanwhile: not acknowledged
                        ack = None
                    if ack is not None:
                        pending.append(ack.addCallbacks(lambda _, p=payload: acked.add(p), lambda _: None))
                yield deferLater(reactor, 0.01, lambda: None)

        publisher = publish()
        yield local.publish(f"{UPDATE_TOPIC}/install", self.deb_request("self-1"), 1)
        yield self.poll("the installer to start", self.started.exists)
        ticker2 = gwe_package(self.work, "ticker", "2.0", TICKER, SUPERVISOR.format(name="ticker"))
        yield local.publish(f"{UPDATE_TOPIC}/install", self.app_request("app-1", ticker2), 1)
        yield self.poll("the app's install", lambda: ("INSTALLING", "ticker 2.0") in self.local_statuses(local))
        gateway = yield self.restart(gateway)
        self.release.touch()
        yield self.cloud_final("self-1")
        yield self.cloud_final("app-1")
        self.assertEqual(self.statuses("self-1"), self.sequence("9.9"))
        self.assertEqual(self.statuses("app-1"), [
            ("STARTED", "accepted"), ("DOWNLOADING", ""), ("DOWNLOADED", "all artifacts verified"),
            ("INSTALLING", "ticker 2.0"), ("INSTALLING", "ticker 2.0 resumed after restart"),
            ("INSTALLED", "app 'ticker' 2.0 installed (again, after a restart)"), ("FINISHED_SUCCESS", "done")])
        yield deferLater(reactor, 0.5, lambda: None)  # (some messages after the update too)
        publishing[0] = False
        yield publisher
        for d in list(pending):
            if not d.called:
                yield d
        self.assertGreater(len(acked), 100, "too few messages acknowledged to prove anything")
        while not acked <= set(self.cloud_payloads):
            try:
                self.take((yield self.upstream.next_message(10)))
            except TimeoutError:
                break
        self.assertEqual(acked - set(self.cloud_payloads), set(), "acknowledged, never at the cloud")
        back = self.client(client_id="offline", clean_session=False)
        yield back.connect(self.port)
        queued: set[bytes] = set()
        while not acked <= queued:
            try:
                message = yield back.next_message(10)
            except TimeoutError:
                break
            if message.topic == "telemetry/load":
                queued.add(message.payload)
        self.assertEqual(acked - queued, set(), "acknowledged, never in the persistent session's queue")
        late = self.client()
        yield late.connect(self.port)
        yield late.subscribe("telemetry/state/#", 1)
        retained = yield late.next_message(10)
        self.assertEqual((retained.payload, retained.retain), (b"open", True))
        yield late.subscribe("command///req/#", 1)
        yield late.publish("e", json.dumps({"topic": "default/gateway/things/twin/commands/retrieve",
                                            "path": "/features/meter/properties/kwh"}).encode(), 1)
        answer = yield late.next_matching(lambda m: m.topic.endswith("retrieve-response"), 10)
        self.assertEqual((json.loads(answer.payload)["status"], json.loads(answer.payload)["value"]), (200, 12.5))
        programs = yield self.programs()
        self.assertEqual(programs["ticker"][:2], ("2.0", "RUNNING"))

    @inlineCallbacks
    def local_client(self, **kwargs: Any) -> Any:
        """A client of the gateway's broker that reconnects by itself, subscribed to the update
        statuses."""
        client = self.client(reconnect=(0.05, 0.2), **kwargs)
        client.client.max_queued_messages_set(0)
        yield client.connect(self.port)
        yield client.subscribe(f"{UPDATE_TOPIC}/lastOperation", 1)
        return client

    def local_statuses(self, client: TestClient) -> list[tuple[str, str]]:
        """The update statuses ``client`` (of :meth:`local_client`) received so far."""
        while client.messages.pending:
            message = client.messages.pending.pop(0)
            if message.topic == f"{UPDATE_TOPIC}/lastOperation":
                self.local_seen.append(tuple(json.loads(message.payload)[k] for k in ("status", "message")))
        return self.local_seen

    @inlineCallbacks
    def test_an_admin_app_install_the_restart_cuts_short_is_answered(self) -> None:
        """An app installed through the admin API while the package installs, in its health
        window when the package's restart comes: answered 409 saying why, nothing installed,
        and the self-update ends as documented."""
        gateway = yield self.start_gateway()
        local = yield self.local_client()
        yield local.publish(f"{UPDATE_TOPIC}/install", self.deb_request("self-1"), 1)
        yield self.poll("the installer to start", self.started.exists)
        slow = gwe_package(self.work, "slow", "1.0", TICKER, SUPERVISOR.format(name="slow"))
        answers: list[Any] = []
        self.api("POST", "/apps/install?filename=slow.v1.0.tar.gz", slow.read_bytes()).addBoth(answers.append)
        programs: dict[str, Any] = {}
        while "slow" not in programs:  # (in its health window: startsecs 1, then apps.health_window)
            yield deferLater(reactor, 0.1, lambda: None)
            programs = yield self.programs()
        gateway = yield self.restart(gateway)
        self.release.touch()
        yield self.poll("the answer", lambda: bool(answers), 10)
        code, answer = answers[0]
        self.assertEqual(code, 409, answer)
        self.assertEqual((answer["result"]["outcome"], answer["error"]),
                         ("rolled-back", "the apps service stopped during the health window (the gateway stops, "
                                         "or restarts for a configuration change)"))
        yield self.cloud_final("self-1")
        self.assertEqual(self.statuses("self-1"), self.sequence("9.9"))
        programs = yield self.programs()
        self.assertEqual(programs, {})

    @inlineCallbacks
    def test_a_failing_installer_leaves_apps_and_data_alone(self) -> None:
        """The installer (dpkg) fails without restarting anything: FINISHED_ERROR with its exit
        status and output, the app runs on in the same process, messages flow; a later update
        installs."""
        gateway = yield self.start_gateway()
        yield self.install_ticker()
        before = yield self.programs()
        local = yield self.local_client()
        self.code.write_text("1")
        yield local.publish(f"{UPDATE_TOPIC}/install", self.deb_request("self-1"), 1)
        yield self.poll("the installer to start", self.started.exists)
        self.release.touch()
        final = yield self.cloud_final("self-1")
        self.assertEqual((final["status"], final["message"]),
                         ("FINISHED_ERROR", "gateway_9.9_all.deb: installer exited with 1: dpkg: refused"))
        after = yield self.programs()
        self.assertEqual(after, before)
        self.assertEqual(before["ticker"][1], "RUNNING")
        yield local.publish("telemetry/load", b"after", 1)
        while b"after" not in self.cloud_payloads:
            self.take((yield self.upstream.next_message(10)))
        self.code.write_text("0")
        self.release.unlink()
        yield local.publish(f"{UPDATE_TOPIC}/install", self.deb_request("self-2", "9.10"), 1)
        yield self.poll("the second installer", lambda: len(self.started.read_text().splitlines()) == 2)
        gateway = yield self.restart(gateway)
        self.release.touch()
        yield self.cloud_final("self-2")
        self.assertEqual(self.statuses("self-2"), self.sequence("9.10"))

    @inlineCallbacks
    def test_a_second_self_update_waits_for_the_first(self) -> None:
        """A second gateway package asked for while the first installs is installed after it,
        also across the restart the first one makes (both resume side by side)."""
        gateway = yield self.start_gateway()
        local = yield self.local_client()
        yield local.publish(f"{UPDATE_TOPIC}/install", self.deb_request("self-1"), 1)
        yield self.poll("the installer to start", self.started.exists)
        yield local.publish(f"{UPDATE_TOPIC}/install", self.deb_request("self-2", "9.10"), 1)
        yield self.poll("the second's INSTALLING", lambda: ("INSTALLING", "gateway 9.10") in self.local_statuses(local))
        gateway = yield self.restart(gateway)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual([Path(line).name for line in self.started.read_text().splitlines()], ["gateway_9.9_all.deb"])
        self.release.touch()
        yield self.cloud_final("self-1")
        self.release.unlink()
        yield self.poll("the second installer", lambda: len(self.started.read_text().splitlines()) == 2)
        gateway = yield self.restart(gateway)
        self.release.touch()
        yield self.cloud_final("self-2")
        self.assertEqual(self.statuses("self-1"), self.sequence("9.9"))
        # (waiting at INSTALLING through the first restart, it says so after each)
        second = self.sequence("9.10")
        self.assertEqual(self.statuses("self-2"), second[:5] + second[4:])
        self.assertEqual([Path(line).name for line in self.started.read_text().splitlines()],
                         ["gateway_9.9_all.deb", "gateway_9.10_all.deb"])
