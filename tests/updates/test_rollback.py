"""The self-update's rollback (root side, :mod:`gateway.updates.rollback`): which failures put
the old version back, and how it watches the new one start. dpkg, dpkg-query and systemctl
are scripted here; the real ones run in .ci/deb-smoke and .ci/deb-systemd. dpkg-repack runs
for real."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from gateway.updates import rollback as rollback_module
from gateway.updates.rollback import ALIVE, NOT_STARTED, STEP, Rollback
from tests.test_filelayer import record_calls, record_fsyncs


class Machine:
    """A scripted machine: what dpkg-query says is installed, what the installer does, and
    what systemd says about the gateway's service."""

    def __init__(self, result_dir: Path) -> None:
        self.result_dir = result_dir
        self.installed = "1.0 ii"
        self.commands: list[list[str]] = []
        self.install_code = 0
        self.installs_as = "2.0 ii"  # the state a successful install leaves
        self.failure_leaves = "1.0 ii"  # the state a failed install leaves
        self.main_pid = 100
        self.on_install: Any = None  # what the service does when the package's scripts restart it
        self.now = 0.0
        self.systemctl_calls: list[tuple[str, ...]] = []
        self.kept_reads = (0, "gateway 1.0")  # what dpkg-deb says of the kept package it reads through

    def run(self, argv: list[str]) -> tuple[int, str]:
        self.commands.append(argv)
        if argv[0] == "dpkg-query":
            return (0, self.installed + " ") if self.installed else (1, "no packages found")
        if argv[0] == "sh" and "dpkg-deb" in argv[2]:
            return self.kept_reads
        if argv[0] == "env":  # dpkg-repack, in its scratch directory
            (Path(argv[-2]) / "gateway_1.0_all.deb").write_text("the installed version, repacked")
            return 0, "dpkg-repack: created gateway_1.0_all.deb\n"
        if argv[-1].endswith("1.0.deb"):  # the rollback
            self.installed = "1.0 ii"
            self.main_pid += 1
            return 0, "rolled back\n"
        if self.install_code == 0:
            self.installed = self.installs_as
            if self.on_install is not None:
                self.on_install()
            return 0, "Setting up gateway (2.0) ...\n"
        self.installed = self.failure_leaves
        return self.install_code, "dpkg: error processing package gateway\n"

    def systemctl(self, *args: str) -> str | None:
        self.systemctl_calls.append(args)
        if args[:3] == ("show", "-p", "MainPID"):
            return str(self.main_pid)
        if args[:3] == ("show", "-p", "ActiveState,SubState"):
            return "activating\nauto-restart"
        return ""

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def restart_alive(self) -> None:
        """The package's scripts restart the service; the new gateway takes up the operation."""
        self.main_pid += 1
        (self.result_dir / ALIVE).write_text(json.dumps({"pid": self.main_pid}))


class RollbackTests(TestCase):

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).absolute()
        self.result_dir = self.dir / "helper"
        self.result_dir.mkdir(parents=True)
        self.keep = self.dir / "kept"
        self.keep.mkdir()
        (self.keep / "gateway_1.0.deb").write_text("the installed version's package")
        self.deb = self.dir / "gateway_2.0.deb"
        self.deb.write_text("the new package")
        self.machine = Machine(self.result_dir)
        self.logged: list[str] = []
        self.patch(rollback_module, "log", self.logged.append)
        self.rollback = Rollback("gateway", self.keep, "gateway.service", 30.0, sleep=self.machine.sleep,
                                 monotonic=lambda: self.machine.now, run=self.machine.run,
                                 systemctl=self.machine.systemctl)

    def install(self) -> dict[str, Any]:
        """Install as the helper does: the step's record stays until the result is written, then goes."""
        result = self.rollback.install(["dpkg", "-i"], self.deb, self.result_dir)
        self.assertTrue((self.keep / STEP).exists())
        self.rollback.clear(self.result_dir)
        return result

    def test_the_keep_directory_made_for_a_step_is_fsynced_in_its_parent(self) -> None:
        """The keep directory, made for the first step's record, is fsynced in its parent (and
        its parent's, made too): a power cut could take it with the record of a step under way,
        which the next start then never finished or rolled back."""
        keep = self.dir / "new" / "kept"
        fsynced = record_fsyncs(self)
        Rollback("gateway", keep, "gateway.service", 30.0).record({"result_dir": str(self.result_dir)})
        self.assertTrue((keep / STEP).exists())
        self.assertIn(str(self.dir), fsynced)
        self.assertIn(str(self.dir / "new"), fsynced)

    def test_the_keep_directory_made_for_a_package_is_fsynced_in_its_parent(self) -> None:
        """The keep directory, made to keep the installed package, is fsynced in its parent: a
        power cut could take it with the only package to roll back to."""
        keep = self.dir / "kept-anew"
        fsynced = record_fsyncs(self)
        Rollback("gateway", keep, "gateway.service", 30.0, run=self.machine.run).keep(self.deb)
        self.assertEqual([p.name for p in keep.iterdir()], [f"gateway_{self.machine.installed.split()[0]}.deb"])
        self.assertIn(str(self.dir), fsynced)

    def test_the_keep_directory_made_for_a_rebuilt_package_is_fsynced_in_its_parent(self) -> None:
        """The keep directory, made for a package dpkg-repack rebuilds, is fsynced in its
        parent: a power cut could take it with the only package to roll back to."""
        keep = self.dir / "kept-anew"
        self.patch(rollback_module.shutil, "which", lambda name: f"/usr/bin/{name}")
        fsynced = record_fsyncs(self)
        kept, why_not = Rollback("gateway", keep, "gateway.service", 30.0, run=self.machine.run).previous_package("1.0 ii")
        self.assertEqual((kept, why_not), (keep / "gateway_1.0.deb", ""))
        self.assertIn(str(self.dir), fsynced)

    def test_the_package_kept_before_stays_removed_after_a_power_cut(self) -> None:
        """Keeping the new package removes the one kept before, then fsyncs the keep directory
        (docs/install.md: it holds one package and no more). It did not: a power cut brought
        the old package back, two kept until the next install."""
        events = record_fsyncs(self)
        record_calls(self, events, os, "unlink")
        self.machine.installed = "2.0 ii"
        self.rollback.keep(self.deb)
        self.assertEqual(sorted(p.name for p in self.keep.iterdir()), ["gateway_2.0.deb"])
        removed = events.index(f"unlink {self.keep / 'gateway_1.0.deb'}")
        self.assertIn(str(self.keep), events[removed + 1:])

    def installs(self) -> list[str]:
        return [argv[-1] for argv in self.machine.commands if argv[0] == "dpkg"]

    def test_healthy_new_version_is_kept(self) -> None:
        """The restarted gateway takes up the operation: success, and the new package replaces the
        kept one as the version to roll back to next time."""
        self.machine.on_install = self.machine.restart_alive
        result = self.install()
        self.assertEqual(result, {"exit_code": 0, "output": "Setting up gateway (2.0) ...\n"})
        self.assertEqual(self.installs(), [str(self.deb)])
        self.assertEqual([p.name for p in self.keep.iterdir()], ["gateway_2.0.deb"])
        self.assertEqual((self.keep / "gateway_2.0.deb").read_text(), "the new package")

    def test_what_a_killed_run_left_in_the_keep_directory_is_removed(self) -> None:
        """docs/install.md: a package's temporary file and a dpkg-repack scratch directory that a
        run killed before its end left in the keep directory go at the next run. Each is as
        large as the package, and nothing removed them: one more with every such kill."""
        (self.keep / ".gateway_1.5.deb.tmp").write_text("half a package")
        (self.keep / ".repack-x1y2").mkdir()
        (self.keep / ".repack-x1y2" / "gateway_1.0.deb").write_text("half a rebuilt package")
        self.machine.on_install = self.machine.restart_alive
        self.assertEqual(self.install()["exit_code"], 0)
        self.assertEqual(sorted(p.name for p in self.keep.iterdir()), ["gateway_2.0.deb"])

    def test_the_kept_package_is_durable_before_the_old_one_goes(self) -> None:
        """The new package is kept through a temp file that is fsynced before it is renamed in
        place (and the directory after): a plain copy and rename, then the old package deleted,
        could leave an empty package as the only one to roll back to after a power cut."""
        events: list[tuple[str, str]] = []
        real_fsync, real_replace, real_unlink = os.fsync, os.replace, Path.unlink

        def fsync(fd: int) -> None:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            real_fsync(fd)

        def replace(src: Any, dst: Any) -> None:
            events.append(("replace", str(dst)))
            real_replace(src, dst)

        def unlink(path: Path, missing_ok: bool = False) -> None:
            events.append(("unlink", str(path)))
            real_unlink(path, missing_ok)

        self.patch(os, "fsync", fsync)
        self.patch(os, "replace", replace)
        self.patch(Path, "unlink", unlink)
        self.machine.on_install = self.machine.restart_alive
        self.install()
        target = str(self.keep / "gateway_2.0.deb")
        replaced = events.index(("replace", target))
        self.assertTrue(any(kind == "fsync" and path.endswith(".tmp") for kind, path in events[:replaced]), events)
        self.assertIn(("fsync", str(self.keep)), events[replaced:])
        self.assertLess(events.index(("fsync", str(self.keep))), events.index(("unlink", str(self.keep / "gateway_1.0.deb"))))
        self.assertEqual((self.keep / "gateway_2.0.deb").read_text(), "the new package")

    def test_new_version_that_does_not_start_is_rolled_back(self) -> None:
        """The service restarts but no new gateway takes up the operation within the health
        timeout (it crashes at start): the kept package is installed again."""

        def restarts_dead() -> None:
            self.machine.main_pid = 0

        self.machine.on_install = restarts_dead
        result = self.install()
        self.assertEqual(result["exit_code"], NOT_STARTED)
        self.assertEqual(result["message"], "the new version did not take up the operation within 30s "
                                            "(gateway.service: activating auto-restart); rolled back to 1.0")
        self.assertEqual(self.installs(), [str(self.deb), str(self.keep / "gateway_1.0.deb")])
        self.assertGreaterEqual(self.machine.now, 30.0)
        self.assertEqual([p.name for p in self.keep.iterdir()], ["gateway_1.0.deb"])

    def test_an_alive_file_of_the_old_process_does_not_count(self) -> None:
        """Only a new process taking up the operation counts: the old gateway's pid in the alive
        file (left by an earlier restart) is not the new version running."""
        (self.result_dir / ALIVE).write_text(json.dumps({"pid": 100}))

        def restarts_without_taking_up() -> None:
            self.machine.main_pid = 101  # a new process, which never takes up the operation

        self.machine.on_install = restarts_without_taking_up
        result = self.install()
        self.assertEqual(result["exit_code"], NOT_STARTED)
        self.assertFalse((self.result_dir / ALIVE).exists())

    def test_an_unreadable_alive_file_is_no_new_version_running(self) -> None:
        """An alive file the gateway did not write (``null``, a symbolic link to nothing, not
        JSON) is no new version taking up the operation: the unit waits, then rolls back, as
        without one; the ValueError it raised ended the unit with neither result nor rollback."""
        for damage in ("null", "link", "{"):
            with self.subTest(damage=damage):
                self.machine = Machine(self.result_dir)
                self.rollback = Rollback("gateway", self.keep, "gateway.service", 30.0, sleep=self.machine.sleep,
                                         monotonic=lambda: self.machine.now, run=self.machine.run,
                                         systemctl=self.machine.systemctl)

                def restarts_with_damage() -> None:
                    self.machine.main_pid += 1
                    alive = self.result_dir / ALIVE
                    if damage == "link":
                        alive.symlink_to(self.result_dir / "nowhere")
                    else:
                        alive.write_text(damage)

                self.machine.on_install = restarts_with_damage
                result = self.install()
                self.assertEqual(result["exit_code"], NOT_STARTED)
                self.assertIn("did not take up the operation within 30s", result["message"])

    def test_not_restarted_by_the_package_is_restarted(self) -> None:
        """When the package's scripts did not restart the service (a policy said no), the unit
        restarts it, once, and watches the new version start."""
        calls = self.machine.systemctl_calls

        def restart_on_request(*args: str) -> str | None:
            if args[0] == "restart":
                self.machine.restart_alive()
            return Machine.systemctl(self.machine, *args)

        self.rollback.systemctl = restart_on_request
        result = self.install()
        self.assertEqual(result["exit_code"], 0)
        self.assertEqual([c for c in calls if c[0] == "restart"], [("restart", "--no-block", "gateway.service")])

    def test_failed_install_that_changed_nothing_is_not_rolled_back(self) -> None:
        """dpkg refused before unpacking (the old version is installed as it was): nothing to
        undo, and the gateway is not restarted for nothing."""
        self.machine.install_code = 1
        result = self.install()
        self.assertEqual(result, {"exit_code": 1, "output": "dpkg: error processing package gateway\n"})
        self.assertEqual(self.installs(), [str(self.deb)])

    def test_failed_install_that_left_the_new_version_half_configured_is_rolled_back(self) -> None:
        self.machine.install_code = 1
        self.machine.failure_leaves = "2.0 iF"
        result = self.install()
        self.assertEqual(result["message"], "the installer exited with 1; rolled back to 1.0")
        self.assertEqual(self.installs(), [str(self.deb), str(self.keep / "gateway_1.0.deb")])

    def test_nothing_to_roll_back_to(self) -> None:
        """Without a kept package and without dpkg-repack, the failure says the old version could
        not be put back, and why."""
        (self.keep / "gateway_1.0.deb").unlink()
        self.patch(rollback_module.shutil, "which", lambda name: None)
        self.machine.install_code = 1
        self.machine.failure_leaves = "2.0 iF"
        result = self.install()
        self.assertEqual(result["message"], "the installer exited with 1; could not roll back to 1.0: no package "
                                            "of 1.0 is kept (it was not installed by gateway-selfupdate), and "
                                            "dpkg-repack, which would rebuild it, is not installed")
        self.assertTrue(self.logged[0].startswith("cannot roll back: no package of 1.0 is kept"), self.logged)

    def test_a_damaged_kept_package_is_rebuilt_before_the_install(self) -> None:
        """A kept package dpkg-deb cannot read through (cut short, damaged on disk) is never the one
        rolled back to: it is removed and dpkg-repack rebuilds the installed version, and a new
        version that does not start is rolled back to that. The damaged one was installed: dpkg
        stopped in the middle of it, and neither version was installed whole."""
        self.patch(rollback_module.shutil, "which", lambda name: f"/usr/bin/{name}")
        self.machine.kept_reads = (2, "dpkg-deb: error: unexpected end of file in archive member header")

        def restarts_dead() -> None:
            self.machine.main_pid = 0

        self.machine.on_install = restarts_dead
        result = self.install()
        self.assertEqual(result["message"], "the new version did not take up the operation within 30s "
                                            "(gateway.service: activating auto-restart); rolled back to 1.0")
        self.assertEqual(self.installs(), [str(self.deb), str(self.keep / "gateway_1.0.deb")])
        self.assertEqual((self.keep / "gateway_1.0.deb").read_text(), "the installed version, repacked")
        self.assertIn("is damaged (dpkg-deb cannot read it (exit 2): dpkg-deb: error: unexpected end of file",
                      self.logged[0])

    def test_a_damaged_kept_package_and_no_dpkg_repack_is_said(self) -> None:
        """Without dpkg-repack a damaged kept package cannot be replaced: the failure says the old
        version could not be put back, and why; the damaged package is not installed."""
        self.patch(rollback_module.shutil, "which", lambda name: None)
        self.machine.kept_reads = (0, "gateway 0.9")
        self.machine.install_code = 1
        self.machine.failure_leaves = "2.0 iF"
        result = self.install()
        self.assertEqual(result["message"], "the installer exited with 1; could not roll back to 1.0: the "
                                            "package of 1.0 kept was damaged (it holds 'gateway 0.9', not "
                                            "gateway 1.0) and is removed, and dpkg-repack, which would rebuild "
                                            "it, is not installed")
        self.assertEqual(self.installs(), [str(self.deb)])
        self.assertEqual(list(self.keep.iterdir()), [])

    def test_dpkg_deb_finds_a_kept_package_cut_short(self) -> None:
        """The check reads the package through with the real dpkg-deb: a whole one passes, one cut
        short (a copy the disk lost the end of) does not."""
        if shutil.which("dpkg-deb") is None:
            raise SkipTest("dpkg-deb is not installed")
        tree = self.dir / "tree"
        (tree / "DEBIAN").mkdir(parents=True)
        (tree / "DEBIAN" / "control").write_text("Package: gateway\nVersion: 1.0\nArchitecture: all\n"
                                                 "Maintainer: t <t@example.com>\nDescription: t\n")
        (tree / "usr").mkdir()
        (tree / "usr" / "payload").write_bytes(os.urandom(64 * 1024))
        kept = self.keep / "gateway_1.0.deb"
        subprocess.run(["dpkg-deb", "-Zgzip", "--build", str(tree), str(kept)], capture_output=True, check=True)
        real = Rollback("gateway", self.keep, "gateway.service", 30.0)
        self.assertIsNone(real.damage(kept, "1.0"))
        self.assertEqual(real.damage(kept, "1.1"), "it holds 'gateway 1.0', not gateway 1.1")
        with kept.open("r+b") as package:
            package.truncate(kept.stat().st_size - 4096)
        damage = real.damage(kept, "1.0")
        assert damage is not None
        self.assertTrue(damage.startswith("dpkg-deb cannot read it (exit "), damage)

    def test_without_systemd_the_start_is_not_watched(self) -> None:
        """The unit runs under systemd; run by hand elsewhere (.ci/deb-smoke) there is no service
        to watch: the installer's result is the outcome."""
        self.rollback.systemctl = lambda *args: None
        self.assertEqual(self.install()["exit_code"], 0)
        self.assertEqual([p.name for p in self.keep.iterdir()], ["gateway_2.0.deb"])

    def test_a_main_pid_that_is_no_number_is_no_pid(self) -> None:
        """A ``MainPID`` that is not ASCII digits (``²``: a digit to ``str.isdigit``, for which
        ``int`` raises) is read as no pid, as no systemd is, rather than a ValueError that
        stopped the helper in the middle of the install."""
        for shown in ("\u00b2", "\u0661\u0660\u0660", "-1"):
            self.rollback.systemctl = lambda *args, shown=shown: shown
            self.assertIsNone(self.rollback.main_pid(), shown)

    def test_dpkg_repack_rebuilds_the_installed_version(self) -> None:
        """A version installed by hand has no kept package: dpkg-repack rebuilds it from the
        installed files (here dpkg-repack's own package, which the test dependencies install)."""
        if shutil.which("dpkg-repack") is None:
            raise SkipTest("dpkg-repack is not installed (make test-deps installs it)")
        repack = Rollback("dpkg-repack", self.keep, "gateway.service", 30.0, systemctl=lambda *args: None)
        installed = repack.installed()
        assert installed is not None
        kept, why_not = repack.previous_package(installed)
        self.assertEqual(why_not, "")
        assert kept is not None
        self.assertEqual(kept, self.keep / f"dpkg-repack_{installed.split()[0]}.deb")
        fields = subprocess.run(["dpkg-deb", "--field", str(kept), "Package", "Version"], capture_output=True,
                                check=True).stdout.decode()
        self.assertEqual(fields, f"Package: dpkg-repack\nVersion: {installed.split()[0]}\n")
        self.assertEqual(sorted(p.name for p in self.keep.iterdir()), sorted(["gateway_1.0.deb", kept.name]))
