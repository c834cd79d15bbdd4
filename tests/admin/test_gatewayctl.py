"""``gatewayctl`` against a real ``twistd gateway`` process: every subcommand, ``--json``,
the socket's mode, and exit 3 once the gateway is stopped."""

from __future__ import annotations

import argparse
import fcntl
import getpass
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.admin.cli import build_parser, cmd_config, cmd_status, main
from gateway.admin.client import AdminClient, ApiFailure, ConnectionCut, NotRunning
from gateway.admin import paths
from gateway.admin.paths import ENVIRONMENT, PACKAGED_SOCKET, socket_of_state_dir, state_dir_of
from gateway.admin.tables import fleet_rows
from gateway.config import DEFAULT_CONFIG, SECTIONS
from gateway.fleet.snapshot import FleetSnapshot
from gateway.readside import to_jsonable
from tests.apps.packages import gwe_package
from tests.apps.realtime import wait_until
from tests.fleet.samples import FAILING_FLEET
from tests.gatewayprocess import spawn_gateway
from tests.ports import closed_port, free_port

GATEWAYCTL = str(Path(sys.executable).parent / "gatewayctl")
#: Tests bind no fixed port: /metrics off where the telemetry service is part of the gateway.
QUIET = "telemetry:\n  metrics_endpoint: ''\n" if "telemetry" in SECTIONS else ""

TICKER = """\
import sys, time
n = 0
while True:
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.2)
"""
SUPERVISOR_CONF = "[program:hello]\ncommand = python3 run.py\nstartsecs = 1\n"


def write_config(work: Path, broker_port: int, dead_port: int) -> Path:
    """A gateway config: state in ``work/state``, one link to a port nothing listens on."""
    path = work / "gateway.yaml"
    path.write_text(
        f"gateway:\n  state_dir: '{work / 'state'}'\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker_port}:interface=127.0.0.1'\n"
        "apps:\n  health_window: 0.5\n"
        f"ingest:\n  endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
        f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={dead_port}'\n{QUIET}")
    return path


class Follower(protocol.ProcessProtocol):
    """``gatewayctl apps logs -f``: fires ``enough`` once ``lines`` lines were printed."""

    def __init__(self, lines: int) -> None:
        self.output = b""
        self.lines = lines
        self.enough: Deferred[None] = Deferred()
        self.ended: Deferred[Any] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.output.count(b"\n") >= self.lines and not self.enough.called:
            self.enough.callback(None)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value)


class HeldFile(Resource):
    """Serves ``data`` to every GET, but only once :meth:`release` is called."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.data = b""
        self.waiting: list[Any] = []
        self.released = False

    def render_GET(self, request: Any) -> Any:
        if self.released:
            return self.data
        self.waiting.append(request)
        return NOT_DONE_YET

    def release(self) -> None:
        self.released = True
        for request in self.waiting:
            request.setHeader(b"content-length", str(len(self.data)).encode())
            request.write(self.data)
            request.finish()


class GatewayctlTests(TestCase):
    """Every gatewayctl subcommand, run as an operator runs it, against a running gateway."""

    timeout = 120

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir(parents=True)
        # Short enough for sun_path wherever trial's temp directory is.
        self.socket = Path(f"/tmp/gwctl-{os.getpid()}-{free_port()}.sock")
        for leftover in (self.socket, Path(f"{self.socket}.lock")):  # a killed gateway's
            self.addCleanup(leftover.unlink, True)
        self.env = {**os.environ, "GATEWAY_ADMIN_SOCKET": str(self.socket)}

    def ctl(self, *args: str, env: dict[str, str] | None = None) -> Deferred[tuple[bytes, bytes, int]]:
        """Run gatewayctl (through this interpreter) and collect (out, err, exit status)."""
        return getProcessOutputAndValue(sys.executable, [GATEWAYCTL, *args], env=env or self.env)

    @inlineCallbacks
    def ok(self, *args: str) -> Any:
        """Run gatewayctl; it must exit 0; return its stdout as text."""
        out, err, code = yield self.ctl(*args)
        self.assertEqual(code, 0, f"gatewayctl {' '.join(args)}: {out!r} {err!r}")
        return out.decode()

    @inlineCallbacks
    def start_gateway(self, extra: str = "") -> Any:
        config = write_config(self.work, free_port(), closed_port(self))
        with config.open("a") as f:
            f.write(f"admin:\n  socket: '{self.socket}'\n{extra}")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        return gateway, config

    @inlineCallbacks
    def test_every_subcommand(self) -> Any:
        """status, version, apps (install, list, logs, logs -f, stop, start, restart, uninstall),
        links, queue, ops, report, config, check-config: tables by default, JSON with --json."""
        gateway, config = yield self.start_gateway()
        mode = os.stat(self.socket)
        self.assertTrue(stat.S_ISSOCK(mode.st_mode))
        self.assertEqual((stat.S_IMODE(mode.st_mode), mode.st_gid), (0o660, os.getgid()))

        text = yield self.ok("status")
        self.assertIn("gateway 0.1.0, pid", text)
        self.assertRegex(text, r"admin\s+running")
        status = json.loads((yield self.ok("--json", "status")))
        self.assertIn({"name": "apps", "running": True, "error": ""}, status["services"])
        self.assertIn("gateway 0.1.0 (pid", (yield self.ok("version")))
        # --socket wins over the environment
        out = yield self.ok("--socket", str(self.socket), "--json", "version")
        self.assertEqual(json.loads(out)["pid"], status["pid"])

        package = gwe_package(self.work, "hello", "1.0", TICKER, SUPERVISOR_CONF)
        self.assertIn("hello 1.0 installed", (yield self.ok("apps", "install", str(package))))
        text = yield self.ok("apps")
        self.assertRegex(text, r"hello\s+hello\s+1\.0\s+RUNNING")
        apps = json.loads((yield self.ok("--json", "apps", "list")))
        self.assertEqual([(a["name"], a["status"]) for a in apps["apps"]], [("hello", "RUNNING")])

        # Installed means RUNNING for the health window, not that it printed yet: its first tick
        # comes after the launcher and python3 start, through a pipe and the log writer's thread.
        log = self.work / "state" / "logs" / "apps" / "hello.log"
        yield wait_until(lambda: log.exists() and b"\n" in log.read_bytes(), timeout=30)
        text = yield self.ok("apps", "logs", "hello", "-n", "1")
        self.assertRegex(text, r"^tick \d+\n$")
        follower = Follower(lines=4)
        transport = reactor.spawnProcess(follower, sys.executable,
                                         [sys.executable, GATEWAYCTL, "apps", "logs", "hello", "-n", "1", "-f"],
                                         env=self.env)
        yield follower.enough.addTimeout(30, reactor)  # one from the tail, then new ones as they come
        numbers = [int(line.split()[1]) for line in follower.output.decode().splitlines()[:4]]
        self.assertEqual(numbers, list(range(numbers[0], numbers[0] + 4)))
        transport.signalProcess("INT")
        yield follower.ended

        self.assertIn("STOPPED", (yield self.ok("apps", "stop", "hello")))
        self.assertIn("hello: start done", (yield self.ok("apps", "start", "hello")))
        restarted = json.loads((yield self.ok("--json", "apps", "restart", "hello")))
        self.assertEqual(restarted["action"], "restart")

        text = yield self.ok("links")
        self.assertRegex(text, r"cloud\s+(disconnected|stopped)")
        self.assertEqual(json.loads((yield self.ok("--json", "links")))["links"][0]["name"], "cloud")
        self.assertIn("link-cloud", (yield self.ok("queue")))
        streams = json.loads((yield self.ok("--json", "queue")))["streams"]
        self.assertEqual(sorted(s["name"] for s in streams), ["broker-state", "link-cloud"])
        self.assertEqual((yield self.ok("ops")).strip(), "(none)")
        self.assertEqual(json.loads((yield self.ok("--json", "ops"))), {"operations": []})
        self.assertEqual((yield self.ok("ops", "--follow")), "")

        # Reports need the telemetry service: a gateway built without it says so (503 -> exit 1).
        out, err, code = yield self.ctl("report", "device_info")
        if code:
            self.assertEqual((code, err), (1, b"gatewayctl: telemetry is not part of this gateway\n"))
        else:
            self.assertIn("device_id", json.loads(out))

        self.assertEqual((yield self.ok("config", "get", "gateway.device_id")), "gateway\n")
        out, err, code = yield self.ctl("config", "get", "gateway.colour")
        self.assertEqual(code, 1)
        self.assertIn(b"gateway.colour", err)
        self.assertEqual((yield self.ok("config", "check", "gateway.device_id=gw-2")), "configuration OK\n")
        out, err, code = yield self.ctl("config", "check", "gateway.device_id=gw-2", "gateway.colour=red")
        self.assertEqual(code, 1)
        self.assertIn(b"gateway.colour: unknown key", out)
        self.assertIn("applied; restarted:", (yield self.ok("config", "set", "gateway.device_id", "gw-2")))
        self.assertEqual((yield self.ok("config", "get", "gateway.device_id")), "gw-2\n")
        self.assertIn("hello", (yield self.ok("apps")), "the apps came back after the restart")
        # A change to wait for: the link never comes up, so it stays pending (600 s here).
        text = yield self.ok("config", "apply", "links.links.cloud.backoff_max=30", "--confirm-within", "600")
        self.assertIn("reverted unless a cloud link is up within 600 s", text, "none was up: any one confirms it")
        status = yield self.ok("status")
        self.assertIn("configuration: links.links.cloud.backoff_max (by admin) waits for confirmation: reverted in",
                      status)
        self.assertIn("unless a cloud link is up\n", status)
        self.assertEqual(json.loads((yield self.ok("--json", "status")))["config_pending"]["keys"],
                         ["links.links.cloud.backoff_max"])
        out, err, code = yield self.ctl("config", "set", "gateway.device_id", "gw-3")
        self.assertEqual(code, 1, "another change waits: 409")
        self.assertIn(b"waits", err)

        out, err, code = yield self.ctl("apps", "restart", "ghost")
        self.assertEqual((code, err), (1, b"gatewayctl: no app or program 'ghost'\n"))
        out, err, code = yield self.ctl("--json", "apps", "stop", "ghost")
        self.assertEqual((code, json.loads(out)), (1, {"error": "no app or program 'ghost'"}))

        self.assertIn("hello: uninstall done", (yield self.ok("apps", "uninstall", "hello")))
        self.assertEqual((yield self.ok("apps")).strip(), "(none)")

        self.assertIn("configuration OK", (yield self.ok("check-config", str(config))))
        bad = self.work / "bad.yaml"
        bad.write_text("admin:\n  tcp: 'tcp:8780'\n")
        out, err, code = yield self.ctl("check-config", str(bad))
        self.assertEqual(code, 1)
        self.assertIn(b"admin.tcp: must be a tcp: endpoint with interface=127.0.0.1", err)

        for args in (("apps", "start"), ("bogus",), ("config",), ("apps", "install")):
            out, err, code = yield self.ctl(*args)
            self.assertEqual(code, 2, args)

        gateway.transport.signalProcess("TERM")
        yield gateway.ended
        self.assertFalse(self.socket.exists(), "the socket is removed on stop")
        out, err, code = yield self.ctl("status")
        self.assertEqual(code, 3)
        self.assertIn(b"not running", err)
        out, err, code = yield self.ctl("version")
        self.assertEqual((code, out), (3, b"gatewayctl 0.1.0\ngateway not running\n"))

    @inlineCallbacks
    def test_update_through_the_api_and_ops_follow(self) -> Any:
        """POST /updates/install reaches the update service as the MQTT request does; `ops
        --follow` prints the statuses it sees (it looks every second) and returns once it is over."""
        held = HeldFile()
        web = reactor.listenTCP(0, Site(held), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        held.data = gwe_package(self.work, "sensor", "1.0", "import time\ntime.sleep(300)\n",
                                "[program:sensor]\ncommand=python3 run.py\nstartsecs=0\n").read_bytes()
        config = write_config(self.work, free_port(), closed_port(self))
        with config.open("a") as f:
            f.write(f"admin:\n  socket: '{self.socket}'\nupdates:\n  download:\n    allow_http: true\n")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        url = f"http://127.0.0.1:{web.getHost().port}/sensor.v1.0.tar.gz"
        request = {"correlationId": "op-1", "softwareModules": [{
            "softwareModule": {"name": "sensor", "version": "1.0"},
            "artifacts": [{"filename": "sensor.v1.0.tar.gz", "download": {"HTTP": {"url": url}},
                           "checksums": {"SHA256": hashlib.sha256(held.data).hexdigest()}}],
            "metadata": {"target": "app"}}]}
        client = AdminClient(str(self.socket))
        accepted = yield deferToThread(client.post, "/updates/install", request)
        self.assertEqual(accepted, {"correlationId": "op-1", "action": "install", "status": "STARTED"})
        again = yield self.assertFailure(deferToThread(client.post, "/updates/install", request), ApiFailure)
        self.assertEqual(again.status, 409)

        follower = Follower(lines=1)
        reactor.spawnProcess(follower, sys.executable, [sys.executable, GATEWAYCTL, "ops", "--follow"],
                             env=self.env)
        yield follower.enough.addTimeout(30, reactor)  # it saw the operation running...
        held.release()  # ... and only now does the download get its bytes
        status = yield follower.ended.addTimeout(60, reactor)
        self.assertEqual(status.exitCode, 0, follower.output)
        lines = follower.output.decode().splitlines()
        self.assertRegex(lines[0], r"^op-1: (STARTED|DOWNLOADING)")
        self.assertRegex(lines[-1], r"^op-1: FINISHED_SUCCESS")
        ops = json.loads((yield self.ok("--json", "ops")))
        self.assertEqual([(o["correlation_id"], o["status"], o["active"]) for o in ops["operations"]],
                         [("op-1", "FINISHED_SUCCESS", False)])
        self.assertRegex((yield self.ok("apps")), r"sensor\s+sensor\s+1\.0\s+RUNNING")

    @inlineCallbacks
    def test_status_during_configuration_changes_is_never_not_running(self) -> Any:
        """``gatewayctl status`` in loops while configuration changes restart the services:
        never exit 3 ("not running"), the call that met the admin API's restart waiting for
        it. 3 to 7 calls in 50 exited 3 so. The socket is the default one,
        ``<state_dir>/run/admin.sock``, which names the state directory and its lock."""
        config = write_config(self.work, free_port(), closed_port(self))
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        env = {**os.environ, "GATEWAY_ADMIN_SOCKET": str(self.work / "state" / "run" / "admin.sock")}
        results: list[tuple[int, bytes]] = []
        changing = True

        @inlineCallbacks
        def statuses() -> Any:
            while changing:
                out, err, code = yield self.ctl("status", env=env)
                results.append((code, err))

        loops = [statuses(), statuses()]
        changes = 0
        while changes < 10 and not any(b"waiting up to 30 s" in err for _, err in results):
            changes += 1
            out, err, code = yield self.ctl("config", "set", "gateway.device_id", f"gw-{changes}", env=env)
            self.assertEqual(code, 0, err)
        changing = False
        for loop in loops:
            yield loop
        codes = [code for code, _ in results]
        self.assertNotIn(3, codes, [err for code, err in results if code == 3])
        self.assertTrue(any(b"waiting up to 30 s" in err for _, err in results),
                        f"no status call met a restart in {changes} changes: {codes}")
        gateway.transport.signalProcess("TERM")
        yield gateway.ended

    @inlineCallbacks
    def test_standard_library_only(self) -> Any:
        """gatewayctl's modules import neither Twisted nor YAML nor http.client (start-up time)."""
        out, err, code = yield getProcessOutputAndValue(sys.executable, ["-c", (
            "import sys, gateway.admin.cli\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'yaml', 'zope'})"
            " + sorted(m for m in sys.modules if m in ('http.client', 'email.parser')))")], env=self.env)
        self.assertEqual((code, out.strip()), (0, b"[]"), err)

    @inlineCallbacks
    def test_uploads(self) -> Any:
        """uploads trigger (a configured file, a named id), list, cancel: the upload service's
        Kanto flow through the admin API; a refused trigger is exit 1 with the reason."""
        logs = self.work / "logs"
        logs.mkdir()
        (logs / "a.log").write_text("hello\n")
        gateway, config = yield self.start_gateway(f"uploads:\n  files: ['{logs}/*.log']\n")
        text = yield self.ok("uploads", "trigger", "diag-1")
        self.assertEqual(text, "diag-1: PENDING, 1 file(s) requested from the cloud\n")
        listed = yield self.ok("uploads")
        self.assertRegex(listed, r"diag-1\s+PENDING\s+0%\s+1")
        self.assertIn("periodic triggers: off", listed)
        value = json.loads((yield self.ok("--json", "uploads", "list")))
        self.assertEqual(value["uploads"][0]["files"][0]["path"], str(logs / "a.log"))
        self.assertEqual((yield self.ok("uploads", "cancel", "diag-1")), "diag-1: CANCELED\n")
        out, err, code = yield self.ctl("uploads", "trigger", "--files", "/etc/passwd")
        self.assertEqual(code, 1)
        self.assertIn(b"not permitted", err)
        out, err, code = yield self.ctl("uploads", "cancel")
        self.assertEqual(code, 2)
        gateway.transport.signalProcess("TERM")
        yield gateway.ended

    @inlineCallbacks
    def test_not_running_is_exit_3(self) -> Any:
        """No socket, or a socket nobody listens on (a crashed gateway's): exit 3, every command."""
        for args in (("status",), ("--json", "apps"), ("links",), ("queue",), ("ops",), ("apps", "logs", "x", "-f")):
            out, err, code = yield self.ctl(*args)
            self.assertEqual(code, 3, (args, err))
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(self.socket))  # bound, never listening: connections are refused
        self.addCleanup(stale.close)
        out, err, code = yield self.ctl("status")
        self.assertEqual(code, 3, err)
        self.assertIn(b"Connection refused", err)


class StatusTests(SynchronousTestCase):
    """What ``gatewayctl status`` prints of ``GET /status``."""

    def status_text(self, lag: float) -> str:
        """The human output for a status whose ``reactor_lag_s`` is ``lag``."""
        status = {"version": "0.1.0", "pid": 42, "uptime_s": 75.0, "reactor_lag_s": lag, "config_pending": None,
                  "services": [{"name": "broker", "running": True, "error": ""}]}

        class Client:
            def get(self, path: str) -> Any:
                return status

        out = io.StringIO()
        self.patch(sys, "stdout", out)
        cmd_status(Client(), build_parser().parse_args(["status"]))  # type: ignore[arg-type]
        return out.getvalue()

    def test_a_slow_gateway_says_so(self) -> None:
        """A reactor that ran its timers a second or more late (a CPU too slow for the load)
        is a line of its own; under a second, nothing."""
        self.assertIn("slow: the gateway ran its timers up to 5.4 s late in the last minute or two",
                      self.status_text(5.4))
        self.assertNotIn("slow", self.status_text(0.2))


class UsageTests(SynchronousTestCase):
    """Exit status 2 for every usage error (docs/admin.md), not only those argparse finds;
    a changes file that is not JSON is exit 1 with the reason, not a traceback."""

    def setUp(self) -> None:
        self.err = io.StringIO()
        self.patch(sys, "stderr", self.err)
        self.socket = str(Path(self.mktemp()).resolve() / "none.sock")  # never reached

    def test_changes_missing_or_not_key_value(self) -> None:
        """config check/apply with no KEY=VALUE (and no --file), or a pair without "=": usage."""
        for args in (["config", "check"], ["config", "apply"], ["config", "check", "gateway.device_id"],
                     ["config", "apply", "=x"]):
            with self.assertRaises(SystemExit) as raised:
                main(["--socket", self.socket, *args])
            self.assertEqual(raised.exception.code, 2, args)
        # the subcommand's own usage line, not gatewayctl's list of commands
        self.assertIn("usage: gatewayctl config check", self.err.getvalue())
        self.assertIn("gatewayctl config check: error: 'gateway.device_id' is not KEY=VALUE", self.err.getvalue())
        self.assertNotIn("COMMAND ...", self.err.getvalue())

    def test_lines_in_ascii_digits_only(self) -> None:
        """``apps logs -n`` takes a number of lines in ASCII digits: ``int()`` read ``١٠`` as 10
        and ``1_0`` too; they are a usage error naming it (exit 2)."""
        for lines in ("\u0661\u0660", "1_0", "-5"):
            with self.assertRaises(SystemExit) as raised:
                main(["--socket", self.socket, "apps", "logs", "hello", "-n", lines])
            self.assertEqual(raised.exception.code, 2, lines)
            self.assertIn(f"argument -n/--lines: {lines!r} is not a number of lines", self.err.getvalue())

    def test_confirm_within_in_ascii_digits_only(self) -> None:
        """``--confirm-within`` takes seconds in ASCII digits (``120``, ``2.5``): in another script's
        digits, ``inf`` or with an exponent it is a usage error naming it (exit 2); ``float()`` read
        ``١٢٠`` as 120 and sent it."""
        for within in ("\u0661\u0662\u0660", "inf", "nan", "1e3", "-5"):
            with self.assertRaises(SystemExit) as raised:
                main(["--socket", self.socket, "config", "set", "gateway.device_id", "gw", "--confirm-within", within])
            self.assertEqual(raised.exception.code, 2, within)
            self.assertIn(f"argument --confirm-within: {within!r} is not a number of seconds", self.err.getvalue())

    def test_a_listing_with_a_stray_word_is_usage(self) -> None:
        """``apps list hello`` and ``uploads list u1`` are usage errors (exit 2) naming the word,
        as ``links extra`` is: before, the word was dropped and everything listed, exit 0."""
        for args, message in ((["apps", "list", "hello"], "gatewayctl apps: error: apps list takes no NAME, not 'hello'"),
                              (["uploads", "list", "u1"], "gatewayctl uploads: error: uploads list takes no ID, not 'u1'")):
            with self.assertRaises(SystemExit) as raised:
                main(["--socket", self.socket, *args])
            self.assertEqual(raised.exception.code, 2, args)
            self.assertIn(message, self.err.getvalue())

    def test_changes_file_not_json(self) -> None:
        """--file naming a file that is not JSON: exit 1 and why."""
        path = Path(self.mktemp())
        path.write_text("{bad")
        with self.assertRaises(SystemExit) as raised:
            main(["--socket", self.socket, "config", "check", "--file", str(path)])
        self.assertEqual(str(raised.exception.code), f"gatewayctl: {path} is not JSON: Expecting property name"
                                                     " enclosed in double quotes: line 1 column 2 (char 1)")
        path.write_text("[" * 5000)  # raised RecursionError: a traceback
        with self.assertRaises(SystemExit) as raised:
            main(["--socket", self.socket, "config", "check", "--file", str(path)])
        self.assertEqual(str(raised.exception.code), f"gatewayctl: {path} is not JSON: JSON nested too deeply to parse")

    def test_changes_file_unreadable(self) -> None:
        """--file naming a file that cannot be read (absent, a directory): exit 1 saying so as
        ``apps install`` says it of a package, not Python's ``[Errno 2] ...: '<path>'``."""
        missing = Path(self.mktemp())
        with self.assertRaises(SystemExit) as raised:
            main(["--socket", self.socket, "config", "check", "--file", str(missing)])
        self.assertEqual(str(raised.exception.code), f"gatewayctl: cannot read {missing}: No such file or directory")
        folder = Path(self.mktemp())
        folder.mkdir()
        with self.assertRaises(SystemExit) as raised:
            main(["--socket", self.socket, "config", "apply", "--file", str(folder)])
        self.assertEqual(str(raised.exception.code), f"gatewayctl: cannot read {folder}: Is a directory")


class SecretOffTheCommandLineTests(SynchronousTestCase):
    """``config set KEY -`` and ``--file -`` read from standard input (docs/admin.md): a secret
    given as a word was in the process's command line, which every local user reads (``ps``,
    ``/proc/PID/cmdline``), and in the shell's history."""

    def setUp(self) -> None:
        self.sent: list[Any] = []

        def post(client: AdminClient, path: str, body: Any = None, timeout: Any = -1.0) -> Any:
            self.sent.append((path, body))
            return {"valid": True, "applied": ["k"], "restarted": [], "confirm_deadline": None}

        self.patch(AdminClient, "post", post)
        self.patch(sys, "stdout", io.StringIO())
        self.socket = str(Path(self.mktemp()).resolve() / "none.sock")  # never reached

    def stdin(self, data: bytes) -> None:
        """Standard input that is not a terminal, holding ``data``."""
        self.patch(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))

    def test_set_reads_the_value_from_standard_input(self) -> None:
        """The value is the input less its final newline, read as a word would be (a string
        unless it is JSON)."""
        self.stdin(b"SECRET-pw 1\n")
        self.assertEqual(main(["--socket", self.socket, "config", "set", "links.links.c.password", "-"]), 0)
        self.stdin(b'"-"')
        self.assertEqual(main(["--socket", self.socket, "config", "set", "gateway.device_id", "-"]), 0)
        self.assertEqual([body["changes"] for _, body in self.sent],
                         [{"links.links.c.password": "SECRET-pw 1"}, {"gateway.device_id": "-"}])

    def test_set_on_a_terminal_asks_without_echo(self) -> None:
        """On a terminal the value is asked for as a password is (getpass), naming the key."""
        self.patch(sys, "stdin", type("Terminal", (), {"isatty": lambda self: True})())
        asked: list[str] = []
        self.patch(getpass, "getpass", lambda prompt: asked.append(prompt) or "SECRET-typed")
        self.assertEqual(main(["--socket", self.socket, "config", "set", "links.links.c.password", "-"]), 0)
        self.assertEqual((asked, self.sent[0][1]["changes"]),
                         (["links.links.c.password: "], {"links.links.c.password": "SECRET-typed"}))

    def test_changes_file_from_standard_input(self) -> None:
        """``--file -`` reads the JSON object of changes from standard input; a value that is
        not UTF-8 is exit 1 saying so."""
        self.stdin(b'{"links.links.c.password": "SECRET-pw"}')
        self.assertEqual(main(["--socket", self.socket, "config", "check", "--file", "-"]), 0)
        self.assertEqual(self.sent, [("/config/check", {"changes": {"links.links.c.password": "SECRET-pw"}})])
        self.stdin(b"caf\xe9")
        with self.assertRaises(SystemExit) as raised:
            main(["--socket", self.socket, "config", "set", "gateway.device_id", "-"])
        self.assertEqual(raised.exception.code, "gatewayctl: the value on standard input is not UTF-8")


class CheckConfigTests(SynchronousTestCase):
    """``gatewayctl check-config [PATH]`` (docs/admin.md): no gateway needed."""

    def test_without_a_path_the_embedded_default_is_checked_and_named(self) -> None:
        """With no PATH the embedded default (conf/gateway.yaml) is checked, not
        /etc/gateway/gateway.yaml, and the line names the file checked."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main(["check-config"]), 0)
        self.assertEqual(out.getvalue(), f"configuration OK: {DEFAULT_CONFIG}\n")
        self.assertEqual(DEFAULT_CONFIG.parent.name, "conf")

    def test_the_ok_line_names_the_dropins_merged(self) -> None:
        """With drop-ins beside the file, ``configuration OK: PATH + conf.d/A, conf.d/B`` names
        them in the order merged (an operator sees which files set what); a hidden file is none.
        ``--json`` keeps ``path`` the main file."""
        directory = Path(self.mktemp())
        (directory / "conf.d").mkdir(parents=True)
        config = directory / "gateway.yaml"
        config.write_text("gateway: {}\n")
        for name in ("90-remote.yaml", "50-site.yaml", ".50-site.yaml"):
            (directory / "conf.d" / name).write_text("gateway: {}\n")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.assertEqual(main(["check-config", str(config)]), 0)
        self.assertEqual(out.getvalue(), f"configuration OK: {config} + conf.d/50-site.yaml, conf.d/90-remote.yaml\n")
        out.truncate(0)
        out.seek(0)
        self.assertEqual(main(["--json", "check-config", str(config)]), 0)
        self.assertEqual(json.loads(out.getvalue())["path"], str(config))

    def test_path_and_config_together_are_a_usage_error(self) -> None:
        """``check-config PATH --config OTHER`` is exit 2 naming both: it checked ``PATH``
        alone and said ``configuration OK`` for it, ``OTHER`` silently unchecked."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(sys, "stdout", io.StringIO())
        with self.assertRaises(SystemExit) as raised:
            main(["check-config", "--config", "other.yaml", str(DEFAULT_CONFIG)])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn(f"check-config takes PATH or --config PATH, not both ({str(DEFAULT_CONFIG)!r} and"
                      " 'other.yaml')", err.getvalue())

    def test_json_is_what_config_check_answers_with_the_file(self) -> None:
        """``--json`` (before or after the command) prints ``{"valid", "errors", "warnings", "path"}`` on
        stdout, as ``config check --json`` prints the API's answer: it printed the lines for
        people, on stderr for an invalid file, which a script reading JSON could not parse."""
        bad = Path(self.mktemp())
        bad.write_text("admin:\n  page_refresh: 0\n")
        for argv, code, expected in (
                (["--json", "check-config", str(bad)], 1,
                 {"valid": False, "errors": [f"{bad}: admin.page_refresh: must be at least 1, not 0"], "warnings": [],
                  "path": str(bad)}),
                (["check-config", "--json"], 0, {"valid": True, "errors": [], "warnings": [],
                                                 "path": str(DEFAULT_CONFIG)})):
            out, err = io.StringIO(), io.StringIO()
            self.patch(sys, "stdout", out)
            self.patch(sys, "stderr", err)
            self.assertEqual(main(argv), code, argv)
            self.assertEqual((json.loads(out.getvalue()), err.getvalue()), (expected, ""), argv)

    def test_a_reader_gone_is_no_traceback(self) -> None:
        """``gatewayctl check-config --json | head -3``: stdout's reader gone is exit 1 saying
        nothing more, as for the commands that ask the gateway (it was a BrokenPipeError
        traceback), and ``--config PATH`` names the file as ``PATH`` does (the docs show it)."""
        sink = os.open(self.mktemp(), os.O_WRONLY | os.O_CREAT)
        self.addCleanup(os.close, sink)

        class Gone(io.StringIO):
            def write(self, text: str) -> int:
                raise BrokenPipeError(32, "Broken pipe")

            def fileno(self) -> int:
                return sink

        err = io.StringIO()
        self.patch(sys, "stdout", Gone())
        self.patch(sys, "stderr", err)
        self.assertEqual((main(["check-config", "--json", "--config", str(DEFAULT_CONFIG)]), err.getvalue()), (1, ""))


class ConfigCheckWarningTests(SynchronousTestCase):
    """``gatewayctl config check``: the warnings of a valid change, as ``check-config`` prints them."""

    def test_warnings_go_to_stderr_before_ok(self) -> None:
        """The API's ``warnings`` are printed as ``warning: ...`` lines on stderr, then
        ``configuration OK`` (exit 0: the change is valid); with ``--json`` the answer as it is;
        an answer without the key (a gateway from before it) prints none."""
        answers = [{"valid": True, "errors": [], "warnings": ["links a and b share a session"]},
                   {"valid": True, "errors": [], "warnings": ["links a and b share a session"]},
                   {"valid": True, "errors": []}]

        class Client:
            def post(self, path: str, body: Any) -> Any:
                assert path == "/config/check", path
                return answers.pop(0)

        for argv, out_text, err_text in (
                (["config", "check", "a=1"], "configuration OK\n", "warning: links a and b share a session\n"),
                (["--json", "config", "check", "a=1"], None, ""),
                (["config", "check", "a=1"], "configuration OK\n", "")):
            out, err = io.StringIO(), io.StringIO()
            self.patch(sys, "stdout", out)
            self.patch(sys, "stderr", err)
            self.assertEqual(cmd_config(Client(), build_parser().parse_args(argv)), 0)  # type: ignore[arg-type]
            self.assertEqual(err.getvalue(), err_text, argv)
            if out_text is None:
                self.assertEqual(json.loads(out.getvalue())["warnings"], ["links a and b share a session"])
            else:
                self.assertEqual(out.getvalue(), out_text, argv)

    def test_an_applied_change_prints_its_warnings_too(self) -> None:
        """``config set`` and ``config apply`` print the apply's ``warnings`` as ``config check``
        does (``warning: ...`` on stderr before the result); they printed none."""
        answer = {"applied": True, "errors": [], "restarted": ["links"], "confirm_deadline": None,
                  "outcome": "applied", "required_links": [], "warnings": ["links a and b share a session"]}

        class Client:
            def post(self, path: str, body: Any, timeout: Any = None) -> Any:
                assert path == "/config/apply", path
                return answer

        for argv in (["config", "set", "a", "1"], ["config", "apply", "a=1"]):
            out, err = io.StringIO(), io.StringIO()
            self.patch(sys, "stdout", out)
            self.patch(sys, "stderr", err)
            self.assertEqual(cmd_config(Client(), build_parser().parse_args(argv)), 0)  # type: ignore[arg-type]
            self.assertEqual((out.getvalue(), err.getvalue()),
                             ("applied; restarted: links\n", "warning: links a and b share a session\n"), argv)


class ValueWordTests(SynchronousTestCase):
    """A ``VALUE`` is JSON when it parses as the strict JSON the admin API takes, else a
    string (docs/admin.md): ``NaN``, ``Infinity`` or ``1e400`` was read as a float that
    gatewayctl sent as ``NaN``/``Infinity``, and the API refused the whole request (``body is
    not valid JSON: NaN is not JSON``): ``config set gateway.device_id NaN`` could not be given."""

    def sent(self, argv: list[str]) -> Any:
        bodies: list[Any] = []

        class Client:
            def post(self, path: str, body: Any, timeout: Any = None) -> Any:
                bodies.append(json.loads(json.dumps(body, allow_nan=False)))  # (what the API is sent, strictly)
                return {"valid": True, "errors": [], "applied": True, "restarted": []}

        self.patch(sys, "stdout", io.StringIO())
        cmd_config(Client(), build_parser().parse_args(argv))  # type: ignore[arg-type]
        return bodies[0]["changes"]

    def test_words_json_does_not_take_are_strings(self) -> None:
        words = ["NaN", "Infinity", "-Infinity", "1e400", '{"a": 1, "a": 2}']
        self.assertEqual(self.sent(["config", "check", *(f"k{n}={word}" for n, word in enumerate(words))]),
                         {f"k{n}": word for n, word in enumerate(words)})
        self.assertEqual(self.sent(["config", "set", "gateway.device_id", "NaN"]), {"gateway.device_id": "NaN"})
        self.assertEqual(self.sent(["config", "check", "a=30", "b=2.5", "c=null", 'd=["x"]']),
                         {"a": 30, "b": 2.5, "c": None, "d": ["x"]})

    def test_a_changes_file_the_api_would_refuse_is_refused_here(self) -> None:
        """``--file`` holding ``NaN`` (or a key twice): exit 1 naming the file, not the API's
        ``body is not valid JSON``."""
        path = Path(self.mktemp())
        for text, why in (('{"a": NaN}', "NaN is not JSON: a number is finite"),
                          ('{"a": 1, "a": 2}', "key 'a' given twice in one object")):
            path.write_text(text)
            with self.assertRaises(SystemExit) as raised:
                self.sent(["config", "check", "--file", str(path)])
            self.assertEqual(str(raised.exception.code), f"gatewayctl: {path} is not JSON: {why}")


class ArgumentOrderTests(SynchronousTestCase):
    """Every command takes its options anywhere: before, between or after its positionals,
    and ``--socket``/``--json`` before the command or after it."""

    #: (the order docs/admin.md shows, the same words in other orders) for every command.
    ORDERS = [
        ("status --json", ["--json status"]),
        ("apps --json", ["--json apps"]),
        ("apps list --socket S", ["--socket S apps list", "apps --socket S list"]),
        ("apps start NAME --json", ["apps --json start NAME", "--json apps start NAME"]),
        ("apps install FILE -v", ["apps install -v FILE", "apps -v install FILE"]),
        ("apps logs NAME -n 5 --stderr -f", ["apps logs -f NAME -n 5 --stderr", "apps logs -n 5 -f --stderr NAME",
                                             "apps -f logs --stderr NAME -n 5"]),
        ("links --json", ["--json links"]),
        ("queue --json", ["--json queue"]),
        ("ops --follow --json", ["--json ops --follow"]),
        ("uploads trigger ID --files G --diagnostics --force",
         ["uploads trigger --force --files G ID --diagnostics", "uploads --force trigger --diagnostics --files G ID"]),
        ("uploads cancel ID --json", ["uploads --json cancel ID"]),
        ("report NAME --json", ["report --json NAME"]),
        ("config get KEY --json", ["config get --json KEY", "config --json get KEY", "--json config get KEY"]),
        ("config check a=1 b=2 --file F", ["config check --file F a=1 b=2", "config check a=1 --file F b=2"]),
        ("config set KEY VALUE --confirm-within 5", ["config set --confirm-within 5 KEY VALUE",
                                                     "config set KEY --confirm-within 5 VALUE"]),
        ("config apply a=1 --file F --confirm-within 5", ["config apply --confirm-within 5 a=1 --file F"]),
        ("check-config PATH -c C", ["check-config -c C PATH"]),
        ("version --socket S", ["--socket S version"]),
    ]

    def test_options_anywhere(self) -> None:
        """Each other order parses exactly as the documented one."""
        parser = build_parser()
        for documented, others in self.ORDERS:
            expected = vars(parser.parse_args(documented.split()))
            for other in others:
                self.assertEqual(vars(parser.parse_args(other.split())), expected, other)

    def test_orders_parse_without_argparse_s_private_subparsers(self) -> None:
        """Which parsers have subcommands is CommandParser's own record: the orders parse the
        same with argparse's private ``_subparsers`` gone from every parser (as an argparse
        that keeps no such attribute would have it)."""
        parser = build_parser()
        expected = {documented: vars(parser.parse_args(documented.split())) for documented, _ in self.ORDERS}
        parsers = [parser]
        for each in parsers:  # (the test walks argparse's internals; the parser itself no longer does)
            for action in each._actions:
                if isinstance(action, argparse._SubParsersAction):
                    parsers.extend(action.choices.values())
            del each._subparsers
        for documented, others in self.ORDERS:
            for line in [documented, *others]:
                self.assertEqual(vars(parser.parse_args(line.split())), expected[documented], line)

    def test_option_before_the_name_reaches_the_gateway(self) -> None:
        """``apps logs -f NAME``, once refused as a usage error (exit 2), asks the gateway
        (none here: exit 3)."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        socket_path = str(Path(self.mktemp()).resolve() / "none.sock")
        self.assertEqual(main(["apps", "logs", "-f", "-n", "5", "hello", "--socket", socket_path]), 3)
        self.assertIn("the gateway is not running", err.getvalue())


class NotRunningTests(SynchronousTestCase):
    """Exit 3 when no gateway answers on the socket, saying why."""

    def test_a_socket_nothing_listens_on_is_not_running_saying_so(self) -> None:
        """A socket file left behind (a gateway killed, before the next start replaces it) is
        exit 3 saying nothing answers on it: it said ``no admin socket at <path>`` of a socket
        that is there."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        folder = tempfile.mkdtemp(prefix="gwctl-")  # (a trial path is over bind()'s 107 bytes)
        self.addCleanup(shutil.rmtree, folder)
        path = Path(folder) / "admin.sock"
        left = socket.socket(socket.AF_UNIX)
        self.addCleanup(left.close)
        left.bind(str(path))  # bound, never listening: connections are refused
        self.assertEqual(main(["status", "--socket", str(path)]), 3)
        self.assertEqual(err.getvalue(), f"gatewayctl: the gateway is not running (nothing answers on the admin"
                                         f" socket {path}: Connection refused)\n")
        err.truncate(0)
        err.seek(0)
        self.assertEqual(main(["status", "--socket", str(path) + ".none"]), 3)
        self.assertEqual(err.getvalue(), f"gatewayctl: the gateway is not running (no admin socket at {path}.none:"
                                         " No such file or directory)\n")

    def test_a_relative_socket_path_names_the_directory_it_was_looked_for_in(self) -> None:
        """A checkout's ``gatewayctl`` looks for ``make run``'s ``var/run/admin.sock`` in the
        current directory: run from another one (``cd conf``), it said only that the gateway
        is not running while it ran. The message now says where it looked and what to do."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        saved = os.environ.pop(ENVIRONMENT, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, ENVIRONMENT, saved)
        elsewhere = tempfile.mkdtemp(prefix="gwctl-")
        self.addCleanup(shutil.rmtree, elsewhere)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(elsewhere)
        self.assertEqual(main(["status"]), 3)
        self.assertEqual(err.getvalue(), "gatewayctl: the gateway is not running (no admin socket at var/run/admin.sock:"
                                         f" No such file or directory; looked for in the current directory, {elsewhere}:"
                                         " run gatewayctl in the directory the gateway was started in, or name its"
                                         " state directory with --state-dir DIR)\n")


class ReportNameTests(SynchronousTestCase):
    """``gatewayctl report NAME`` asks for exactly that name, whatever its characters."""

    def test_the_name_is_quoted_in_the_path(self) -> None:
        """A name with a space once broke the request line (``gatewayctl: HTTP 400``, no reason)
        and one with ``?`` or ``%5F`` built another report; each now reaches the gateway as
        the name it is, which answers 404 naming it."""
        asked: list[str] = []

        def post(client: AdminClient, path: str, body: Any = None, timeout: Any = -1.0) -> Any:
            asked.append(path)
            raise ApiFailure(404, {"error": f"no report {path}"})

        self.patch(AdminClient, "post", post)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        socket_path = str(Path(self.mktemp()).resolve() / "none.sock")  # never reached
        for name in ("device info", "engine_report?x=1", "usage%5Freport", "../status"):
            self.assertEqual(main(["--socket", socket_path, "report", name]), 1, name)
        self.assertEqual(asked, ["/reports/device%20info", "/reports/engine_report%3Fx%3D1",
                                 "/reports/usage%255Freport", "/reports/..%2Fstatus"])


    def test_a_report_too_large_is_one_line_saying_what_to_do(self) -> None:
        """The admin API's 409 for a report its journal stream can never hold (docs/admin.md) is
        printed as its words, exit 1, no traceback."""
        error = ("report usage_report was built but not published: journal stream 'link-cloud' refused the"
                 " append (max-bytes): a record of 5000 bytes is larger than max_bytes (4096 bytes); asking"
                 " again does not help: give that journal stream a larger max_bytes (journal.streams in the"
                 " configuration) first")

        def post(client: AdminClient, path: str, body: Any = None, timeout: Any = -1.0) -> Any:
            raise ApiFailure(409, {"error": error})

        self.patch(AdminClient, "post", post)
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        socket_path = str(Path(self.mktemp()).resolve() / "none.sock")  # never reached
        self.assertEqual(main(["--socket", socket_path, "report", "usage_report"]), 1)
        self.assertEqual(err.getvalue(), f"gatewayctl: {error}\n")


class InstallOutcomeTests(SynchronousTestCase):
    """``gatewayctl apps install`` prints the outcome (docs/apps.md), also of a failed install."""

    def setUp(self) -> None:
        self.err = io.StringIO()
        self.patch(sys, "stderr", self.err)
        self.package = Path(self.mktemp())
        self.package.write_bytes(b"a package")
        self.socket = str(Path(self.mktemp()).resolve() / "none.sock")  # never reached

    def install(self, status: int, result: dict[str, Any]) -> int:
        """gatewayctl apps install, the admin API answering ``status`` with ``result``."""
        def upload(client: AdminClient, path: str, handle: Any, total: int, progress: Any) -> Any:
            raise ApiFailure(status, {"error": result["message"], "result": result})

        self.patch(AdminClient, "upload", upload)
        return main(["--socket", self.socket, "apps", "install", str(self.package)])

    def test_a_rollback_says_it_was_rolled_back(self) -> None:
        """An unhealthy new version once printed only why (``health check failed (1):
        unhealthy``), not that it was rolled back and the previous version runs again."""
        result = {"ok": False, "outcome": "rolled-back", "name": "sensor", "version": "2.2.0",
                  "previous": "2.1.0", "message": "health check failed (1): unhealthy", "log": ""}
        self.assertEqual(self.install(409, result), 1)
        self.assertEqual(self.err.getvalue(), "gatewayctl: rolled-back: health check failed (1): unhealthy\n")

    def test_a_message_that_begins_with_its_outcome_says_it_once(self) -> None:
        """A refusal's message begins with ``refused:`` already (as the spool's log has it)."""
        result = {"ok": False, "outcome": "refused", "name": "box", "version": "9", "previous": None,
                  "message": "refused: 'box' is the name of a container app", "log": ""}
        self.assertEqual(self.install(400, result), 1)
        self.assertEqual(self.err.getvalue(), "gatewayctl: refused: 'box' is the name of a container app\n")
        self.err.truncate(0)
        self.err.seek(0)
        failed = {**result, "outcome": "failed", "message": "bad 2.0: install.sh exited with 7"}
        self.assertEqual(self.install(409, failed), 1)
        self.assertEqual(self.err.getvalue(), "gatewayctl: failed: bad 2.0: install.sh exited with 7\n")


class StatusTableTests(SynchronousTestCase):
    """``gatewayctl status``'s table of services."""

    def test_a_service_with_an_error_shows_it_as_its_state(self) -> None:
        """An ingest that could not listen was shown ``running``, like one that listens."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        status = {"version": "0.1.0", "pid": 7, "uptime_s": 3.0, "started_at": 1.0, "config_pending": None,
                  "services": [{"name": "broker", "running": True, "error": ""},
                               {"name": "ingest", "running": True, "error": "not listening: Couldn't listen on"
                                " 127.0.0.1:8090: [Errno 98] Address already in use."},
                               {"name": "admin", "running": False, "error": ""}]}
        self.patch(AdminClient, "get", lambda client, path, params=None: status)
        self.assertEqual(main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), "status"]), 0)
        self.assertEqual(out.getvalue().splitlines()[1:], [
            "service  state",
            "broker   running",
            "ingest   not listening: Couldn't listen on 127.0.0.1:8090: [Errno 98] Address already in use.",
            "admin    stopped"])

    def test_a_service_that_is_off_says_why(self) -> None:
        """A service off for an ordinary reason (the per-app accounting where the gateway is not
        root) is ``off (<why>)``; one that failed at its job shows its error."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        status = {"version": "0.1.0", "pid": 7, "uptime_s": 3.0, "started_at": 1.0, "config_pending": None,
                  "services": [{"name": "app-accounting", "running": True, "error": "",
                                "off": "the gateway does not run as root"},
                               {"name": "apps", "running": True, "error": ""}]}
        self.patch(AdminClient, "get", lambda client, path, params=None: status)
        self.assertEqual(main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), "status"]), 0)
        self.assertEqual(out.getvalue().splitlines()[1:], [
            "service         state",
            "app-accounting  off (the gateway does not run as root)",
            "apps            running"])


class AppsTableTests(SynchronousTestCase):
    """``gatewayctl apps``'s table of programs."""

    def apps(self, programs: list[dict[str, Any]]) -> list[str]:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(AdminClient, "get", lambda client, path, params=None: {"version": "0.1.0", "apps": programs})
        self.assertEqual(main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), "apps"]), 0)
        return out.getvalue().splitlines()

    def test_a_failed_program_says_why(self) -> None:
        """A FATAL program's error is shown (it was only in the gateway's log); with no program
        failing, the table has no error column."""
        running = {"name": "db", "app": "db", "version": "1", "status": "RUNNING", "pid": 7, "uptime_s": 5.0,
                   "restarts": 0, "error": ""}
        fatal = {"name": "web", "app": "web", "version": "1", "status": "FATAL", "pid": None, "uptime_s": 0.0,
                 "restarts": 3, "error": "exited with 127 before 1s"}
        self.assertEqual(self.apps([running]), ["program  app  version  state    pid  uptime  restarts",
                                                "db       db   1        RUNNING  7    5s      0"])
        self.assertEqual(self.apps([running, fatal]), [
            "program  app  version  state    pid  uptime  restarts  error",
            "db       db   1        RUNNING  7    5s      0",
            "web      web  1        FATAL    -    0s      3         exited with 127 before 1s"])


class LinksTableTests(SynchronousTestCase):
    """``gatewayctl links``'s table of cloud links."""

    def links(self, links: list[dict[str, Any]]) -> list[str]:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(AdminClient, "get", lambda client, path, params=None: {"links": links})
        self.assertEqual(main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), "links"]), 0)
        return out.getvalue().splitlines()

    def test_a_cursor_not_saved_or_a_session_taken_over_is_a_problem(self) -> None:
        """A link whose cursor saves fail (a full disk) or whose session another client keeps
        taking over showed only its state and ``last error`` (``connection closed``, or nothing):
        a ``problem`` column now says what and since when; with no link in trouble the table has
        no such column (and a gateway whose links have no such fields shows none)."""
        well = {"name": "cloud", "state": "connected", "backlog": 0, "in_flight": 0, "acked": 5,
                "drain_rate": 0.5, "last_error": "", "cursor_failing": None, "taken_over": None}
        taken = {**well, "name": "backup", "state": "disconnected", "last_error": "connection closed",
                 "taken_over": {"reason": "session-taken-over", "error": "another client is probably connecting"
                                " with the same client id 'gw1'", "since": 1796211823.0, "failures": 3}}
        unsaved = {**well, "cursor_failing": {"reason": "cursor-not-saved", "error": "[Errno 28] No space left",
                                              "since": 1796211823.0, "failures": 2}}
        plain = {key: value for key, value in well.items() if key not in ("cursor_failing", "taken_over")}
        header = "link   state      backlog  in flight  acked  drain/s  last error"
        self.assertEqual(self.links([well]), [header, "cloud  connected  0        0          5      0.5"])
        self.assertEqual(self.links([plain]), [header, "cloud  connected  0        0          5      0.5"])
        self.assertEqual(self.links([unsaved, taken]), [
            "link    state         backlog  in flight  acked  drain/s  last error         problem",
            "cloud   connected     0        0          5      0.5                         cursor-not-saved: [Errno 28]"
            " No space left (since 2026-12-02T11:43:43Z, 2 failed)",
            "backup  disconnected  0        0          5      0.5      connection closed  session-taken-over: another"
            " client is probably connecting with the same client id 'gw1' (since 2026-12-02T11:43:43Z, 3 failed)"])


class FleetTableTests(SynchronousTestCase):
    """``gatewayctl fleet``: the fleet channel, one line each, or the API's JSON."""

    def fleet(self, *options: str) -> str:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        asked: list[str] = []
        self.patch(AdminClient, "get", lambda client, path, params=None: asked.append(path) or
                   to_jsonable(FAILING_FLEET))
        self.assertEqual(main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), *options, "fleet"]), 0)
        self.assertEqual(asked, ["/fleet"])
        return out.getvalue()

    def test_a_failing_fleet_says_why_since_when_and_what_waits(self) -> None:
        """Whether the gateway reaches its server, since when not, why, when it polls next,
        that the server's Retry-After holds it, the action under way and the feedback waiting
        (an operator learned all of it only from the logs)."""
        self.assertEqual(self.fleet().splitlines(), [
            "fleet",
            "server            https://hawkbit.example.com (tenant DEFAULT, controller gw-1)",
            "state             held by the server's Retry-After until 2026-12-07T07:10:00Z",
            "polls             12 (3 failed)",
            "last poll         2026-12-07T07:05:00Z failed",
            "last success      2026-12-07T06:55:00Z",
            "last error        GET https://hawkbit.example.com/DEFAULT/controller/v1/gw-1: HTTP 429: Too Many"
            " Requests (at 2026-12-07T07:05:00Z)",
            "next poll         in 4m 40s",
            "server sleep      5m 0s",
            "action            7 DOWNLOADING",
            "installed         1.4.2",
            "feedback waiting  2 (the oldest 5m 3s)",
            "feedback dropped  1 (refused for good by the server)"])
        self.assertEqual(json.loads(self.fleet("--json")), to_jsonable(FAILING_FLEET))

    def test_a_fleet_failing_without_a_hold_says_since_when(self) -> None:
        """Failing polls without a Retry-After: how many in a row since when; nothing before
        the first poll, and no feedback waiting, say so."""
        rows = dict(fleet_rows({**to_jsonable(FAILING_FLEET), "state": "failing"}))
        self.assertEqual(rows["state"], "failing (2 in a row since 2026-12-07T07:00:00Z)")
        rows = dict(fleet_rows(to_jsonable(FleetSnapshot(
            "https://h", "DEFAULT", "gw", "waiting", 0, 0, 0, None, "", None, "", None, None, 5.0, None, None, "", "",
            "", 0, None))))
        self.assertEqual([rows[k] for k in ("last poll", "last success", "last error", "server sleep", "action",
                                            "feedback waiting", "feedback dropped")],
                         ["none yet", "none yet", "none", "none said (fleet.poll_interval)", "none", "0", "0"])


class QueueTableTests(SynchronousTestCase):
    """``gatewayctl queue``'s table of journal streams."""

    def queue(self, streams: list[dict[str, Any]], *options: str) -> str:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(AdminClient, "get", lambda client, path, params=None: {"directory": "/j", "streams": streams})
        self.assertEqual(main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), *options, "queue"]), 0)
        return out.getvalue()

    def test_a_stream_refusing_appends_or_not_writing_its_ledger_is_a_problem(self) -> None:
        """A stream refusing appends (a full disk: the broker sends no PUBACK, the ingest answers
        503) or whose loss ledger is not written showed only its records and free disk, like a
        healthy one: a ``problem`` column now says what and since when; with no stream in trouble
        the table has no such column (and a gateway whose streams have no such fields shows
        none). ``--json`` carries the fields as the API gives them."""
        well = {"name": "link-cloud", "records": 3, "bytes": 2048, "free_bytes": 2**30, "oldest_unacked_age_s": 5.0,
                "cursors": [{"name": "cloud", "acked": 0, "unacked": 3}], "refusing": None, "refused_appends": 0,
                "ledger_failing": None}
        refusing = {**well, "refused_appends": 12,
                    "refusing": {"reason": "disk-full", "error": "[Errno 28] No space left on device",
                                 "since": 1796211823.0, "failures": 12}}
        both = {**refusing, "name": "link-backup", "refusing": {**refusing["refusing"], "failures": 2},
                "ledger_failing": {"reason": "ledger-not-saved", "error": "[Errno 28] No space left on device",
                                   "since": 1796211823.0, "failures": 1}}
        plain = {key: value for key, value in well.items()
                 if key not in ("refusing", "refused_appends", "ledger_failing")}
        rows = ["stream      records  size     waiting  oldest waiting  free disk",
                "link-cloud  3        2.0 KiB  3        5s              1.0 GiB"]
        self.assertEqual(self.queue([well]).splitlines(), rows)
        self.assertEqual(self.queue([plain]).splitlines(), rows)
        self.assertEqual(self.queue([refusing, both]).splitlines(), [
            "stream       records  size     waiting  oldest waiting  free disk  problem",
            "link-cloud   3        2.0 KiB  3        5s              1.0 GiB    disk-full: [Errno 28] No space left on"
            " device (since 2026-12-02T11:43:43Z, 12 failed)",
            "link-backup  3        2.0 KiB  3        5s              1.0 GiB    disk-full: [Errno 28] No space left on"
            " device (since 2026-12-02T11:43:43Z, 2 failed); ledger-not-saved: [Errno 28] No space left on device"
            " (since 2026-12-02T11:43:43Z, 1 failed)"])
        self.assertEqual(json.loads(self.queue([refusing, both], "--json"))["streams"], [refusing, both])

    def test_records_lost_since_the_start_show_by_reason(self) -> None:
        """A stream whose drop-oldest dropped most of a flood while its cloud was away showed
        only the records it kept, as a healthy one: what it lost was in ``--json`` and
        ``/metrics`` only. A ``lost since start`` column now gives each stream's losses by
        reason (``0`` for one that lost none), so records kept, sent and lost add up; with no
        loss anywhere the table has no such column."""
        kept = {"name": "link-cloud", "records": 4580, "bytes": 1024996, "free_bytes": 2**30,
                "oldest_unacked_age_s": 6.0, "cursors": [{"name": "cloud", "acked": 195688, "unacked": 4580}],
                "losses": [{"reason": "max-bytes", "records": 195688}, {"reason": "rejected", "records": 12}]}
        none = {**kept, "name": "broker-state", "records": 2, "bytes": 1024, "losses": [],
                "cursors": [{"name": "broker", "acked": 2, "unacked": 0}], "oldest_unacked_age_s": 0.0}
        self.assertEqual(self.queue([none, kept]).splitlines(), [
            "stream        records  size        waiting  oldest waiting  free disk  lost since start",
            "broker-state  2        1.0 KiB     0        0s              1.0 GiB    0",
            "link-cloud    4580     1001.0 KiB  4580     6s              1.0 GiB    195688 max-bytes, 12 rejected"])
        self.assertNotIn("lost", self.queue([none]))


class _Terminal(io.TextIOWrapper):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


class FollowEndTests(SynchronousTestCase):
    """``apps logs -f`` goes on until Ctrl-C; when the gateway ends the log instead, it says so."""

    def setUp(self) -> None:
        self.out = io.TextIOWrapper(io.BytesIO())
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)
        self.socket = str(Path(self.mktemp()).resolve() / "none.sock")  # never reached

    def follow(self, end: BaseException | None, *options: str) -> int:
        """gatewayctl apps logs hello [options], its stream two lines, then ``end`` raised (or its end)."""
        def stream(client: AdminClient, path: str, params: Any = None) -> Any:
            yield b"tick 1\n"
            yield b"tick 2\n"
            if end is not None:
                raise end

        self.patch(AdminClient, "stream", stream)
        return main(["--socket", self.socket, "apps", "logs", "hello", *options])

    def test_the_gateway_ending_a_followed_log_is_exit_1_and_why(self) -> None:
        """The admin API ends a followed log when the gateway stops or a configuration change
        restarts its services: gatewayctl once exited 0 without a word, like a log gone quiet."""
        self.assertEqual(self.follow(None, "-f"), 1)
        self.out.flush()
        self.assertEqual(self.out.buffer.getvalue(), b"tick 1\ntick 2\n")
        self.assertEqual(self.err.getvalue(), "gatewayctl: the gateway ended the followed log (it is stopping, or"
                                              " a configuration change restarted its services): follow again\n")

    def test_a_terminal_is_shown_control_characters_escaped(self) -> None:
        """docs/admin.md: an app's log went to the terminal as its bytes, so an app could move
        the cursor, clear the screen or turn text around (ESC sequences, a right-to-left override
        U+202E) on the operator's terminal. To a terminal they are shown escaped, as systemctl
        status shows a unit's log lines (a character split between chunks whole; a byte that is no
        UTF-8 as ``\\xNN``); newlines and tabs stay. To a pipe the bytes go as they are."""
        chunks = [b"a\x1b[2Jb\tc\r\n\xe2\x80", b"\xaeevil\x07 caf\xc3\xa9 \xff\n\xc3"]

        def stream(client: AdminClient, path: str, params: Any = None) -> Any:
            yield from chunks

        self.patch(AdminClient, "stream", stream)
        for tty, expected in ((True, b"a\\x1b[2Jb\tc\\r\n\\u202eevil\\x07 caf\xc3\xa9 \\xff\n\\xc3"),
                              (False, b"".join(chunks))):
            self.out = _Terminal(io.BytesIO(), encoding="utf-8") if tty else io.TextIOWrapper(io.BytesIO())
            self.patch(sys, "stdout", self.out)
            self.assertEqual(main(["--socket", self.socket, "apps", "logs", "hello"]), 0)
            self.out.flush()
            self.assertEqual(self.out.buffer.getvalue(), expected)

    def test_ctrl_c_and_a_plain_tail_are_exit_0(self) -> None:
        """Ctrl-C ends a followed log as the operator asked; without -f the tail just ends."""
        self.assertEqual(self.follow(KeyboardInterrupt(), "-f"), 0)
        self.assertEqual(self.follow(None), 0)
        self.assertEqual(self.err.getvalue(), "")


class FakeTimeCase(SynchronousTestCase):
    """gatewayctl's output captured (:attr:`out`, :attr:`err`), its clock and sleep fake
    (:attr:`now` moves only by its sleeps)."""

    def setUp(self) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)
        self.now = 0.0
        self.patch(time, "sleep", self.sleep)
        self.patch(time, "monotonic", lambda: self.now)

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class OpsFollowRestartTests(FakeTimeCase):
    """``ops --follow`` goes on through a restart of the gateway: a gateway package that the
    followed operation installs restarts it, and the operation ends after that
    (docs/updates.md), as a remote ``restart`` or ``systemctl restart`` does. It exited 3 ("the
    gateway is not running") at the first look that found the socket gone, the operation
    still active."""


    def follow(self, answers: list[Any]) -> int:
        """gatewayctl ops --follow, the API's answers (or exceptions) in turn."""
        def get(client: AdminClient, path: str, params: Any = None) -> Any:
            answer = answers.pop(0)
            if isinstance(answer, BaseException):
                raise answer
            return answer

        self.patch(AdminClient, "get", get)
        return main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), "ops", "--follow"])

    @staticmethod
    def ops(status: str, active: bool, message: str = "") -> dict[str, Any]:
        return {"operations": [{"correlation_id": "op-1", "status": status, "active": active, "message": message,
                                "progress_percent": None}]}

    def test_a_restart_is_waited_for(self) -> None:
        """The socket gone, then refused: it says it waits, then that the gateway is back, and
        follows the operation to its end (exit 0)."""
        gone = NotRunning("the gateway is not running (no admin socket at x: No such file or directory)")
        status = self.follow([self.ops("INSTALLING", True), gone, gone,
                              self.ops("INSTALLED", True, "resumed after restart"), self.ops("FINISHED_SUCCESS", False)])
        self.assertEqual(status, 0)
        self.assertEqual(self.out.getvalue(), "op-1: INSTALLING \nop-1: INSTALLED resumed after restart\n"
                                              "op-1: FINISHED_SUCCESS \n")
        self.assertEqual(self.err.getvalue(), f"gatewayctl: {gone}; waiting up to 300 s for it to be back (it may"
                                              " be restarting)\ngatewayctl: the gateway is back\n")

    def test_a_connection_reset_by_a_restarting_admin_api_is_waited_through(self) -> None:
        """A configuration change's restart closes the old admin API's connections; one whose
        request it had not read is reset (ECONNRESET on a unix socket). ``ops --follow`` waits
        through it as through the socket gone; it exited 1 on ``[Errno 104] Connection reset by
        peer``, the operation still active."""
        answers = [b'{"operations": [{"correlation_id": "op-1", "status": "DOWNLOADING", "active": true,'
                   b' "message": "", "progress_percent": 5}]}', None,
                   b'{"operations": [{"correlation_id": "op-1", "status": "FINISHED_SUCCESS", "active": false,'
                   b' "message": "done", "progress_percent": null}]}']

        class Restarting(CannedSocket):
            def connect(self, address: Any) -> None:
                body = answers.pop(0)
                self._left = None if body is None else (
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(body), body))

            def recv(self, size: int, flags: int = 0) -> bytes:
                if self._left is None:
                    raise ConnectionResetError(104, "Connection reset by peer")
                return super().recv(size, flags)

        self.patch(socket, "socket", Restarting)
        status = main(["--socket", "/nonexistent/admin.sock", "ops", "--follow"])
        self.assertEqual((status, self.out.getvalue()), (0, "op-1: DOWNLOADING \nop-1: FINISHED_SUCCESS done\n"))
        self.assertEqual(self.err.getvalue(),
                         "gatewayctl: the gateway reset the connection (its admin API stops: the gateway stops, or a"
                         " configuration change restarts its services); try again; waiting up to 300 s for it to be"
                         " back (it may be restarting)\ngatewayctl: the gateway is back\n")

    def test_a_gateway_that_stays_away_ends_the_follow_with_exit_3(self) -> None:
        """Not back within 300 s: exit 3, saying the gateway is not running, as before."""
        gone = NotRunning("the gateway is not running (no admin socket at x: No such file or directory)")
        status = self.follow([self.ops("DOWNLOADING", True)] + [gone] * 302)
        self.assertEqual(status, 3)
        self.assertEqual(self.now, 301.0)
        self.assertTrue(self.err.getvalue().endswith(f"gatewayctl: {gone}\n"), self.err.getvalue())


_STATUS_BODY = b'{"pid": 7, "services": [], "uptime_s": 1, "version": "0.1.0"}'
#: An admin API's answer to ``GET /status``.
STATUS_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_STATUS_BODY), _STATUS_BODY)


class RestartWaitTests(FakeTimeCase):
    """A socket absent or refusing is "not running" (exit 3) only when no process holds the
    state directory's lock: a configuration change restarts the admin API with the other
    services, and ``gatewayctl status`` exited 3 ("the gateway is not running") in that
    moment, 3 to 7 times in 50, from a gateway that ran (docs/admin.md, exit status)."""

    def setUp(self) -> None:
        super().setUp()
        self.state = Path(self.mktemp()).resolve()
        self.socket = str(self.state / "run" / "admin.sock")
        (self.state / "run").mkdir(parents=True)

    def hold_lock(self) -> None:
        """This process holds the state directory's lock, as a running gateway does."""
        fd = os.open(self.state / "gateway.lock", os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def admin_api_back_after(self, seconds: float) -> list[float]:
        """The socket is absent until ``seconds`` have passed, then answers ``GET /status``;
        the times of the connections tried."""
        answer = STATUS_ANSWER
        tries: list[float] = []
        test = self

        class Restarting(CannedSocket):
            def connect(self, address: Any) -> None:
                tries.append(test.now)
                if test.now < seconds:
                    raise FileNotFoundError(2, "No such file or directory")
                self._left = answer

        self.patch(socket, "socket", Restarting)
        return tries

    def test_a_restart_of_the_admin_api_is_waited_for(self) -> None:
        """The lock held, the socket gone for 2 s: gatewayctl says once that it waits, then
        answers (exit 0). The state directory is the socket's ``DIR`` of ``DIR/run/admin.sock``."""
        self.hold_lock()
        tries = self.admin_api_back_after(2.0)
        self.assertEqual(main(["--socket", self.socket, "status"]), 0)
        self.assertIn("gateway 0.1.0, pid 7", self.out.getvalue())
        self.assertEqual(self.err.getvalue(), "gatewayctl: the gateway runs but its admin API is not open (a"
                                              " configuration change restarts it, or the gateway starts): waiting"
                                              f" up to 30 s for it on {self.socket}\n")
        self.assertGreater(len(tries), 10)
        self.assertLess(self.now, 2.5)

    def test_a_stopping_gateway_is_not_waited_for(self) -> None:
        """The lock held by a gateway whose lock file says it is stopping (its admin API closed
        first, its apps stop): gatewayctl says so at once and exits 3, for an absent socket and
        for a GET cut mid-answer alike. It said that a configuration change restarted the admin
        API, or that the gateway started, and waited until the stop's end (or 30 s)."""
        self.hold_lock()
        (self.state / "gateway.lock").write_text("4711 stopping\n")
        tries = self.admin_api_back_after(60.0)
        self.assertEqual(main(["--socket", self.socket, "status"]), 3)
        self.assertEqual(self.err.getvalue(), "gatewayctl: the gateway is stopping (pid 4711): its admin API has closed\n")
        self.assertEqual((len(tries), self.now), (1, 0.0))
        tries = self.cut_then_answered(1)
        self.assertRaises(NotRunning, AdminClient(self.socket, state_dir=str(self.state)).get, "/status")
        self.assertEqual(len(tries), 1)

    def cut_then_answered(self, cuts: int) -> list[float]:
        """The first ``cuts`` connections are cut mid-answer (the old admin API stopping), the
        next answers ``GET /status``; the times of the connections tried."""
        answer = STATUS_ANSWER
        tries: list[float] = []
        test = self

        class Cut(CannedSocket):
            def connect(self, address: Any) -> None:
                tries.append(test.now)
                self._left = answer[:20] if len(tries) <= cuts else answer

        self.patch(socket, "socket", Cut)
        return tries

    def test_a_get_cut_by_a_restart_is_sent_again(self) -> None:
        """The lock held, the first two connections cut mid-answer (a configuration change
        restarts the admin API after it took them): a GET changes nothing, so it is sent again
        and answered (exit 0); it exited 1 with "closed the connection mid-answer"."""
        self.hold_lock()
        tries = self.cut_then_answered(2)
        self.assertEqual(main(["--socket", self.socket, "status"]), 0)
        self.assertIn("gateway 0.1.0, pid 7", self.out.getvalue())
        self.assertEqual(len(tries), 3)

    def test_a_cut_get_without_the_lock_or_a_cut_post_is_not_sent_again(self) -> None:
        """No process holds the lock (the gateway stopped): the cut is said (exit 1) at once;
        a POST may have been done, so it is never sent again."""
        tries = self.cut_then_answered(1)
        self.assertEqual(main(["--socket", self.socket, "status"]), 1)
        self.assertIn("closed the connection mid-answer", self.err.getvalue())
        self.assertEqual(len(tries), 1)
        self.hold_lock()
        client = AdminClient(self.socket, state_dir=str(self.state))
        tries = self.cut_then_answered(1)
        self.assertRaises(ConnectionCut, client.post, "/config/apply", {})
        self.assertEqual(len(tries), 1)

    def test_not_running_is_exit_3_at_once(self) -> None:
        """The lock file there but not held (the gateway stopped, or died), or no lock file:
        exit 3 at once, as before, without a look at the socket again."""
        tries = self.admin_api_back_after(2.0)
        self.assertEqual(main(["--socket", self.socket, "status"]), 3)
        (self.state / "gateway.lock").write_text("4711\n")
        self.assertEqual(main(["--socket", self.socket, "status"]), 3)
        self.assertEqual((self.now, len(tries)), (0.0, 2))
        self.assertEqual(self.err.getvalue(), f"gatewayctl: the gateway is not running (no admin socket at"
                                              f" {self.socket}: No such file or directory)\n" * 2)

    def test_an_unknown_state_directory_is_exit_3_at_once(self) -> None:
        """A socket elsewhere than ``DIR/run/admin.sock`` given alone: the state directory is
        unknown, and an absent socket is exit 3 at once, as before; ``--state-dir`` names it."""
        self.hold_lock()
        elsewhere = str(self.state / "admin.sock")
        tries = self.admin_api_back_after(2.0)
        self.assertEqual(main(["--socket", elsewhere, "status"]), 3)
        self.assertEqual((self.now, len(tries)), (0.0, 1))
        self.assertEqual(main(["--socket", elsewhere, "status", "--state-dir", str(self.state)]), 0)
        self.assertGreater(self.now, 1.9)

    def test_an_admin_api_that_stays_away_is_exit_1_saying_the_gateway_runs(self) -> None:
        """The lock held for 30 s without a socket (``admin.enabled: false``, or a socket
        elsewhere): exit 1 saying the gateway runs but its admin API does not answer; not 3."""
        self.hold_lock()
        self.admin_api_back_after(1000.0)
        self.assertEqual(main(["--socket", self.socket, "status"]), 1)
        self.assertGreaterEqual(self.now, 30.0)
        self.assertLess(self.now, 31.0)
        last = self.err.getvalue().splitlines()[-1]
        self.assertEqual(last, f"gatewayctl: the gateway runs (a process holds {self.state / 'gateway.lock'}) but"
                               f" its admin API did not answer on {self.socket} within 30 s (admin.enabled false,"
                               " or another admin.socket?)")

    def test_the_state_dir_option_finds_the_socket_under_it(self) -> None:
        """``--state-dir DIR`` alone talks to ``DIR/run/admin.sock``; with no gateway on
        ``DIR`` it is exit 3 at once, naming that socket. It used ``var/run/admin.sock`` of the
        current directory, and waited 30 s there while a gateway ran on ``DIR``."""
        saved = os.environ.pop(ENVIRONMENT, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, ENVIRONMENT, saved)
        self.state = Path(tempfile.mkdtemp(prefix="gwctl-"))  # (a trial path is over bind()'s 107 bytes)
        self.addCleanup(shutil.rmtree, self.state)
        self.socket = str(self.state / "run" / "admin.sock")
        addresses: list[Any] = []
        answer = STATUS_ANSWER

        class Recorded(CannedSocket):
            def connect(self, address: Any) -> None:
                addresses.append(address)
                if address != test_socket:
                    raise FileNotFoundError(2, "No such file or directory")
                self._left = answer

        test_socket = self.socket
        self.patch(socket, "socket", Recorded)
        self.hold_lock()
        self.assertEqual(main(["status", "--state-dir", str(self.state)]), 0)
        self.assertEqual((addresses, self.now), ([self.socket], 0.0))
        other = self.state / "other"
        self.assertEqual(main(["--state-dir", str(other), "status"]), 3)
        self.assertEqual(self.now, 0.0)
        self.assertEqual(self.err.getvalue(), f"gatewayctl: the gateway is not running (no admin socket at"
                                              f" {other / 'run' / 'admin.sock'}: No such file or directory)\n")

    def test_the_packaged_gatewayctl_keeps_the_packaged_socket_for_a_moved_state_dir(self) -> None:
        """The .deb's config sets ``admin.socket: /run/gateway/admin.sock`` whatever its
        ``state_dir``: the .deb's ``gatewayctl --state-dir /data/gw`` (``state_dir`` moved to a
        larger disk) talks to that socket, and to ``DIR/run/admin.sock`` only when there is
        one there (a gateway run by hand with an empty ``admin.socket``). It tried
        ``/data/gw/run/admin.sock`` alone: 30 s waiting for the running gateway, then exit 1
        (before ``--state-dir`` named a socket, the same command worked)."""
        self.patch(paths, "_installation_socket", lambda: PACKAGED_SOCKET)
        moved = Path(tempfile.mkdtemp(prefix="gwctl-"))
        self.addCleanup(shutil.rmtree, moved)
        self.assertEqual(socket_of_state_dir(str(moved)), PACKAGED_SOCKET)
        self.assertEqual(socket_of_state_dir("/var/lib/gateway/"), PACKAGED_SOCKET)
        (moved / "run").mkdir()
        (moved / "run" / "admin.sock").touch()
        self.assertEqual(socket_of_state_dir(str(moved)), str(moved / "run" / "admin.sock"))

    def test_the_state_directory_a_socket_names(self) -> None:
        """``DIR/run/admin.sock`` (an empty ``admin.socket``) is ``DIR``'s, the .deb's socket is
        ``/var/lib/gateway``'s; another socket names none."""
        self.assertEqual([state_dir_of(path) for path in (
            "var/run/admin.sock", "/srv/gw/run/admin.sock", "run/admin.sock", "/run/gateway/admin.sock",
            "/tmp/admin.sock", "/srv/gw/run/other.sock", "/srv/gw/admin.sock")],
            ["var", "/srv/gw", ".", "/var/lib/gateway", None, None, None])


class RefusedSocket(socket.socket):
    """A unix socket whose ``connect`` is refused as the kernel refuses a user outside the
    socket file's group (the tests run as root, whom it never refuses)."""

    def connect(self, address: Any) -> None:
        raise PermissionError(13, "Permission denied")


class PermissionTests(SynchronousTestCase):
    """A user who may not use the admin socket is told so (docs/install.md, "Operate")."""

    def test_refused_socket_names_it_and_who_may(self) -> None:
        """``gatewayctl status`` by a user outside the socket's group exits 1 naming the socket
        and who may use it; it printed only ``[Errno 13] Permission denied``."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.patch(socket, "socket", RefusedSocket)
        self.assertEqual(main(["status", "--socket", "/run/gateway/admin.sock"]), 1)
        self.assertEqual(err.getvalue(), "gatewayctl: no permission to use the admin socket /run/gateway/admin.sock:"
                         " run gatewayctl as root or as a member of the socket's group (the .deb's: gateway)\n")


class CannedSocket(socket.socket):
    """A unix socket whose peer reads the request and answers :attr:`answer`, then closes;
    with ``None`` it never answers (the client's timeout runs out)."""

    answer: bytes | None = b""

    def connect(self, address: Any) -> None:
        self._left = self.answer

    def sendall(self, data: Any, flags: int = 0) -> None:
        pass

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self._left is None:
            raise socket.timeout("timed out")
        piece, self._left = self._left[:size], self._left[size:]
        return piece


class BrokenAnswerTests(SynchronousTestCase):
    """Whatever answers on the socket (a gateway of another version, another program, one
    that dies mid-answer or hangs), gatewayctl says what is wrong on one line and exits 1;
    it printed a traceback for an answer that was not JSON, a chunk size or Content-Length
    that was no number, or JSON of another shape."""

    def setUp(self) -> None:
        self.err = io.StringIO()
        self.patch(sys, "stderr", self.err)
        self.patch(sys, "stdout", io.StringIO())
        self.socket = "/nonexistent/admin.sock"  # never reached: CannedSocket (short: no way through its directory)

    def run_against(self, answer: bytes | None, *args: str) -> tuple[int, str]:
        self.patch(socket, "socket", type("Canned", (CannedSocket,), {"answer": answer}))
        self.err.seek(0)
        self.err.truncate()
        return main(["--socket", self.socket, *args]), self.err.getvalue()

    def test_each_broken_answer_is_one_line_and_exit_1(self) -> None:
        """Each kind of broken answer, for a table command and for ``--json``."""
        json_head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        for answer, says in (
                (b"hello\r\n\r\n", "not an HTTP answer: 'hello'"),
                (b"", "the gateway closed the connection mid-answer"),
                (json_head + b"Content-Length: 50\r\n\r\n{", "the gateway closed the connection mid-answer"),
                (json_head + b"Content-Length: 5\r\n\r\n{nope", "the gateway's answer is not JSON: Expecting"),
                (json_head + b"Content-Length: 1\r\n\r\n\xff", "the gateway's answer is not JSON: "),
                (json_head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                 "the gateway's answer is not HTTP as expected: chunk size b'zz'"),
                (json_head + b"Content-Length: x\r\n\r\n{}", "the gateway's answer is not HTTP as expected: Content-Length 'x'"),
                (json_head + b"Content-Length: -2\r\n\r\n{}", "the gateway's answer is not HTTP as expected: Content-Length '-2'"),
                (json_head + b"Content-Length: 2\r\n\r\n[]", "the gateway's answer is not what this gatewayctl expects"),
                (json_head + b"Content-Length: 11\r\n\r\n{\"apps\": 5}", "the gateway's answer is not what this gatewayctl expects"),
                (None, f"the gateway did not answer within 60 s (on {self.socket})")):
            for command in (["status"], ["apps"], ["config", "get", "a.b"]):
                code, err = self.run_against(answer, *command)
                if "expects" in says and command == ["config", "get", "a.b"] and b"apps" in (answer or b""):
                    says = "the gateway's answer is not what this gatewayctl expects (KeyError: 'value')"
                self.assertEqual(code, 1, (answer, command, err))
                self.assertTrue(err.startswith("gatewayctl: " + says), (answer, command, err))
                self.assertEqual(err.count("\n"), 1, err)

    def test_a_connection_closed_before_the_request_is_taken_is_said_so(self) -> None:
        """A gateway that closes the connection before it has taken the request (its admin API
        stops: the gateway stops, or a configuration change restarts its services) breaks the
        request's sending: gatewayctl says so on one line, exit 1, for ``--json`` too. It took the
        broken pipe for its stdout's reader gone (``gatewayctl apps | head``) and exited 1 saying
        nothing: seen on a real gateway, ``gatewayctl --json status`` during a ``config set``."""
        class Closed(CannedSocket):
            def sendall(self, data: Any, flags: int = 0) -> None:
                raise BrokenPipeError(32, "Broken pipe")

        self.patch(socket, "socket", Closed)
        self.patch(sys, "stdout", io.TextIOWrapper(io.BytesIO()))  # (a followed log writes bytes)
        for command in (["status"], ["--json", "status"], ["apps", "start", "x"], ["config", "set", "a.b", "1"],
                        ["apps", "logs", "x", "-f"]):
            self.err.seek(0)
            self.err.truncate()
            code = main(["--socket", self.socket, *command])
            self.assertEqual((code, self.err.getvalue()),
                             (1, "gatewayctl: the gateway closed the connection before it took the request (its"
                                 " admin API stops: the gateway stops, or a configuration change restarts its"
                                 " services): nothing was done; try again\n"), command)

    def test_a_word_that_is_not_utf8_is_a_usage_error(self) -> None:
        """A name, key or value that is not UTF-8 (the bytes of a file name pasted in) is exit 2
        saying so: it raised UnicodeEncodeError in a path, and in a JSON body it reached the
        gateway as a lone surrogate, which a configuration check took."""
        word = os.fsdecode(b"\xff")
        for args in (["apps", "start", word], ["config", "set", "gateway.device_id", word],
                     ["config", "check", f"{word}=1"], ["report", word], ["uploads", "trigger", word]):
            with self.assertRaises(SystemExit) as raised:
                self.run_against(b"", *args)
            self.assertEqual(raised.exception.code, 2, args)
            self.assertRegex(self.err.getvalue(), r"error: b'[^']*\\xff[^']*' is not UTF-8 text")


class LocaleTests(SynchronousTestCase):
    """gatewayctl's output under a locale whose encoding cannot hold what it prints."""

    def test_text_stdout_cannot_encode_is_escaped(self) -> None:
        """Under ``LC_ALL=C`` with ``PYTHONUTF8=0`` stdout is ASCII, to a pipe or a terminal: an
        upload whose message the cloud wrote in French (``annulé``) ended ``gatewayctl uploads``
        with a UnicodeEncodeError traceback. What the stream's encoding cannot hold is now
        written escaped, as Python writes stderr, and the exit status is 0."""
        out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="surrogateescape")
        self.patch(sys, "stdout", out)
        snapshot = {"uploads": [{"correlationId": "u1", "state": "CANCELED", "progress": 0, "files": [],
                                 "message": "annulé ✓"}], "autoUpload": {"active": False}}
        self.patch(AdminClient, "get", lambda client, path, params=None: snapshot)
        self.assertEqual(main(["--socket", str(Path(self.mktemp()).resolve() / "none.sock"), "uploads"]), 0)
        out.flush()
        self.assertIn(b"u1      CANCELED  0%        0      annul\\xe9 \\u2713\n", out.buffer.getvalue())


    def test_a_word_in_utf8_under_an_ascii_locale_is_sent_as_text(self) -> None:
        """Under ``LC_ALL=C`` with ``PYTHONUTF8=0`` Python holds a UTF-8 word (``annulé``, typed
        in a UTF-8 terminal) as surrogate escapes: ``gatewayctl apps stop annulé`` was exit 2,
        ``b'annul\\xc3\\xa9' is not UTF-8 text``, which it is. Now its bytes are read as
        UTF-8: the request names ``annul%C3%A9`` and the gateway's answer is printed escaped."""
        path = f"/tmp/gwctl-{os.getpid()}-locale.sock"
        self.addCleanup(Path(path).unlink, True)
        server = socket.socket(socket.AF_UNIX)
        self.addCleanup(server.close)
        server.bind(path)
        server.listen(1)
        server.settimeout(30)
        body = json.dumps({"error": "no app or program 'annul\u00e9'"}).encode()
        answer = (b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        requests: list[bytes] = []

        def serve() -> None:
            connection, _ = server.accept()
            with connection:
                connection.settimeout(30)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(4096)
                head, _, body = request.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                while length and len(body) < int(length.group(1)):  # all of it: unread data closes with a reset
                    body += connection.recv(4096)
                requests.append(request)
                connection.sendall(answer)
                connection.shutdown(socket.SHUT_WR)
                while connection.recv(4096):  # until gatewayctl has read the answer and closed
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
        done = subprocess.run([sys.executable, GATEWAYCTL, "--socket", path, "apps", "stop", "annulé"],
                              env=env, capture_output=True, timeout=30)
        thread.join(5)  # it answered before gatewayctl ended, if gatewayctl asked at all
        self.assertEqual((done.returncode, done.stderr), (1, b"gatewayctl: no app or program 'annul\\xe9'\n"))
        self.assertTrue(requests[0].startswith(b"POST /apps/annul%C3%A9/stop "), requests)

    def test_a_path_the_locale_cannot_decode_shows_its_bytes(self) -> None:
        """Under ``LC_ALL=C`` with ``PYTHONUTF8=0`` a path given in UTF-8
        (``/…/répertoire/gateway.yaml``) reaches Python as surrogate escapes, and the output
        showed them as such (``r\\udcc3\\udca9pertoire``, in ``check-config``'s line as in
        twistd's ``gateway started`` line): they show as the bytes they are
        (``r\\xc3\\xa9pertoire``), text the locale cannot hold as before (``\\xe9``)."""
        directory = Path(self.mktemp()).resolve() / "r\u00e9pertoire"
        directory.mkdir(parents=True)
        (directory / "gateway.yaml").write_text("gateway:\n  device_id: gw\n")
        env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}
        done = subprocess.run([sys.executable, GATEWAYCTL, "check-config", "--config",
                               os.fsencode(directory / "gateway.yaml")], env=env, capture_output=True, timeout=30)
        shown = str(directory.parent).encode() + b"/r\\xc3\\xa9pertoire/gateway.yaml"
        self.assertEqual((done.returncode, done.stdout), (0, b"configuration OK: " + shown + b"\n"), done.stderr)


class JournalCommandTests(SynchronousTestCase):
    """``gatewayctl journal``: the streams (as ``queue``, with an ``in use`` column when one is
    not), and ``journal drop NAME [--force]`` as ``DELETE /journal/NAME[?force=true]``."""

    def setUp(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)
        self.socket = str(Path(self.mktemp()).resolve() / "none.sock")  # never reached

    def test_the_listing_says_which_streams_are_not_in_use(self) -> None:
        """A stream no configured link uses shows ``no`` in an ``in use`` column."""
        stream = {"name": "link-cloud", "records": 3, "bytes": 2048, "free_bytes": 2**30,
                  "oldest_unacked_age_s": 5.0, "cursors": [{"name": "cloud", "acked": 3, "unacked": 0}],
                  "in_use": True}
        old = {**stream, "name": "link-old", "in_use": False}
        self.patch(AdminClient, "get", lambda client, path, params=None: {"directory": "/j", "streams": [stream, old]})
        self.assertEqual(main(["--socket", self.socket, "journal"]), 0)
        self.assertEqual(self.out.getvalue().splitlines(), [
            "stream      records  size     waiting  oldest waiting  free disk  in use",
            "link-cloud  3        2.0 KiB  0        5s              1.0 GiB    yes",
            "link-old    3        2.0 KiB  0        5s              1.0 GiB    no"])

    def test_drop(self) -> None:
        """``journal drop NAME`` sends a DELETE of the quoted name, with ``force`` only when
        asked; a refusal is its words and exit 1; no NAME is a usage error."""
        asked: list[tuple[str, Any]] = []

        def delete(client: AdminClient, path: str, params: Any = None, timeout: Any = -1.0) -> Any:
            asked.append((path, params))
            if not params:
                raise ApiFailure(409, {"error": "journal stream 'link-old' holds 2 records not acknowledged"})
            return {"name": "link-old", "action": "drop", "ok": True, "lost": 2, "lost_bytes": 100}

        self.patch(AdminClient, "delete", delete)
        self.assertEqual(main(["--socket", self.socket, "journal", "drop", "link-old"]), 1)
        self.assertIn("gatewayctl: journal stream 'link-old' holds 2 records not acknowledged", self.err.getvalue())
        self.assertEqual(main(["--socket", self.socket, "journal", "drop", "link-old", "--force"]), 0)
        self.assertEqual(self.out.getvalue(), "link-old: dropped, 2 records not acknowledged counted lost (dropped)\n")
        self.assertEqual(asked, [("/journal/link-old", None), ("/journal/link-old", {"force": "true"})])
        self.patch(AdminClient, "delete", lambda *_, **__: {"name": "link-1", "action": "drop", "ok": True,
                                                            "lost": 1, "lost_bytes": 50})
        self.assertEqual(main(["--socket", self.socket, "journal", "drop", "link-1", "--force"]), 0)
        self.assertEqual(self.out.getvalue().splitlines()[-1],
                         "link-1: dropped, 1 record not acknowledged counted lost (dropped)", "not '1 records'")
        with self.assertRaises(SystemExit) as raised:
            main(["--socket", self.socket, "journal", "drop"])
        self.assertEqual(raised.exception.code, 2)
