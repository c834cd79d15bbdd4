"""AppsService on a fake process reactor: desired state, stopService, engine_report."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.inotify import INotify
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import __version__
from gateway.apps import service as service_module
from gateway.apps import spool as spool_module
from gateway.apps.errors import DesiredStateError, UnknownAppError
from gateway.telemetry.engine import engine_report
from gateway.apps.process import ProgramState
from gateway.apps.registry import AppRegistry
from gateway.apps.service import AppsService
from gateway.apps.settings import AppsSettings, ProgramSettings
from gateway.apps.supervisor import app_environment
from gateway.filelayer import makedirs_durably
from gateway.stateaccess import user_name
from tests.apps.fakes import FakeProcessReactor
from tests.logevents import capture_log_events
from tests.test_filelayer import record_fsyncs


def inline(work: Callable[[], Any]) -> Deferred[Any]:
    """Run blocking work on the spot (the fake reactor has no threads)."""
    return maybeDeferred(work)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.settings = AppsSettings(programs={
            "web": ProgramSettings(command="web --port 1", environment={"X": "1"}),
            "manual": ProgramSettings(command="manual", autostart=False),
        })

    def boot(self) -> tuple[AppsService, FakeProcessReactor]:
        reactor = FakeProcessReactor()
        service = AppsService(self.settings, self.state, reactor, "tcp:127.0.0.1:1883",
                              kill_group=reactor.kill_group, blocking=inline,
                              threaded_logs=False, process_table=reactor.table)
        self.successResultOf(maybeDeferred(service.startService))

        def unwatch() -> None:
            # The spool's inotify descriptor is closed on the reactor's next turn.
            service.spool.stop()
            reactor.advance(0)

        self.addCleanup(unwatch)
        return service, reactor

    def test_autostart_and_environment(self) -> None:
        """Config programs with autostart run, with GATEWAY_* and their own environment."""
        service, reactor = self.boot()
        self.assertEqual([p.command for p in reactor.processes], [["web", "--port", "1"]])
        env = reactor.last.env
        self.assertEqual(env["X"], "1")
        self.assertEqual(env["GATEWAY_APP_NAME"], "web")
        self.assertEqual(env["GATEWAY_BROKER"], "tcp:127.0.0.1:1883")
        self.assertEqual(env["GATEWAY_STATE_DIR"], str(self.state))
        self.assertIn("PATH", env)

    def test_many_programs_start_a_few_in_a_turn(self) -> None:
        """At the start, the programs are spawned a few in a turn of the reactor
        (``STARTS_PER_TURN``), not all in one: each spawn costs the reactor's thread a few ms
        (its cgroup is made off it), and 50 in one turn held every client, link and timer for
        0.5 s (2 s on a loaded machine; bench/scale.py's ``reactor_lag_s``). All of them start,
        in name order, and the service is started once they have."""
        from gateway.apps.operations import STARTS_PER_TURN

        self.settings = AppsSettings(programs={f"p{index:02}": ProgramSettings(command=f"p{index:02}")
                                               for index in range(2 * STARTS_PER_TURN + 3)})
        reactor = FakeProcessReactor()
        service = AppsService(self.settings, self.state, reactor, "tcp:127.0.0.1:1883",
                              kill_group=reactor.kill_group, blocking=inline,
                              threaded_logs=False, process_table=reactor.table)
        started = maybeDeferred(service.startService)
        self.addCleanup(lambda: (service.spool.stop(), reactor.advance(0)))
        self.assertEqual(len(reactor.processes), STARTS_PER_TURN)
        self.assertNoResult(started)
        reactor.advance(0)  # (the next turns: a task.Clock runs them all)
        self.successResultOf(started)
        self.assertEqual([p.command[0] for p in reactor.processes], sorted(self.settings.programs))

    def test_a_stop_while_the_programs_start_starts_no_more(self) -> None:
        """A stop that comes while the programs are being started (between two turns) starts
        none of those not started yet: each would outlive the service's stop (a configuration
        change's next service would start it a second time)."""
        from gateway.apps.operations import STARTS_PER_TURN

        self.settings = AppsSettings(programs={f"p{index:02}": ProgramSettings(command=f"p{index:02}")
                                               for index in range(2 * STARTS_PER_TURN)})
        reactor = FakeProcessReactor()
        service = AppsService(self.settings, self.state, reactor, "tcp:127.0.0.1:1883",
                              kill_group=reactor.kill_group, blocking=inline,
                              threaded_logs=False, process_table=reactor.table)
        maybeDeferred(service.startService)
        stopped = maybeDeferred(service.stopService)
        for process in reactor.processes:
            process.exit(signal=signal.SIGTERM)
        reactor.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(len(reactor.processes), STARTS_PER_TURN)

    def test_systemd_process_variables_are_not_inherited(self) -> None:
        """A program and install.sh get the gateway's environment but for what systemd tells
        the gateway's own process: socket activation's LISTEN_FDS, LISTEN_PID and
        LISTEN_FDNAMES, NOTIFY_SOCKET and the watchdog's WATCHDOG_PID and WATCHDOG_USEC were
        passed on, and a program could take fd 3 for a socket of the gateway's."""
        systemd = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "mqtt:ingest",
                   "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_PID": str(os.getpid()),
                   "WATCHDOG_USEC": "30000000"}
        self.patch(os, "environ", {**os.environ, **systemd, "INVOCATION_ID": "abc"})
        _, reactor = self.boot()
        installer = app_environment("web", "1", self.state / "apps" / "web" / "1", self.state, "tcp:127.0.0.1:1883")
        for env in (reactor.last.env, installer):
            self.assertEqual(set(systemd) & set(env), set())
            self.assertEqual((env["INVOCATION_ID"], env["GATEWAY_APP_NAME"]), ("abc", "web"))
            self.assertIn("PATH", env)

    def test_config_program_state_dir_exists_when_it_starts(self) -> None:
        """A config program's GATEWAY_APP_STATE_DIR (``<state>/apps/<name>/data``) exists when
        it starts, as a package's does, also for one started later by the operator."""
        spawn = FakeProcessReactor.spawnProcess
        seen: list[tuple[str, str, bool]] = []

        def checking(reactor: FakeProcessReactor, protocol: Any, executable: str, args: list[str] = [],
                     env: dict[str, str] | None = None, **kwargs: Any) -> Any:
            environment = env or {}
            state_dir = environment["GATEWAY_APP_STATE_DIR"]
            seen.append((environment["GATEWAY_PROGRAM_NAME"], state_dir, Path(state_dir).is_dir()))
            return spawn(reactor, protocol, executable, args, env, **kwargs)

        self.patch(FakeProcessReactor, "spawnProcess", checking)
        service, _ = self.boot()
        self.successResultOf(service.operations.start("manual"))
        self.assertEqual(seen, [("web", str(self.state / "apps" / "web" / "data"), True),
                                ("manual", str(self.state / "apps" / "manual" / "data"), True)])

    def test_the_directories_made_at_start_are_fsynced_in_their_parents(self) -> None:
        """The spool and each config program's data directory, made at start, are fsynced in
        their parents: they were made with ``Path.mkdir`` and never fsynced, so a power cut could
        take a data directory with what its program had fsynced there, or the spool with a
        package the gateway had said was waiting."""
        self.state = self.state.absolute()
        fsynced = record_fsyncs(self)
        self.boot()
        for made in ("incoming", "apps/web/data", "apps/manual/data"):
            self.assertIn(str((self.state / made).parent), fsynced, made)

    def test_a_first_install_cut_short_goes_with_its_programs_logs(self) -> None:
        """A start that undoes a first install the gateway's end cut short in its health window
        deletes the logs its program had written, as the rollback of a first install does, and
        leaves the config programs' logs alone."""
        registry = AppRegistry(self.state)
        registry.begin_install("sensor", "1", {})
        registry.version_dir("sensor", "1").mkdir(parents=True)
        (registry.version_dir("sensor", "1") / "app.yaml").write_text("name: sensor\nversion: '1'\ncommand: [run]\n")
        registry.set_current("sensor", "1")
        logs = self.state / "logs" / "apps"
        logs.mkdir(parents=True)
        for file in ("sensor.log", "sensor.err.log", "web.log"):
            (logs / file).write_text("x\n")
        service, _ = self.boot()
        self.assertEqual(sorted(path.name for path in logs.iterdir()), ["web.log"])
        self.assertFalse(registry.app_dir("sensor").exists())

    def test_operator_stop_survives_restart(self) -> None:
        """An app the operator stopped stays stopped after a gateway restart."""
        service, reactor = self.boot()
        reactor.advance(1)
        stopped = service.operations.stop("web")
        reactor.last.exit(None, signal.SIGTERM)
        self.successResultOf(stopped)
        self.successResultOf(service.operations.start("manual"))
        # (the shape docs/apps.md gives, "On disk": an operator may write it by hand)
        self.assertEqual(json.loads((self.state / "apps" / "desired.json").read_text()),
                         {"programs": {"manual": "running", "web": "stopped"}})
        second, reactor2 = self.boot()
        self.assertEqual([p.command[0] for p in reactor2.processes], ["manual"])
        self.assertIs(second.supervisor.get("web").state, ProgramState.STOPPED)

    def test_a_desired_state_file_it_cannot_use_is_set_aside_and_autostart_decides(self) -> None:
        """A desired.json that holds no wishes (a list, JSON nested too deeply, random bytes, a
        wish that is neither running nor stopped, a directory or a loop of symbolic links in its
        place) is logged as an error naming it and moved aside to ``desired.json.damaged``, and
        each program follows its ``autostart``. Random bytes counted as no wishes without a word
        (the operator's stops were undone silently), a wish of another word was kept as it was,
        and a directory or a loop stopped the gateway's start."""
        for damage in ("[1]", '{"programs": [1]}', "[" * 5000, "\udcf5\x00garbage", '{"programs": {"web": "on"}}',
                       "directory", "loop"):
            self.state = Path(self.mktemp())
            path = self.state / "apps" / "desired.json"
            path.parent.mkdir(parents=True)
            if damage == "directory":
                path.mkdir()
            elif damage == "loop":
                path.symlink_to(path.name)
            else:
                path.write_bytes(damage.encode("utf-8", "surrogateescape"))
            events = capture_log_events(self)
            _, reactor = self.boot()
            self.assertEqual([p.command[0] for p in reactor.processes], ["web"], damage[:20])
            [error] = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
            self.assertIn(f"apps: unusable wishes ({path}: ", error)
            self.assertIn(f"; moved to {path}.damaged); each program follows its autostart", error)
            self.assertTrue(os.path.lexists(f"{path}.damaged"), damage[:20])
            self.assertEqual(AppRegistry(self.state).load_desired(), {})

    def test_stop_service_waits_for_children(self) -> None:
        """stopService fires only when every child has exited; desired state is kept."""
        service, reactor = self.boot()
        reactor.advance(1)
        done = service.stopService()
        self.assertNoResult(done)
        self.assertEqual(reactor.signals[-1], (reactor.last.pid, signal.SIGTERM))
        reactor.last.exit(None, signal.SIGTERM)
        self.successResultOf(done)
        _, reactor2 = self.boot()
        self.assertEqual([p.command[0] for p in reactor2.processes], ["web"])

    def test_restart(self) -> None:
        """restart stops the process, waits for it, and starts a new one."""
        service, reactor = self.boot()
        first = reactor.last
        done = service.operations.restart("web")
        self.assertNoResult(done)
        first.exit(None, signal.SIGTERM)
        self.successResultOf(done)
        self.assertIsNot(reactor.last, first)
        self.assertIs(service.supervisor.get("web").state, ProgramState.STARTING)

    def test_a_restart_is_answered_once_spawned_not_running(self) -> None:
        """docs/commands.md (app.start, app.restart): the answer comes once the new process is
        spawned, STARTING, not after startsecs; one that cannot be spawned is answered all the
        same, the program in BACKOFF saying why (what ``apps`` shows)."""
        service, reactor = self.boot()
        done = service.operations.restart("web")
        reactor.last.exit(None, signal.SIGTERM)
        self.successResultOf(done)
        self.assertIs(service.supervisor.get("web").state, ProgramState.STARTING)
        reactor.spawn_error = OSError(errno.ENOENT, "No such file or directory")
        done = service.operations.restart("web")
        reactor.last.exit(None, signal.SIGTERM)
        self.successResultOf(done)
        web = service.supervisor.get("web")
        self.assertEqual((web.state, web.error),
                         (ProgramState.BACKOFF, "cannot spawn: [Errno 2] No such file or directory"))

    def test_a_start_waits_for_the_spawn_its_preparation_makes(self) -> None:
        """docs/admin.md and docs/commands.md: start and restart are answered once the process
        is spawned, with its pid. Its spawn is prepared off the reactor thread (its directory,
        user and cgroup looked at): the answer came before that preparation ended, STARTING
        with no pid (``"pid": null`` in ``POST /apps/NAME/start``'s answer)."""
        from tests.journal.helpers import ManualRunner

        service, reactor = self.boot()
        stopped = service.operations.stop("web")
        reactor.last.exit(None, signal.SIGTERM)
        self.successResultOf(stopped)
        runner = ManualRunner()
        self.patch(service.launcher, "_blocking", runner)
        for operation in (service.operations.start, service.operations.restart):
            running = reactor.last
            done = operation("web")
            if service.supervisor.get("web").state is ProgramState.STOPPING:  # (the restart's stop)
                running.exit(None, signal.SIGTERM)
            self.assertNoResult(done)
            runner.drain()
            self.successResultOf(done)
            web = service.supervisor.get("web")
            self.assertEqual((web.state, web.pid), (ProgramState.STARTING, reactor.last.pid))

    def test_a_wish_the_disk_refuses_changes_nothing(self) -> None:
        """A stop, start or restart whose desired.json the disk refuses (full, read-only) fails
        with DesiredStateError saying why (500 through the admin API and the commands), and
        changes nothing: no process is stopped or started, and the wish is not kept in memory
        either. The stop changed the wish in memory first, so the next successful write (a
        start of another program) put it on disk, and the next gateway start left web stopped
        though the stop had been answered an error."""
        service, reactor = self.boot()
        reactor.advance(1)
        registry = service.operations.registry
        save = registry.save_desired

        def full(desired: dict[str, str]) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(registry.desired_path.with_name(".x")))
        self.patch(registry, "save_desired", full)
        spawned, signalled = len(reactor.processes), len(reactor.signals)
        for operation, name in ((service.operations.restart, "web"), (service.operations.start, "manual"),
                                (service.operations.stop, "web")):
            failure = self.failureResultOf(operation(name), DesiredStateError)
            self.assertIn(f"({registry.desired_path}: No space left on device): nothing changed",
                          failure.getErrorMessage())
        self.assertEqual((len(reactor.processes), len(reactor.signals)), (spawned, signalled))
        self.assertIs(service.supervisor.get("web").state, ProgramState.RUNNING)
        self.patch(registry, "save_desired", save)
        self.successResultOf(service.operations.stop("manual"))  # a later write that succeeds
        _, reactor2 = self.boot()
        self.assertEqual([p.command[0] for p in reactor2.processes], ["web"])

    def test_unknown_names(self) -> None:
        """Operations on an unknown name fail with UnknownAppError."""
        service, _ = self.boot()
        self.failureResultOf(service.operations.start("nope"), UnknownAppError)
        self.failureResultOf(service.operations.uninstall("web"), UnknownAppError)
        self.failureResultOf(service.operations.tail("nope"), UnknownAppError)
        with self.assertRaises(UnknownAppError):
            service.operations.status("nope")

    def test_a_directory_that_does_not_exist_fails_each_start_saying_so(self) -> None:
        """A program whose ``directory`` does not exist is not spawned: each start fails with
        an error naming the directory, until FATAL. The child's chdir failed instead, its only
        word a Python traceback in the program's stderr log and 'exited with 1'."""
        from tests.logevents import capture_log_events

        missing = Path(self.mktemp()).absolute() / "nowhere"
        self.settings = AppsSettings(programs={"poller": ProgramSettings(command="poll", directory=str(missing))})
        events = capture_log_events(self)
        service, reactor = self.boot()
        for _ in range(10):  # (each retry is scheduled by the one before)
            reactor.advance(60)
        self.assertEqual(reactor.processes, [])
        self.assertIs(service.supervisor.get("poller").state, ProgramState.FATAL)
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertIn(f"apps: cannot spawn poller: its directory {missing} does not exist", errors)

    def test_a_package_whose_environment_linux_refuses_is_rolled_back_saying_why(self) -> None:
        """A package whose ``environment`` holds a variable larger than execve() takes is
        rolled back with that reason, not ``(exit status None)``, and no process of its
        program is spawned (install.sh is the only one)."""
        import os

        from tests.apps.packages import build_tarball

        service, reactor = self.boot()
        packages = Path(self.mktemp())
        packages.mkdir()
        big = "A" * (32 * os.sysconf("SC_PAGE_SIZE"))
        archive = build_tarball(packages / "q.v1.tar.gz", {
            "install.sh": "exit 0\n",
            "supervisor.conf": f'[program:q]\ncommand = serve\nenvironment = BIG="{big}"\n'})
        spawned = len(reactor.processes)
        done = service.operations.install(archive)
        reactor.last.exit(0)  # install.sh
        result = self.successResultOf(done)
        self.assertEqual(len(reactor.processes), spawned + 1)
        self.assertEqual(result.outcome, "rolled-back")
        self.assertIn(f"q went BACKOFF (cannot spawn: [Errno 7] its environment variable BIG is {len(big) + 4}"
                      " bytes, more than the", result.message)

    def test_uninstalling_a_config_program_says_it_is_one(self) -> None:
        """A program declared in the config is listed like an app but cannot be uninstalled:
        the refusal says so and how to remove it (it once said ``no installed app 'web'`` of a
        program ``gatewayctl apps`` lists), and the program runs on."""
        service, _ = self.boot()
        failure = self.failureResultOf(service.operations.uninstall("web"), UnknownAppError)
        self.assertEqual(failure.getErrorMessage(), "'web' is a program declared in the gateway config"
                                                    " (apps.programs), not an installed app: remove it"
                                                    " from the configuration to remove it")
        self.assertIs(service.supervisor.get("web").state, ProgramState.STARTING)
        failure = self.failureResultOf(service.operations.uninstall("nope"), UnknownAppError)
        self.assertEqual(failure.getErrorMessage(), "no installed app 'nope'")

    def test_a_long_unknown_name_is_quoted_by_its_start(self) -> None:
        """An unknown name of a megabyte (app.start from the cloud, the admin API) is quoted by its
        first 100 characters and its length: the 404 repeated it whole."""
        service, _ = self.boot()
        for operation in (service.operations.start, service.operations.tail):
            failure = self.failureResultOf(operation("n" * 1_000_000), UnknownAppError)
            self.assertEqual(failure.getErrorMessage(), "no app or program '" + "n" * 100 + "... (1000000 characters)'")

    def test_logs_a_program_does_not_keep_are_named(self) -> None:
        """The stderr log of a program with ``redirect_stderr`` is refused (404 through the
        admin API and ``app.logs``) saying that its stderr is in its stdout log, and a log set
        to ``NONE`` saying so; neither reads as an unknown program."""
        self.settings = AppsSettings(programs={
            "joined": ProgramSettings(command="joined", redirect_stderr=True),
            "quiet": ProgramSettings(command="quiet", stdout_logfile="NONE"),
        })
        service, _ = self.boot()
        ops = service.operations
        failure = self.failureResultOf(ops.tail("joined", stderr=True), UnknownAppError)
        self.assertEqual(failure.getErrorMessage(), "'joined' has no stderr log: redirect_stderr sends its "
                                                    "stderr to its stdout log; ask for that one")
        self.assertEqual(ops.log_path("joined"), self.state / "logs" / "apps" / "joined.log")
        with self.assertRaisesRegex(UnknownAppError, r"^'quiet' keeps no stdout log \(stdout_logfile is NONE\)$"):
            ops.log_path("quiet")

    def test_a_tail_has_the_output_received_before_it(self) -> None:
        """A program's last lines (``app.logs``, the admin API, ``gatewayctl apps logs``) hold
        every line of its output the gateway has received before the request, also while
        they wait for the log writer's thread: the tail read the file at once, and a program's
        first lines, received but not written yet (a loaded machine), came back as none."""
        service, reactor = self.boot()
        writer = service.writer
        write_now, queued, flushes = writer.write, [], []
        self.patch(writer, "write", lambda target, data: queued.append((target, data)))

        def flush() -> Deferred[None]:
            flushes.append(Deferred())
            return flushes[-1]

        self.patch(writer, "flush", flush)
        reactor.last.protocol.outReceived(b"sampling\nsent 12 values\n")
        tail = service.operations.tail("web", 2)
        self.assertNoResult(tail)
        for target, data in queued:  # (the writer's thread gets to them)
            write_now(target, data)
        flushes[0].callback(None)
        self.assertEqual(self.successResultOf(tail), ["sampling", "sent 12 values"])
        # (the same through the control of every kind of app, from the kind's tail_bytes)
        text = service.control.tail("web", 2)
        flushes[1].callback(None)
        self.assertEqual(self.successResultOf(text), ["sampling", "sent 12 values"])

    def test_engine_report(self) -> None:
        """engine_report has GWE's shape plus the gateway's own version."""
        service, reactor = self.boot()
        reactor.advance(30)
        report = engine_report(service.snapshot())
        self.assertEqual(report["version"], __version__)
        self.assertEqual(report["apps"][1], {"web": {
            "app": "web", "version": "config", "status": "RUNNING", "uptime": 30,
            "exitstatus": None, "pid": reactor.last.pid, "restarts": 0}})
        self.assertEqual(report["apps"][0]["manual"]["status"], "STOPPED")

    def test_snapshot(self) -> None:
        """snapshot() carries the engine_report data plus restarts, typed, in name order."""
        from gateway.apps.snapshot import AppSnapshot

        service, reactor = self.boot()
        reactor.advance(30)
        snap = service.snapshot()
        self.assertEqual(snap.version, __version__)
        self.assertEqual(snap.apps, (
            AppSnapshot("manual", "manual", "config", "STOPPED", None, 0.0, None, 0),
            AppSnapshot("web", "web", "config", "RUNNING", reactor.last.pid, 30.0, None, 0)))

    def test_a_fatal_program_says_why(self) -> None:
        """A FATAL program's snapshot (GET /apps, the remote apps command, engine_report) says why
        its starts failed, as a container's does; the reason was only in the gateway's log."""
        from gateway.apps.snapshot import AppSnapshot

        self.settings = AppsSettings(programs={"web": ProgramSettings(command="web", startretries=0)})
        service, reactor = self.boot()
        reactor.last.exit(127)
        self.assertEqual(service.snapshot().apps, (
            AppSnapshot("web", "web", "config", "FATAL", None, 0.0, 127, 0, error="exited with 127 before 1s"),))

    def test_malformed_manifest_is_refused_not_an_error(self) -> None:
        """install fires with ``refused`` for a native package whose app.yaml has a value of
        the wrong type; it never errbacks for a bad package."""
        from tests.apps.packages import build_tarball

        service, _ = self.boot()
        packages = Path(self.mktemp())
        packages.mkdir()
        for i, (extra, why) in enumerate([
                ("exitcodes: 5", "exitcodes: must be a list"),
                # (the parser's TypeError: install errbacked)
                ("restart: [always]", "restart: one of always, never, unexpected"),
                ("1: x\nfoo: y", "unknown keys: 1, foo")]):
            archive = build_tarball(packages / f"sensor{i}.tar.gz", {
                "app.yaml": "name: sensor\nversion: '1'\ncommand: run\n" + extra + "\n"})
            result = self.successResultOf(service.operations.install(archive))
            self.assertEqual((result.ok, result.outcome), (False, "refused"))
            self.assertIn(why, result.message)
            self.assertEqual(service.operations.registry.installed(), {})

    def test_description_that_is_not_utf8_is_refused_not_an_error(self) -> None:
        """A supervisor.conf or app.yaml that is not UTF-8 (a Latin-1 comment) is a malformed
        package: install fires with ``refused`` and leaves nothing, it does not errback."""
        import io
        import tarfile

        service, _ = self.boot()
        packages = Path(self.mktemp())
        packages.mkdir()
        for filename, members in [
            ("cafe.v1.tar.gz", {"install.sh": b"exit 0\n",
                                "supervisor.conf": b"; caf\xe9\n[program:cafe]\ncommand = run\n"}),
            ("native.tar.gz", {"app.yaml": b"name: cafe\nversion: '1'\ncommand: run # caf\xe9\n"}),
        ]:
            archive = packages / filename
            with tarfile.open(archive, "w:gz") as tar:
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            result = self.successResultOf(service.operations.install(archive))
            self.assertEqual((result.ok, result.outcome), (False, "refused"), filename)
            self.assertIn("not UTF-8", result.message)
            self.assertEqual(service.operations.registry.installed(), {})
            self.assertFalse((self.state / "apps" / "cafe").exists())

    def test_supervisor_conf_that_does_not_split_is_refused_and_the_old_version_runs(self) -> None:
        """A command or environment with an unclosed quote refuses the package before anything
        active changes: the running version keeps running (it used to be stopped, ``current``
        switched, and install errbacked)."""
        from tests.apps.packages import build_tarball

        service, reactor = self.boot()
        packages = Path(self.mktemp())
        packages.mkdir()

        def package(version: str, conf: str) -> Path:
            return build_tarball(packages / f"q.v{version}.tar.gz",
                                 {"install.sh": "exit 0\n", "supervisor.conf": conf})

        done = service.operations.install(package("1", "[program:q]\ncommand = serve\nstartsecs = 0\n"))
        reactor.last.exit(0)  # install.sh
        reactor.advance(self.settings.health_window)
        self.assertTrue(self.successResultOf(done).ok)
        pid = service.operations.status("q")[0].pid
        for conf, why in [("[program:q]\ncommand = serve \"unclosed\n", "command"),
                          ("[program:q]\ncommand = serve\nenvironment = A=\"unclosed\n", "environment")]:
            done = service.operations.install(package("2", conf))
            for process in list(reactor.processes):  # install.sh, or a program being stopped
                if process.pid in reactor.table.live and process.pid != pid:
                    process.exit(0)
            result = self.successResultOf(done)
            self.assertEqual((result.ok, result.outcome), (False, "refused"), why)
            self.assertIn(why, result.message)
            self.assertEqual(service.operations.registry.current("q"), "1")
            [status] = service.operations.status("q")
            self.assertEqual((status.version, status.state, status.pid), ("1", ProgramState.RUNNING, pid))

    def test_user_is_ignored_when_the_gateway_is_not_root(self) -> None:
        """A package's ``user`` only matters when the gateway runs as root (the .deb runs it as
        ``gateway``): otherwise it is ignored, even when this system has no such user, and the
        program runs with the gateway's own HOME and USER."""
        import os

        from tests.apps.packages import build_tarball

        self.patch(os, "getuid", lambda: 1000)
        events = capture_log_events(self)
        service, reactor = self.boot()
        packages = Path(self.mktemp())
        packages.mkdir()
        archive = build_tarball(packages / "q.v1.tar.gz", {
            "install.sh": "exit 0\n",
            "supervisor.conf": "[program:q]\ncommand = serve\nstartsecs = 0\nuser = no-such-user-xyz\n"})
        done = service.operations.install(archive)
        reactor.last.exit(0)  # install.sh
        reactor.advance(self.settings.health_window)
        result = self.successResultOf(done)
        self.assertEqual((result.ok, result.outcome), (True, "installed"), result.message)
        self.assertEqual(reactor.last.command, ["serve"])
        self.assertEqual(reactor.last.env.get("HOME"), os.environ.get("HOME"))
        self.assertEqual(reactor.last.env.get("USER"), os.environ.get("USER"))
        # ...and said, once (the install's start is no second line): it was silent, and the
        # program, meant to run without the gateway's rights, ran with them unsaid.
        lines = [formatEvent(e) for e in events if "asks to run as user" in e.get("log_format", "")]
        self.assertEqual(lines, ["apps: q asks to run as user 'no-such-user-xyz', which only a gateway running as root"
                                 f" switches to: it runs as the gateway's user {user_name(1000)}"])

    def test_spool_is_watched_not_polled(self) -> None:
        """The spool folder is created and watched with inotify (a reader on the reactor),
        not looked at every spool_interval: an idle gateway does not wake for it."""
        service, reactor = self.boot()
        self.assertTrue((self.state / "incoming").is_dir())
        self.assertTrue([r for r in reactor.getReaders() if isinstance(r, INotify)])
        delays = [c.getTime() for c in reactor.getDelayedCalls()]
        self.assertNotIn(self.settings.spool_interval, delays)

    def test_the_spool_folder_is_there_before_it_is_watched(self) -> None:
        """The gateway's tree starts watching the spool once every service is up (after its
        start line); the folder is made with the apps service, so that a package dropped as
        soon as the start line comes has a folder to go to (it was made only with the watch)."""
        service = AppsService(self.settings, self.state, FakeProcessReactor(), "tcp:127.0.0.1:1883",
                              blocking=inline, threaded_logs=False, watch_spool=False)
        self.successResultOf(maybeDeferred(service.startService))
        self.addCleanup(service.stopService)
        self.assertTrue((self.state / "incoming").is_dir())

    def test_the_spool_folder_is_made_once_off_the_reactor_thread(self) -> None:
        """The spool folder is made (durably) once, in the work handed to ``blocking``: the
        watcher's start made it again inline on the reactor thread (two stats, or a mkdir and
        its parent's fsync when it had gone)."""
        self.state = self.state.absolute()
        spool = str(self.state / "incoming")
        made: list[tuple[str, bool]] = []
        off_reactor = [False]

        def blocking(work: Callable[[], Any]) -> Deferred[Any]:
            off_reactor[0] = True
            try:
                return maybeDeferred(work)
            finally:
                off_reactor[0] = False

        def recording(path: str, mode: int = 0o777) -> None:
            made.append((path, off_reactor[0]))
            makedirs_durably(path, mode)

        for module in (service_module, spool_module):
            self.patch(module, "makedirs_durably", recording)
        reactor = FakeProcessReactor()
        service = AppsService(self.settings, self.state, reactor, "tcp:127.0.0.1:1883",
                              blocking=blocking, threaded_logs=False, watch_spool=False)
        self.successResultOf(maybeDeferred(service.startService))
        self.addCleanup(service.stopService)
        service.spool.start()  # (as the tree does once every service is up)
        self.addCleanup(reactor.advance, 0)  # (the spool's inotify descriptor is closed then)
        self.addCleanup(service.spool.stop)
        self.assertEqual([entry for entry in made if entry[0] == spool], [(spool, True)])

    def q_package(self, version: str) -> Path:
        """A package of the app q at ``version`` (its install.sh succeeds, its program ``serve``)."""
        from tests.apps.packages import build_tarball

        packages = Path(self.mktemp())
        packages.mkdir()
        return build_tarball(packages / f"q.v{version}.tar.gz", {
            "install.sh": "exit 0\n", "supervisor.conf": "[program:q]\ncommand = serve\nstartsecs = 0\n"})

    def install_q1(self, service: AppsService, reactor: FakeProcessReactor) -> int | None:
        """Install q 1 through its health window; returns its program's pid."""
        done = service.operations.install(self.q_package("1"))
        reactor.last.exit(0)  # install.sh
        reactor.advance(self.settings.health_window)
        self.assertTrue(self.successResultOf(done).ok)
        return service.operations.status("q")[0].pid

    def install_v1_then_v2(self, service: AppsService, reactor: FakeProcessReactor) -> tuple[Deferred[Any], int]:
        """Install q 1 (healthy), then start installing q 2: it is in its health window, its
        program spawned; returns the second install's Deferred and that program's pid."""
        old = self.install_q1(service, reactor)
        done = service.operations.install(self.q_package("2"))
        reactor.last.exit(0)  # install.sh
        [stopping] = [p for p in reactor.processes if p.pid == old]
        stopping.exit(None, signal.SIGTERM)  # q 1 stops for q 2
        [status] = service.operations.status("q")
        self.assertEqual((status.version, status.state), ("2", ProgramState.RUNNING))
        self.assertNoResult(done)
        assert status.pid is not None
        return done, status.pid

    def test_an_install_whose_desired_state_cannot_be_written_fails_and_changes_nothing(self) -> None:
        """An install whose new desired state the disk refuses (desired.json on a full disk)
        ends failed saying why, with `current` still the previous version, whose program runs
        on untouched, and the new version's files removed (docs/apps.md: persists, then acts;
        install never errbacks on a failed install). The install errbacked with the OSError,
        leaving `current` switched to the new version, which the next start would run, while
        the old version's program ran on."""
        service, reactor = self.boot()
        old = self.install_q1(service, reactor)
        registry = service.operations.registry

        def full(desired: dict[str, str]) -> None:
            raise OSError(28, "No space left on device")
        self.patch(registry, "save_desired", full)
        done = service.operations.install(self.q_package("2"))
        reactor.last.exit(0)  # install.sh
        result = self.successResultOf(done)
        self.assertEqual((result.ok, result.outcome, result.previous), (False, "failed", "1"))
        self.assertIn("No space left on device", result.message)
        self.assertEqual(registry.current("q"), "1")
        [status] = service.operations.status("q")
        self.assertEqual((status.version, status.state, status.pid), ("1", ProgramState.RUNNING, old))
        self.assertFalse(registry.version_dir("q", "2").exists())

    def test_an_install_in_its_health_window_when_the_service_stops_starts_nothing(self) -> None:
        """The apps service stopping (the gateway's SIGTERM, or a configuration change that
        restarts the tree) while a new version is in its health window rolls it back on disk
        only: no program is started after the stop, and the stop fires once ``current`` names the
        previous version again, so the next apps service starts it once (docs/apps.md: exactly one
        copy of each program). The rollback started the previous version's program on the stopped
        service, beside the one the new service started, and nobody supervised it."""
        service, reactor = self.boot()
        done, pid = self.install_v1_then_v2(service, reactor)
        spawned = len(reactor.processes)
        stopped = service.stopService()
        for process in list(reactor.processes):
            if process.pid in reactor.table.live:
                process.exit(None, signal.SIGTERM)
        self.successResultOf(stopped)
        self.assertEqual(len(reactor.processes), spawned, [p.command for p in reactor.processes[spawned:]])
        result = self.successResultOf(done)
        self.assertEqual((result.outcome, result.previous), ("rolled-back", "1"))
        self.assertIn("the apps service stopped during the health window", result.message)
        self.assertEqual(service.operations.registry.current("q"), "1")
        self.assertFalse(service.operations.registry.version_dir("q", "2").exists())
        _, reactor2 = self.boot()
        self.assertEqual(sorted(p.command[0] for p in reactor2.processes), ["serve", "web"])
        self.assertEqual(reactor2.processes[-1].env["GATEWAY_APP_VERSION"], "1")

    def test_a_restart_under_way_when_the_service_stops_starts_nothing(self) -> None:
        """An app.restart (admin API, remote command) still stopping its program when the apps
        service stops does not start it again on the stopped service: the next one starts it,
        as desired; an operation waiting behind it fails saying the service is stopping."""
        from gateway.apps.errors import AppsStoppingError

        service, reactor = self.boot()
        first = reactor.last
        restarting = service.operations.restart("web")
        waiting = service.operations.start("manual")
        stopped = service.stopService()
        first.exit(None, signal.SIGTERM)
        self.successResultOf(stopped)
        self.successResultOf(restarting)
        self.assertIn("the apps service is stopping", str(self.failureResultOf(waiting, AppsStoppingError).value))
        self.assertEqual(reactor.processes, [first])
        _, reactor2 = self.boot()
        self.assertEqual([p.command[0] for p in reactor2.processes], ["web"])

    def test_install_sh_running_when_the_service_stops_is_killed(self) -> None:
        """The apps service stopping while a package's install.sh runs kills it (its group), as
        the gateway's end does, and the install ends ``failed`` with nothing unpacked left; the
        stop waited for install.sh (up to apps.install_timeout), past gateway.shutdown_timeout,
        so a configuration change started the next apps service beside it, whose install of the
        same version (an update run again) unpacked into the directory the old one then removed."""
        from tests.apps.packages import build_tarball

        service, reactor = self.boot()
        packages = Path(self.mktemp())
        packages.mkdir()
        done = service.operations.install(build_tarball(packages / "q.v1.tar.gz", {
            "install.sh": "sleep 100\n", "supervisor.conf": "[program:q]\ncommand = serve\n"}))
        script = reactor.last
        self.assertIn("install.sh", script.command)
        stopped = service.stopService()
        self.assertIn((script.pid, signal.SIGKILL), reactor.signals)
        reactor.processes[0].exit(None, signal.SIGTERM)  # (web, the config program)
        self.successResultOf(stopped)
        result = self.successResultOf(done)
        self.assertEqual(result.outcome, "failed")
        self.assertIn("the apps service stopped while install.sh ran", result.message)
        self.assertIsNone(service.operations.registry.current("q"))
        self.assertFalse((self.state / "apps" / "q").exists())
        script.exit(None, signal.SIGKILL)
