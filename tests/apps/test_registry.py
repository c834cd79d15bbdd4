"""The record of the install under way (``apps/installing.json``) and its undoing at a start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.registry import AppRegistry


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

    def test_a_first_install_cut_short_before_its_switch_leaves_nothing(self) -> None:
        """A first install cut short while unpacking (or in install.sh) leaves no app behind."""
        self.registry.begin_install("sensor", "1", {})
        self.unpack("sensor", "1")
        self.registry.data_dir("sensor").mkdir()
        self.assertEqual(self.registry.undo_cut_short_install(), ("sensor", "1", None))
        self.assertFalse(self.registry.app_dir("sensor").exists())

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
