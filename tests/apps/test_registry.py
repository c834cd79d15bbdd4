"""The record of the install under way (``apps/installing.json``) and its undoing at a start."""

from __future__ import annotations

import os
from pathlib import Path

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
