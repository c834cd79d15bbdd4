"""``twistd gateway`` as a real process: start, serve, SIGTERM, check-config, clear failures."""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from gateway.admin.client import AdminClient, NotRunning
from tests.apps.realtime import wait_until
from tests.gatewayprocess import GatewayProcess, runs_as, spawn_gateway
from tests.ports import closed_port, free_port
from tests.mqttclient import TestClient

#: A ``sitecustomize`` module that, once the gateway's reactor runs, puts a call in the
#: reactor's thread pool that never returns (and says so in the file @MARKER@).
STUCK_POOL_THREAD = """\
import sys, threading, time


def _stick():
    while True:
        r = sys.modules.get("twisted.internet.reactor")
        if r is not None and getattr(r, "running", False):
            r.callFromThread(r.callInThread, _block)
            return
        time.sleep(0.05)


def _block():
    open("@MARKER@", "w").close()
    threading.Event().wait()


threading.Thread(target=_stick, daemon=True).start()
"""


#: A CONNECT (client id ``c<n>`` to fill in, clean session, keep-alive 60 s).
CONNECT = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 2]) + b"c%d"


def answered(port: int, number: int) -> tuple[socket.socket, bool]:
    """Connect and send CONNECT ``c<number>``: the socket, and whether a CONNACK came (else
    the gateway closed the connection unanswered)."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        client.sendall(CONNECT % number)
        return client, len(client.recv(4)) == 4
    except ConnectionError:
        return client, False


def admin_answered(path: str, number: int) -> tuple[socket.socket, bool]:
    """Connect to the admin API's unix socket ``path`` and send an HTTP request: the socket
    (kept alive by HTTP/1.1), and whether an answer came (else the gateway closed the
    connection unanswered)."""
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(5)
    try:
        client.connect(path)
        client.sendall(b"GET /status?n%d HTTP/1.1\r\nHost: gw\r\n\r\n" % number)
        return client, client.recv(5) == b"HTTP/"
    except ConnectionError:
        return client, False


def served(port: Any, within: float = 10.0, ask: Callable[[Any, int], tuple[socket.socket, bool]] = answered) -> bool:
    """Whether a client connecting to ``port`` gets its CONNACK (or ``ask``'s answer), trying
    again for ``within`` seconds: clients that just closed may still hold the gateway's
    descriptors until it has read their ends (a loaded machine: the first try was refused in a
    full suite run)."""
    deadline = time.monotonic() + within
    while True:
        client, got = ask(port, 999)
        client.close()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def settled_descriptors(pid: int, within: float = 10.0) -> int:
    """How many descriptors the process ``pid`` has open once that number has stayed the same
    for half a second (or after ``within`` seconds): just started, a gateway still holds some
    for a moment (its ``nft`` runs' pipes, files being read); a limit set on such a count left
    it room for every client of a full suite run's test, none refused."""
    deadline = time.monotonic() + within
    counts: list[int] = []
    while True:
        counts = [*counts[-4:], len(os.listdir(f"/proc/{pid}/fd"))]
        if (len(counts) == 5 and len(set(counts)) == 1) or time.monotonic() > deadline:
            return counts[-1]
        time.sleep(0.1)


def out_of_descriptors(pid: int, path: str, refusals: int) -> tuple[list[socket.socket], int]:
    """Lower the process ``pid``'s descriptor limit to what it has open and 3 more, take those
    with clients of the admin API's unix socket ``path`` (holding them, however many the limit
    leaves room for), then connect ``refusals`` times more, a client at a time. (The admin socket: the one listener that keeps
    no reserve of descriptors, so that ``gatewayctl`` reaches a flooded gateway; the others close
    new clients before the limit.)

    :return: the clients held, and how many of the others were closed unanswered.
    """
    _, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (settled_descriptors(pid) + 3, hard))
    held: list[socket.socket] = []
    for number in range(200):
        client, served = admin_answered(path, number)
        if not served:
            client.close()
            break
        held.append(client)
    refused = 0
    for number in range(refusals):
        client, served = admin_answered(path, 1000 + number)
        client.close()
        refused += not served
    return held, refused


class TwistdTests(TestCase):
    """The gateway process as systemd and a user see it."""

    timeout = 60

    def run_twistd(self, *args: str, ready_line: bytes = b"gateway started",
                   env: dict[str, str] | None = None, uid: int | None = None) -> GatewayProcess:
        return spawn_gateway(self, reactor, *args, ready_line=ready_line, env=env, uid=uid)

    def write_config(self, text: str) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "gateway.yaml"
        if "telemetry:" not in text:  # /metrics off unless the test asks (no fixed port in tests)
            text += "telemetry:\n  metrics_endpoint: ''\n"
        if "ingest:" not in text:  # likewise the HTTP ingest (its default 8090 may be taken)
            text += "ingest:\n  enabled: false\n"
        path.write_text(text.replace("@STATE@", str(directory / "state")))
        return path

    @inlineCallbacks
    def test_start_serve_and_sigterm(self):
        """Starts from --config, serves MQTT, and on SIGTERM stops cleanly within 5 s (status 143)."""
        port = free_port()
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"apps:\n  programs:\n    sleeper:\n      command: /bin/sleep {port + 100000}\n      startsecs: 0\n")
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        # (the app runs behind a short-lived launcher: it may exec a moment after "gateway started")
        yield wait_until(lambda: self.app_running(port), 10)
        self.assertTrue((config.parent / "state").is_dir())
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        self.assertEqual((yield client.connect(port)), 0)
        yield client.subscribe("t/#", 1)
        yield client.publish("t/1", b"through twistd", 1)
        self.assertEqual((yield client.next_message()).payload, b"through twistd")
        started = time.monotonic()
        proc.transport.signalProcess("TERM")
        status = yield proc.ended.addTimeout(10, reactor)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual((status.exitCode, status.signal), (None, signal.SIGTERM), proc.output.decode())
        self.assertIn(b"gateway shutdown completed", proc.output)
        self.assertFalse(self.app_running(port), "the hosted app outlived the gateway")

    @inlineCallbacks
    def test_sigterm_leaves_no_program_slower_than_shutdown_timeout(self):
        """A hosted program that ignores SIGTERM, with a stopwaitsecs longer than
        gateway.shutdown_timeout: on SIGTERM the gateway ends within about the timeout and
        nothing of the program's group is left (docs/apps.md: a gateway that is stopped stops
        its programs first; grandchildren never leak). The gateway moved on after the
        timeout and exited: its launcher's death signal killed the program's main process,
        and its child ran on, orphaned."""
        port = free_port()
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        script = work / "stubborn.sh"
        script.write_text(f"trap '' TERM\n/bin/sleep {port + 100000} &\nwhile :; do sleep 1; done\n")
        config = self.stubborn_program_config(port, script, shutdown_timeout=1.0)
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        yield wait_until(lambda: self.app_running(port), 10)
        started = time.monotonic()
        proc.transport.signalProcess("TERM")
        status = yield proc.ended.addTimeout(20, reactor)
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual((status.exitCode, status.signal), (None, signal.SIGTERM), proc.output.decode())
        self.assertIn(b"apps did not stop within 1.0 s", proc.output)
        # SIGKILL is sent before the gateway exits; its delivery to the group is the kernel's.
        yield wait_until(lambda: not self.app_running(port), 2, what="no process of the program left")

    def stubborn_program_config(self, port: int, script: Path, shutdown_timeout: float) -> Path:
        """A gateway config with its broker on ``port`` and one program, ``/bin/sh script``,
        that may take 30 s to stop while the gateway waits ``shutdown_timeout`` for each service."""
        return self.write_config(
            f"gateway:\n  state_dir: '@STATE@'\n  shutdown_timeout: {shutdown_timeout}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n  app_accounting: 'off'\n"
            f"apps:\n  programs:\n    stubborn:\n      command: /bin/sh {script}\n      startsecs: 0\n"
            "      stopwaitsecs: 30\n")

    @inlineCallbacks
    def test_second_sigterm_while_stopping_is_one_line(self):
        """A second SIGTERM while the gateway is already stopping (a program slow to stop holds
        it up) is logged as one line, "already stopping", and the gateway still ends by the
        signal once its services have stopped. It logged a ReactorNotRunning traceback."""
        port = free_port()
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        script = work / "stubborn.sh"
        script.write_text("trap '' TERM\nwhile :; do sleep 1; done\n")
        config = self.stubborn_program_config(port, script, shutdown_timeout=2.0)
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        marker = ["/bin/sh", str(script)]
        yield wait_until(lambda: any(p.info["cmdline"] == marker for p in psutil.process_iter(["cmdline"])), 10,
                         what="the program running")
        proc.transport.signalProcess("TERM")
        yield wait_until(lambda: b"Received SIGTERM" in proc.output, 5, what="the first SIGTERM logged")
        proc.transport.signalProcess("TERM")
        status = yield proc.ended.addTimeout(20, reactor)
        output = proc.output.decode()
        self.assertEqual((status.exitCode, status.signal), (None, signal.SIGTERM), output)
        self.assertNotIn("ReactorNotRunning", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(output.count("already stopping"), 1, output)
        self.assertEqual(output.count("Received SIGTERM"), 1, output)
        self.assertIn("gateway shutdown completed", output)

    @inlineCallbacks
    def test_a_log_line_the_locale_cannot_encode_is_written_escaped(self):
        """Under a locale that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``; a Latin-1
        ``LANG`` in ``/etc/default/locale`` alike) twistd's ``--logfile=-`` (the Debian unit's)
        writes to an ASCII stdout: a log line holding other text (an upload id the cloud sent,
        ``annulé``) failed in the log observer and was lost without a trace, the lines around
        it kept. It is written with that text escaped, as Python writes stderr."""
        port = free_port()
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n")
        env = {name: value for name, value in os.environ.items() if not name.startswith(("LC_", "LANG", "PYTHON"))}
        env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONPATH=os.environ.get("PYTHONPATH", ""))
        proc = self.run_twistd("--nodaemon", "--pidfile=", "--logfile=-", "gateway", "--config", str(config), env=env)
        yield proc.ready.addTimeout(30, reactor)
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        self.assertEqual((yield client.connect(port)), 0)
        yield client.publish("edge/gateway/uploads/cancel", json.dumps({"correlationId": "annul\u00e9"}).encode(), 1)
        # (a second refused cancel within 10 s is counted, not logged: another request's line follows)
        yield client.publish("edge/gateway/reports/request", b"plain", 1)
        yield wait_until(lambda: b"unknown report 'plain'" in proc.output and b"ID 'annul" in proc.output, 10,
                         what="the ASCII line logged")
        self.assertIn(b"refused upload operation cancel: upload with correlation ID 'annul\\xe9' not found ("
                      b"logged at most once every 10 s while they go on)\n", proc.output)

    @inlineCallbacks
    def test_non_ascii_names_under_the_units_environment(self):
        """The Debian unit sets no locale (no LANG, no LC_*): Python then runs in its UTF-8 mode.
        A config with a byte order mark in a directory whose name has a space and ``é``; the
        state directory, ``journal.directory`` and an app's ``directory`` so named; a
        non-ASCII ``device_id``, an app writing ``héllo`` and an RTL mark; an MQTT client
        id, user name and topics of multi-byte UTF-8, U+FEFF and U+202E: each works and
        shows as the UTF-8 it is, in the log, the app's log file, the admin API and MQTT."""
        port = free_port()
        top = Path(self.mktemp()).resolve() / "r\u00e9per toire"
        top.mkdir(parents=True)
        (top / "d\u00e9p\u00f4t").mkdir()
        config = top / "gateway.yaml"
        config.write_bytes(b"\xef\xbb\xbf" + (
            f"gateway:\n  state_dir: '{top}/\u00e9tat dir'\n  device_id: passerelle-\u00e9\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "journal:\n  directory: j\u00f6urnal dir\n"
            "apps:\n  programs:\n    talker:\n"
            f"      command: \"/bin/sh -c 'echo h\u00e9llo $GREETING \u202ertl; exec /bin/sleep {port + 100000}'\"\n"
            f"      directory: '{top}/d\u00e9p\u00f4t'\n      environment: {{GREETING: gr\u00fc\u00df}}\n"
            "      startsecs: 0\ntelemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n").encode())
        env = {"PATH": os.environ["PATH"], "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        proc = self.run_twistd("--nodaemon", "--pidfile=", "--logfile=-", "gateway", "--config", str(config), env=env)
        yield proc.ready.addTimeout(30, reactor)
        state = top / "\u00e9tat dir"
        self.assertIn(f"state under {state}\n".encode(), proc.output)
        client = TestClient(reactor, client_id="cl\u00efent-\u65e5\u672c")
        self.addCleanup(client.stop)
        client.client.username_pw_set("\u00fcser", "p\u00e4ss")
        self.assertEqual((yield client.connect(port)), 0)
        topic = "telemetry/\u00e9/\ufeff/\u202eabc/\u65e5"
        yield client.subscribe("telemetry/#", 1)
        yield client.publish(topic, "v\u00e2leur".encode(), 1)  # acknowledged once in the journal
        message = yield client.next_matching(lambda m: m.topic == topic)
        self.assertEqual(message.payload, "v\u00e2leur".encode())
        self.assertTrue(any((state / "j\u00f6urnal dir").iterdir()))
        log = state / "logs" / "apps" / "talker.log"
        yield wait_until(lambda: log.exists() and log.read_bytes(), 10, what="the app's output")
        self.assertEqual(log.read_bytes(), "h\u00e9llo gr\u00fc\u00df \u202ertl\n".encode())
        admin = AdminClient(str(state / "run" / "admin.sock"), state_dir=str(state))
        gateway = yield deferToThread(admin.get, "/config", {"key": "gateway.device_id"})
        self.assertIn("passerelle-\u00e9", json.dumps(gateway, ensure_ascii=False))
        proc.transport.signalProcess("TERM")
        yield proc.ended.addTimeout(15, reactor)
        self.assertNotIn(b"Traceback", proc.output)
        proc.output.decode("utf-8")  # (strict: no mojibake, no lone surrogate written raw)

    @inlineCallbacks
    def test_a_pool_thread_stuck_for_ever_does_not_hold_the_exit(self):
        """A thread of the reactor's pool stuck in a blocking call that never returns (a read
        of a hung disk or of a named pipe nobody writes): on SIGTERM the services stop, and the
        process ends EXIT_GRACE seconds later with status 1, naming the threads still running.
        Twisted's thread-pool join after the stop waited for it for ever, past the unit's
        TimeoutStopSec, so systemd killed the gateway. (The stuck call is put in the pool by a
        ``sitecustomize`` module on the gateway's PYTHONPATH, as soon as its reactor runs.)"""
        port = free_port()
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            f"apps:\n  programs:\n    talker:\n      command: /bin/sleep {port + 100000}\n"
            "      startsecs: 0\n")
        hooks = config.parent / "hooks"
        hooks.mkdir()
        stuck = config.parent / "stuck"
        (hooks / "sitecustomize.py").write_text(STUCK_POOL_THREAD.replace("@MARKER@", str(stuck)))
        env = os.environ.copy()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hooks), env.get("PYTHONPATH", "")) if p)
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config), env=env)
        yield proc.ready.addTimeout(30, reactor)
        yield wait_until(stuck.exists, 10, what="a thread of the pool stuck")
        proc.transport.signalProcess("TERM")
        status = yield proc.ended.addTimeout(30, reactor)
        output = proc.output.decode()
        self.assertEqual((status.exitCode, status.signal), (1, None), output)
        self.assertIn("gateway shutdown completed", output)
        self.assertIn("ending it now, with status 1; still running: PoolThread-twisted.internet.reactor-", output)
        self.assertFalse(self.app_running(port), "the hosted app outlived the gateway")

    @staticmethod
    def app_running(port: int) -> bool:
        """Whether the test's hosted app (``sleep <port + 100000>``) is alive."""
        marker = ["/bin/sleep", str(port + 100000)]
        return any(p.info["cmdline"] == marker for p in psutil.process_iter(["cmdline"]))

    @inlineCallbacks
    def test_check_config(self):
        """--check-config exits 0 for a good config, 1 listing every problem for a bad one."""
        good = self.run_twistd("gateway", "--check-config", ready_line=b"configuration OK")
        status = yield good.ended
        self.assertEqual(status.exitCode, 0, good.output.decode())
        bad = self.run_twistd("gateway", "--config", str(self.write_config("gateway:\n  colour: red\n  state_dir: [1]\n")),
                              "--check-config", ready_line=b"invalid configuration")
        status = yield bad.ended
        self.assertEqual(status.exitCode, 1)
        self.assertIn(b"gateway.colour: unknown key", bad.output)
        self.assertIn(b"gateway.state_dir: must be a path", bad.output)

    @inlineCallbacks
    def test_check_config_names_the_dropins(self):
        """--check-config's OK line names the drop-ins merged, in their order, not a hidden file
        beside them (docs/configuration.md); an error set in a drop-in names that file."""
        config = self.write_config("gateway:\n  device_id: main\n")
        conf_d = config.parent / "conf.d"
        conf_d.mkdir()
        (conf_d / "90-remote.yaml").write_text("gateway:\n  device_id: remote\n")
        (conf_d / "50-site.yaml").write_text("gateway:\n  tenant_id: site\n")
        (conf_d / ".70-hidden.yaml").write_text("gateway:\n  colour: red\n")
        proc = self.run_twistd("gateway", "--config", str(config), "--check-config", ready_line=b"configuration OK")
        status = yield proc.ended.addTimeout(30, reactor)
        self.assertEqual((status.exitCode, proc.output.decode()),
                         (0, f"gateway: configuration OK: {config} + conf.d/50-site.yaml, conf.d/90-remote.yaml\n"))
        (conf_d / "50-site.yaml").write_text("gateway:\n  shutdown_timeout: '7'\n")
        proc = self.run_twistd("gateway", "--config", str(config), "--check-config", ready_line=b"invalid")
        status = yield proc.ended.addTimeout(30, reactor)
        self.assertEqual((status.exitCode, proc.output.decode().splitlines()), (1, [
            "gateway: invalid configuration:",
            f"  {conf_d / '50-site.yaml'}: gateway.shutdown_timeout: must be a number, not the text '7'"]))

    @inlineCallbacks
    def test_check_config_not_utf8(self):
        """--check-config of a file that is not UTF-8 prints one error line (no traceback), exits 1;
        so does ``gatewayctl check-config``, and both list a links section that cannot start."""
        config = self.write_config("")
        config.write_bytes(b"gateway:\n  device_id: caf\xe9\n")
        proc = self.run_twistd("gateway", "--config", str(config), "--check-config", ready_line=b"UTF-8")
        status = yield proc.ended.addTimeout(30, reactor)
        self.assertEqual(status.exitCode, 1, proc.output.decode(errors="replace"))
        self.assertEqual(proc.output.decode().splitlines(), [
            "gateway: invalid configuration:",
            f"  {config}: line 2: not valid UTF-8 (byte 0xe9 at offset 25); save the file as UTF-8"])
        # Run by this Python: in the package build the script's shebang names the installed path.
        ctl = yield getProcessOutputAndValue(sys.executable, [str(Path(sys.executable).parent / "gatewayctl"),
                                             "check-config", "--config", str(config)], env=os.environ.copy())
        self.assertEqual((ctl[0], ctl[2]), (b"", 1), ctl)
        self.assertNotIn(b"Traceback", ctl[1])
        self.assertIn(f"{config}: line 2: not valid UTF-8".encode(), ctl[1])
        config.write_text("links:\n  links:\n    cloud:\n      endpoint: 'tls:host=h:port=8883'\n"
                          "      ca_file: /nonexistent/ca.pem\n      routes:\n"
                          "        - {filter: 'bad/#/filter', topic: 'up/{nonsense}'}\n")
        proc = self.run_twistd("gateway", "--config", str(config), "--check-config", ready_line=b"invalid")
        status = yield proc.ended.addTimeout(30, reactor)
        self.assertEqual(status.exitCode, 1, proc.output.decode())
        self.assertEqual(len(proc.output.decode().splitlines()), 4, proc.output.decode())
        self.assertNotIn(b"Traceback", proc.output)
        self.assertIn(b"links.links.cloud.routes.0.filter", proc.output)
        self.assertIn(b"links.links.cloud.routes.0.topic", proc.output)
        self.assertIn(b"links.links.cloud.ca_file", proc.output)

    @inlineCallbacks
    def test_wrong_reactor_is_refused(self):
        """An incompatible --reactor is refused with a clear message."""
        proc = self.run_twistd("--reactor=poll", "--nodaemon", "--pidfile=", "gateway", ready_line=b"asyncio")
        status = yield proc.ended.addTimeout(30, reactor)
        self.assertNotEqual(status.exitCode, 0)
        self.assertIn(b"needs Twisted's asyncio reactor", proc.output)

    @inlineCallbacks
    def test_start_failure_exits_non_zero(self):
        """A listener that cannot bind makes the process log why and exit 1."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = self.write_config(
                "gateway:\n  state_dir: '@STATE@'\n"
                f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n")
            proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config),
                                   ready_line=b"failed to start")
            status = yield proc.ended.addTimeout(30, reactor)
        self.assertEqual(status.exitCode, 1, proc.output.decode())
        self.assertIn(b"listener default", proc.output)

    @inlineCallbacks
    def test_start_failure_leaves_no_pid_file(self):
        """A start that fails exits 1 once twistd is done, as a stop is: its pid file removed,
        "Server Shut Down." logged. It left the pid file behind, naming a process that was
        gone (a later twistd refuses to start while another process has that pid)."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = self.write_config(
                "gateway:\n  state_dir: '@STATE@'\n"
                f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
                "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n  app_accounting: 'off'\n")
            pidfile = config.parent / "twistd.pid"
            proc = self.run_twistd("--nodaemon", f"--pidfile={pidfile}", "gateway", "--config", str(config),
                                   ready_line=b"failed to start")
            yield proc.ready.addTimeout(30, reactor)
            # (twistd writes the pid file before it starts the services; not checked here that
            # it is still there: under load twistd may have removed it when the line is read)
            status = yield proc.ended.addTimeout(30, reactor)
        self.assertEqual(status.exitCode, 1, proc.output.decode())
        self.assertFalse(pidfile.exists(), "the pid file was left behind")
        self.assertIn(b"Server Shut Down.", proc.output)

    @inlineCallbacks
    def test_state_dir_that_cannot_be_created_exits_non_zero(self):
        """docs/configuration.md: a state directory that cannot be created makes the gateway
        log the reason and exit 1. Under a file it ended in a traceback (the pending config
        change was looked for first); wherever it failed, the gateway logged the reason
        and then ran on without its services, never exiting. (Under a file is now found by the
        configuration's check, before anything starts: a configuration error, exit 1.)"""
        config = self.write_config("ingest:\n  enabled: false\n")
        blocker = config.parent.resolve() / "a-file"
        blocker.write_text("not a directory\n")
        for state in (blocker / "state", Path("/proc/gateway-test-state")):
            config.write_text(f"gateway:\n  state_dir: '{state}'\ningest:\n  enabled: false\n"
                              "telemetry:\n  metrics_endpoint: ''\n"
                              f"broker:\n  listeners:\n    default:\n      endpoint: 'unix:{config.parent}/mqtt.sock'\n")
            under_a_file = state.parent == blocker
            proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config),
                                   ready_line=b"Not a directory" if under_a_file else b"failed to start")
            status = yield proc.ended.addTimeout(30, reactor)
            self.assertEqual(status.exitCode, 1, proc.output.decode())
            said = (f"gateway.state_dir: '{state}' cannot be used: Not a directory" if under_a_file else
                    f"gateway failed to start: cannot create the state directory {state}")
            self.assertIn(said.encode(), proc.output)
            self.assertNotIn(b"Traceback", proc.output)

    @inlineCallbacks
    def test_a_file_root_left_in_the_state_stops_the_start_and_stays(self):
        """After ``sudo twistd gateway`` (docs/configuration.md, gateway.state_dir): a cursor root
        wrote (mode 0640) in the state directory of a gateway run as another user. The start
        stops in one line naming it, its owner and mode, and the chown that sets it right; the
        file stays. The journal moved it aside to ``cloud.json.damaged`` and the link would have
        sent everything again."""
        nobody = 65534
        if not runs_as(nobody):
            raise self.skipTest("needs root and setpriv: to leave a file root owns, and to run the gateway as"
                                " another user")
        # In a directory of its own under /tmp, open to the other user: the test's own temporary
        # directory may lie below one only its user may enter (the package build's does).
        top = Path(tempfile.mkdtemp(prefix="gateway-test-", dir="/tmp"))
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, 0o755)
        state = top / "state"
        config = top / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: '{state}'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "telemetry:\n  metrics_endpoint: ''\n  app_accounting: 'off'\ningest:\n  enabled: false\n")
        cursor = state / "journal" / "link-cloud" / "cursors" / "cloud.json"
        cursor.parent.mkdir(parents=True)
        for directory in (state, state / "journal", cursor.parent.parent, cursor.parent):
            os.chown(directory, nobody, nobody)
        os.chmod(state, 0o750)
        cursor.write_text('{"acked": 7}')
        os.chmod(cursor, 0o640)
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config), uid=nobody,
                               ready_line=b"failed to start")
        status = yield proc.ended.addTimeout(30, reactor)
        output = proc.output.decode()
        self.assertEqual(status.exitCode, 1, output)
        user = pwd.getpwuid(nobody).pw_name
        self.assertIn(f"gateway failed to start: {cursor} (owner root, mode 0640) may not be used by the gateway's"
                      f" user {user}: chown -R {user}: {state} and start again", output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(sorted(os.listdir(cursor.parent)), ["cloud.json"])

    @inlineCallbacks
    def test_operations_that_cannot_be_listed_at_start_are_said_and_the_gateway_serves(self):
        """A file where the state's ``updates`` and ``uploads/operations`` directories belong
        (damage from outside): the gateway starts and serves, and its log says, for each, that
        the operations there cannot be listed and it starts without them (docs/updates.md, On
        disk; docs/uploads.md, Statuses). It started without them and said nothing: unfinished
        operations were forgotten unseen."""
        port = free_port()
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n")
        state = config.parent / "state"
        (state / "uploads").mkdir(parents=True)
        for blocker in (state / "updates", state / "uploads" / "operations"):
            blocker.write_text("not a directory\n")
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        self.assertTrue(served(port))
        for directory in (state / "updates" / "operations", state / "uploads" / "operations"):
            self.assertIn(f"cannot list the operations in {directory.resolve()} (Not a directory): starting without"
                          " them; they are read at the next start that can list them", proc.output.decode())
        self.assertEqual((state / "updates").read_text(), "not a directory\n")

    @inlineCallbacks
    def test_a_twin_that_cannot_write_at_start_serves_and_the_gateway_with_it(self):
        """A file where the state's ``twin`` directory belongs (as a disk full or read-only at
        boot, the twin cannot write its file): the gateway starts and serves, the twin answers a
        change 503, and its log says it cannot write (docs/twin.md, Durability). The twin's
        first write (the gateway's own thing) failed its start, and the gateway's:
        'gateway failed to start: [Errno 17] File exists: .../twin', exit 1."""
        port = free_port()
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n  device_id: gw1\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n")
        state = config.parent / "state"
        state.mkdir()
        (state / "twin").write_text("not a directory\n")
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        self.assertIn(f"twin: cannot write {(state / 'twin' / 'things.json').resolve()} ([Errno 17] File exists:",
                      proc.output.decode())
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(port)
        yield client.subscribe("command///req/#", 1)
        yield client.publish("e", json.dumps({"topic": "default/gw1/things/twin/commands/modify", "path": "/attributes/a",
                                              "value": 1, "headers": {"correlation-id": "c1"}}).encode(), 1)
        answer = yield client.next_message()
        self.assertEqual((answer.topic, json.loads(answer.payload)["status"]), ("command///req//errors-response", 503))
        self.assertEqual((state / "twin").read_text(), "not a directory\n")

    @inlineCallbacks
    def test_a_link_added_on_a_full_disk_starts_and_stops(self):
        """The state directory's filesystem full at start (a 16 MiB tmpfs, filled), with a cloud
        link the journal has no stream for yet, and no lock file (a first start): the gateway
        starts and serves, saying the link's cursor is not on disk (docs/journal.md), and
        SIGTERM stops it cleanly. The lock file's pid went up through twistd as a traceback
        ('OSError: [Errno 28] No space left on device', exit 1); past it, the cursor's first
        write failed the link's start and the gateway's ('gateway failed to start:
        FirstError[#0, [Failure instance: ...'), then 'stopping journal failed' with a
        traceback."""
        from tests.tmpfs import fill_up, mount_tmpfs

        port = free_port()
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={closed_port(self)}'\n")
        state = (config.parent / "state").absolute()
        mount_tmpfs(self, state, "16m")
        os.chmod(state, 0o750)
        fill_up(state / "filler")
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        self.assertTrue(served(port))
        self.assertIn("journal link-cloud: cursor cloud is not on disk ([Errno 28] No space left on device):"
                      " it is written with its next save the disk takes", proc.output.decode())
        proc.transport.signalProcess("TERM")
        status = yield proc.ended.addTimeout(10, reactor)
        self.assertEqual((status.exitCode, status.signal), (None, signal.SIGTERM), proc.output.decode())
        self.assertNotIn("stopping journal failed", proc.output.decode())
        self.assertNotIn("Traceback", proc.output.decode())

    @inlineCallbacks
    def test_second_gateway_on_the_same_state_dir_refuses_to_start(self):
        """A second gateway on a state directory in use (other ports) logs why and exits 1
        before it touches anything: the first one's hosted program runs on, the same
        process, still recorded in apps/processes.json. It started its journal, broker and
        apps on the first one's files, stopped the first one's program as left over from a
        crash, and only its admin socket refused it. While the first one stops (a program
        that ignores SIGTERM holds it for a second), its lock file says so, and the admin
        client (gatewayctl) says it is stopping at once; it said a configuration change
        restarted the admin API and waited for the stop's end. The first one starts past a pid
        file naming a live process that is no gateway (its pid taken since a gateway died):
        twistd refused ('Another twistd server is running')."""
        port = free_port()
        program = (f"apps:\n  programs:\n    sleeper:\n      command: /bin/sleep {port + 100000}\n      startsecs: 0\n"
                   f"    stubborn:\n      command: /bin/sh -c \"trap '' TERM; exec /bin/sleep {port + 200000}\"\n"
                   "      startsecs: 0\n      stopwaitsecs: 1\n")
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            f"ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n  app_accounting: 'off'\n{program}")
        other = subprocess.Popen(["sleep", "60"])  # (holds the pid the stale pid file names)
        self.addCleanup(other.wait)
        self.addCleanup(other.kill)
        pidfile = config.parent / "twistd.pid"
        pidfile.write_text(f"{other.pid}\n")
        first = self.run_twistd("--nodaemon", f"--pidfile={pidfile}", "gateway", "--config", str(config))
        yield first.ready.addTimeout(30, reactor)
        self.assertIn(f"removed the stale pid file {pidfile}: pid {other.pid} is no gateway".encode(), first.output)
        yield wait_until(lambda: self.app_pid(port) is not None, 10)
        app = self.app_pid(port)
        records = (config.parent / "state" / "apps" / "processes.json").read_text()
        second_config = config.parent / "second.yaml"
        second_config.write_text(config.read_text().replace(f"tcp:{port}:", f"tcp:{free_port()}:"))
        second = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(second_config),
                                 ready_line=b"failed to start")
        status = yield second.ended.addTimeout(30, reactor)
        self.assertEqual(status.exitCode, 1, second.output.decode())
        state = (config.parent / "state").resolve()
        self.assertIn(f"gateway failed to start: the state directory {state} is used by another gateway"
                      f" (pid {first.transport.pid},".encode(), second.output)
        for service in (b"journal", b"broker", b"apps:"):
            self.assertNotIn(service, second.output)
        self.assertEqual(self.app_pid(port), app)
        self.assertEqual((state / "apps" / "processes.json").read_text(), records)
        self.assertFalse(first.ended.called)
        first.transport.signalProcess("TERM")
        yield wait_until(lambda: (state / "gateway.lock").read_text().endswith(" stopping\n"), 10)
        client = AdminClient(str(state / "run" / "admin.sock"), state_dir=str(state))
        refused = yield self.assertFailure(deferToThread(client.get, "/status"), NotRunning)
        self.assertEqual(str(refused), f"the gateway is stopping (pid {first.transport.pid}): its admin API has closed")
        status = yield first.ended.addTimeout(15, reactor)
        self.assertEqual((status.exitCode, status.signal), (None, signal.SIGTERM), first.output.decode())
        self.assertEqual(self.app_pid(port), None)

    @staticmethod
    def app_pid(port: int) -> int | None:
        """The pid of the test's hosted app (``sleep <port + 100000>``), None when none runs."""
        marker = ["/bin/sleep", str(port + 100000)]
        return next((p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == marker), None)

    @inlineCallbacks
    def test_a_change_reverted_at_start_takes_its_log_level_along(self):
        """A change of gateway.log_level whose confirm deadline passed while the gateway was down
        is reverted before anything starts, its level too: amqtt logs at the previous level
        (info) as the broker starts; it logged at the unconfirmed one (error: nothing)."""
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "ingest:\n  enabled: false\n")
        (config.parent / "conf.d").mkdir()
        (config.parent / "conf.d" / "90-remote.yaml").write_text("gateway:\n  log_level: error\n")
        pending = config.parent / "state" / "commands" / "pending-config.json"
        pending.parent.mkdir(parents=True)
        deadline = time.time() - 60  # (a minute ago by a set clock: one at 1970 is no known time, commands.md)
        pending.write_text(json.dumps({"origin": "remote:r-1", "keys": ["gateway.log_level"], "previous": None,
                                       "deadline": deadline, "required_links": [], "applied_at": deadline - 120}))
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        self.assertFalse((config.parent / "conf.d" / "90-remote.yaml").exists())
        self.assertIn(b"[amqtt.broker.plugins#info]", proc.output)

    @inlineCallbacks
    def test_metrics_endpoint_that_cannot_bind_stops_the_start(self):
        """A metrics endpoint on a busy port makes the process say which endpoint and why, and exit 1."""
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            config = self.write_config(
                "gateway:\n  state_dir: '@STATE@'\n"
                f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
                f"telemetry:\n  metrics_endpoint: 'tcp:{port}:interface=127.0.0.1'\n")
            proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config),
                                   ready_line=b"failed to start")
            status = yield proc.ended.addTimeout(30, reactor)
        self.assertEqual(status.exitCode, 1, proc.output.decode())
        self.assertIn(f"metrics endpoint tcp:{port}:interface=127.0.0.1: cannot listen".encode(), proc.output)

    @inlineCallbacks
    def test_out_of_descriptors_logs_a_line_not_a_flood(self):
        """docs/configuration.md (Listeners): out of file descriptors, the gateway closes each
        new connection at once (here the admin API's) and goes on; Twisted's lines about them
        (three per connection) are held back after the first: 30 refused connections make one
        line, not 90. With descriptors free again, clients are served."""
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n")
        admin = str(config.parent / "state" / "run" / "admin.sock")
        proc = self.run_twistd("--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(30, reactor)
        held, refused = yield deferToThread(out_of_descriptors, proc.transport.pid, admin, 30)
        for client in held:
            client.close()
        self.assertEqual(refused, 30)
        again = yield deferToThread(served, admin, ask=admin_answered)
        self.assertTrue(again, "a client served again")
        proc.transport.signalProcess("TERM")
        yield proc.ended.addTimeout(10, reactor)
        lines = [line for line in proc.output.decode().splitlines() if "EMFILE" in line or "Could not accept" in line]
        self.assertEqual(len(lines), 1, "\n".join(lines))
        self.assertIn("[twisted.internet.unix.Port#info] EMFILE encountered", lines[0])

    @inlineCallbacks
    def test_clouds_away_log_file_holds_causes_not_library_lines(self):
        """docs/install.md (Logs): with ``--logfile PATH`` the file twistd wrote got Twisted's
        ``Scheduling retry`` (one per reconnect of each link) and ``Starting factory`` /
        ``Stopping factory`` (two per failed poll of the fleet channel) lines, and an AWS
        WebSocket link whose cloud refuses the handshake autobahn's ``failing WebSocket opening
        handshake`` and ``dropping connection`` lines at each attempt; the fleet channel logged
        each failed poll. Now each client writes its own cause once, and nothing comes from the
        libraries per attempt."""
        handshakes, polls = [], []

        class Refuses(Protocol):
            def dataReceived(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    (polls if b"/controller/" in data else handshakes).append(data)
                    self.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                    self.transport.loseConnection()

        server = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Refuses))
        self.addCleanup(server.stopListening)
        fast = "      backoff_initial: 0.05\n      backoff_max: 0.1\n      min_connect_interval: 0\n"
        config = self.write_config(
            "gateway:\n  state_dir: '@STATE@'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "links:\n  links:\n"
            f"    down:\n      endpoint: 'tcp:host=127.0.0.1:port={closed_port(self)}'\n{fast}"
            f"    refused:\n      endpoint: 'tcp:host=127.0.0.1:port={server.getHost().port}'\n{fast}"
            "      aws: {websocket: true, credentials_file: '@CREDENTIALS@', region: eu-west-1}\n"
            f"fleet:\n  enabled: true\n  base_url: 'http://127.0.0.1:{server.getHost().port}'\n  allow_http: true\n"
            "  tenant: t\n  token_file: '@TOKEN@'\n  min_poll_interval: 0.1\n  poll_interval: 1\n"
            "  retry_max_delay: 1\n")
        credentials, token = config.parent / "credentials", config.parent / "token"
        credentials.write_text("[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n")
        token.write_text("token\n")
        token.chmod(0o600)
        config.write_text(config.read_text().replace("@CREDENTIALS@", str(credentials)).replace("@TOKEN@", str(token)))
        log = config.parent / "gateway.log"
        proc = self.run_twistd("--nodaemon", "--pidfile=", f"--logfile={log}", "gateway", "--config", str(config),
                               ready_line=b"gateway started")
        proc.ready.addErrback(lambda _: None)  # (its log goes to the file: nothing on standard output)
        yield wait_until(lambda: len(handshakes) >= 3 and len(polls) >= 3, 20, what="3 refused handshakes and polls")
        proc.transport.signalProcess("TERM")
        yield proc.ended.addTimeout(10, reactor)
        text = log.read_text()
        for library in ("Scheduling retry", "Starting factory", "Stopping factory", "[autobahn."):
            self.assertNotIn(library, text)
        self.assertEqual(text.count("link down cannot connect: connection refused"), 1, text)
        self.assertEqual(text.count("link refused cannot connect:"), 1, text)
        self.assertIn("WebSocket connection upgrade failed [403]: Forbidden", text)
        self.assertEqual(text.count("fleet poll failed"), 1, text)
