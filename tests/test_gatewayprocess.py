"""The test helper that runs real gateways cleans up after the ones it kills."""

from __future__ import annotations

import os
import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from gateway.telemetry.appbytes import detect, table_command
from tests.gatewayprocess import accounting_tables, remove_accounting_leftovers


class AccountingLeftoverTests(SynchronousTestCase):
    """A SIGKILLed gateway's accounting table and empty app cgroups are removed."""

    def setUp(self) -> None:
        if shutil.which("nft") is None or os.geteuid() != 0:
            raise self.skipTest("needs nft and root, as the gateway's per-app accounting does")
        place, reason = detect("gateway-apps-ffff0000")
        if place is None:
            raise self.skipTest(f"per-app accounting cannot work here: {reason}")
        self.place = place

    def test_table_and_cgroups_removed(self) -> None:
        table = "gateway_apps_ffff0000"
        made = subprocess.run(["nft", table_command(table)], capture_output=True, text=True)
        if made.returncode != 0:
            raise self.skipTest(f"nft cannot make a table here: {made.stderr.strip()}")
        app = self.place.directory("sensor")
        app.mkdir(parents=True)
        self.assertIn(table, accounting_tables())
        remove_accounting_leftovers({table})
        self.assertNotIn(table, accounting_tables())
        self.assertFalse(app.exists())
        self.assertFalse(app.parent.exists())
