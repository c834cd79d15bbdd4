"""A power cut (or a SIGKILL) in the middle of the self-update's install or rollback
(:mod:`gateway.updates.selfupdate`, :mod:`gateway.updates.rollback`): the next start of the
helper finishes the step it recorded, and the operation gets exactly one result. dpkg,
dpkg-query and systemctl are scripted (:class:`tests.updates.test_rollback.Machine`), cut at
each point; one test cuts a real dpkg, in a root of its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from gateway.updates import rollback as rollback_module
from gateway.updates import selfupdate
from gateway.updates.detached_run import execute
from gateway.updates.errors import InstallError
from gateway.updates.operation import Artifact, Operation, SoftwareModule
from gateway.updates.rollback import STEP, Rollback
from gateway.updates.settings import UpdatesSettings
from gateway.updates.targets import ModuleInstaller
from tests.updates.test_rollback import Machine
from tests.test_filelayer import record_fsyncs
from tests.updates.test_selfupdate import build_deb


class PowerCut(BaseException):
    """The helper dies here (a BaseException: nothing in the helper catches it)."""


class CutMachine(Machine):
    """:class:`Machine`, with dpkg's ``--audit`` and ``--configure -a``, and a power cut at the
    first command ``cut`` matches (the command's half-done work: ``cut_leaves``)."""

    def __init__(self, result_dir: Path) -> None:
        super().__init__(result_dir)
        self.cut: Callable[[list[str]], bool] = lambda argv: False
        self.cut_leaves = "2.0 iF"

    def run(self, argv: list[str]) -> tuple[int, str]:
        if self.cut(argv):
            self.cut = lambda argv: False
            self.commands.append(argv)
            self.installed = self.cut_leaves
            raise PowerCut(argv)
        if argv[-1] == "--audit":
            self.commands.append(argv)
            half = self.installed is not None and not self.installed.endswith(" ii")
            return 0, "The following packages are only half configured\n gateway\n" if half else ""
        if argv[-2:] == ["--configure", "-a"]:
            self.commands.append(argv)
            if self.installed is not None:
                self.installed = self.installed.split()[0] + " ii"
            return 0, "Setting up gateway ...\n"
        return super().run(argv)


class PowerCutTests(TestCase):
    """The helper cut at each point of an install, then started again (at boot: the path unit
    starts it for the record it left)."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp()).absolute()
        self.result_dir = self.state / "updates" / "op-1" / "helper"
        self.result_dir.mkdir(parents=True)
        self.request = self.state / "updates" / "deb-request.json"
        self.keep = self.state / "kept"
        self.keep.mkdir()
        (self.keep / "gateway_1.0.deb").write_text("the installed version's package")
        self.deb = build_deb(self.result_dir.parent, "gateway", "2.0")
        self.machine = CutMachine(self.result_dir)
        self.logged: list[str] = []
        self.patch(rollback_module, "log", self.logged.append)
        self.patch(selfupdate, "log", self.logged.append)

    def start(self) -> int:
        """One start of the helper, with a new Rollback (the process before it is gone)."""
        rollback = Rollback("gateway", self.keep, "gateway.service", 30.0, sleep=self.machine.sleep,
                            monotonic=lambda: self.machine.now, run=self.machine.run,
                            systemctl=self.machine.systemctl)
        return selfupdate.handle(self.state, "gateway", self.request, ["dpkg", "-i"], rollback)

    def cut_then_start_again(self, cut: Callable[[list[str]], bool]) -> dict[str, Any]:
        """Ask for the install, cut it where ``cut`` says, start the helper again: its result."""
        self.request.write_text(json.dumps({"deb": str(self.deb), "result_dir": str(self.result_dir)}))
        self.machine.cut = cut
        self.assertRaises(PowerCut, self.start)
        self.assertTrue((self.keep / STEP).exists())
        self.assertTrue((self.result_dir / STEP).exists())  # the gateway waits on
        self.assertFalse((self.result_dir / "result.json").exists())
        self.machine.main_pid = 500  # (a boot: the gateway runs again, with a new pid)
        self.assertEqual(self.start(), 0)
        result: dict[str, Any] = json.loads((self.result_dir / "result.json").read_text())
        self.assertFalse((self.result_dir / STEP).exists())
        self.assertEqual(int((self.result_dir / "helper.pid").read_text()), os.getpid())
        self.assertFalse((self.keep / STEP).exists())
        return result

    def dpkg_installs(self) -> list[str]:
        return [Path(argv[-1]).name for argv in self.machine.commands if argv[:2] == ["dpkg", "-i"]]

    def test_an_install_cut_at_each_point_is_finished(self) -> None:
        """Cut in dpkg (the package left half configured: dpkg --configure -a, then installed
        again), in the new version's health watch, or as its package is kept: the next start
        installs it again, watches it start, and the result is a success; the new package is
        the one kept."""
        cuts: dict[str, Callable[[list[str]], bool]] = {
            "dpkg": lambda argv: argv[-1].endswith("2.0_all.deb"),
            "watch": lambda argv: False,
            "keep": lambda argv: False,
        }
        for point, cut in cuts.items():
            self.setUp()
            self.machine.on_install = self.machine.restart_alive
            if point == "watch":
                self.machine.sleep = self.cut_here  # type: ignore[method-assign]
                self.machine.on_install = lambda: None  # the cut comes before the new version shows up
            if point == "keep":
                self.patch(Rollback, "keep", self.cut_keep_once())
            result = self.cut_then_start_again(cut)
            self.assertEqual(result["exit_code"], 0, point)
            self.assertNotIn("message", result)
            self.assertEqual(self.machine.installed, "2.0 ii")
            self.assertEqual(self.dpkg_installs(), ["gateway_2.0_all.deb"] * 2, point)
            self.assertEqual(sorted(p.name for p in self.keep.iterdir()), ["gateway_2.0.deb"], point)
        audits = [argv for argv in self.machine.commands if argv[-1] in ("--audit", "-a")]
        self.assertEqual(audits, [["dpkg", "--audit"]])  # (the last cut left dpkg's state whole)

    def cut_here(self, seconds: float) -> None:
        """A power cut in the health watch's first sleep."""
        del self.machine.sleep  # (Machine's again, for the next start)
        self.machine.on_install = self.machine.restart_alive
        raise PowerCut("in the health watch")

    def cut_keep_once(self) -> Callable[[Rollback, Path], None]:
        """:meth:`Rollback.keep`, cut the first time."""
        real = Rollback.keep
        cuts = ["keeping the package"]

        def keep(rollback: Rollback, deb: Path) -> None:
            if cuts:
                raise PowerCut(cuts.pop())
            real(rollback, deb)

        return keep

    def test_the_request_is_taken_durably_before_anything_runs(self) -> None:
        """The request is renamed aside and its directory fsynced before anything else: the
        rename was not made durable, so a power cut in the install could bring the request back,
        for the start at boot to take again once it had finished the step: a second install."""
        self.request.write_text(json.dumps({"deb": str(self.deb), "result_dir": str(self.result_dir)}))
        self.machine.on_install = self.machine.restart_alive
        fsynced = record_fsyncs(self)
        self.assertEqual(self.start(), 0)
        self.assertEqual(fsynced[0], str(self.request.parent))
        self.assertFalse(self.request.exists())

    def test_a_half_configured_install_is_configured_first(self) -> None:
        """dpkg says the package is half configured: dpkg --configure -a runs before the install
        again, as dpkg asks."""
        self.machine.on_install = self.machine.restart_alive
        self.cut_then_start_again(lambda argv: argv[-1].endswith("2.0_all.deb"))
        self.assertEqual([argv for argv in self.machine.commands if argv[0] == "dpkg"],
                         [["dpkg", "-i", str(self.deb)],  # cut
                          ["dpkg", "--audit"], ["dpkg", "--configure", "-a"], ["dpkg", "-i", str(self.deb)]])
        self.assertIn("dpkg --audit: The following packages are only half configured gateway; running dpkg "
                      "--configure -a", self.logged)

    def test_a_rollback_cut_short_is_finished_and_says_why_it_began(self) -> None:
        """The new version did not start; the rollback's dpkg is cut: the next start rolls back
        again, and the one result says why the new version was rolled back."""
        self.machine.on_install = lambda: setattr(self.machine, "main_pid", 0)
        self.machine.cut_leaves = "1.0 iU"
        result = self.cut_then_start_again(lambda argv: argv[0] == "dpkg" and argv[-1].endswith("1.0.deb"))
        self.assertEqual(result["exit_code"], rollback_module.NOT_STARTED)
        self.assertEqual(result["message"], "the new version did not take up the operation within 30s "
                                            "(gateway.service: activating auto-restart); rolled back to 1.0")
        self.assertEqual(self.dpkg_installs(), ["gateway_2.0_all.deb", "gateway_1.0.deb", "gateway_1.0.deb"])
        self.assertEqual(self.machine.installed, "1.0 ii")

    def test_nothing_kept_to_roll_back_to_is_reported(self) -> None:
        """No package kept and no dpkg-repack: the new version, installed again after the cut,
        fails again; the result says so, and that nothing could be rolled back to."""
        (self.keep / "gateway_1.0.deb").unlink()
        self.patch(rollback_module.shutil, "which", lambda name: None)
        self.machine.install_code = 1
        self.machine.failure_leaves = "2.0 iF"
        result = self.cut_then_start_again(lambda argv: argv[-1].endswith("2.0_all.deb"))
        self.assertEqual(result["message"], "the installer exited with 1; could not roll back to 1.0: no package "
                                            "of 1.0 is kept (it was not installed by gateway-selfupdate), and "
                                            "dpkg-repack, which would rebuild it, is not installed")

    def test_a_package_gone_after_the_cut_is_rolled_back(self) -> None:
        """The new package is gone when the helper starts again: the kept one is installed."""
        self.request.write_text(json.dumps({"deb": str(self.deb), "result_dir": str(self.result_dir)}))
        self.machine.cut = lambda argv: argv[-1].endswith("2.0_all.deb")
        self.assertRaises(PowerCut, self.start)
        self.deb.unlink()
        self.start()
        result = json.loads((self.result_dir / "result.json").read_text())
        self.assertTrue(result["message"].startswith("the install was cut short, and its package cannot be "
                                                     f"installed again (the package '{self.deb}': No such file"),
                        result)
        self.assertTrue(result["message"].endswith("; rolled back to 1.0"), result)
        self.assertEqual(self.machine.installed, "1.0 ii")

    def test_a_result_written_before_the_cut_is_not_done_again(self) -> None:
        """Cut after the result was written, before the record went: nothing is installed again
        and the result stays the one the gateway may have reported already."""
        self.machine.on_install = self.machine.restart_alive
        self.request.write_text(json.dumps({"deb": str(self.deb), "result_dir": str(self.result_dir)}))
        real_clear = Rollback.clear

        def clear(rollback: Rollback, result_dir: Path | None) -> None:
            self.patch(Rollback, "clear", real_clear)
            raise PowerCut("before the record went")

        self.patch(Rollback, "clear", clear)
        self.assertRaises(PowerCut, self.start)
        written = (self.result_dir / "result.json").read_text()
        commands = len(self.machine.commands)
        self.assertEqual(self.start(), 0)
        self.assertEqual(self.machine.commands[commands:], [])
        self.assertEqual((self.result_dir / "result.json").read_text(), written)
        self.assertFalse((self.keep / STEP).exists())

    def test_the_gateway_waits_for_the_step_through_the_boot(self) -> None:
        """After the boot the helper's pid is gone (no helper runs until the path unit starts it
        for the record): the gateway, seeing the step recorded, waits for the result instead of
        ending the operation with 'the installer helper vanished'."""
        (self.result_dir / "helper.pid").write_text("999999999")  # of the boot before
        (self.result_dir / STEP).write_text(json.dumps({"step": "install"}))
        clock = Clock()
        module = SoftwareModule("gateway", "2.0", "gateway", [Artifact(self.deb.name, "https://x/" + self.deb.name)])
        installer = ModuleInstaller(clock, UpdatesSettings(deb_installer="unit"), None, deb_request=self.request)
        installing = installer.install(Operation("op-1", "install", [module]), module, [self.deb], True)
        clock.pump([1.0] * 30)
        self.assertNoResult(installing)
        (self.result_dir / "result.json").write_text(json.dumps({"exit_code": 0, "output": ""}))
        clock.advance(1.0)
        self.assertEqual(self.successResultOf(installing), "gateway package 2.0 installed")
        # (without the record, as before: a helper gone without a result is said)
        (self.result_dir / "result.json").unlink()
        (self.result_dir / STEP).unlink()
        installing = installer.install(Operation("op-1", "install", [module]), module, [self.deb], True)
        clock.pump([1.0] * 6)
        self.assertEqual(self.failureResultOf(installing, InstallError).getErrorMessage(),
                         "the installer helper vanished without a result")


class RealDpkgTests(TestCase):
    """A real dpkg, in a root of its own, killed (SIGKILL) by the package's postinst in the middle
    of its install, then the helper started again."""

    def test_a_killed_dpkg_is_configured_and_the_install_finished(self) -> None:
        if shutil.which("dpkg") is None or os.geteuid() != 0:
            raise SkipTest("needs dpkg and root (dpkg --root runs maintainer scripts as root)")
        work = Path(self.mktemp()).absolute()
        state, root = work / "state", work / "root"
        result_dir = state / "updates" / "op-1" / "helper"
        result_dir.mkdir(parents=True)
        (root / "var" / "lib" / "dpkg" / "updates").mkdir(parents=True)
        (root / "var" / "lib" / "dpkg" / "status").touch()
        deb = build_deb(result_dir.parent, "gateway", "2.0")
        tree = work / "tree"  # the same package, with a postinst that kills dpkg the first time
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
        postinst = tree / "DEBIAN" / "postinst"
        postinst.write_text(f"#!/bin/sh\n[ -e {work}/killed ] && exit 0\ntouch {work}/killed\n"
                            "kill -9 $PPID\nexit 1\n")
        postinst.chmod(0o755)
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True,
                       capture_output=True)
        admindir = f"--admindir={root}/var/lib/dpkg"

        def run(argv: list[str]) -> tuple[int, str]:
            if argv[0] == "dpkg-query":  # (the test's root, not the machine's)
                argv = [argv[0], admindir, *argv[1:]]
            code, output = execute(argv)
            if code == -9:  # dpkg killed: the helper dies with it, as in a power cut
                raise PowerCut(output)
            return code, output

        rollback = Rollback("gateway", work / "kept", "gateway.service", 30.0, run=run, systemctl=lambda *args: None)
        command = ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-confold", "-i"]
        request = state / "updates" / "deb-request.json"
        request.write_text(json.dumps({"deb": str(deb), "result_dir": str(result_dir)}))
        self.patch(selfupdate, "log", lambda line: None)
        self.patch(rollback_module, "log", lambda line: None)
        self.assertRaises(PowerCut, selfupdate.handle, state, "gateway", request, command, rollback)
        self.assertEqual(rollback.installed(), "2.0 iF")  # half configured: dpkg --audit says so
        self.assertEqual(selfupdate.handle(state, "gateway", request, command, rollback), 0)
        result = json.loads((result_dir / "result.json").read_text())
        self.assertEqual(result["exit_code"], 0, result)
        self.assertEqual(rollback.installed(), "2.0 ii")
        self.assertEqual(execute(["dpkg", f"--root={root}", "--audit"]), (0, ""))
        self.assertFalse((work / "kept" / STEP).exists())
