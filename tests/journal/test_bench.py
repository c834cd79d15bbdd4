"""bench/journal.py's windowed run against a real journal (a few hundred small fsynced appends)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from gateway.journal.settings import JournalSettings


class WindowedRunTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_appends_refused_by_max_bytes_end_the_run(self) -> None:
        """With ``--max-bytes`` below what the appends in flight hold, the stream refuses some
        (no drop can make room for them): the windowed run counts them as ended and reports
        them, stored and refused adding up to the run's total. The run never ended: it waited
        for the refused ones to be stored."""
        if not (Path(__file__).resolve().parent.parent.parent / "bench" / "journal.py").exists():
            raise SkipTest("no bench/ here (the .deb build runs the suite on a copy without it)")
        from bench import journal

        self.patch(journal, "SETTINGS", JournalSettings(defaults=dataclasses.replace(
            journal.SETTINGS.defaults, segment_bytes=16384, max_bytes=65536)))
        result: Any = yield journal.journal_window(self.mktemp(), 600, 400)
        self.assertGreater(result["refused"], 0)
        self.assertEqual(result["records"] + result["refused"], 600)
