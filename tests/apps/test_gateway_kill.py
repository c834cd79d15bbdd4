"""A real gateway (``twistd gateway``) killed with SIGKILL: its hosted program dies with it, what
the program started is stopped at the next start, and exactly one copy runs afterwards."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.apps.packages import build_tarball, gwe_package
from tests.apps.realtime import wait_until
from tests.gatewayprocess import GatewayProcess, spawn_gateway
from tests.ports import free_port


def sleepers(seconds: int) -> list[int]:
    """The live (not zombie) ``sleep <seconds>`` processes."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["cmdline"] == ["sleep", str(seconds)] and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


class GatewayKillTests(TestCase):
    """SIGKILL of the whole gateway, with a program that has a child of its own."""

    timeout = 90

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir(parents=True)
        port = free_port()
        # Numbers no other test uses, so the processes can be told apart from everything else.
        self.main, self.grandchild = 7_000_000 + port, 8_000_000 + port
        self.config = self.work / "gateway.yaml"
        self.config.write_text(
            f"gateway:\n  state_dir: {self.work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "apps:\n  programs:\n    worker:\n"
            f"      command: sh -c 'sleep {self.grandchild} & exec sleep {self.main}'\n"
            "      startsecs: 0\n"
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
        self.addCleanup(self.kill_all)

    def kill_all(self, *more: int) -> None:
        """Whatever a failed test left running goes (also ``sleep <n>`` for each of ``more``)."""
        for pid in [pid for seconds in (self.main, self.grandchild, *more) for pid in sleepers(seconds)]:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass

    @inlineCallbacks
    def start(self) -> Any:
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(self.config))
        log = self.work / f"gateway-{len(list(self.work.glob('gateway-*.log')))}.log"
        self.addCleanup(lambda: log.write_bytes(gateway.output))  # kept in _trial_temp for a failure's story
        yield gateway.ready.addTimeout(30, reactor)
        yield wait_until(lambda: len(sleepers(self.main)) == 1 and len(sleepers(self.grandchild)) == 1, 10)
        return gateway

    @inlineCallbacks
    def test_sigkill_leaves_nothing_running_twice(self) -> None:
        """After a SIGKILL of the gateway its program dies at once (parent-death signal); the
        program's own child, left in its process group, is stopped by the next start before the
        program starts again; exactly one copy of each runs then, and a clean stop ends them.
        The first start knows no previous run; the next says in one line that the killed run
        did not stop cleanly (docs/install.md, after a power cut or a kill), and the SIGTERM is
        recorded as a clean stop."""
        gateway: GatewayProcess = yield self.start()
        self.assertNotIn(b"previous run", gateway.output)
        killed = gateway.transport.pid
        [old_main], [old_grandchild] = sleepers(self.main), sleepers(self.grandchild)
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        yield wait_until(lambda: sleepers(self.main) == [], 10)
        self.assertEqual(sleepers(self.grandchild), [old_grandchild], "(only the direct child dies with the gateway)")

        gateway = yield self.start()
        self.assertEqual(len(sleepers(self.main)), 1)
        self.assertEqual(len(sleepers(self.grandchild)), 1)
        self.assertNotIn(old_grandchild, sleepers(self.grandchild))
        self.assertNotIn(old_main, sleepers(self.main))
        self.assertIn(b"worker still runs from before the gateway's last stop", gateway.output)
        unclean = b"the previous run did not stop cleanly (pid %d, started " % killed
        yield wait_until(lambda: unclean in gateway.output, 5, what="the unclean stop's line")
        self.assertIn(b"the machine ran on: the process was killed (SIGKILL, the OOM killer) or crashed;", gateway.output)
        self.assertIn(b"this state directory has seen that once", gateway.output)

        pid = gateway.transport.pid
        gateway.transport.signalProcess("TERM")
        status = yield gateway.ended.addTimeout(30, reactor)
        self.assertEqual(status.signal, signal.SIGTERM, gateway.output.decode())
        record = json.loads((self.work / "state" / "run.json").read_text())
        self.assertEqual((record["pid"], record["unclean_stops"]), (pid, 1))
        self.assertIsNotNone(record["stopped_at"], "(a SIGTERM is a clean stop)")
        # (the grandchild gets SIGKILL as its group's last act; it dies when it is next scheduled)
        yield wait_until(lambda: sleepers(self.main) + sleepers(self.grandchild) == [], 5)

    @inlineCallbacks
    def test_sigkill_during_install_sh_leaves_nothing_of_it(self) -> None:
        """A gateway killed while a package's install.sh runs: install.sh dies with it
        (parent-death signal), and what it started, left in its process group, is stopped by
        the next start as a program's leftovers are. It ran on for ever."""
        gateway: GatewayProcess = yield self.start()
        port = int(self.config.read_text().split("endpoint: 'tcp:")[1].split(":")[0])
        script, child = 5_000_000 + port, 6_000_000 + port
        self.addCleanup(self.kill_all, script, child)
        package = gwe_package(self.work, "slowinstall", "1.0", "import time\ntime.sleep(3600)\n",
                              install_sh=f"sleep {child} &\nexec sleep {script}\n")
        incoming = self.work / "state" / "incoming"
        os.rename(package, incoming / package.name)
        yield wait_until(lambda: len(sleepers(script)) == 1 and len(sleepers(child)) == 1, 20,
                         what="install.sh and its child running")
        [old_child] = sleepers(child)
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        yield wait_until(lambda: sleepers(script) == [], 10, what="install.sh killed with the gateway")
        self.assertEqual(sleepers(child), [old_child], "(only install.sh itself dies with the gateway)")

        gateway = yield self.start()
        yield wait_until(lambda: old_child not in sleepers(child), 10, what="install.sh's child stopped")
        self.assertIn(b"slowinstall 1.0 install.sh still runs from before the gateway's last stop", gateway.output)

    @inlineCallbacks
    def gatewayctl(self, *args: str) -> Any:
        """Run ``gatewayctl --json ARGS`` on this gateway's admin socket; its parsed output."""
        ctl = str(Path(sys.executable).parent / "gatewayctl")
        socket = str(self.work / "state" / "run" / "admin.sock")
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, [ctl, "--socket", socket, "--json", *args], env=os.environ.copy())
        self.assertEqual(code, 0, err)
        return json.loads(out)

    @inlineCallbacks
    def test_an_operators_stop_survives_sigkill(self) -> None:
        """An operator's stop is a wish written to apps/desired.json before the program stops
        (docs/apps.md, Supervision): after a SIGKILL of the gateway the program stays
        STOPPED at the next start, whatever its autostart; a start then runs one copy."""
        gateway: GatewayProcess = yield self.start()
        yield self.gatewayctl("apps", "stop", "worker")
        self.assertEqual(sleepers(self.main), [])
        wishes = json.loads((self.work / "state" / "apps" / "desired.json").read_text())
        self.assertEqual(wishes["programs"]["worker"], "stopped")
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        restarted = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(self.config))
        yield restarted.ready.addTimeout(30, reactor)
        listed = yield self.gatewayctl("apps")
        self.assertEqual([(a["name"], a["status"]) for a in listed["apps"]], [("worker", "STOPPED")])
        self.assertEqual(sleepers(self.main), [])
        yield self.gatewayctl("apps", "start", "worker")
        yield wait_until(lambda: len(sleepers(self.main)) == 1, 10, what="one copy of worker")

    @inlineCallbacks
    def test_sigkill_in_the_health_window_rolls_back_at_the_next_start(self) -> None:
        """A gateway killed while a new version is in its health window (docs/apps.md, When the
        gateway dies): the next start undoes the install before any program runs, as a stop in
        the window does: ``current`` names the old version again, whose program runs, and the
        new version's files are gone. The unproven version ran on for ever, unchecked."""
        gateway: GatewayProcess = yield self.start()
        old, new = self.main + 1, self.main + 2
        self.addCleanup(self.kill_all, old, new)
        packages = self.work / "packages"
        packages.mkdir()

        def package(version: str, seconds: int, window: int) -> Path:
            manifest = (f"name: sensor\nversion: '{version}'\ncommand: [sleep, '{seconds}']\n"
                        f"startsecs: 0\nhealth: {{window: {window}}}\n")
            return build_tarball(packages / f"sensor-{version}.tar.gz", {"app.yaml": manifest})

        result = yield self.gatewayctl("apps", "install", str(package("1", old, 0)))
        self.assertEqual(result["outcome"], "installed", result)
        ctl = str(Path(sys.executable).parent / "gatewayctl")
        socket = str(self.work / "state" / "run" / "admin.sock")
        getProcessOutputAndValue(sys.executable, [ctl, "--socket", socket, "apps", "install",
                                                  str(package("2", new, 600))], env=os.environ.copy())
        apps = self.work / "state" / "apps"
        yield wait_until(lambda: len(sleepers(new)) == 1, 20, what="version 2 in its health window")
        self.assertEqual(os.readlink(apps / "sensor" / "current"), "2")
        gateway.transport.signalProcess("KILL")
        yield gateway.ended

        gateway = yield self.start()
        self.assertEqual(os.readlink(apps / "sensor" / "current"), "1")
        self.assertFalse((apps / "sensor" / "2").exists())
        yield wait_until(lambda: len(sleepers(old)) == 1, 10, what="version 1 running again")
        self.assertEqual(sleepers(new), [])
        listed = yield self.gatewayctl("apps")
        self.assertIn(("sensor", "1", "RUNNING"),
                      [(a["name"], a["version"], a["status"]) for a in listed["apps"]])
        self.assertIn(b"sensor 2: its install was cut short by the gateway's end", gateway.output)
