"""The libraries' logs under the gateway's ``log_level``: stdlib logging and autobahn's (txaio)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.logger import LogEvent
from twisted.trial.unittest import SynchronousTestCase
from txaio import tx

from gateway import logbridge

ROOT = Path(__file__).resolve().parent.parent


class AutobahnLevelTests(SynchronousTestCase):
    """docs/configuration.md (``gateway.log_level``): autobahn logs its errors only, below ``debug``."""

    def setUp(self) -> None:
        self.addCleanup(logbridge.install, "info")  # (as tests/__init__.py leaves it)
        self.events: list[LogEvent] = []
        self.log = tx.make_logger(observer=self.events.append)

    def levels_logged(self) -> list[str]:
        """The levels of the lines autobahn's logger passes on, one of each tried."""
        del self.events[:]
        self.log.info("failing WebSocket opening handshake ('{reason}')", reason="403")
        self.log.warn("dropping connection to peer {peer} with abort={abort}: {reason}", peer="tcp4:x", abort=True,
                      reason="403")
        self.log.error("an error of its own")
        return [event["log_level"].name for event in self.events]

    def test_per_connection_lines_are_left_out(self) -> None:
        """autobahn's info and warn lines, two per WebSocket handshake a cloud refuses (at
        every reconnect of an AWS WebSocket link: 240 an hour at backoff_max 30 s, beside
        the link's own throttled line), are left out at ``info``, ``warn`` and ``error``;
        its errors stay."""
        for level in ("info", "warn", "error"):
            logbridge.install(level)
            self.assertEqual(self.levels_logged(), ["error"], level)

    def test_debug_logs_them(self) -> None:
        """At ``debug`` every line autobahn logs at debug and above is written."""
        logbridge.install("debug")
        self.assertEqual(self.levels_logged(), ["info", "warn", "error"])


#: In a fresh interpreter: the level set before autobahn is loaded, then each module that
#: imports autobahn; prints txaio's level after each.
LATE_IMPORT = """
import sys
from gateway import logbridge
logbridge.install(sys.argv[1])
print("txaio" in sys.modules)
import gateway.broker.websocket
from txaio import tx
print(tx.get_global_log_level())
logbridge.install("debug")
print(tx.get_global_log_level())
"""


class AutobahnImportedLaterTests(SynchronousTestCase):
    """An idle gateway does not load autobahn (tests/test_idle_imports.py); the level set at
    start still holds once a WebSocket listener or link imports it."""

    def test_level_applied_when_autobahn_is_imported(self) -> None:
        """``install("warn")`` leaves txaio unloaded; importing the broker's WebSocket module
        gives autobahn the ``error`` level, and a later ``install`` still changes it."""
        out = subprocess.run([sys.executable, "-c", LATE_IMPORT, "warn"], check=True, capture_output=True,
                             text=True, timeout=50, cwd=ROOT)
        self.assertEqual(out.stdout.split(), ["False", "error", "debug"])
