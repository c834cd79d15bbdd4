"""Installing real packages: GWE tarballs, native packages, health-gate rollback, spool."""

from __future__ import annotations

import errno
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SkipTest, TestCase

from gateway.admin.mapping import map_error
from gateway.apps.errors import AmbiguousProgramError, DesiredStateError, UnknownAppError
from gateway.apps.process import ProgramState
from tests.apps.packages import build_tarball, gwe_package, member
from tests.apps.realtime import fast_settings, make_service, wait_until
from tests.logevents import capture_log_events
from tests.test_filelayer import record_fsyncs

PY = sys.executable
SERVE = "import os, time\nprint('hello', os.environ.get('GREETING'), os.environ['GATEWAY_APP_VERSION'], flush=True)\ntime.sleep(60)\n"
CRASH = "import sys\nprint('boom', flush=True)\nsys.exit(4)\n"
# The keys GWE's demo apps use, unchanged.
GWE_CONF = f"""\
[program:hello]
command = {PY} run.py
stdout_logfile = hello.out
redirect_stderr = true
stdout_logfile_maxbytes = 1MB
stdout_logfile_backups = 2
environment = GREETING="from supervisor.conf"
startsecs = 0
"""


class InstallTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        self.state = Path(self.mktemp()).absolute()
        self.state.mkdir()
        self.packages = Path(self.mktemp()).absolute()
        self.packages.mkdir()
        self.service = make_service(self.state, fast_settings())
        self.ops = self.service.operations
        yield self.service.startService()
        self.addCleanup(self.service.stopService)

    def hello(self, version: str, script: str = SERVE, install_sh: str = "touch installed\n") -> Path:
        return gwe_package(self.packages, "hello", version, script, GWE_CONF, install_sh)

    @inlineCallbacks
    def test_names_of_the_gateways_own_files_are_refused(self) -> None:
        """A version named like what the gateway keeps in an app's directory (``data``, the app's
        state kept across versions; ``current``; an install log), or an app named like its
        files in ``apps/`` (``desired.json``, ``processes.json``, ``installing.json``), is refused and nothing is
        written. A version ``data`` was unpacked over the app's data (deleting what was
        there, docs/apps.md: kept across versions); an app ``desired.json`` made install
        errback (docs/apps.md: install never errbacks for a bad package)."""
        installed = yield self.ops.install(self.hello("1"))
        self.assertTrue(installed.ok, installed.message)
        data = self.state / "apps" / "hello" / "data"
        (data / "precious").write_text("kept across versions")
        desired = (self.state / "apps" / "desired.json").read_bytes()
        for version in ("data", "current", "install-1.log"):
            native = build_tarball(self.packages / f"n-{version}.tar.gz", {
                "app.yaml": f"name: hello\nversion: {version}\ncommand: [sleep, '60']\n"})
            result = yield self.ops.install(native)
            self.assertEqual(result.outcome, "refused", version)
            self.assertIn(f"version {version!r}", result.message)
        for name in ("desired.json", "processes.json", "installing.json"):
            result = yield self.ops.install(gwe_package(self.packages, name, "1", SERVE, None))
            self.assertEqual(result.outcome, "refused", name)
            self.assertIn(f"name {name!r}", result.message)
        self.assertEqual(sorted(p.name for p in data.iterdir()), ["precious"])
        self.assertEqual((self.state / "apps" / "desired.json").read_bytes(), desired)
        self.assertEqual(os.readlink(self.state / "apps" / "hello" / "current"), "1")
        self.assertEqual(sorted(p.name for p in (self.state / "apps" / "hello").iterdir()),
                         [".install-order.json", "1", "current", "data", "install-1.log"])

    @inlineCallbacks
    def test_what_install_sh_writes_is_durable_before_the_version_is_current(self) -> None:
        """docs/apps.md: what install.sh writes in the version's directory is fsynced (with the
        directory) before ``current`` points at it: it was not, so a power cut after an install
        could leave install.sh's files empty or missing in the current version."""
        fsynced = record_fsyncs(self)
        result = yield self.ops.install(self.hello("1.0"))
        self.assertTrue(result.ok, result)
        home = self.state / "apps" / "hello" / "1.0"
        self.assertIn(str(home / "installed"), fsynced)
        self.assertIn(str(home), fsynced[fsynced.index(str(home / "installed")):])  # (its entry too)
        # (one pass over the tree: each unpacked file was fsynced twice, once unpacked and
        # again after install.sh)
        self.assertEqual(fsynced.count(str(home / "install.sh")), 1, fsynced)

    @inlineCallbacks
    def test_gwe_tarball_runs_unchanged(self) -> None:
        """A GWE tarball installs, runs install.sh, and its supervisor.conf runs as is."""
        result = yield self.ops.install(self.hello("1.0"))
        self.assertTrue(result.ok, result)
        self.assertEqual((result.outcome, result.name, result.version), ("installed", "hello", "1.0"))
        home = self.state / "apps" / "hello" / "1.0"
        self.assertTrue((home / "installed").exists())
        self.assertEqual(os.readlink(self.state / "apps" / "hello" / "current"), "1.0")
        log = home / "hello.out"
        yield wait_until(lambda: log.exists() and b"hello" in log.read_bytes())
        self.assertEqual(log.read_text(), "hello from supervisor.conf 1.0\n")
        [status] = self.ops.status("hello")
        self.assertIs(status.state, ProgramState.RUNNING)

    @inlineCallbacks
    def test_logs_of_an_app_with_two_programs_need_a_program(self) -> None:
        """An app with several programs has no one log: asking for it is an argument to
        correct (AmbiguousProgramError, 400 in the admin API), not an unknown app (404);
        each program's own log is there."""
        conf = GWE_CONF + GWE_CONF.replace("[program:hello]", "[program:helper]").replace("hello.out", "helper.out")
        result = yield self.ops.install(gwe_package(self.packages, "duo", "1", SERVE, conf))
        self.assertTrue(result.ok, result)
        self.assertEqual(sorted(s.name for s in self.ops.status("duo")), ["hello", "helper"])
        failure = self.failureResultOf(self.ops.tail("duo"), AmbiguousProgramError)
        # (which ones, so that the next request can name one: it said only "name one")
        self.assertEqual(failure.getErrorMessage(), "'duo' has several programs: name one (hello, helper)")
        with self.assertRaises(AmbiguousProgramError):
            self.ops.log_path("duo")
        self.assertEqual(map_error(AmbiguousProgramError("x")).status, 400)  # type: ignore[union-attr]
        log = self.state / "apps" / "duo" / "1" / "helper.out"
        yield wait_until(lambda: log.exists() and b"hello" in log.read_bytes())
        lines = yield self.ops.tail("helper", 1)
        self.assertEqual(lines, ["hello from supervisor.conf 1"])

    @inlineCallbacks
    def test_uninstalling_a_program_of_an_app_names_the_app(self) -> None:
        """An uninstall naming a program of an installed app (``gatewayctl apps`` lists it, its
        app beside it) is refused saying whose program it is and what to uninstall instead
        (it said ``no installed app 'helper'``), and the app runs on."""
        conf = GWE_CONF + GWE_CONF.replace("[program:hello]", "[program:helper]").replace("hello.out", "helper.out")
        result = yield self.ops.install(gwe_package(self.packages, "duo", "1", SERVE, conf))
        self.assertTrue(result.ok, result)
        failure = yield self.assertFailure(self.ops.uninstall("helper"), UnknownAppError)
        self.assertEqual(str(failure), "'helper' is a program of the app 'duo', not an app: uninstall 'duo' to"
                                       " remove it")
        self.assertEqual(map_error(failure).status, 404)  # type: ignore[union-attr]
        self.assertEqual(self.service.supervisor.get("helper").state, ProgramState.RUNNING)

    @inlineCallbacks
    def test_a_program_named_as_its_app_is_that_program(self) -> None:
        """docs/admin.md: ``NAME`` is a program's name, else an app's: of the app ``hello``
        with the programs ``hello`` and ``helper``, ``hello`` is the one program to status and
        stop (``helper`` runs on, reached by its own name), and uninstall takes the app."""
        conf = GWE_CONF + GWE_CONF.replace("[program:hello]", "[program:helper]").replace("hello.out", "helper.out")
        result = yield self.ops.install(gwe_package(self.packages, "hello", "1", SERVE, conf))
        self.assertTrue(result.ok, result)
        self.assertEqual([s.name for s in self.ops.status("hello")], ["hello"])
        yield self.ops.stop("hello")
        self.assertEqual((self.service.supervisor.get("hello").state, self.service.supervisor.get("helper").state),
                         (ProgramState.STOPPED, ProgramState.RUNNING))
        yield self.ops.uninstall("hello")
        self.assertEqual(self.ops.status(), [])

    @inlineCallbacks
    def test_upgrade_then_unhealthy_rolls_back(self) -> None:
        """A new version that crashes in its health window is rolled back; the old runs."""
        yield self.ops.install(self.hello("1.0"))
        result = yield self.ops.install(self.hello("2.0"))
        self.assertTrue(result.ok)
        self.assertEqual(result.previous, "1.0")
        # (version 3 adds a program that crashes: its log goes with the version, as an uninstall's would)
        helper = f"[program:helper]\ncommand = {PY} -c \"print('boom', flush=True); raise SystemExit(4)\"\n"
        bad = yield self.ops.install(gwe_package(self.packages, "hello", "3.0", SERVE, GWE_CONF + helper,
                                                 "echo preparing v3\n"))
        self.assertEqual((bad.ok, bad.outcome, bad.previous), (False, "rolled-back", "2.0"))
        self.assertIn("preparing v3", bad.log)
        self.assertIn("--- helper.log ---\nboom", bad.log)
        self.assertEqual(self.ops.registry.current("hello"), "2.0")
        self.assertFalse((self.state / "apps" / "hello" / "3.0").exists())
        self.assertEqual(list((self.state / "logs" / "apps").iterdir()), [])
        [status] = self.ops.status("hello")
        self.assertEqual((status.version, status.state), ("2.0", ProgramState.RUNNING))

    @inlineCallbacks
    def test_current_version_again_is_refused_as_current(self) -> None:
        """Installing the current version again fails and says so (previous == version)."""
        yield self.ops.install(self.hello("1.0"))
        result = yield self.ops.install(self.hello("1.0"))
        self.assertEqual((result.ok, result.outcome, result.version, result.previous),
                         (False, "failed", "1.0", "1.0"))
        self.assertIn("already the current version", result.message)

    @inlineCallbacks
    def test_keeps_last_versions(self) -> None:
        """Only keep_versions versions stay on disk (default 2)."""
        for version in ("1", "2", "3"):
            result = yield self.ops.install(self.hello(version))
            self.assertTrue(result.ok)
        self.assertEqual(sorted(self.ops.registry.versions("hello")), ["2", "3"])

    @inlineCallbacks
    def test_a_gateway_killed_while_old_versions_are_pruned_keeps_the_new_one(self) -> None:
        """Once the new version passed its health gate its install record is gone before its old
        versions are deleted: the next start after a SIGKILL in the middle of the deletion finds
        no install to undo. It undid the healthy install, and with ``keep_versions: 1`` switched
        ``current`` back to the version the deletion had just removed (the app no longer loaded)."""
        yield self.service.stopService()
        self.service = make_service(self.state, fast_settings(keep_versions=1))
        self.ops = self.service.operations
        yield self.service.startService()
        self.addCleanup(self.service.stopService)
        yield self.ops.install(self.hello("1"))
        registry = self.ops.registry
        prune = registry.prune
        undone: list[Any] = []

        def killed_midway(name: str, keep: int) -> list[str]:
            doomed = prune(name, keep)
            undone.append(registry.undo_cut_short_install())  # what the next start would do now
            return doomed

        self.patch(registry, "prune", killed_midway)
        result = yield self.ops.install(self.hello("2"))
        self.assertEqual((result.outcome, undone), ("installed", [None]))
        self.assertEqual((registry.current("hello"), registry.versions("hello")), ("2", ["2"]))

    @inlineCallbacks
    def test_old_versions_the_disk_does_not_delete_leave_the_install_installed(self) -> None:
        """A healthy install whose old versions cannot be deleted (or their deletion not made
        durable: an I/O error) is installed all the same, and an error line says so; the next
        install deletes them. The install's Deferred failed with the error instead, after the
        new version had taken over."""
        yield self.ops.install(self.hello("1"))

        def refused(name: str, keep: int) -> list[str]:
            raise OSError(errno.EIO, "Input/output error")

        self.patch(self.ops.registry, "prune", refused)
        events = capture_log_events(self)
        result = yield self.ops.install(self.hello("2"))
        self.assertEqual((result.outcome, self.ops.registry.current("hello")), ("installed", "2"))
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(errors, ["apps: hello 2 installed, but its old versions could not all be deleted"
                                  " (Input/output error): the next install deletes them"])

    @inlineCallbacks
    def test_failed_install_sh_leaves_running_version(self) -> None:
        """install.sh failing removes the new files; the running version is untouched."""
        yield self.ops.install(self.hello("1.0"))
        pid = self.ops.status("hello")[0].pid
        result = yield self.ops.install(self.hello("2.0", install_sh="echo nope; exit 7\n"))
        self.assertEqual((result.ok, result.outcome, result.name, result.version, result.previous),
                         (False, "failed", "hello", "2.0", "1.0"))
        self.assertEqual(result.message, "hello 2.0: install.sh exited with 7")
        self.assertIn("nope", result.log)
        self.assertFalse((self.state / "apps" / "hello" / "2.0").exists())
        self.assertEqual(self.ops.status("hello")[0].pid, pid)

    @inlineCallbacks
    def test_an_install_sh_that_runs_too_long_is_killed_and_named(self) -> None:
        """install.sh running past ``install_timeout`` is killed; the failed result names the
        app, the version and the limit (its message ended "install.sh timed out:", with the
        name and version null)."""
        slow = make_service(self.state / "slow", fast_settings(install_timeout=0.5))
        (self.state / "slow").mkdir()
        yield slow.startService()
        self.addCleanup(slow.stopService)
        result = yield slow.operations.install(self.hello("1.0", install_sh="echo started; sleep 30\n"))
        self.assertEqual((result.ok, result.outcome, result.name, result.version, result.previous),
                         (False, "failed", "hello", "1.0", None))
        self.assertEqual(result.message, "hello 1.0: install.sh timed out after 0.5 s (install_timeout)")
        self.assertIn("started", result.log)
        self.assertFalse((self.state / "slow" / "apps" / "hello").exists())

    @inlineCallbacks
    def test_a_refused_package_that_named_itself_is_named_in_the_result(self) -> None:
        """A package refused after it named itself (its version would land on the app's data
        directory) carries that name and version in its result; one refused before (an
        unsafe archive) has them null."""
        installed = yield self.ops.install(self.hello("1.0"))
        self.assertTrue(installed.ok, installed.message)
        bad = build_tarball(self.packages / "bad.tar.gz", {
            "app.yaml": "name: hello\nversion: data\ncommand: [sleep, '60']\n"})
        result = yield self.ops.install(bad)
        self.assertEqual((result.outcome, result.name, result.version, result.previous),
                         ("refused", "hello", "data", "1.0"))
        self.assertTrue(result.message.startswith("bad package: bad.tar.gz: "), result.message)
        # A GWE file name names the package even when the package then lacks install.sh.
        result = yield self.ops.install(build_tarball(self.packages / "hello.v2.tar.gz", {"run.py": SERVE}))
        self.assertEqual((result.outcome, result.name, result.version, result.previous, result.message),
                         ("refused", "hello", "2", "1.0", "bad package: hello.v2.tar.gz: a GWE package needs install.sh"))
        unsafe = build_tarball(self.packages / "evil.v1.tar.gz", {"install.sh": "", "../evil": "x"})
        result = yield self.ops.install(unsafe)
        self.assertEqual((result.outcome, result.name, result.version, result.previous),
                         ("refused", None, None, None))

    @inlineCallbacks
    def test_unsafe_archives_are_refused(self) -> None:
        """Every unsafe archive is refused and nothing is written for it."""
        cases = {
            "abs": {"files": {"/tmp/evil": "x"}},
            "dots": {"files": {"../evil": "x"}},
            "symlink": {"extra": [member("l", tarfile.SYMTYPE, "/etc")]},
            "hardlink": {"extra": [member("h", tarfile.LNKTYPE, "/etc/passwd")]},
            "device": {"extra": [member("d", tarfile.CHRTYPE)]},
        }
        yield self.ops.install(self.hello("1.0"))
        for name, parts in cases.items():
            path = build_tarball(self.packages / f"{name}.v1.tar.gz",
                                 {"install.sh": "", **parts.get("files", {})},
                                 extra=parts.get("extra"))
            result = yield self.ops.install(path)
            self.assertEqual((result.ok, result.outcome), (False, "refused"), name)
            self.assertFalse((self.state / "apps" / name).exists(), name)
        big = gwe_package(self.packages, "big", "1", "x" * 4096)
        self.service.operations._settings = fast_settings(max_unpacked_bytes=2048)
        self.service.operations._installer._settings = fast_settings(max_unpacked_bytes=2048)
        result = yield self.ops.install(big)
        self.assertEqual(result.outcome, "refused")
        self.assertEqual(self.ops.status("hello")[0].state, ProgramState.RUNNING)

    @inlineCallbacks
    def test_one_shot_package(self) -> None:
        """A GWE tarball without supervisor.conf just runs install.sh."""
        path = gwe_package(self.packages, "oneshot", "1", "", None, "echo done > marker\n")
        result = yield self.ops.install(path)
        self.assertTrue(result.ok, result)
        self.assertTrue((self.state / "apps" / "oneshot" / "1" / "marker").exists())
        self.assertEqual(self.ops.registry.current("oneshot"), "1")

    @inlineCallbacks
    def test_an_uninstall_whose_wishes_the_disk_refuses_changes_nothing(self) -> None:
        """docs/apps.md: an uninstall whose desired.json the disk refuses (full, read-only)
        fails with DesiredStateError saying why (500 through the admin API) and changes
        nothing: the app runs on, its files and its wish stay, in memory and on disk. Its
        wishes were dropped from memory first: its programs were stopped and removed, and the
        next successful write took its wish off disk though the uninstall had failed."""
        installed = yield self.ops.install(self.hello("1"))
        self.assertTrue(installed.ok, installed.message)
        yield wait_until(lambda: self.service.supervisor.get("hello").state is ProgramState.RUNNING)
        desired = (self.state / "apps" / "desired.json").read_bytes()
        registry = self.ops.registry
        save = registry.save_desired

        def read_only(wishes: dict[str, str]) -> None:
            raise OSError(errno.EROFS, "Read-only file system", str(registry.desired_path))

        self.patch(registry, "save_desired", read_only)
        with self.assertRaises(DesiredStateError) as raised:
            yield self.ops.uninstall("hello")
        self.assertEqual(str(raised.exception), f"cannot forget the wishes of hello ({registry.desired_path}:"
                                                " Read-only file system): nothing changed")
        self.assertEqual(map_error(raised.exception).status, 500)  # type: ignore[union-attr]
        self.assertIs(self.service.supervisor.get("hello").state, ProgramState.RUNNING)
        self.assertEqual(os.readlink(self.state / "apps" / "hello" / "current"), "1")
        self.patch(registry, "save_desired", save)
        yield self.ops.start("hello")  # a later write keeps its wish
        self.assertEqual((self.state / "apps" / "desired.json").read_bytes(), desired)
        yield self.ops.uninstall("hello")
        self.assertFalse((self.state / "apps" / "hello").exists())
        self.assertNotIn(b"hello", (self.state / "apps" / "desired.json").read_bytes())

    @inlineCallbacks
    def test_a_rollback_whose_wishes_the_disk_refuses_still_ends_rolled_back(self) -> None:
        """docs/apps.md: install never errbacks for a failed install. An unhealthy version whose
        rollback cannot write desired.json (the disk turned read-only) is still rolled back
        and answered ``rolled-back``, the file named in an error log line. The install's
        Deferred failed with the OSError, and its result never came."""
        manifest = ("name: sensor\nversion: '{v}'\ncommand: [{py}, run.py]\nstartsecs: 0\n"
                    "health: {{command: [sh, -c, 'exit {code}'], window: 0.3}}\n")
        good = build_tarball(self.packages / "good.tar.gz", {
            "app.yaml": manifest.format(v=1, py=PY, code=0), "run.py": SERVE})
        self.assertTrue((yield self.ops.install(good)).ok)
        registry = self.ops.registry
        save = registry.save_desired
        writes: list[dict[str, str]] = []

        def second_refused(wishes: dict[str, str]) -> None:
            writes.append(wishes)
            if len(writes) > 1:
                raise OSError(errno.EROFS, "Read-only file system", str(registry.desired_path))
            save(wishes)

        self.patch(registry, "save_desired", second_refused)
        bad = build_tarball(self.packages / "bad.tar.gz", {
            "app.yaml": manifest.format(v=2, py=PY, code=1), "run.py": SERVE})
        result = yield self.ops.install(bad)
        self.assertEqual(result.outcome, "rolled-back")
        self.assertEqual(len(writes), 2)
        self.assertEqual(self.ops.registry.current("sensor"), "1")
        self.assertEqual([(s.version, s.name) for s in self.ops.status()], [("1", "sensor")])

    @inlineCallbacks
    def test_native_package_health_check(self) -> None:
        """A native package with a failing health check is refused; a fresh app is removed."""
        manifest = ("name: sensor\nversion: '1'\ncommand: [{py}, run.py]\nstartsecs: 0\n"
                    "health: {{command: [sh, -c, 'exit {code}'], window: 0.3}}\n")
        good = build_tarball(self.packages / "good.tar.gz", {
            "app.yaml": manifest.format(py=PY, code=0), "run.py": SERVE})
        fsynced = record_fsyncs(self)
        result = yield self.ops.install(good)
        self.assertTrue(result.ok, result)
        # (a package without install.sh is durable all the same, each file fsynced once)
        self.assertEqual(fsynced.count(str(self.state / "apps" / "sensor" / "1" / "run.py")), 1, fsynced)
        # An update rolled back keeps the log the version it goes back to writes in.
        result = yield self.ops.install(build_tarball(self.packages / "worse.tar.gz", {
            "app.yaml": manifest.format(py=PY, code=1).replace("'1'", "'2'"), "run.py": SERVE}))
        self.assertEqual((result.outcome, self.ops.registry.current("sensor")), ("rolled-back", "1"))
        logs = self.state / "logs" / "apps"
        self.assertIn("hello None 2", (logs / "sensor.log").read_text())
        yield self.ops.uninstall("sensor")
        self.assertFalse((self.state / "apps" / "sensor").exists())
        self.assertEqual(list((self.state / "logs" / "apps").iterdir()), [])
        bad = build_tarball(self.packages / "bad.tar.gz", {
            "app.yaml": manifest.format(py=PY, code=1), "run.py": SERVE})
        events = capture_log_events(self)
        result = yield self.ops.install(bad)
        self.assertEqual(result.outcome, "rolled-back")
        self.assertIn("health check failed", result.message)
        # (it said "rolled back to None")
        self.assertIn("apps: sensor 1 unhealthy, removed (no previous version): health check failed",
                      [formatEvent(e) for e in events if e["log_level"] == LogLevel.error][0])
        self.assertFalse((self.state / "apps" / "sensor").exists())
        # (nor its program's log: the app is gone as after an uninstall; the result holds the log's end)
        self.assertIn("hello None 1", result.log)
        self.assertEqual(list((self.state / "logs" / "apps").iterdir()), [])
        self.assertEqual(self.ops.status(), [])
        # A check still running at its timeout is killed, and the message says so.
        slow = build_tarball(self.packages / "slow.tar.gz", {
            "app.yaml": manifest.replace("'exit {code}'", "'echo checking; exec sleep 30'").replace(
                "window: 0.3", "window: 0, timeout: 0.2").format(py=PY), "run.py": SERVE})
        result = yield self.ops.install(slow)
        self.assertEqual((result.outcome, result.message),
                         ("rolled-back", "health check timed out after 0.2 s (health.timeout): checking"))

    @inlineCallbacks
    def test_spool_installs_and_files_away(self) -> None:
        """A tarball renamed into incoming/ is installed and moved to done/ or failed/."""
        incoming = self.state / "incoming"
        good = self.hello("1.0")
        bad = build_tarball(self.packages / "evil.v1.tar.gz", {"install.sh": "", "../x": ""})
        for path in (good, bad):
            os.rename(path, incoming / f".{path.name}.part")
            os.rename(incoming / f".{path.name}.part", incoming / path.name)
        yield wait_until(lambda: (incoming / "failed" / "evil.v1.tar.gz").exists()
                         and (incoming / "done" / "hello.v1.0.tar.gz").exists())
        self.assertIn("refused", (incoming / "failed" / "evil.v1.tar.gz.log").read_text())
        self.assertTrue((incoming / "done" / "hello.v1.0.tar.gz.log").exists())


    @inlineCallbacks
    def test_spool_refuses_a_link_out_of_a_top_dir(self) -> None:
        """``pkg/up -> ..`` (safe inside ``pkg/``, outside once ``pkg/`` is stripped) dropped in the
        spool goes to failed/ with the reason; nothing is written under apps/."""
        incoming = self.state / "incoming"
        path = build_tarball(self.packages / "pkg.v1.tar.gz", {"pkg/install.sh": "touch installed\n"},
                             extra=[member("pkg/up", tarfile.SYMTYPE, "..")])
        os.rename(path, incoming / path.name)
        # The spool writes the log first and then moves the file, so wait for the file.
        yield wait_until(lambda: (incoming / "failed" / "pkg.v1.tar.gz").exists())
        report = (incoming / "failed" / "pkg.v1.tar.gz.log").read_text()
        self.assertIn("refused: link 'up' -> '..' points outside the package", report)
        self.assertFalse((incoming / "pkg.v1.tar.gz").exists())
        self.assertFalse((self.state / "apps" / "pkg").exists())
        self.assertEqual(self.flushLoggedErrors(), [])

    @inlineCallbacks
    def test_a_user_this_system_lacks_fails_the_install(self) -> None:
        """A package whose program runs as a user the system does not have (the gateway runs as
        root, so ``user`` is used) fails its install naming the user, and leaves nothing
        (docs/apps.md)."""
        if os.getuid() != 0:
            raise SkipTest("user is ignored when the gateway does not run as root")
        package = build_tarball(self.packages / "sensor.tar.gz", {
            "app.yaml": f"name: sensor\nversion: '1'\ncommand: [{PY}, run.py]\nuser: no-such-user-gw\n",
            "run.py": SERVE})
        result = yield self.ops.install(package)
        self.assertEqual((result.outcome, result.message), ("failed", "program sensor: no user 'no-such-user-gw'"))
        self.assertFalse((self.state / "apps" / "sensor").exists())
        self.assertEqual(self.ops.status(), [])

    @inlineCallbacks
    def test_failed_first_install_leaves_no_app_directory(self) -> None:
        """A new app whose install.sh fails leaves nothing under apps/."""
        result = yield self.ops.install(self.hello("1.0", install_sh="exit 3\n"))
        self.assertEqual(result.outcome, "failed")
        self.assertFalse((self.state / "apps" / "hello").exists())

    @inlineCallbacks
    def test_gwe_file_name_that_is_no_app_name_is_refused_before_writing(self) -> None:
        """A GWE file name whose name part is not a safe app name (``..`` from
        ``...v1.tar.gz``, a space) is refused before anything is written: the version
        directory it names would lie outside ``apps/`` (``apps/../1``)."""
        (self.state / "keep").write_text("the gateway's own state")
        for filename in ("...v1.tar.gz", "two words.v1.tar.gz"):
            path = build_tarball(self.packages / filename, {"install.sh": "touch ran\n"})
            result = yield self.ops.install(path)
            self.assertEqual((result.ok, result.outcome), (False, "refused"), filename)
            self.assertIn("bad name", result.message)
        self.assertEqual((self.state / "keep").read_text(), "the gateway's own state")
        self.assertEqual(self.ops.registry.installed(), {})
        self.assertFalse((self.state / "1").exists())


class RestartTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_installed_app_comes_back_after_restart(self) -> None:
        """After a gateway restart, installed apps that ran run again; stopped ones do not."""
        state = Path(self.mktemp()).absolute()
        packages = Path(self.mktemp()).absolute()
        packages.mkdir()
        first = make_service(state, fast_settings())
        yield first.startService()
        for name in ("keep", "halt"):
            conf = GWE_CONF.replace("[program:hello]", f"[program:{name}]")
            yield first.operations.install(gwe_package(packages, name, "1", SERVE, conf))
        yield first.operations.stop("halt")
        yield first.stopService()
        second = make_service(state, fast_settings())
        yield second.startService()
        self.addCleanup(second.stopService)
        states = {s.name: s.state for s in second.operations.status()}
        self.assertEqual(states, {"keep": ProgramState.RUNNING, "halt": ProgramState.STOPPED})


class ConfigClashTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def test_package_cannot_replace_config_program(self) -> None:
        """A package named like a config program is refused; the program keeps running."""
        from gateway.apps.settings import ProgramSettings

        state = Path(self.mktemp()).absolute()
        packages = Path(self.mktemp()).absolute()
        packages.mkdir()
        service = make_service(state, fast_settings(programs={
            "hello": ProgramSettings(command="sleep 30", startsecs=0)}))
        yield service.startService()
        self.addCleanup(service.stopService)
        result = yield service.operations.install(gwe_package(packages, "hello", "1", SERVE, GWE_CONF))
        self.assertEqual((result.ok, result.outcome), (False, "refused"))
        self.assertIn("declared in the gateway config", result.message)
        [status] = service.operations.status()
        self.assertEqual((status.version, status.state), ("config", ProgramState.RUNNING))
        # Nothing unpacked: only the config program's own state directory is there.
        self.assertEqual([p.name for p in (state / "apps" / "hello").iterdir()], ["data"])

    @inlineCallbacks
    def started(self) -> Any:
        """``(state dir, packages dir, started apps service)``, stopped at cleanup."""
        state = Path(self.mktemp()).absolute()
        packages = Path(self.mktemp()).absolute()
        packages.mkdir()
        service = make_service(state, fast_settings())
        yield service.startService()
        self.addCleanup(service.stopService)
        return state, packages, service

    @inlineCallbacks
    def test_a_container_cannot_take_the_name_of_a_one_shot_app(self) -> None:
        """An installed app that supervises nothing (a one-shot GWE package) still owns its name:
        a container may not take it (it would then shadow the app, which could no longer be
        uninstalled by its name)."""
        state, packages, service = yield self.started()
        installed = yield service.control.install(gwe_package(packages, "tool", "1", "", None, "exit 0\n"))
        self.assertTrue(installed.ok, installed.message)
        self.assertEqual(service.control.status(), [])
        refused = yield service.control.install_container("tool", "1", [], {})
        self.assertEqual((refused.ok, refused.outcome), (False, "refused"))
        self.assertIn("hosted process app", refused.message)

    @inlineCallbacks
    def test_a_program_cannot_take_the_name_of_a_container_app(self) -> None:
        """A package whose supervisor.conf names a program like a container app fails (a name
        clash: nothing active changed, the container keeps its name); it installed, and the
        program then shadowed the container, which could no longer be started, stopped,
        listed or uninstalled by its name (docs/containers.md: a container app's name is not
        the name of a hosted program)."""
        class Containers:
            def owns(self, name: str) -> bool:
                return name == "hello"

            def installs(self, name: str) -> bool:
                return False

            def statuses(self) -> list[Any]:
                return []

        state, packages, service = yield self.started()
        service.add_kind(Containers())  # type: ignore[arg-type]
        result = yield service.control.install(gwe_package(packages, "web", "1", SERVE, GWE_CONF))
        self.assertEqual((result.ok, result.outcome), (False, "failed"))
        self.assertIn("'hello' is the name of a container app", result.message)
        self.assertEqual(service.control.status(), [])
        self.assertFalse((state / "apps" / "web").exists())

    @inlineCallbacks
    def test_names_are_not_shared_with_containers(self) -> None:
        """A tarball named like a container app is refused before anything is unpacked, and a
        container cannot take a hosted process app's name."""
        class Containers:
            def owns(self, name: str) -> bool:
                return name == "web"

            def installs(self, name: str) -> bool:
                return False

            def statuses(self) -> list[Any]:
                return []

            def install_files(self, *args: Any) -> Any:
                raise AssertionError("a container must not take a process app's name")

        state, packages, service = yield self.started()
        service.add_kind(Containers())  # type: ignore[arg-type]
        result = yield service.control.install(gwe_package(packages, "web", "1", SERVE, GWE_CONF))
        self.assertEqual((result.ok, result.outcome), (False, "refused"))
        self.assertIn("'web' is the name of a container app", result.message)
        self.assertFalse((state / "apps" / "web").exists())
        installed = yield service.control.install(gwe_package(packages, "hello", "1", SERVE, GWE_CONF))
        self.assertTrue(installed.ok, installed.message)
        refused = yield service.control.install_container("hello", "1", [], {})
        self.assertEqual((refused.ok, refused.outcome), (False, "refused"))
        self.assertIn("hosted process app", refused.message)
