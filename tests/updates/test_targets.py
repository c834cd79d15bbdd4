"""Script and gateway-package targets with real processes (the .deb helper detaches)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.apps.service import AppsService
from gateway.apps.settings import AppsSettings
from gateway.updates import detached_run
from gateway.updates.errors import InstallError
from gateway.updates.operation import Artifact, Operation, SoftwareModule
from gateway.updates.settings import UpdatesSettings
from gateway.updates.targets import ModuleInstaller
from tests.test_filelayer import record_fsyncs


class TargetTests(TestCase):
    """Each target installs a file in a temp dir with real child processes."""

    timeout = 30

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def install(self, target: str, content: str, resumed: bool = False, systemd: bool = False,
                **settings: Any) -> Any:
        artifact = self.dir / ("pkg.deb" if target == "gateway" else "run.sh")
        artifact.write_text(content)
        module = SoftwareModule("thing", "3", target, [Artifact(artifact.name, "https://x/" + artifact.name)])  # type: ignore[arg-type]
        self.operation = Operation("op", "install", [module])
        settings.setdefault("deb_installer", "helper")  # (auto would look at this machine)
        installer = ModuleInstaller(reactor, UpdatesSettings(**settings), None, systemd=lambda: systemd)
        return installer.install(self.operation, module, [artifact], resumed)

    @inlineCallbacks
    def test_script_runs_in_its_directory_with_module_env(self) -> None:
        """A script artifact runs with /bin/sh in its directory and sees the module's name and version."""
        message = yield self.install("script", 'echo "$UPDATE_MODULE_NAME $UPDATE_MODULE_VERSION $(pwd)"')
        self.assertIn(f"thing 3 {self.dir.absolute()}", message)

    @inlineCallbacks
    def test_failing_script_reports_its_output(self) -> None:
        """A non-zero exit fails the install with the exit status and the output's tail."""
        with self.assertRaises(InstallError) as caught:
            yield self.install("script", "echo broken >&2; exit 3")
        self.assertIn("exited with 3: broken", str(caught.exception))

    @inlineCallbacks
    def test_a_silent_script_is_reported_without_a_dangling_colon(self) -> None:
        """A script that prints nothing is reported as run, or as its exit status alone: the
        INSTALLED message, which goes to the cloud, read ``run.sh ran: ``."""
        message = yield self.install("script", "exit 0")
        self.assertEqual(message, "run.sh ran")
        with self.assertRaises(InstallError) as caught:
            yield self.install("script", "exit 4")
        self.assertEqual(str(caught.exception), "run.sh exited with 4")

    @inlineCallbacks
    def test_script_past_its_time_limit_is_killed(self) -> None:
        """A script that runs too long is killed and reported."""
        with self.assertRaises(InstallError) as caught:
            yield self.install("script", "sleep 30", script_timeout=1.0)
        self.assertIn("killed", str(caught.exception))

    @inlineCallbacks
    def test_a_script_running_when_the_service_stops_is_killed(self) -> None:
        """The updates service stopping (the gateway's SIGTERM, or a configuration change that
        restarts the services in-process) kills a script it runs, as the gateway's end does, so
        that the next service's report, interrupted and not run twice (docs/updates.md), is true.
        Restarted in-process the script ran on, beside the next service, which had reported it
        interrupted and removed its directory."""
        from twisted.internet.defer import CancelledError, maybeDeferred

        from gateway.updates.service import UpdateService
        from tests.apps.realtime import wait_until

        artifact = self.dir / "run.sh"
        artifact.write_text("echo $$ > pid; exec sleep 30\n")
        module = SoftwareModule("thing", "3", "script", [Artifact(artifact.name, "https://x/run.sh")])  # type: ignore[arg-type]
        service = UpdateService(UpdatesSettings(), self.dir / "state", reactor, object(), lambda *args: None,
                                run_blocking=lambda f, *args: maybeDeferred(f, *args))
        yield service.startService()
        running = service.installer.install(Operation("op", "install", [module]), module, [artifact], False)
        self.addCleanup(lambda: running.called or running.cancel())
        yield wait_until(lambda: (self.dir / "pid").exists() and (self.dir / "pid").read_text().strip(),
                         what="the script's start")
        pid = int((self.dir / "pid").read_text())
        yield service.stopService()
        with self.assertRaises(CancelledError):
            yield running
        yield wait_until(lambda: not Path(f"/proc/{pid}").exists(), what="the script's end")

    @inlineCallbacks
    def test_interrupted_script_is_not_run_twice(self) -> None:
        """After a restart during a script, the script is reported, not re-run."""
        with self.assertRaises(InstallError) as caught:
            yield self.install("script", "exit 0", resumed=True)
        self.assertIn("not run twice", str(caught.exception))

    @inlineCallbacks
    def test_a_bundle_for_other_handlers_goes_whole_to_swupdate_command(self) -> None:
        """With ``swupdate_command`` installed, a bundle with a handler the gateway lacks (a raw
        rootfs) is handed whole to it, the bundle's path appended, and its exit status decides;
        past ``script_timeout`` it is killed; after a restart that interrupted it, it is handed
        to it again (docs/updates.md, SWUpdate bundles)."""
        from tests.updates.swubundle import bundle

        swu = self.dir / "gw.swu"
        swu.write_bytes(bundle("2.0", [("rootfs.ext4", "raw", b"r" * 64)]))
        module = SoftwareModule("gw", "2.0", "swu", [Artifact(swu.name, "https://x/gw.swu")])  # type: ignore[arg-type]
        self.operation = Operation("op", "install", [module])

        def install(script: str, timeout: float = 30.0, resumed: bool = False) -> Any:
            settings = UpdatesSettings(swupdate_command=("/bin/sh", "-c", script), script_timeout=timeout)
            return ModuleInstaller(reactor, settings, None).install(self.operation, module, [swu], resumed)

        message = yield install('echo "swupdate got $0"; test -s "$0"')
        self.assertEqual(message, "gw.swu installed by /bin/sh")
        # (a run a restart interrupted: handed to it again, as swupdate itself would be run again)
        message = yield install('test -s "$0"', resumed=True)
        self.assertEqual(message, "gw.swu installed by /bin/sh")
        with self.assertRaises(InstallError) as caught:
            yield install("echo no space for the rootfs; exit 4")
        self.assertEqual(str(caught.exception), "/bin/sh failed on gw.swu (exit 4): no space for the rootfs")
        with self.assertRaises(InstallError) as caught:
            yield install("echo flashing; sleep 30", timeout=1.0)
        self.assertEqual(str(caught.exception), "/bin/sh ran longer than 1s on gw.swu and was killed: flashing")

    @inlineCallbacks
    def test_gateway_package_installs_through_a_detached_helper(self) -> None:
        """The .deb command runs in a detached helper (its own session) that reports a result file."""
        command = ("/bin/sh", "-c", 'echo "installing $0 in session $(cut -d" " -f6 /proc/$$/stat)"')
        fsynced = record_fsyncs(self)
        message = yield self.install("gateway", "deb", deb_install_command=command)
        self.assertIn("gateway package 3 installed", message)
        # (its result directory, made for it, is fsynced in its parent: a power cut could take it
        # with the helper's record of a step under way)
        self.assertIn(str(self.dir.absolute()), fsynced)
        result = (self.dir / "helper" / "result.json").read_text()
        self.assertIn("pkg.deb", result)
        helper_session = int(result.split("in session")[1].split('"')[0].strip().split("\\n")[0])
        self.assertNotEqual(helper_session, os.getsid(0))
        self.assertEqual(self.operation.helper, {"result_dir": str((self.dir / "helper").absolute())})

    @inlineCallbacks
    def test_failing_gateway_package_is_reported(self) -> None:
        """A failing installer's exit status and output end up in the error."""
        with self.assertRaises(InstallError) as caught:
            yield self.install("gateway", "deb", deb_install_command=("/bin/sh", "-c", "echo dpkg said no; exit 1"))
        self.assertIn("installer exited with 1: dpkg said no", str(caught.exception))

    @inlineCallbacks
    def test_a_silent_failing_installer_is_reported_without_a_dangling_colon(self) -> None:
        """An installer that fails without a word (a deb_install_command of one's own) is reported
        as its exit status alone; the message, which goes to the cloud, ended in ': '."""
        with self.assertRaises(InstallError) as caught:
            yield self.install("gateway", "deb", deb_install_command=("/bin/sh", "-c", "exit 1"))
        self.assertEqual(str(caught.exception), "pkg.deb: installer exited with 1")

    @inlineCallbacks
    def test_a_gateway_package_installer_past_script_timeout_is_given_up_not_killed(self) -> None:
        """The gateway waits ``script_timeout`` for the detached installer's result, then ends
        the install saying so; the installer itself runs on (dpkg is not cut off mid-install,
        docs/updates.md), and its result file comes all the same."""
        from tests.apps.realtime import wait_until

        command = ("/bin/sh", "-c", "sleep 3; echo late")
        with self.assertRaises(InstallError) as caught:
            yield self.install("gateway", "deb", deb_install_command=command, script_timeout=1.0)
        self.assertEqual(str(caught.exception), "no installer result after 1s")
        result = self.dir / "helper" / "result.json"
        self.assertFalse(result.exists())
        yield wait_until(result.exists, 10, what="the installer's result")
        self.assertIn("late", result.read_text())

    def fake_systemd_run(self) -> Path:
        """Put a stand-in for ``systemd-run`` first on PATH: it appends its arguments to the
        file it returns, one call a line, and runs the unit's command itself, returning when it
        ends (systemd would return at once and keep the unit running; the gateway waits for the
        result file either way)."""
        bin_dir = (self.dir / "bin").absolute()
        bin_dir.mkdir()
        calls = (self.dir / "systemd-run.args").absolute()
        fake = bin_dir / "systemd-run"
        fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nwhile [ "$1" != "--" ]; do shift; done; shift\n'
                        'exec "$@"\n')
        fake.chmod(0o755)
        old_path = os.environ["PATH"]
        os.environ["PATH"] = f"{bin_dir}:{old_path}"
        self.addCleanup(os.environ.__setitem__, "PATH", old_path)
        return calls

    @inlineCallbacks
    def test_gateway_package_through_systemd_run(self) -> None:
        """Where systemd runs, the helper is started as a transient unit with systemd-run
        (here a stand-in on PATH that records its arguments and runs the unit's command)."""
        calls = self.fake_systemd_run()
        message = yield self.install("gateway", "deb", systemd=True,
                                     deb_install_command=("/bin/sh", "-c", "echo installed $0"))
        self.assertIn("gateway package 3 installed", message)
        args = calls.read_text().split()
        self.assertEqual(args[1:3], ["--collect", "--quiet"])
        self.assertTrue(args[0].startswith("--unit=gateway-update-"), args)
        self.assertIn("gateway.updates.detached_run", args)
        self.assertNotIn("--detach", args)  # systemd keeps it alive; no double fork
        self.assertIn("pkg.deb", (self.dir / "helper" / "result.json").read_text())

    @inlineCallbacks
    def test_each_install_has_a_systemd_run_unit_of_its_own(self) -> None:
        """The helper's transient unit is named for its install, in the characters a unit name
        may hold: the updates service keeps an operation's package in
        ``artifacts/<hash>/m<module>/`` (and a bundle's images in ``<bundle>.d/`` beside it), and
        the unit was named for the directory above the helper's, ``gateway-update-m0`` for every
        operation, or ``gateway-update-fw 2.swu.d`` for a bundle named so, a name systemd-run
        refuses ('Invalid unit name'); two installs at once, an install after one whose installer
        outlived its wait, or after the restart, clashed on the name (systemd-run refuses a unit
        that is already loaded)."""
        import re

        calls = self.fake_systemd_run()
        command = ("/bin/sh", "-c", "echo installed $0")
        settings = UpdatesSettings(deb_installer="helper", deb_install_command=command)
        installer = ModuleInstaller(reactor, settings, None, systemd=lambda: True)
        for directory in ("aaaa/m0", "bbbb/m0", "cccc/m0/fw 2.swu.d"):
            deb = self.dir / directory / "gateway_3_all.deb"
            deb.parent.mkdir(parents=True)
            deb.write_text("deb")
            module = SoftwareModule("gateway", "3", "gateway", [Artifact(deb.name, "https://x/" + deb.name)])
            message = yield installer.install(Operation(directory, "install", [module]), module, [deb], False)
            self.assertEqual(message, "gateway package 3 installed")
        units = [re.match(r"--unit=(.*) --collect --quiet -- ", line).group(1)  # type: ignore[union-attr]
                 for line in calls.read_text().splitlines()]
        self.assertEqual(len(set(units)), 3, units)
        for unit in units:
            self.assertRegex(unit, r"^gateway-update-[A-Za-z0-9:_.-]+$")

    @inlineCallbacks
    def test_after_a_restart_the_helper_from_before_ends_first(self) -> None:
        """Two operations' gateway packages resumed side by side after the restart the first one's
        package made (its helper still runs dpkg): the second one's helper starts only once the
        first one's has ended, as without the restart, whichever of the two is taken up first.
        The second, when first, started its helper at once: two dpkg runs side by side (the
        second refused: 'dpkg frontend lock was locked by another process')."""
        from tests.apps.realtime import wait_until

        order = (self.dir / "order").absolute()
        release = (self.dir / "release").absolute()
        self.addCleanup(release.touch)  # a helper still waiting ends at once
        command = ("/bin/sh", "-c", f'echo "start $(basename $0)" >> {order}; i=0; '
                                    f'while [ ! -e {release} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; '
                                    f'echo "end $(basename $0)" >> {order}')
        settings = UpdatesSettings(deb_installer="helper", deb_install_command=command)
        request = self.dir / "updates" / "deb-request.json"

        def install(installer: ModuleInstaller, name: str, resumed: bool) -> Any:
            deb = self.dir / name / "m0" / f"{name}.deb"
            deb.parent.mkdir(parents=True, exist_ok=True)
            deb.write_text("deb")
            module = SoftwareModule("gateway", "3", "gateway", [Artifact(deb.name, "https://x/" + deb.name)])
            return installer.install(Operation(name, "install", [module]), module, [deb], resumed)

        before = install(ModuleInstaller(reactor, settings, None, systemd=lambda: False, deb_request=request),
                         "a", False)
        yield wait_until(order.exists, 10, what="the first helper's start")
        after = ModuleInstaller(reactor, settings, None, systemd=lambda: False, deb_request=request)
        second = install(after, "b", True)  # (waiting for the lock when the gateway stopped)
        first = install(after, "a", True)
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertEqual(order.read_text().splitlines(), ["start a.deb"])
        release.touch()
        for installing in (before, first, second):
            message = yield installing
            self.assertEqual(message, "gateway package 3 installed")
        self.assertEqual(order.read_text().splitlines(), ["start a.deb", "end a.deb", "start b.deb", "end b.deb"])

    @inlineCallbacks
    def test_the_earlier_installers_record_is_read_off_the_reactor_thread(self) -> None:
        """The record of the installer launched before a restart, its result directory's files,
        and the result and helper of the installer launched now (looked at once a second while
        it runs) are read through ``run_blocking`` (a thread in the gateway), not on the reactor
        thread, where a slow SD card would stall every connection."""
        from twisted.internet.defer import maybeDeferred

        from gateway.updates import targets

        request = self.dir / "updates" / "deb-request.json"
        earlier = self.dir / "old" / "helper"
        earlier.mkdir(parents=True)
        (earlier / "result.json").write_text('{"exit_code": 0, "output": ""}')
        request.parent.mkdir()
        request.with_name(targets.LAST_INSTALLER).write_text(json.dumps({"result_dir": str(earlier)}))
        blocking = [False]
        seen: list[tuple[str, bool]] = []

        def run_blocking(f: Any, *args: Any) -> Any:
            blocking[0] = True
            try:
                return maybeDeferred(f, *args)
            finally:
                blocking[0] = False

        def recorded(name: str, f: Any) -> Any:
            def call(*args: Any) -> Any:
                seen.append((name, blocking[0]))
                return f(*args)
            return call

        self.patch(targets, "read_json", recorded("read_json", targets.read_json))
        self.patch(targets, "_installer_started", recorded("_installer_started", targets._installer_started))
        self.patch(targets, "_helper_alive", recorded("_helper_alive", targets._helper_alive))
        deb = self.dir / "new" / "pkg.deb"
        deb.parent.mkdir()
        deb.write_text("deb")
        module = SoftwareModule("gateway", "3", "gateway", [Artifact(deb.name, "https://x/" + deb.name)])
        installer = ModuleInstaller(reactor, UpdatesSettings(deb_installer="helper", deb_install_command=("true",)),
                                    None, systemd=lambda: False, run_blocking=run_blocking, deb_request=request)
        message = yield installer.install(Operation("op", "install", [module]), module, [deb], False)
        self.assertEqual(message, "gateway package 3 installed")
        self.assertEqual(seen[:2], [("read_json", True), ("_installer_started", True)])
        # The waits for the earlier installer's result and for this one's read result.json
        # (and looked for the helper) on the reactor thread, once a second while dpkg ran
        # (this one's result may come after a first look: a look more).
        self.assertGreaterEqual([name for name, _ in seen].count("read_json"), 3)
        self.assertEqual([name for name, off in seen if not off], [])
        # Taken up after a restart, whether its installer started is looked at off the reactor
        # thread too (it once was not); with its result there, its helper is not looked for.
        del seen[:]
        message = yield installer.install(Operation("op", "install", [module]), module, [deb], True)
        self.assertEqual(message, "gateway package 3 installed")
        self.assertEqual(seen, [("_installer_started", True), ("read_json", True)])

        # Handed to the unit (deb_installer: unit), the request's folder is made, the request
        # looked for once a second (up to UNIT_TAKE_LIMIT) and withdrawn when nothing took it,
        # through run_blocking too: they once ran on the reactor thread.
        from twisted.internet.task import Clock

        unit_request = self.dir / "unit" / "deb-request.json"
        touched: list[tuple[str, bool]] = []

        def watched(name: str, f: Any) -> Any:
            def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                if Path(os.path.abspath(path)) in (unit_request.absolute(), unit_request.parent.absolute()):
                    touched.append((name, blocking[0]))
                return f(path, *args, **kwargs)
            return call

        self.patch(Path, "exists", watched("exists", Path.exists))
        self.patch(os, "mkdir", watched("mkdir", os.mkdir))
        self.patch(os, "replace", watched("replace", os.replace))
        clock = Clock()
        unit = ModuleInstaller(clock, UpdatesSettings(deb_installer="unit"), None, run_blocking=run_blocking,
                               deb_request=unit_request)
        taken = unit.install(Operation("op-2", "install", [module]), module, [deb], False)
        clock.advance(targets.LOOK_EVERY)
        self.assertNoResult(taken)
        unit_request.rename(unit_request.with_name("taken"))
        (deb.parent / "helper" / "result.json").write_text('{"exit_code": 0, "output": ""}')
        clock.advance(targets.LOOK_EVERY)
        self.assertEqual(self.successResultOf(taken), "gateway package 3 installed")
        untaken = unit.install(Operation("op-3", "install", [module]), module, [deb], False)
        clock.pump([targets.LOOK_EVERY] * int(targets.UNIT_TAKE_LIMIT / targets.LOOK_EVERY))
        self.failureResultOf(untaken, InstallError)
        self.assertTrue(unit_request.with_name("deb-request.json.withdrawn").exists())
        self.assertEqual({name for name, _ in touched}, {"mkdir", "exists", "replace"})
        self.assertGreaterEqual([name for name, _ in touched].count("exists"), 3)
        self.assertEqual([name for name, off in touched if not off], [])

    @inlineCallbacks
    def test_an_app_installed_from_a_package_named_otherwise_says_which(self) -> None:
        """The package names the app it installs (its file name or app.yaml), not the module: a
        module ``sensor-app 2.1.0`` (a hawkBit chunk ``app 2``, say) whose artifact is
        ``hello.v1.4.tar.gz`` installs hello 1.4, and its INSTALLED message once said only
        ``app sensor-app 2.1.0 installed``, no word of what now runs; a package named as its
        module is not named twice."""
        from twisted.internet.defer import succeed

        from gateway.apps.operations import InstallResult

        class Apps:
            def __init__(self, name: str, version: str) -> None:
                self.name, self.version = name, version

            def install(self, archive: Path) -> Any:
                return succeed(InstallResult(True, "installed", self.name, self.version, None,
                                             f"{self.name} {self.version} installed"))

        package = self.dir / "hello.v1.4.tar.gz"
        package.write_bytes(b"")
        module = SoftwareModule("sensor-app", "2.1.0", "app", [Artifact(package.name, "https://x/" + package.name)])
        operation = Operation("op", "install", [module])
        message = yield ModuleInstaller(reactor, UpdatesSettings(), Apps("hello", "1.4")).install(
            operation, module, [package], False)
        self.assertEqual(message, "app 'sensor-app' 2.1.0 installed: its package is hello 1.4")
        message = yield ModuleInstaller(reactor, UpdatesSettings(), Apps("sensor-app", "2.1.0")).install(
            operation, module, [package], False)
        self.assertEqual(message, "app 'sensor-app' 2.1.0 installed")

    def test_an_app_rolled_back_from_a_package_named_otherwise_says_which(self) -> None:
        """A failure names the package as a success does: a fleet chunk ``app 2`` holding hello 3,
        rolled back, once said ``app app 2 did not start healthy and was rolled back to 1``, no
        word of the version that failed (checked with a real gateway and DDI server: hello 2, then
        hello 3, both so named, told apart only by their action ids)."""
        from gateway.apps.operations import InstallResult
        from gateway.updates.targets import app_install_failure

        module = SoftwareModule("app", "2", "app", [Artifact("hello.v3.tar.gz", "https://x/hello.v3.tar.gz")])
        failed = InstallResult(False, "rolled-back", "hello", "3", "1", "hello went EXITED (exit status 3)")
        self.assertEqual(app_install_failure(module, failed), "app 'app' 2 did not start healthy and was rolled "
                                                              "back to 1 (its package is hello 3): hello went "
                                                              "EXITED (exit status 3)")
        named = InstallResult(False, "rolled-back", "app", "2", None, "app went EXITED (exit status 3)")
        self.assertEqual(app_install_failure(module, named), "app 'app' 2 did not start healthy and was removed "
                                                             "(no previous version): app went EXITED (exit status 3)")
        unnamed = InstallResult(False, "refused", None, None, None, "refused: not a readable tar archive")
        self.assertEqual(app_install_failure(module, unnamed), "app 'app' 2 refused by the app installer (nothing "
                                                               "was installed): not a readable tar archive")

    @inlineCallbacks
    def test_a_module_of_several_artifacts_installs_the_one_of_its_kind(self) -> None:
        """An app module whose artifacts are a script and the package (or the package and its
        signature, as a hawkBit chunk may list them) hands the installer the package: the file
        whose name ends .tar.gz or .tgz; it once handed over the first artifact, whatever it
        was ('refused by the app installer: not a readable tar archive', checked with a real
        gateway). Without such a name, the first artifact; a script module runs its .sh."""
        from twisted.internet.defer import succeed

        from gateway.apps.operations import InstallResult

        handed: list[str] = []

        class Apps:
            def install(self, archive: Path) -> Any:
                handed.append(archive.name)
                return succeed(InstallResult(True, "installed", "hello", "1.5", None, "hello 1.5 installed"))

        def install(target: str, names: list[str]) -> Any:
            paths = [self.dir / name for name in names]
            for path in paths:
                path.write_text("echo ran $(basename $0)\n")
            module = SoftwareModule("hello", "1.5", target, [Artifact(n, "https://x/" + n) for n in names])  # type: ignore[arg-type]
            installer = ModuleInstaller(reactor, UpdatesSettings(), Apps())
            return installer.install(Operation("op", "install", [module]), module, paths, False)

        yield install("app", ["fix.sh", "hello.v1.5.tar.gz"])
        yield install("app", ["hello.v1.5.tgz", "hello.v1.5.tgz.sig"])
        yield install("app", ["sensor.pkg", "readme.txt"])
        self.assertEqual(handed, ["hello.v1.5.tar.gz", "hello.v1.5.tgz", "sensor.pkg"])
        message = yield install("script", ["notes.txt", "run.sh"])
        self.assertEqual(message, "run.sh ran: ran run.sh")

    @inlineCallbacks
    def test_rolled_back_container_reports_the_tail_of_its_logs(self) -> None:
        """A container update that was rolled back fails the module with the reason and the tail
        of the new version's logs (docs/containers.md), as an app module's failure does."""
        from twisted.internet.defer import succeed

        from gateway.apps.operations import InstallResult

        class Containers:
            def install(self, archive: Path) -> Any:
                raise AssertionError("not an app")

            def install_container(self, *args: Any) -> Any:
                return succeed(InstallResult(
                    False, "rolled-back", "sensor", "2", "1",
                    "sensor went BACKOFF (exit status 3) during the health window",
                    "\n--- sensor.log ---\ndying\n--- sensor.err.log ---\n"))

        description = self.dir / "sensor.json"
        description.write_text("{}")
        module = SoftwareModule("sensor", "2", "container", [Artifact(description.name, "https://x/sensor.json")])
        installer = ModuleInstaller(reactor, UpdatesSettings(), Containers())
        with self.assertRaises(InstallError) as caught:
            yield installer.install(Operation("op", "install", [module]), module, [description], False)
        message = str(caught.exception)
        self.assertTrue(message.startswith("container 'sensor' 2 rolled-back: sensor went BACKOFF"), message)
        self.assertIn("--- sensor.log ---\ndying", message)

    @inlineCallbacks
    def test_app_refused_by_the_real_installer_fails(self) -> None:
        """A garbage "tarball" (no digest announced, so the download cannot catch it) that the real
        hosted-apps installer refuses fails the module install, naming the refusal."""
        apps = AppsService(AppsSettings(spool_interval=3600.0), self.dir / "state", reactor, "tcp:127.0.0.1:1883")
        yield apps.startService()
        self.addCleanup(apps.stopService)
        archive = self.dir / "thing.v3.tar.gz"
        archive.write_bytes(b"garbage, not a tarball" * 100)
        module = SoftwareModule("thing", "3", "app", [Artifact(archive.name, "https://x/" + archive.name)])
        installer = ModuleInstaller(reactor, UpdatesSettings(), apps.operations)
        with self.assertRaises(InstallError) as caught:
            yield installer.install(Operation("op", "install", [module]), module, [archive], False)
        self.assertIn("refused by the app installer", str(caught.exception))
        self.assertIn("not a readable tar archive", str(caught.exception))
        self.assertFalse((self.dir / "state" / "apps" / "thing").exists())

    @inlineCallbacks
    def test_container_named_like_a_hosted_program_is_refused(self) -> None:
        """A container module named like a hosted program (a program declared in the config) is
        refused, and its status says so (docs/containers.md: the install refuses a name taken by
        a hosted program; FINISHED_ERROR with the reason, failed, refused or rolled-back); the
        message named neither the container nor the refusal."""
        from gateway.apps.settings import ProgramSettings

        settings = AppsSettings(spool_interval=3600.0,
                                programs={"thing": ProgramSettings(command="sleep 60", autostart=False)})
        refusal = yield self.container_install_refusal(settings, "thing", "3")
        self.assertEqual(refusal, "container 'thing' 3 refused: 'thing' is the name of a hosted process app or program")

    @inlineCallbacks
    def test_a_container_module_on_a_gateway_without_containers_is_named_by_its_kind(self) -> None:
        """A container module on a gateway that hosts no containers (containers.enabled false)
        fails naming the module by its kind, its name quoted and its version, as every install
        message does (docs/updates.md); it read ``zzz 2: this gateway does not host containers``."""
        refusal = yield self.container_install_refusal(AppsSettings(spool_interval=3600.0), "app", "2")
        self.assertEqual(refusal, "container 'app' 2: this gateway does not host containers (containers.enabled)")

    @inlineCallbacks
    def container_install_refusal(self, settings: AppsSettings, name: str, version: str) -> Any:
        """The error of a container module ``name`` ``version`` installed through a real apps
        service of ``settings`` (which hosts no containers)."""
        apps = AppsService(settings, self.dir / "state", reactor, "mqtt://127.0.0.1:1883")
        yield apps.startService()
        self.addCleanup(apps.stopService)
        description = self.dir / f"{name}.json"
        description.write_text(f'{{"image": "registry.local:5000/{name}:{version}"}}')
        module = SoftwareModule(name, version, "container", [Artifact(description.name, f"https://x/{name}.json")])
        installer = ModuleInstaller(reactor, UpdatesSettings(), apps.control)
        with self.assertRaises(InstallError) as caught:
            yield installer.install(Operation("op", "install", [module]), module, [description], False)
        return str(caught.exception)

    @inlineCallbacks
    def test_container_install_resumed_after_its_switch_is_installed(self) -> None:
        """A container install the gateway's restart interrupted after the new version had become
        current is INSTALLED, saying its health window was not watched again, as an app module
        is (docs/updates.md, After a restart; docs/containers.md: the same install path as apps);
        it ended FINISHED_ERROR as already current while that version ran."""
        from twisted.internet.defer import succeed

        from gateway.apps.operations import InstallResult

        class Containers:
            def install(self, archive: Path) -> Any:
                raise AssertionError("not an app")

            def install_container(self, *args: Any) -> Any:
                return succeed(InstallResult(False, "failed", "sensor", "2", "2",
                                             "sensor 2 is already the current version"))

        description = self.dir / "sensor.json"
        description.write_text("{}")
        module = SoftwareModule("sensor", "2", "container", [Artifact(description.name, "https://x/sensor.json")])
        installer = ModuleInstaller(reactor, UpdatesSettings(), Containers())
        message = yield installer.install(Operation("op", "install", [module]), module, [description], True)
        self.assertIn("container 'sensor' 2 installed", message)
        self.assertIn("health window was not watched again", message)
        with self.assertRaises(InstallError):  # (not after a restart: installing it again is an error)
            yield installer.install(Operation("op", "install", [module]), module, [description], False)


class DetachedRunTests(SynchronousTestCase):
    """The detached helper's own result directory survives a power cut."""

    def test_the_result_directory_made_is_fsynced_in_its_parent(self) -> None:
        """The result directory, when the helper makes it, is fsynced in its parent: a power
        cut could take it with the result of an install the gateway then never learnt."""
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        fsynced = record_fsyncs(self)
        self.assertEqual(detached_run.run(base / "helper", ["true"]), 0)
        self.assertIn(str(base), fsynced)
        self.assertIn("exit_code", (base / "helper" / "result.json").read_text())
