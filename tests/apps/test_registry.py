"""The record of the install under way (``apps/installing.json``) and its undoing at a start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.registry import AppRegistry
from tests.logevents import capture_log_events
from tests.test_filelayer import record_fsyncs


class CutShortInstallTests(SynchronousTestCase):
    """What :meth:`AppRegistry.undo_cut_short_install` does with what a killed install left."""

    def setUp(self) -> None:
        self.registry = AppRegistry(Path(self.mktemp()))
        self.registry.root.mkdir(parents=True)

    def unpack(self, name: str, version: str) -> None:
        """An unpacked version of ``name``."""
        self.registry.version_dir(name, version).mkdir(parents=True)

    def test_nothing_under_way(self) -> None:
        """No record: nothing to undo."""
        self.assertIsNone(self.registry.undo_cut_short_install())

    def test_a_switched_upgrade_is_rolled_back(self) -> None:
        """An upgrade cut short after the switch: ``current`` names the previous version again,
        the wishes from before it are back, its files and its record are gone."""
        self.unpack("sensor", "1")
        self.registry.set_current("sensor", "1")
        self.registry.begin_install("sensor", "2", {"sensor": "stopped"})
        self.unpack("sensor", "2")
        self.registry.set_current("sensor", "2")
        self.registry.save_desired({"sensor": "running"})
        self.assertEqual(self.registry.undo_cut_short_install(), ("sensor", "2", "1"))
        self.assertEqual(os.readlink(self.registry.app_dir("sensor") / "current"), "1")
        self.assertEqual(self.registry.load_desired(), {"sensor": "stopped"})
        self.assertFalse(self.registry.version_dir("sensor", "2").exists())
        self.assertFalse(self.registry.installing_path.exists())

    def test_an_undone_install_s_files_are_gone_for_good_before_its_record(self) -> None:
        """The undone version's deletion is made durable (its app's directory fsynced) before
        its record goes: the removal was not fsynced, so a power cut after the start that undid
        it brought the version's directory back beside the previous one, never to be removed
        (bench/powercut_changes.py)."""
        self.unpack("sensor", "1")
        self.registry.set_current("sensor", "1")
        self.registry.begin_install("sensor", "2", {})
        self.unpack("sensor", "2")
        fsynced = record_fsyncs(self)
        self.registry.undo_cut_short_install()
        app, root = (os.path.abspath(p) for p in (self.registry.app_dir("sensor"), self.registry.root))
        self.assertEqual(fsynced[-2:], [app, root])

    def test_a_first_install_cut_short_before_its_switch_leaves_nothing(self) -> None:
        """A first install cut short while unpacking (or in install.sh) leaves no app behind."""
        self.registry.begin_install("sensor", "1", {})
        self.unpack("sensor", "1")
        self.registry.data_dir("sensor").mkdir()
        self.assertEqual(self.registry.undo_cut_short_install(), ("sensor", "1", None))
        self.assertFalse(self.registry.app_dir("sensor").exists())

    def test_the_logs_of_programs_only_the_undone_version_had_go_with_it(self) -> None:
        """An install cut short in its health window, when its programs had written their logs, is
        undone as a rollback is: the logs of the programs only it had are deleted (of a first
        install: all of them, with their rotated backups), those the previous version writes in
        stay. One cut short before its switch deletes none: its programs never ran, and a name
        another app's program has (its install would have failed at the switch) names that one's log."""
        logs = self.registry.root.parent / "logs" / "apps"
        logs.mkdir(parents=True)
        for file in ("sensor.log", "sensor.log.1", "helper.log", "helper.err.log", "other.log"):
            (logs / file).write_text("x\n")
        programs = {("sensor", "1"): ["sensor.log"], ("sensor", "2"): ["sensor.log", "helper.log", "helper.err.log"]}

        def logs_of(name: str, version: str) -> list[Path]:
            return [logs / file for file in programs.get((name, version), [])]

        self.unpack("sensor", "1")
        self.registry.set_current("sensor", "1")
        self.registry.begin_install("sensor", "2", {})
        self.unpack("sensor", "2")
        self.registry.set_current("sensor", "2")
        self.registry.undo_cut_short_install(logs_of)
        self.assertEqual(sorted(path.name for path in logs.iterdir()), ["other.log", "sensor.log", "sensor.log.1"])
        self.registry.begin_install("first", "1", {})
        self.unpack("first", "1")
        self.registry.set_current("first", "1")
        programs[("first", "1")] = ["sensor.log"]  # (a stand-in: its program's log)
        self.registry.undo_cut_short_install(logs_of)
        self.assertEqual(sorted(path.name for path in logs.iterdir()), ["other.log"])
        self.registry.begin_install("clash", "1", {})
        self.unpack("clash", "1")
        programs[("clash", "1")] = ["other.log"]
        self.registry.undo_cut_short_install(logs_of)
        self.assertEqual(sorted(path.name for path in logs.iterdir()), ["other.log"])

    def test_a_damaged_record_is_refused_and_removed(self) -> None:
        """A record that does not name a safe app and version (damage from outside) undoes
        nothing, is removed, and the error says so."""
        self.unpack("sensor", "1")
        self.registry.set_current("sensor", "1")
        for text in (b"\xff{", b"[]", b'{"name": "..", "version": "1", "previous": null, "desired": {}}'):
            self.registry.installing_path.write_bytes(text)
            self.assertRaises(ValueError, self.registry.undo_cut_short_install)
            self.assertFalse(self.registry.installing_path.exists())
        self.assertEqual(os.readlink(self.registry.app_dir("sensor") / "current"), "1")


class Killed(BaseException):
    """The gateway's end (SIGKILL, a power cut) in the middle of a deletion."""


class CutShortUninstallTests(SynchronousTestCase):
    """What a deletion of an app (an uninstall) that the gateway's end cut short leaves."""

    def setUp(self) -> None:
        self.registry = AppRegistry(Path(self.mktemp()))
        for version in ("1", "2"):
            self.registry.version_dir("sensor", version).mkdir(parents=True)
            (self.registry.version_dir("sensor", version) / "supervisor.conf").write_text("[program:sensor]\n")
        self.registry.set_current("sensor", "2")
        self.registry.data_dir("sensor").mkdir()

    def test_a_deletion_cut_short_leaves_no_app_to_load(self) -> None:
        """Killed after the deletion took the app's data and before ``current``: the app was
        still installed for the next start, which (its wishes already gone) loaded and ran
        what was left of it. Its directory is renamed first: the next start finds no app,
        and removes what is left."""
        rmtree = shutil.rmtree

        def killed_midway(path: Any, ignore_errors: bool = False) -> None:
            if Path(path).exists():
                rmtree(Path(path) / "data")
                raise Killed()

        self.patch(shutil, "rmtree", killed_midway)
        self.assertRaises(Killed, self.registry.remove_app, "sensor")
        self.patch(shutil, "rmtree", rmtree)
        self.assertEqual(self.registry.installed(), {})
        self.registry.remove_leftovers()
        self.assertEqual(os.listdir(self.registry.root), [])

    def test_a_deletion_removes_the_app(self) -> None:
        """Uncut, nothing of the app is left; an app not on disk is no error."""
        self.registry.remove_app("sensor")
        self.assertEqual(os.listdir(self.registry.root), [])
        self.registry.remove_app("sensor")


#: Modification times: a day in 2026 (the clock set) and one at 1970 (not set yet).
SET, UNSET = 1780000000.0, 86400.0


class VersionOrderTests(SynchronousTestCase):
    """Which versions ``prune`` deletes: the ones installed first, whatever the clock said."""

    def setUp(self) -> None:
        self.registry = AppRegistry(Path(self.mktemp()))
        self.registry.root.mkdir(parents=True)

    def install(self, version: str, mtime: float) -> None:
        """Install ``version`` of ``sensor`` as the apps service does, its directory's
        modification time ``mtime`` (the wall clock's then), and make it current."""
        self.registry.begin_install("sensor", version, {})
        self.unpacked(version, mtime)
        self.registry.set_current("sensor", version)
        self.registry.end_install()

    def unpacked(self, version: str, mtime: float) -> None:
        """A directory of ``version`` of ``sensor`` modified at ``mtime``."""
        home = self.registry.version_dir("sensor", version)
        home.mkdir(parents=True, exist_ok=True)
        os.utime(home, (mtime, mtime))

    def test_a_version_installed_at_1970_is_not_pruned_before_an_older_one(self) -> None:
        """1 is installed with the clock set, 2 after a reboot at 1970 (no real-time clock,
        NTP not there yet), then 3: keeping two versions deletes 1, not 2. By modification
        time, 2 looked the oldest: it was deleted and 1, older, kept."""
        self.install("1", SET)
        self.install("2", UNSET)
        self.install("3", SET + 60)
        self.assertEqual(self.registry.versions("sensor"), ["1", "2", "3"])
        self.assertEqual(self.registry.prune("sensor", 2), ["1"])
        self.assertEqual(self.registry.versions("sensor"), ["2", "3"])

    def test_pruned_versions_stay_deleted(self) -> None:
        """The versions ``prune`` deletes are gone for good: their app's directory is fsynced
        after the deletion. It was not: after every power cut the versions pruned since the
        last install came back, beyond ``apps.keep_versions``, and piled up (15 of them after 30
        cuts, one after each install, in bench/powercut_changes.py)."""
        self.install("1", SET)
        self.install("2", SET + 60)
        self.install("3", SET + 120)
        fsynced = record_fsyncs(self)
        self.assertEqual(self.registry.prune("sensor", 2), ["1"])
        self.assertEqual(fsynced, [os.path.abspath(self.registry.app_dir("sensor"))])

    def test_a_version_installed_again_is_the_latest(self) -> None:
        """1, 2, then 1 again: 2 is the oldest, whatever the directories' times."""
        self.install("1", SET)
        self.install("2", SET + 60)
        self.install("1", UNSET)
        self.assertEqual(self.registry.versions("sensor"), ["2", "1"])

    def test_versions_installed_before_the_order_was_kept_come_first_by_time(self) -> None:
        """Versions unpacked by an earlier version of the gateway (no order on disk) are older
        than any installed since, and ordered among themselves by modification time; the
        next install writes them into the order that way."""
        self.unpacked("b", SET + 60)
        self.unpacked("a", SET)
        self.registry.set_current("sensor", "b")
        self.assertEqual(self.registry.versions("sensor"), ["a", "b"])
        self.install("c", UNSET)
        self.assertEqual(self.registry.versions("sensor"), ["a", "b", "c"])
        self.assertEqual(self.registry.prune("sensor", 2), ["a"])
        self.install("d", UNSET)
        self.assertEqual(self.registry.versions("sensor"), ["b", "c", "d"])  # (a forgotten with its files)

    def test_versions_a_rolled_back_gateway_installed_are_the_latest(self) -> None:
        """1 and 2 are installed and ordered; a self-update rolled back to a version of the
        gateway that keeps no order installs 3 and 4 (and prunes 1 by time); this version,
        back, installs 5 and keeps three: 2 goes, as the oldest. Taken for older than 2 (as
        versions from before the order was kept are), 3 was deleted and 2 kept."""
        self.install("1", SET)
        self.install("2", SET + 60)
        self.unpacked("3", SET + 120)
        self.unpacked("4", SET + 180)
        self.registry.set_current("sensor", "4")
        self.registry.remove_version("sensor", "1")
        self.assertEqual(self.registry.versions("sensor"), ["2", "3", "4"])
        self.install("5", SET + 240)
        self.assertEqual(self.registry.prune("sensor", 3), ["2"])
        self.assertEqual(self.registry.versions("sensor"), ["3", "4", "5"])

    def test_an_unusable_order_is_ignored_and_written_again(self) -> None:
        """An order file damaged from outside counts for nothing (modification times order
        the versions, as before it was kept); the next install writes it again."""
        self.install("1", SET)
        self.install("2", SET + 60)
        order = self.registry.app_dir("sensor") / ".install-order.json"
        for damage in (b"\xff[", b'{"1": 0}', b'[1, 2]', b"null"):
            order.write_bytes(damage)
            self.assertEqual(self.registry.versions("sensor"), ["1", "2"])
        self.install("3", UNSET)
        self.assertEqual(self.registry.versions("sensor"), ["1", "2", "3"])

    def test_an_unusable_order_is_set_aside_and_told_once(self) -> None:
        """An order file damaged from outside, a directory in its place too, is moved aside
        with one warning naming it, so the next install can write it again (a directory left
        there failed every install of the app: it cannot be replaced)."""
        self.install("1", SET)
        self.install("2", SET + 60)
        order = self.registry.app_dir("sensor") / ".install-order.json"
        order.unlink()
        order.mkdir()
        events = capture_log_events(self)
        self.assertEqual(self.registry.versions("sensor"), ["1", "2"])
        self.assertEqual(self.registry.versions("sensor"), ["1", "2"])
        [warning] = [formatEvent(e) for e in events]
        self.assertIn(f"apps: sensor: the order of its installs in {order} is unusable (", warning)
        self.assertIn(f"moved to {order}.damaged", warning)
        self.assertTrue(order.with_name(order.name + ".damaged").is_dir())
        self.install("3", UNSET)
        self.assertEqual(self.registry.versions("sensor"), ["1", "2", "3"])
