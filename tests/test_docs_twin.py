"""twin.md's example is what the twin does: each ``mosquitto_pub`` of it, sent to the twin of
a gateway ``acme:gw1``, gets the answers its ``#`` lines show (their topics in that order, and
every field they show, ``...`` standing for fields left out)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.twin.service import TwinService
from gateway.twin.settings import TwinSettings
from tests.twin.fakes import RecordingBus, run_now

ROOT = Path(__file__).resolve().parent.parent


def example() -> list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]]:
    """twin.md's ``sh`` block as ``(topic, message, [(answer topic, shown fields), ...])``,
    one per ``mosquitto_pub``."""
    text = (ROOT / "docs" / "twin.md").read_text(encoding="utf-8")
    block = re.search(r"^```sh\n(.*?)^```", text, re.S | re.M)
    assert block is not None
    steps: list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]] = []
    for match in re.finditer(r"^mosquitto_pub -t (\S+) -m '(.*?)'$|^# (\S+) ([^\n]*)$", block.group(1), re.S | re.M):
        if match.group(1):
            steps.append((match.group(1), json.loads(match.group(2)), []))
        else:
            shown = re.sub(r", \.\.\.|\.\.\., ", "", match.group(4))
            steps[-1][2].append((match.group(3), json.loads(shown)))
    return steps


class TwinExampleTests(SynchronousTestCase):
    """The twin answers twin.md's example as the example shows."""

    def test_the_example_answers_as_shown(self) -> None:
        """Every answer the example shows comes, in its order, with every field it shows."""
        bus = RecordingBus()
        clock = Clock()
        twin = TwinService(TwinSettings(), Path(self.mktemp()), clock, bus, ("acme", "gw1"), run_now)
        self.successResultOf(twin.startService())
        steps = example()
        self.assertEqual(len(steps), 3)
        for topic, message, answers in steps:
            self.successResultOf(bus.deliver(topic, message))
            out = bus.take()
            self.assertEqual([t for t, _ in out], [t for t, _ in answers], message)
            for (_, got), (where, shown) in zip(out, answers):
                self.assertEqual({key: got.get(key) for key in shown}, shown, where)
