"""A pending change whose confirm deadline passed while the gateway was down is reverted
before the tree starts (the whole tree, as twistd builds it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway import config as gateway_config
from gateway.commands.dropin import dropin_path
from gateway.errors import GatewayError
from gateway.state import StateDirService
from gateway.tree import build_service
from tests.ports import free_port


class RecoverTests(TestCase):
    """build_service reads <state>/commands/pending-config.json before building anything."""

    timeout = 30

    @inlineCallbacks
    def test_deadline_passed_while_down(self) -> Any:
        """The previous drop-in is back, the tree runs the previous config, the pending file
        is gone, and the revert is reported once the tree has started."""
        work = Path(self.mktemp()).resolve()
        state = work / "state"
        main = work / "gateway.yaml"
        main.parent.mkdir(parents=True)
        main.write_text(f"gateway:\n  state_dir: {state}\nbroker:\n  listeners:\n    default:\n"
                        f"      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
                        "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
        dropin_path(main).parent.mkdir()
        dropin_path(main).write_text("gateway:\n  log_level: debug\n  shutdown_timeout: 9.5\n")  # unconfirmed
        pending = self.pending_past_its_deadline(state)
        root = build_service(gateway_config.load(main), reactor)
        self.assertEqual(root.changer.config.gateway.log_level, "warn")
        self.assertEqual(root.shutdown_timeout, 4.0)  # the default again, as each service will stop
        self.assertEqual(dropin_path(main).read_text(), "gateway:\n  log_level: warn\n")
        self.assertFalse(pending.exists())
        reports: list[dict[str, Any]] = []
        root.changer._publish = lambda topic, payload, qos, retain: reports.append(json.loads(payload))
        yield root.startService()
        self.addCleanup(root.stopService)
        self.assertEqual([(r["status"], r["origin"]) for r in reports], [("reverted", "remote:r-1")])
        self.assertIsNone(root.changer.pending())

    @staticmethod
    def pending_past_its_deadline(state: Path) -> Path:
        """A pending change (from ``log_level: warn``) whose deadline passed a minute ago by the
        clock now, under ``state``. (Its times are after the clock was set: one made at 1970, read
        by a clock set since, waits a whole window, docs/commands.md.)"""
        pending = state / "commands" / "pending-config.json"
        pending.parent.mkdir(parents=True)
        deadline = time.time() - 60
        pending.write_text(json.dumps({"origin": "remote:r-1",
                                       "keys": ["gateway.log_level", "gateway.shutdown_timeout"],
                                       "previous": "gateway:\n  log_level: warn\n", "deadline": deadline,
                                       "required_links": [], "applied_at": deadline - 120}))
        return pending

    def test_a_state_dir_in_use_is_refused_before_its_pending_change_is_touched(self) -> None:
        """docs/configuration.md (state_dir): a second gateway on a state directory in use is
        refused before anything: the first one's pending change (past its deadline, as the
        second one sees it) is neither reverted nor its drop-in restored. The second one
        reverted it before its state directory service refused it."""
        work = Path(self.mktemp()).resolve()
        state = work / "state"
        main = work / "gateway.yaml"
        main.parent.mkdir(parents=True)
        main.write_text(f"gateway:\n  state_dir: {state}\ntelemetry:\n  metrics_endpoint: ''\n"
                        "ingest:\n  enabled: false\n")
        dropin_path(main).parent.mkdir()
        dropin_path(main).write_text("gateway:\n  log_level: debug\n")
        pending = self.pending_past_its_deadline(state)
        first = StateDirService(state)
        first.startService()
        self.addCleanup(first.stopService)
        with self.assertRaises(GatewayError) as raised:
            build_service(gateway_config.load(main), reactor)
        self.assertIn(f"the state directory {state} is used by another gateway", str(raised.exception))
        self.assertEqual(dropin_path(main).read_text(), "gateway:\n  log_level: debug\n")
        self.assertTrue(pending.exists())
        self.assertFalse((state / "commands" / "reverted-report.json").exists())
