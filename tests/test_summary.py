"""``make test``'s last line (tests/summary.py), as README.md promises it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.summary import summarise


class SummaryTests(SynchronousTestCase):
    """The one line ``make test`` ends with: ``N passed, N failed``, and the skips when there are."""

    def test_passed_and_failed(self) -> None:
        """Failures, errors and unexpected successes all count as failed."""
        log = "...\nRan 12 tests in 1.0s\n\nFAILED (failures=1, errors=2, unexpectedSuccesses=1, successes=8)\n"
        self.assertEqual(summarise(log), "8 passed, 4 failed")

    def test_all_passed(self) -> None:
        """A run that passed says 0 failed."""
        self.assertEqual(summarise("Ran 3 tests in 0.1s\n\nPASSED (successes=3)\n"), "3 passed, 0 failed")

    def test_skips_are_named_after_the_counts(self) -> None:
        """Skipped tests are added after the two counts (README.md says so), not hidden in them."""
        self.assertEqual(summarise("PASSED (skips=2, successes=5)\n"), "5 passed, 0 failed, 2 skipped")

    def test_no_result_is_a_failure(self) -> None:
        """A trial that printed no result (it crashed) is one failure."""
        self.assertEqual(summarise("Traceback (most recent call last):\n"), "0 passed, 1 failed")
