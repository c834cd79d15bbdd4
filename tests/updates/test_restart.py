"""SIGKILL the real gateway (``twistd gateway``) mid-download and mid-install; started again on
the same state directory, it resumes the operation and reports how it ended."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from gateway.atomic import read_json
from gateway.updates.commands import UPDATE_TOPIC
from tests.apps.packages import gwe_package
from tests.apps.test_gateway_kill import sleepers
from tests.gatewayprocess import GatewayProcess, spawn_gateway
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.tmpfs import mount_tmpfs
from tests.updates.realservers import Nginx, nginx_available

SIZE = 12 * 2**20
CID = "op-restart"
FINAL = ("FINISHED_SUCCESS", "FINISHED_ERROR", "FINISHED_CANCELED")
#: A shell loop standing for a long install step: it records that it runs, then waits for the
#: test's release file (at most 30 s, so a failed test never leaves it behind for long).
WAIT_FOR_RELEASE = ("echo run >> {started}; i=0; "
                    "while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
                    "test -e {release} && echo installed")


class GatewayRestartTests(TestCase):
    """A whole gateway process is killed with SIGKILL and started again on its state directory."""

    timeout = 60

    def setUp(self) -> None:
        if not nginx_available():
            raise SkipTest("nginx is not installed (make test-deps)")
        self.work = Path(self.mktemp()).resolve()
        self.www = self.work / "www"
        self.www.mkdir(parents=True)
        self.state = self.work / "state"
        self.config = self.work / "gateway.yaml"
        self.broker_port = free_port()
        # 2 MiB/s per connection: a 12 MiB download takes 6 s, long enough to kill it midway.
        self.nginx = Nginx(self.www, self.work / "nginx", rate="2m", access_log=True)
        self.addCleanup(self.nginx.stop)
        self.started = self.work / "install-started"
        self.release = self.work / "install-release"
        self.addCleanup(self.release.touch)  # a detached installer still waiting ends at once
        self.seen: list[dict[str, Any]] = []

    def write_config(self, updates: str = "") -> None:
        """Write the gateway's configuration (resume points every MiB; extra ``updates`` keys)."""
        self.config.write_text(
            f"gateway:\n  state_dir: {self.state}\n"
            "telemetry:\n  metrics_endpoint: ''\n"
            f"ingest:\n  endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{self.broker_port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "updates:\n  download:\n    allow_http: true\n    checkpoint_bytes: 1048576\n    write_batch: 262144\n"
            + updates)

    def serve(self, filename: str, body: bytes, target: str) -> bytes:
        """Put ``body`` on nginx; return a Kanto request for it as one module of ``target``."""
        (self.www / filename).write_bytes(body)
        return json.dumps({"correlationId": CID, "softwareModules": [{
            "softwareModule": {"name": "thing", "version": "7"},
            "artifacts": [{"filename": filename, "size": len(body),
                           "download": {"HTTP": {"url": f"http://127.0.0.1:{self.nginx.port}/{filename}"}},
                           "checksums": {"SHA256": hashlib.sha256(body).hexdigest()}}],
            "metadata": {"target": target}}]}).encode()

    @inlineCallbacks
    def start_gateway(self) -> Any:
        """Run ``twistd gateway``; fire with it and a client subscribed to the status topic."""
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(self.config))
        log = self.work / f"gateway-{len(list(self.work.glob('gateway-*.log')))}.log"
        log.touch()
        self.addCleanup(lambda: log.write_bytes(gateway.output))  # kept in _trial_temp for a failure's story
        yield gateway.ready.addTimeout(30, reactor)
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(self.broker_port)
        yield client.subscribe(f"{UPDATE_TOPIC}/lastOperation", 1)
        return gateway, client

    @inlineCallbacks
    def kill(self, gateway: GatewayProcess, client: TestClient) -> Any:
        """SIGKILL the gateway and wait for its end."""
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        client.stop(drop=True)

    @inlineCallbacks
    def status(self, client: TestClient, what: str, matches: Callable[[dict[str, Any]], bool]) -> Any:
        """Fire with the first status received that ``matches``."""
        def seen(message: Any) -> bool:
            status = json.loads(message.payload)
            self.seen.append(status)
            return bool(status.get("correlationId") == CID and matches(status))

        try:
            message = yield client.next_matching(seen, 30)
        except TimeoutError:
            self.fail(f"no status {what} in 30 s; received {[(s['status'], s['message']) for s in self.seen]}")
        return json.loads(message.payload)

    @inlineCallbacks
    def poll(self, what: str, condition: Callable[[], bool]) -> Any:
        """Fire once ``condition()`` holds (checked every 50 ms, for at most 30 s)."""
        deadline = reactor.seconds() + 30
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}")
            yield deferLater(reactor, 0.05, lambda: None)

    def durable(self) -> int:
        """The resume point recorded beside the artifact's ``.part`` file (0 when none)."""
        metas = list((self.state / "updates" / "artifacts").glob("*/m0/*.part.json"))
        meta = read_json(metas[0]) if metas else None
        return int(meta["durable"]) if isinstance(meta, dict) else 0

    def runs(self) -> int:
        """How many times the install step started."""
        return len(self.started.read_text().splitlines()) if self.started.exists() else 0

    @inlineCallbacks
    def kill_mid_install(self, filename: str, body: bytes, target: str) -> Any:
        """Install ``body`` as a module of ``target``, SIGKILL the gateway once the install step
        runs, start it again; fire with it and its client."""
        request = self.serve(filename, body, target)
        gateway, client = yield self.start_gateway()
        yield client.publish(f"{UPDATE_TOPIC}/install", request, 1)
        yield self.status(client, "INSTALLING", lambda s: s["status"] == "INSTALLING")
        yield self.poll("the install step to start", lambda: self.runs() == 1)
        yield self.kill(gateway, client)
        restarted = yield self.start_gateway()
        return restarted

    @inlineCallbacks
    def test_sigkill_mid_download_resumes_with_a_range_request(self) -> None:
        """Killed with 3 MiB of 12 durable, the restarted gateway asks nginx for the rest only,
        finishes the download and verifies it: the bytes served twice are the few past the
        resume point."""
        data = os.urandom(SIZE)
        request = self.serve("firmware.bin", data, "app")
        self.write_config()
        gateway, client = yield self.start_gateway()
        yield client.publish(f"{UPDATE_TOPIC}/download", request, 1)
        yield self.status(client, "DOWNLOADING with progress",
                          lambda s: s["status"] == "DOWNLOADING" and s.get("progress", 0) > 0)
        yield self.poll("a resume point past 3 MiB", lambda: self.durable() >= 3 * 2**20)
        durable = self.durable()
        self.assertLess(durable, SIZE, "the download finished before the kill")
        yield self.kill(gateway, client)

        gateway, client = yield self.start_gateway()
        final = yield self.status(client, "final", lambda s: s["status"] in FINAL)
        self.assertEqual((final["status"], final["message"]), ("FINISHED_SUCCESS", "done"))
        [artifact] = (self.state / "updates" / "artifacts").rglob("firmware.bin")
        self.assertEqual(hashlib.sha256(artifact.read_bytes()).hexdigest(), hashlib.sha256(data).hexdigest())
        # (the log comes through the gateway's stdout pipe, the status through the broker: no order)
        yield self.poll("the resume in the log", lambda: b"resuming http://" in gateway.output)
        output = gateway.output.decode()
        self.assertIn(f"resuming operation {CID} at DOWNLOADING", output)
        offset = int(re.search(r"resuming http://\S+/firmware.bin at (\d+) bytes", output).group(1))  # type: ignore[union-attr]
        self.assertGreaterEqual(offset, durable)
        first, *resumed = self.nginx.requests()
        self.assertEqual(first[:2], (200, ""))
        self.assertEqual([(code, asked) for code, asked, _ in resumed], [(206, f"bytes={offset}-")])
        self.assertEqual(resumed[0][2], SIZE - offset)
        fetched_twice = first[2] - offset
        self.assertLessEqual(fetched_twice, 2 * 2**20, f"first run served {first[2]}, resumed at {offset}")

    @inlineCallbacks
    def test_a_download_that_fills_the_disk_ends_frees_it_and_is_not_resumed(self) -> None:
        """The artifacts' filesystem (a 2 MiB tmpfs) fills up mid-download: the operation ends
        FINISHED_ERROR saying so, the part's space is free again at once, the end is recorded,
        so a restart resumes nothing, and the same request for a file that fits succeeds
        (docs/updates.md, Statuses). The part stayed open, holding its space until the gateway
        stopped, and its record stayed DOWNLOADING: every start downloaded it again."""
        updates = self.state / "updates"
        mount_tmpfs(self, updates, "2m")
        self.write_config()
        gateway, client = yield self.start_gateway()
        yield client.publish(f"{UPDATE_TOPIC}/download", self.serve("big.bin", os.urandom(3 * 2**20), "app"), 1)
        final = yield self.status(client, "final", lambda s: s["status"] in FINAL)
        self.assertEqual(final["status"], "FINISHED_ERROR")
        self.assertIn("No space left on device", final["message"])

        def free() -> int:
            stat = os.statvfs(updates)
            return stat.f_bavail * stat.f_frsize

        def ended_on_disk() -> bool:
            records = [read_json(path) for path in (updates / "operations").glob("*.json")]
            return all(isinstance(r, dict) and r.get("status") == "FINISHED_ERROR" for r in records)

        yield self.poll("the part's space to be free", lambda: free() > 3 * 2**19)
        yield self.poll("the operation's end on disk (or no record)", ended_on_disk)
        yield self.kill(gateway, client)
        gateway, client = yield self.start_gateway()
        yield client.publish(f"{UPDATE_TOPIC}/download", self.serve("small.bin", os.urandom(2**19), "app"), 1)
        # (the first one's end, retained, may come first)
        yield self.status(client, "STARTED again", lambda s: s["status"] == "STARTED")
        final = yield self.status(client, "final", lambda s: s["status"] in FINAL)
        self.assertEqual((final["status"], final["message"]), ("FINISHED_SUCCESS", "done"))
        self.assertNotIn(f"resuming operation {CID}", gateway.output.decode())
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_sigkill_mid_gateway_install_reports_the_detached_installers_result(self) -> None:
        """Killed while the detached .deb installer runs, the restarted gateway says it is
        INSTALLING again, waits for that same installer (not a second one) and reports its result."""
        command = WAIT_FOR_RELEASE.format(started=self.started, release=self.release) + " $0"
        self.write_config(f"  deb_installer: helper\n  use_systemd_run: false\n  deb_install_command: ['/bin/sh', '-c', {json.dumps(command)}]\n")
        gateway, client = yield self.kill_mid_install("gateway_7_all.deb", b"not really a package", "gateway")
        # (the installer waits for the release file: this status cannot be overtaken by the next)
        resumed = yield self.status(client, "INSTALLING after the restart",
                                    lambda s: s["status"] == "INSTALLING" and "restart" in s["message"])
        self.assertEqual(resumed["message"], "thing 7 resumed after restart")
        self.release.touch()
        installed = yield self.status(client, "INSTALLED", lambda s: s["status"] in ("INSTALLED", *FINAL))
        self.assertEqual((installed["status"], installed["message"]), ("INSTALLED", "gateway package 7 installed"))
        final = yield self.status(client, "final", lambda s: s["status"] in FINAL)
        self.assertEqual(final["status"], "FINISHED_SUCCESS")
        self.assertEqual(self.runs(), 1)
        self.assertIn(f"resuming operation {CID} at INSTALLING", gateway.output.decode())

    @inlineCallbacks
    def test_sigkill_mid_app_install_runs_it_again(self) -> None:
        """Killed while a hosted app's ``install.sh`` runs, the restarted gateway says it is
        INSTALLING again, runs the install again (the version switch is atomic) and reports
        it INSTALLED and FINISHED_SUCCESS, the new version current (docs/updates.md, After a
        restart or power cut)."""
        install = WAIT_FOR_RELEASE.format(started=self.started, release=self.release) + "\n"
        package = gwe_package(self.work, "thing", "7", "", install_sh=install)
        self.write_config()
        gateway, client = yield self.kill_mid_install(package.name, package.read_bytes(), "app")
        resumed = yield self.status(client, "INSTALLING after the restart",
                                    lambda s: s["status"] == "INSTALLING" and "restart" in s["message"])
        self.assertEqual(resumed["message"], "thing 7 resumed after restart")
        yield self.poll("the install step to run again", lambda: self.runs() == 2)
        self.release.touch()
        installed = yield self.status(client, "INSTALLED", lambda s: s["status"] in ("INSTALLED", *FINAL))
        self.assertEqual(installed["status"], "INSTALLED", installed["message"])
        final = yield self.status(client, "final", lambda s: s["status"] in FINAL)
        self.assertEqual(final["status"], "FINISHED_SUCCESS")
        self.assertEqual(os.readlink(self.state / "apps" / "thing" / "current"), "7")
        self.assertIn(f"resuming operation {CID} at INSTALLING", gateway.output.decode())

    @inlineCallbacks
    def test_sigkill_mid_script_reports_it_was_not_run_twice(self) -> None:
        """Killed while an install script runs, the restarted gateway says it is INSTALLING
        again, does not run the script twice and ends the operation in FINISHED_ERROR saying why."""
        script = WAIT_FOR_RELEASE.format(started=self.started, release=self.release) + "\n"
        self.write_config()
        gateway, client = yield self.kill_mid_install("install.sh", script.encode(), "script")
        final = yield self.status(client, "final", lambda s: s["status"] in FINAL)
        self.assertEqual(final["status"], "FINISHED_ERROR")
        self.assertIn("restarted while its script ran, so its outcome is unknown; not run twice", final["message"])
        self.assertEqual(self.runs(), 1)
        # INSTALLING then FINISHED_ERROR may both be out before the client subscribes: read the log.
        # Its line comes through the gateway's stdout pipe, the final status through the broker:
        # the status can be handled first (one store write after the line), so wait for the line.
        line = f"operation {CID}: INSTALLING thing 7 resumed after restart"
        yield self.poll("the resumed INSTALLING in the log", lambda: line in gateway.output.decode())

    @inlineCallbacks
    def test_sigkill_mid_script_leaves_nothing_of_it(self) -> None:
        """Killed while an install script runs, the gateway takes the script with it (parent-death
        signal), and what the script started, left in its process group, is stopped by the next
        start as a program's leftovers are (docs/apps.md, When the gateway dies). It ran on for ever."""
        script, child = 5_000_000 + self.broker_port, 6_000_000 + self.broker_port
        self.addCleanup(kill_sleepers, script, child)
        body = f"echo run >> {self.started}\nsleep {child} &\nexec sleep {script}\n"
        self.write_config()
        request = self.serve("install.sh", body.encode(), "script")
        gateway, client = yield self.start_gateway()
        yield client.publish(f"{UPDATE_TOPIC}/install", request, 1)
        yield self.poll("the script and its child to run",
                        lambda: len(sleepers(script)) == 1 and len(sleepers(child)) == 1)
        [old_child] = sleepers(child)
        yield self.kill(gateway, client)
        yield self.poll("the script to die with the gateway", lambda: sleepers(script) == [])
        self.assertEqual(sleepers(child), [old_child], "(only the script itself dies with the gateway)")

        gateway, client = yield self.start_gateway()
        yield self.poll("the script's child to be stopped", lambda: old_child not in sleepers(child))
        self.assertIn(f"update {CID} install.sh still runs from before the gateway's last stop".encode(),
                      gateway.output)
        final = yield self.status(client, "final", lambda s: s["status"] in FINAL)
        self.assertEqual(final["status"], "FINISHED_ERROR")
        self.assertEqual(self.runs(), 1)


def kill_sleepers(*numbers: int) -> None:
    """Kill every ``sleep <n>`` left running, for each of ``numbers`` (a failed test's leftovers)."""
    for pid in [pid for number in numbers for pid in sleepers(number)]:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
