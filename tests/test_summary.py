"""``make test``'s last line (tests/summary.py), as README.md promises it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.summary import summarise


class SummaryTests(SynchronousTestCase):
    """The one line ``make test`` ends with: exactly ``N passed, N failed``; the skips, when there
    are, on the line before it."""

    def test_passed_and_failed(self) -> None:
        """Failures, errors and unexpected successes all count as failed."""
        log = "...\nRan 12 tests in 1.0s\n\nFAILED (failures=1, errors=2, unexpectedSuccesses=1, successes=8)\n"
        self.assertEqual(summarise(log), ["8 passed, 4 failed"])

    def test_all_passed(self) -> None:
        """A run that passed says 0 failed."""
        self.assertEqual(summarise("Ran 3 tests in 0.1s\n\nPASSED (successes=3)\n"), ["3 passed, 0 failed"])

    def test_skips_are_counted_on_the_line_before(self) -> None:
        """Skipped tests are counted on a line of their own (README.md says so), not hidden, and
        the last line stays exactly ``N passed, N failed``."""
        self.assertEqual(summarise("PASSED (skips=2, successes=5)\n"), ["2 skipped", "5 passed, 0 failed"])

    def test_no_result_is_a_failure(self) -> None:
        """A trial that printed no result (it crashed) is one failure."""
        self.assertEqual(summarise("Traceback (most recent call last):\n"), ["0 passed, 1 failed"])
