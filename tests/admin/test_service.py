"""AdminService on real sockets: the unix socket's mode, the token file, refusal without the
token on TCP, a socket path too long for sun_path, stale sockets."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, eventAsText, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.admin.api import Backends
from gateway.admin.client import AdminClient
from gateway.admin.service import AdminService
from gateway.admin.settings import AdminSettings
from gateway.admin.token import TokenFileError, load_or_create_token
from gateway.config import ErrorList, build_dataclass
from gateway.errors import GatewayError
from gateway.httpaccesslog import log_routine_reads
from tests.admin.fakes import FakeApps, FakeReadSide
from tests.apps.realtime import wait_until
from tests.ports import free_port
from tests.test_filelayer import record_fsyncs


class AdminListenLogTests(SynchronousTestCase):
    """What the service logs about where it listens."""

    def test_tcp_is_logged_as_an_address(self) -> None:
        """The TCP endpoint is logged as the address it listens on (``[::1]:8780``), not as the
        endpoint string with its escaped colons (``tcp:8780:interface=\\:\\:1``)."""
        state = Path(self.mktemp()).resolve()
        (state / "logs").mkdir(parents=True)
        service = AdminService(AdminSettings(tcp="tcp:8780:interface=\\:\\:1"), state, MemoryReactorClock(),
                               Backends(None, FakeApps(state / "logs")), blocking=lambda work: succeed(work()))
        with capturedLogs() as logs:
            self.successResultOf(service.startService())
        self.assertIn(f"admin API on [::1]:8780 (bearer token in {state / 'admin' / 'token'})",
                      [formatEvent(e) for e in logs])


class AdminServiceTests(TestCase):
    """The service as the tree runs it, with fakes behind it."""

    timeout = 30

    @inlineCallbacks
    def start(self, state: Path, **settings: Any) -> Any:
        (state / "logs").mkdir(parents=True, exist_ok=True)
        service = AdminService(AdminSettings(**settings), state, reactor,
                               Backends(FakeReadSide(), FakeApps(state / "logs")))
        yield service.startService()
        self.addCleanup(service.stopService)
        return service

    @inlineCallbacks
    def test_socket_mode_and_requests(self) -> Any:
        """The socket is <state>/run/admin.sock, mode 0660 in the gateway's group, and serves
        the API; stopping removes it."""
        state = Path(self.mktemp()).resolve()
        service = yield self.start(state)
        path = state / "run" / "admin.sock"
        self.assertEqual(service.socket, path)
        info = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(info.st_mode))
        self.assertEqual((stat.S_IMODE(info.st_mode), info.st_gid), (0o660, os.getgid()))
        status = yield deferToThread(AdminClient(str(path)).get, "/status")
        self.assertEqual(status["pid"], 4242)
        yield service.stopService()
        self.assertFalse(path.exists())

    @inlineCallbacks
    def test_gatewayctl_install_keeps_the_file_name(self) -> Any:
        """``gatewayctl apps install FILE`` sends FILE's name as it is: a version with ``+``
        (allowed in a package name) is not turned into a space by the query string."""
        from gateway.admin.cli import main

        state = Path(self.mktemp()).resolve()
        service = yield self.start(state)
        package = state / "hello.v1.3+b1.tar.gz"
        package.write_bytes(b"a package")
        code = yield deferToThread(main, ["--socket", str(service.socket), "apps", "install", str(package)])
        self.assertEqual(code, 0)
        self.assertEqual(service.backends.apps.calls, [("install", "hello.v1.3+b1.tar.gz")])

    @inlineCallbacks
    def test_uploads_left_by_a_dead_gateway_are_removed(self) -> Any:
        """What a gateway killed during an upload or an install left in <state>/admin/spool
        (the body it was receiving, the install's private directory) is removed at the next
        start; it stayed there for good, up to max_upload_bytes each."""
        state = Path(self.mktemp()).resolve()
        spool = state / "admin" / "spool"
        (spool / ".install-x1").mkdir(parents=True)
        (spool / ".install-x1" / "hello.v1.tar.gz").write_bytes(b"p" * 1000)
        (spool / ".body-abc").write_bytes(b"b" * 1000)
        yield self.start(state)
        self.assertEqual(list(spool.iterdir()), [])

    @inlineCallbacks
    def test_long_socket_path(self) -> Any:
        """A socket path longer than sun_path takes is bound through its directory's descriptor."""
        state = Path(self.mktemp()).resolve() / ("deep" * 30)
        path = state / "run" / "admin.sock"
        self.assertGreater(len(str(path)), 107)
        service = yield self.start(state)
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o660)
        yield service.stopService()
        self.assertFalse(path.exists())

    @inlineCallbacks
    def test_stale_socket_is_replaced(self) -> Any:
        """A socket left by a gateway that died (its lock's pid is gone) does not stop a start."""
        state = Path(tempfile.mkdtemp(prefix="gwadm-"))  # short: the test binds the socket itself
        self.addCleanup(shutil.rmtree, state, True)
        (state / "run").mkdir(parents=True)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(state / "run" / "admin.sock"))
        stale.close()
        os.symlink("999999999", state / "run" / "admin.sock.lock")
        yield self.start(state)
        status = yield deferToThread(AdminClient(str(state / "run" / "admin.sock")).get, "/status")
        self.assertEqual(status["version"], "0.1.0")

    @inlineCallbacks
    def test_socket_in_use(self) -> Any:
        """A second gateway on a socket a live one holds does not start (and leaves it alone)."""
        state = Path(self.mktemp()).resolve()
        yield self.start(state)
        second = AdminService(AdminSettings(), state, reactor, Backends(FakeReadSide()))
        failure = yield self.assertFailure(second.startService(), GatewayError)
        path = state / "run" / "admin.sock"
        self.assertEqual(str(failure), f"admin: the socket {path} is used by another gateway (pid {os.getpid()},"
                                       f" {path}.lock): give each gateway its own admin.socket")
        status = yield deferToThread(AdminClient(str(state / "run" / "admin.sock")).get, "/status")
        self.assertEqual(status["pid"], 4242)

    @inlineCallbacks
    def test_a_tcp_port_in_use_is_named_with_its_holder(self) -> Any:
        """A second gateway with another state directory and the same admin.tcp fails its start
        naming the endpoint and the process that holds the port (here, this one); it said
        'Couldn't listen on 127.0.0.1:PORT: [Errno 98] Address already in use.' alone."""
        port = free_port()
        yield self.start(Path(self.mktemp()).resolve(), tcp=f"tcp:{port}:interface=127.0.0.1")
        second = AdminService(AdminSettings(tcp=f"tcp:{port}:interface=127.0.0.1"), Path(self.mktemp()).resolve(),
                              reactor, Backends(FakeReadSide()))
        failure = yield self.assertFailure(second.startService(), GatewayError)
        self.assertTrue(str(failure).startswith(f"admin: tcp:{port}:interface=127.0.0.1: Couldn't listen on"
                                                f" 127.0.0.1:{port}: [Errno 98] Address already in use; held by"
                                                f" pid {os.getpid()} ("), str(failure))
        yield second.stopService()

    @inlineCallbacks
    def test_stale_lock_of_a_gateway_that_had_this_pid_or_is_a_zombie(self) -> Any:
        """A lock left by a gateway that is gone does not stop the start, though its pid is
        alive: this process's own pid (a gateway that ran as PID 1 in a container, restarted
        after a crash) or a zombie's (killed, not reaped yet)."""
        zombie = subprocess.Popen(["true"])  # exits at once; not waited for until the end
        self.addCleanup(zombie.wait)
        yield wait_until(lambda: _state_of(zombie.pid) == "Z", 5, what="the child is a zombie")
        for pid in (os.getpid(), zombie.pid):
            state = Path(self.mktemp()).resolve()
            (state / "run").mkdir(parents=True)
            os.symlink(str(pid), state / "run" / "admin.sock.lock")
            left = socket.socket(socket.AF_UNIX)  # the dead gateway's socket file stays behind too
            directory = os.open(state / "run", os.O_RDONLY | os.O_DIRECTORY)  # (the path is too long to bind)
            left.bind(f"/proc/self/fd/{directory}/admin.sock")
            left.close()
            os.close(directory)
            service = yield self.start(state)
            status = yield deferToThread(AdminClient(str(service.socket)).get, "/status")
            self.assertEqual(status["pid"], 4242, pid)
            yield service.stopService()

    @inlineCallbacks
    def test_stale_lock_naming_a_pid_another_process_took_since(self) -> Any:
        """A lock and socket left by a gateway that died (a power cut) whose pid another process
        has taken since (after the reboot: pid 1 here) do not stop the start when nothing
        listens on the socket; the gateway failed to start for good ('Couldn't listen on
        ...admin.sock: Cannot acquire lock'), restarted in vain. The lock of a process that
        listens on the socket stays, and so does one made just now (its gateway binds next)."""
        for clock_step in (-3600.0, 3600.0):  # made an hour ago; or "later" (a clock set back since)
            state = Path(self.mktemp()).resolve()
            (state / "run").mkdir(parents=True)
            lock = state / "run" / "admin.sock.lock"
            os.symlink("1", lock)
            left = socket.socket(socket.AF_UNIX)  # the dead gateway's socket file stays behind too
            directory = os.open(state / "run", os.O_RDONLY | os.O_DIRECTORY)  # (the path is too long to bind)
            left.bind(f"/proc/self/fd/{directory}/admin.sock")
            left.close()
            os.close(directory)
            made = time.time() + clock_step
            os.utime(lock, (made, made), follow_symlinks=False)
            service = yield self.start(state)
            status = yield deferToThread(AdminClient(str(service.socket)).get, "/status")
            self.assertEqual(status["pid"], 4242, clock_step)
            self.assertEqual(os.readlink(lock), str(os.getpid()))
            yield service.stopService()

    @inlineCallbacks
    def test_tcp_needs_the_token(self) -> Any:
        """On TCP: 401 without the token or with a wrong one, 200 with it; the token file is
        made 0600 on first start and kept on the next."""
        state = Path(self.mktemp()).resolve()
        port = free_port()
        service = yield self.start(state, tcp=f"tcp:{port}:interface=127.0.0.1")
        token_file = state / "admin" / "token"
        self.assertEqual(stat.S_IMODE(os.stat(token_file).st_mode), 0o600)
        token = token_file.read_bytes().strip()
        self.assertEqual(service.token, token)
        treq = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        url = f"http://127.0.0.1:{port}/status"
        for headers in ({}, {"Authorization": "Bearer nope"}):
            response = yield treq.get(url, headers=headers)
            self.assertEqual(response.code, 401)
            self.assertEqual((yield response.json()), {"error": "a valid bearer token is needed on this endpoint"})
        response = yield treq.get(url, headers={"Authorization": b"Bearer " + token})
        self.assertEqual(response.code, 200)
        yield response.content()
        response = yield treq.get(f"http://127.0.0.1:{port}/?token={token.decode()}")
        self.assertEqual(response.code, 200)
        self.assertIn(b"<!DOCTYPE html>", (yield response.content()))
        yield service.stopService()
        again = yield self.start(state, tcp=f"tcp:{free_port()}:interface=127.0.0.1")
        self.assertEqual(again.token, token)

    @inlineCallbacks
    def start_tcp_logged(self) -> Any:
        """The admin API on a TCP port, the gateway's log observed; fires with ``(port, token,
        the log's lines so far and to come, an HTTP client)``."""
        state = Path(self.mktemp()).resolve()
        port = free_port()
        service = yield self.start(state, tcp=f"tcp:{port}:interface=127.0.0.1")
        lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            lines.append(eventAsText(event, includeTimestamp=False, includeSystem=False))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return (port, service.token.decode(), lines,
                HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))))

    @inlineCallbacks
    def test_token_in_the_query_is_not_logged(self) -> Any:
        """The status page opened with ?token= is logged without the token: the access log
        line goes to the gateway's log (journald), which others may read, while the token file
        is 0600 (docs/admin.md); the line logged the whole URI, token included."""
        port, token, lines, treq = yield self.start_tcp_logged()
        url = f"http://127.0.0.1:{port}/?token={token}"
        # a routine read is no line (its line is logged at once as it is answered: none came)
        response = yield treq.get(url, headers={"Referer": url})
        self.assertEqual(response.code, 200)
        yield response.content()
        self.assertEqual([line for line in lines if "GET /?token=" in line], [])
        # with gateway.log_level: debug, it is a (debug) line, without the token
        self.addCleanup(log_routine_reads, False)
        log_routine_reads(True)
        response = yield treq.get(url, headers={"Referer": url})
        self.assertEqual(response.code, 200)
        yield response.content()
        yield wait_until(lambda: any("GET /?token=" in line for line in lines))
        logged = "\n".join(lines)
        self.assertNotIn(token, logged)
        self.assertIn('"GET /?token=<redacted> HTTP/1.1" 200', logged)


    @inlineCallbacks
    def test_token_in_the_query_is_not_logged_however_its_key_is_spelled(self) -> Any:
        """``?%74oken=`` is ``?token=`` to the router (it takes the token), and ``?TOKEN=`` is a
        slip of the hand whose value is the token all the same: neither value is logged. Both
        were logged whole (the redaction matched ``token=`` only as written). (``x`` is a
        query key the page does not take: refused, its token not logged either.)"""
        port, token, lines, treq = yield self.start_tcp_logged()
        self.addCleanup(log_routine_reads, False)
        log_routine_reads(True)  # (the 200 is a routine read: logged with gateway.log_level: debug)
        for query, code in (("%74oken", 200), ("TOKEN", 401), ("x=1&to%6Ben", 400)):
            response = yield treq.get(f"http://127.0.0.1:{port}/?{query}={token}")
            self.assertEqual(response.code, code)
            yield response.content()
            yield wait_until(lambda: any(f"GET /?{query}=" in line for line in lines))
        logged = "\n".join(lines)
        self.assertNotIn(token, logged)
        self.assertIn('"GET /?%74oken=<redacted> HTTP/1.1" 200', logged)
        self.assertIn('"GET /?TOKEN=<redacted> HTTP/1.1" 401', logged)


class CarriedHistoryTests(SynchronousTestCase):
    """The depth samples a configuration change hands to the new admin service."""

    def test_a_shorter_history_interval_still_keeps_an_hour(self) -> None:
        """history_interval changed from 30 to 5 s while the gateway runs: the samples go on
        and an hour of them is kept at the new pace (docs/admin.md: one every history_interval
        seconds, an hour of them); the ring sized for 30 s kept ten minutes."""
        old = AdminService(AdminSettings(history_interval=30.0), Path(self.mktemp()), reactor,
                           Backends(FakeReadSide(), FakeApps(Path(self.mktemp()))))
        old.history.sample(0.0, [("link-cloud", 7)])
        new = AdminService(AdminSettings(history_interval=5.0), Path(self.mktemp()), reactor,
                           Backends(FakeReadSide(), FakeApps(Path(self.mktemp()))), history=old.history)
        self.assertEqual(new.history.series("link-cloud", 0.0), [(0.0, 7)])
        for i in range(1, 721):
            new.history.sample(i * 5.0, [("link-cloud", i)])
        series = new.history.series("link-cloud", 3600.0)
        self.assertEqual((len(series), series[0]), (721, (0.0, 7)))


class SettingsAndTokenTests(SynchronousTestCase):
    """Config checks of the admin section and the token file's rules."""

    def test_tcp_must_be_loopback(self) -> None:
        """A TCP endpoint without interface=127.0.0.1 (or ::1), or a world-open mode, is a config error."""
        for value, fragment in (({"tcp": "tcp:8780"}, "interface=127.0.0.1"),
                                ({"tcp": "tcp:8780:interface=0.0.0.0"}, "interface=127.0.0.1"),
                                ({"tcp": "ssl:8780:interface=127.0.0.1"}, "interface=127.0.0.1"),
                                ({"tcp": "tcp:8780:interface=127.0.0.1:interface=0.0.0.0"}, "interface=127.0.0.1"),
                                ({"tcp": "tcp:8780:interface=127.0.0.10"}, "interface=127.0.0.1"),
                                ({"tcp": "tcp6:8780:interface=\\:\\:1"}, "interface=127.0.0.1"),
                                ({"socket_mode": "0666"}, "other users"),
                                ({"socket_mode": "rw"}, "octal"),
                                # an unquoted 0660 in YAML: the number 432, not "0432" taken as octal
                                ({"socket_mode": 0o660}, 'quoted octal string like "0660"')):
            errors = ErrorList()
            build_dataclass(AdminSettings, value, ("admin",), errors)
            self.assertEqual(len(errors.lines), 1, value)
            self.assertIn(fragment, errors.lines[0])
        for good in ("tcp:8780:interface=127.0.0.1", "tcp:port=8780:interface=127.0.0.1",
                     "tcp:8780:backlog=5:interface=\\:\\:1", "tcp:interface=127.0.0.1:port=8780"):
            errors = ErrorList()
            build_dataclass(AdminSettings, {"tcp": good}, ("admin",), errors)
            self.assertEqual(errors.lines, [], good)

    def test_token_file_rules(self) -> None:
        """A token its group or other users have access to, or a short or empty one, is refused
        saying which (a 5-character token was said to be "no token"); a missing one is made."""
        directory = Path(self.mktemp())
        path = directory / "token"
        token = load_or_create_token(path)
        self.assertGreaterEqual(len(token), 32)
        self.assertEqual(load_or_create_token(path), token)
        self.assertEqual(list(directory.iterdir()), [path], "no temp file left")
        for mode in (0o644, 0o640, 0o620):  # its group's access too: it said "readable by others"
            os.chmod(path, mode)
            error = self.assertRaises(TokenFileError, load_or_create_token, path)
            self.assertEqual(str(error), f"the admin token file {path} has mode {mode:04o}, which gives its group or"
                                         " other users access: chmod 600 it")
        os.chmod(path, 0o600)
        path.write_text("short\n")
        error = self.assertRaises(TokenFileError, load_or_create_token, path)
        self.assertEqual(str(error), f"the admin token file {path} holds a token of 5 characters, too short: a token"
                                     " takes 16 characters at least (delete the file and restart to have one made)")
        path.write_text(" \n")
        error = self.assertRaises(TokenFileError, load_or_create_token, path)
        self.assertEqual(str(error), f"the admin token file {path} holds no token (it is empty): a token takes 16"
                                     " characters at least (delete the file and restart to have one made)")

    def test_the_token_directory_made_is_fsynced_in_its_parent(self) -> None:
        """The token's directory, made with the token, is fsynced in its parent: it was made with
        ``Path.mkdir`` and never fsynced, so a power cut could take it and the token a client
        was already given (a new one was made at the next start)."""
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        fsynced = record_fsyncs(self)
        load_or_create_token(base / "admin" / "token")
        self.assertIn(str(base), fsynced)

    def test_a_token_file_the_disk_refuses_leaves_no_temp_file(self) -> None:
        """A full disk when the token is made: a TokenFileError naming the file and why, and
        nothing beside it. An empty .token.tmp stayed (the token file had its own writer)."""
        directory = Path(self.mktemp())
        path = directory / "token"

        def full(*args: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(os, "write", full)
        error = self.assertRaises(TokenFileError, load_or_create_token, path)
        self.assertEqual(str(error), f"cannot write the admin token file {path}: No space left on device")
        self.assertEqual(list(directory.iterdir()), [])

    def test_a_directory_in_the_token_files_place_is_refused_naming_it(self) -> None:
        """A directory where the token file belongs is a TokenFileError naming the file (the
        gateway's start said only '[Errno 21] Is a directory: ...', an OSError it did not expect)."""
        path = Path(self.mktemp())
        path.mkdir(mode=0o700)
        error = self.assertRaises(TokenFileError, load_or_create_token, path)
        self.assertEqual(str(error), f"cannot read the admin token file {path}: Is a directory")


def _state_of(pid: int) -> str:
    """The state letter of ``pid`` in /proc (``Z``: a zombie)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
