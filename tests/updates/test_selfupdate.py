"""The packaged gateway's self-update: the request the gateway writes for
``gateway-selfupdate.path``, and the root side that takes it (:mod:`gateway.updates.selfupdate`),
with real packages built by ``dpkg-deb`` and real installer processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.inotify import INotify
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from gateway.updates import rollback, selfupdate, targets
from gateway.updates.errors import InstallError
from gateway.updates.operation import Artifact, Operation, SoftwareModule
from gateway.updates.rollback import Rollback
from gateway.updates.settings import UpdatesSettings
from gateway.updates.targets import UNIT_TAKE_LIMIT, ModuleInstaller
from tests.test_filelayer import record_fsyncs

#: The installer the tests run in place of dpkg: it names the package it was given.
FAKE_DPKG = ["/bin/sh", "-c", 'echo "installed $0"']


def build_deb(directory: Path, package: str, version: str = "9.9") -> Path:
    """A real (empty) .deb named ``package``, built with dpkg-deb."""
    if shutil.which("dpkg-deb") is None:
        raise SkipTest("dpkg-deb is not installed (it is part of dpkg on Debian)")
    tree = directory / f"{package}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test package\n")
    deb = directory / f"{package}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    shutil.rmtree(tree)
    return deb.absolute()


def unwatched(state: Path) -> Rollback:
    """The unit's rollback as it is without systemd (no service to watch; the package
    "gateway" is not installed on the test machine, so there is nothing to keep)."""
    return Rollback("gateway", state / "kept", "gateway.service", 180.0, systemctl=lambda *args: None)


class RootSideTests(TestCase):
    """What gateway-selfupdate.service does with a request (run here as the test's user)."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp()).absolute()
        self.download = self.state / "updates" / "op-1"
        self.result_dir = self.download / "helper"
        self.result_dir.mkdir(parents=True)
        self.request = self.state / "updates" / "deb-request.json"
        self.logged: list[str] = []
        self.patch(selfupdate, "log", self.logged.append)
        self.patch(rollback, "log", self.logged.append)

    def ask(self, deb: Path | str, result_dir: Path | str | None = None) -> None:
        self.request.write_text(json.dumps({"deb": str(deb), "result_dir": str(result_dir or self.result_dir),
                                            "correlation_id": "op-1"}))

    def handle(self, package: str = "gateway") -> int:
        return selfupdate.handle(self.state, package, self.request, FAKE_DPKG, unwatched(self.state))

    def result(self) -> dict[str, Any]:
        return json.loads((self.result_dir / "result.json").read_text())

    def test_installs_the_gateway_package_and_writes_the_result(self) -> None:
        """The request is taken (gone, so the path unit does not start the service again), the
        installer runs with the package appended, and its result is where the gateway waits."""
        deb = build_deb(self.download, "gateway")
        self.ask(deb)
        self.assertEqual(self.handle(), 0)
        self.assertEqual(self.result(), {"exit_code": 0, "output": f"installed {deb}\n"})
        self.assertEqual(int((self.result_dir / "helper.pid").read_text()), os.getpid())
        self.assertEqual(sorted(p.name for p in self.request.parent.iterdir()), ["op-1"])

    def test_another_package_is_refused(self) -> None:
        """Only the package named on the command line is installed: anything else is refused,
        and the gateway reads why."""
        self.ask(build_deb(self.download, "openssh-server"))
        self.assertEqual(self.handle(), 0)
        self.assertEqual(self.result()["exit_code"], selfupdate.REFUSED)
        self.assertIn("is package 'openssh-server', not 'gateway'", self.result()["output"])
        self.assertIn("is package 'openssh-server'", self.logged[0])  # in the unit's journal too

    def test_a_package_outside_the_state_directory_is_refused(self) -> None:
        outside = build_deb(Path(self.mktemp()), "gateway")
        outside.parent.mkdir(exist_ok=True)
        self.ask(outside)
        self.handle()
        self.assertIn("is not inside", self.result()["output"])

    def test_a_link_to_a_package_is_refused(self) -> None:
        """A link in the state directory, even to a package inside it, is not followed."""
        deb = build_deb(self.download, "gateway")
        link = self.download / "link.deb"
        link.symlink_to(deb)
        self.ask(link)
        self.handle()
        self.assertIn("is a link or not the kind of file expected", self.result()["output"])

    def test_a_relative_path_is_refused(self) -> None:
        self.ask("updates/op-1/gateway.deb")
        self.handle()
        self.assertIn("is not an absolute path", self.result()["output"])

    def test_a_result_directory_outside_gets_nothing(self) -> None:
        """With its result directory outside the state directory, a request is refused and
        nothing is written anywhere: the service fails (its journal says why)."""
        elsewhere = Path(self.mktemp()).absolute()
        elsewhere.mkdir()
        self.ask(build_deb(self.download, "gateway"), elsewhere)
        self.assertEqual(self.handle(), 1)
        self.assertIn("is not inside", self.logged[0])
        self.assertEqual(list(elsewhere.iterdir()), [])
        self.assertFalse(self.request.exists())

    def test_a_request_that_is_not_json_is_refused(self) -> None:
        """Refused, and taken away: malformed, or nested too deeply to parse (that raised
        RecursionError past the helper's refusals)."""
        for text in ("{not json", "[" * 5000):
            self.request.write_text(text)
            self.assertEqual(self.handle(), 1)
            self.assertFalse(self.request.exists())

    def test_a_request_without_its_fields_is_refused(self) -> None:
        self.request.write_text(json.dumps({"deb": 3}))
        self.assertEqual(self.handle(), 1)

    def test_a_request_that_is_a_link_is_not_read(self) -> None:
        """The request is opened without following a link (root would read any file)."""
        target = self.state / "elsewhere.json"
        target.write_text(json.dumps({"deb": "/x.deb", "result_dir": str(self.result_dir)}))
        self.request.symlink_to(target)
        self.assertEqual(self.handle(), 1)
        self.assertFalse((self.result_dir / "result.json").exists())

    def test_no_request_is_nothing_to_do(self) -> None:
        self.assertEqual(self.handle(), 0)

    def test_command_line(self) -> None:
        """The unit's ExecStart form; anything else is a usage error."""
        deb = build_deb(self.download, "gateway")
        self.ask(deb)
        code = selfupdate.main(["--state-dir", str(self.state), "--package", "gateway", "--keep-dir",
                                str(self.state / "kept"), str(self.request), "--", *FAKE_DPKG])
        self.assertEqual((code, self.result()["exit_code"]), (0, 0))
        self.assertEqual(selfupdate.main(["--state-dir", str(self.state), str(self.request)]), 2)
        self.assertEqual(selfupdate.main(["--state-dir", str(self.state), str(self.request), "--", "dpkg"]), 2)

    def test_the_units_command_line_parses(self) -> None:
        """debian/gateway.gateway-selfupdate.service runs this module with arguments main takes
        (checked on a copy whose paths point here)."""
        unit = Path(__file__).resolve().parents[2] / "debian" / "gateway.gateway-selfupdate.service"
        if not unit.exists():
            raise SkipTest("no debian/ beside these tests (a copy of tests/ without the package files)")
        exec_start = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
        argv = exec_start.removeprefix("ExecStart=").split()
        self.assertEqual(argv[1:4], ["-I", "-m", "gateway.updates.selfupdate"])
        args = argv[4:]
        split = args.index("--")
        self.assertEqual(args[split + 1:], ["dpkg", "--force-confold", "-i"])
        path_unit = unit.with_name("gateway.gateway-selfupdate.path").read_text()
        request = args[split - 1]
        self.assertIn(f"PathExists={request}\n", path_unit)
        state = args[args.index("--state-dir") + 1]
        self.assertEqual(request, state + "/updates/deb-request.json")
        keep = args[args.index("--keep-dir") + 1]
        self.assertIn(f"StateDirectory={Path(keep).name}\n", unit.read_text())
        self.assertIn(f"PathExists={keep}/{rollback.STEP}\n", path_unit)  # a step cut short: finished at boot
        args[args.index("--state-dir") + 1], args[split - 1] = str(self.state), str(self.request)
        args[args.index("--keep-dir") + 1] = str(self.state / "kept")
        args[split + 1:] = FAKE_DPKG
        self.ask(build_deb(self.download, "gateway"))
        # (without -I, so that this tree's gateway is the one imported, installed or not)
        done = subprocess.run([sys.executable, "-m", "gateway.updates.selfupdate", *args], capture_output=True,
                              env={**os.environ, "PYTHONPATH": str(Path(selfupdate.__file__).parents[2])},
                              check=False)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.result()["exit_code"], 0)


class GatewaySideTests(TestCase):
    """``deb_installer: unit``: the install waits for the unit to take the request and report."""

    timeout = 30

    def setUp(self) -> None:
        self.state = Path(self.mktemp()).absolute()
        self.download = self.state / "updates" / "op-1"
        self.download.mkdir(parents=True)
        self.request = self.state / "updates" / "deb-request.json"

    def install(self, clock: Any = reactor, resumed: bool = False, **notifier: Any) -> Any:
        deb = build_deb(self.download, "gateway")
        module = SoftwareModule("gateway", "9.9", "gateway", [Artifact(deb.name, "https://x/" + deb.name)])
        installer = ModuleInstaller(clock, UpdatesSettings(deb_installer="unit"), None, deb_request=self.request,
                                    **notifier)
        return installer.install(Operation("op-1", "install", [module]), module, [deb], resumed)

    @inlineCallbacks
    def test_installed_by_the_unit(self) -> None:
        """The gateway writes the request (the package, its result directory, the operation), the
        root side (here in a thread, as the test's user) takes and installs it, the gateway
        reports its result."""
        installing = self.install()
        request = json.loads(self.request.read_text())
        self.assertEqual(request, {"deb": str(self.download / "gateway_9.9_all.deb"),
                                   "result_dir": str(self.download / "helper"), "correlation_id": "op-1"})
        code = yield deferToThread(selfupdate.handle, self.state, "gateway", self.request, FAKE_DPKG,
                                   unwatched(self.state))
        self.assertEqual(code, 0)
        message = yield installing
        self.assertEqual(message, "gateway package 9.9 installed")

    @inlineCallbacks
    def test_the_take_and_the_result_are_seen_as_they_come(self) -> None:
        """The unit's take of the request and the installer's result wake the install when they
        happen (inotify, read by the reactor): the install looked for them once a second, so every
        self-update ended up to a second late after its result, and a second more after the take.
        Here the clock of the waits' time limits never moves: only the files' changes wake them."""
        from tests.apps.realtime import wait_until

        installing = self.install(Clock(), notifier=lambda: INotify(reactor))
        self.request.rename(self.request.with_name("taken"))
        (self.download / "helper" / "result.json").write_text(json.dumps({"exit_code": 0, "output": ""}))
        yield wait_until(lambda: installing.called, 5, what="the install's end")
        self.assertEqual(self.successResultOf(installing), "gateway package 9.9 installed")

    @inlineCallbacks
    def test_a_refusal_is_the_operations_error(self) -> None:
        installing = self.install()
        yield deferToThread(selfupdate.handle, self.state, "other", self.request, FAKE_DPKG, unwatched(self.state))
        with self.assertRaises(InstallError) as caught:
            yield installing
        self.assertIn("installer exited with 2: gateway-selfupdate refused it: gateway_9.9_all.deb is package "
                      "'gateway', not 'other'", str(caught.exception))

    def test_not_taken_in_time(self) -> None:
        """Without the path unit enabled nothing takes the request: after UNIT_TAKE_LIMIT the install
        fails saying how to enable it, and the request is withdrawn, durably (its directory fsynced:
        a power cut brought the request back, for the unit to install at boot), so that enabling
        the unit later does not install a package of an operation that has ended."""
        clock = Clock()
        installing = self.install(clock)
        clock.pump([1.0] * int(UNIT_TAKE_LIMIT - 1))
        self.assertNoResult(installing)
        fsynced = record_fsyncs(self)
        clock.advance(1.0)
        self.assertEqual(fsynced, [str(self.request.parent.absolute())])
        failure = self.failureResultOf(installing, InstallError)
        self.assertIn("gateway-selfupdate.path did not take the request within 30s: enable it as root "
                      "(systemctl enable --now gateway-selfupdate.path)", failure.getErrorMessage())
        self.assertFalse(self.request.exists())
        self.assertTrue(self.request.with_name("deb-request.json.withdrawn").exists())

    def test_taken_as_it_is_withdrawn(self) -> None:
        """A request the unit takes just as the gateway gives up on it is waited for, not failed:
        its package is being installed."""
        clock = Clock()
        installing = self.install(clock)
        clock.pump([1.0] * int(UNIT_TAKE_LIMIT - 1))
        real_replace = os.replace

        def taken_first(source: Any, target: Any) -> None:
            if Path(source) == self.request:
                real_replace(source, str(source) + ".taken")  # the unit, a moment earlier
            real_replace(source, target)

        self.patch(os, "replace", taken_first)
        clock.advance(1.0)
        self.assertNoResult(installing)  # waiting for the helper's result
        (self.download / "helper" / "result.json").write_text(json.dumps({"exit_code": 0, "output": ""}))
        clock.advance(1.0)
        self.assertEqual(self.successResultOf(installing), "gateway package 9.9 installed")

    def test_one_package_at_a_time(self) -> None:
        """Two operations installing gateway packages at once (the unit has one request file, dpkg
        one lock): the second request is written only once the first install has its result."""
        clock = Clock()
        installer = ModuleInstaller(clock, UpdatesSettings(deb_installer="unit"), None, deb_request=self.request)
        installs = []
        for name in ("op-1", "op-2"):
            directory = self.state / "updates" / name
            directory.mkdir(parents=True, exist_ok=True)
            deb = build_deb(directory, "gateway")
            module = SoftwareModule("gateway", "9.9", "gateway", [Artifact(deb.name, "https://x/" + deb.name)])
            installs.append(installer.install(Operation(name, "install", [module]), module, [deb], False))
        self.assertEqual(json.loads(self.request.read_text())["correlation_id"], "op-1")
        self.request.rename(self.request.with_name("taken"))
        clock.advance(1.0)
        self.assertFalse(self.request.exists())  # op-2 waits for op-1's result
        (self.state / "updates" / "op-1" / "helper" / "result.json").write_text('{"exit_code": 0}')
        clock.advance(1.0)
        self.successResultOf(installs[0])
        self.assertEqual(json.loads(self.request.read_text())["correlation_id"], "op-2")
        self.assertNoResult(installs[1])

    def test_taken_up_after_the_restart(self) -> None:
        """The gateway the package restarted takes up the install: it tells the unit it runs (its
        pid, which the unit compares with the service's main pid before it reports success), and
        reports the unit's account of a rollback as the operation's error."""
        clock = Clock()
        helper = self.download / "helper"
        helper.mkdir()
        (helper / "helper.pid").write_text("1")
        installing = self.install(clock, resumed=True)
        self.assertEqual(json.loads((helper / "alive.json").read_text()), {"pid": os.getpid()})
        self.assertFalse(self.request.exists())  # not asked again
        (helper / "result.json").write_text(json.dumps({
            "exit_code": 3, "output": "Setting up gateway (9.9) ...",
            "message": "the new version did not take up the operation within 180s (gateway.service: "
                       "activating auto-restart); rolled back to 9.8"}))
        clock.advance(1.0)
        self.assertEqual(self.failureResultOf(installing, InstallError).getErrorMessage(),
                         "gateway_9.9_all.deb: the new version did not take up the operation within 180s "
                         "(gateway.service: activating auto-restart); rolled back to 9.8\n--- dpkg ---\n"
                         "Setting up gateway (9.9) ...")

    def test_after_a_restart_an_installer_from_before_ends_first(self) -> None:
        """Two operations with gateway packages, resumed side by side after the restart the first
        one's package made, in whichever order their records are written: the one whose package
        the unit installs is taken up at once (alive.json: the unit is watching for the new
        version), and the other hands its request to the unit only once that install has its
        result, as it would have without the restart. Whichever took the one-at-a-time lock
        first went first: the second asked the unit at once, which, busy, did not take its
        request within 30 s (FINISHED_ERROR: 'gateway-selfupdate.path did not take the
        request', though it was enabled), and the first told the unit only after that; with
        the helper, the second dpkg ran beside the first."""
        clock = Clock()

        def install(installer: ModuleInstaller, name: str, resumed: bool) -> Any:
            directory = self.state / "updates" / name
            directory.mkdir(parents=True, exist_ok=True)
            deb = build_deb(directory, "gateway")
            module = SoftwareModule("gateway", "9.9", "gateway", [Artifact(deb.name, "https://x/" + deb.name)])
            return installer.install(Operation(name, "install", [module]), module, [deb], resumed)

        before = ModuleInstaller(clock, UpdatesSettings(deb_installer="unit"), None, deb_request=self.request)
        install(before, "op-1", False)
        self.request.rename(self.request.with_name("taken"))  # the unit takes op-1's request, runs dpkg
        helper = self.state / "updates" / "op-1" / "helper"
        (helper / "helper.pid").write_text(str(os.getpid()))
        clock.advance(1.0)
        # The package's scripts restart the gateway; op-2 was waiting for the lock.
        after = ModuleInstaller(clock, UpdatesSettings(deb_installer="unit"), None, deb_request=self.request)
        second = install(after, "op-2", True)
        first = install(after, "op-1", True)
        self.assertEqual(json.loads((helper / "alive.json").read_text()), {"pid": os.getpid()})
        self.assertFalse(self.request.exists())  # op-2 waits for op-1's installer
        (helper / "result.json").write_text('{"exit_code": 0}')
        clock.advance(1.0)
        self.assertEqual(self.successResultOf(first), "gateway package 9.9 installed")
        self.assertEqual(json.loads(self.request.read_text())["correlation_id"], "op-2")
        self.request.rename(self.request.with_name("taken"))
        clock.advance(1.0)
        (self.state / "updates" / "op-2" / "helper" / "result.json").write_text('{"exit_code": 0}')
        clock.advance(1.0)
        self.assertEqual(self.successResultOf(second), "gateway package 9.9 installed")

    def test_a_request_path_is_needed(self) -> None:
        deb = build_deb(self.download, "gateway")
        module = SoftwareModule("gateway", "9.9", "gateway", [Artifact(deb.name, "https://x/" + deb.name)])
        installer = ModuleInstaller(Clock(), UpdatesSettings(deb_installer="unit"), None)
        failure = self.failureResultOf(installer.install(Operation("op-1", "install", [module]), module, [deb],
                                                         False), InstallError)
        self.assertIn("given no request path", failure.getErrorMessage())


class PackagedConfigTests(TestCase):
    """The packaged /etc/gateway/gateway.yaml hands the gateway's .deb to the unit."""

    def test_packaged_config_uses_the_unit(self) -> None:
        import runpy

        from gateway.config import load

        root = Path(__file__).resolve().parents[2]
        if not (root / "debian" / "etc-config").exists():
            raise SkipTest("no debian/ beside these tests (a copy of tests/ without the package files)")
        text = runpy.run_path(str(root / "debian" / "etc-config"))["packaged"]((root / "conf" / "gateway.yaml")
                                                                                .read_text())
        config_file = Path(self.mktemp())
        state = Path(self.mktemp()).absolute()
        state.mkdir()
        config_file.write_text(text.replace("/var/lib/gateway", str(state)).replace("/var/log/gateway", str(state))
                               .replace("/run/gateway", str(state)))
        self.assertEqual(load(config_file).updates.deb_installer, "unit")
        self.assertEqual(UpdatesSettings().deb_installer, "auto")


class AutoTests(TestCase):
    """``deb_installer: auto`` (the default): the unit for a gateway that is not root where the
    package installed it (a packaged gateway whose edited gateway.yaml predates the key), else
    the helper."""

    def setUp(self) -> None:
        self.unit = Path(self.mktemp())
        self.patch(targets, "SELFUPDATE_UNIT_FILES", (Path("/nonexistent/gateway-selfupdate.path"), self.unit))

    def test_a_gateway_user_with_the_unit_installed(self) -> None:
        self.unit.write_text("[Path]\n")
        self.patch(os, "geteuid", lambda: 999)
        self.assertEqual(targets.deb_installer(UpdatesSettings()), "unit")
        self.assertEqual(targets.deb_installer(UpdatesSettings(deb_installer="helper")), "helper")

    def test_root_uses_the_helper(self) -> None:
        self.unit.write_text("[Path]\n")
        self.patch(os, "geteuid", lambda: 0)
        self.assertEqual(targets.deb_installer(UpdatesSettings()), "helper")
        self.assertEqual(targets.deb_installer(UpdatesSettings(deb_installer="unit")), "unit")

    def test_without_the_unit_the_helper(self) -> None:
        self.patch(os, "geteuid", lambda: 999)
        self.assertEqual(targets.deb_installer(UpdatesSettings()), "helper")
