"""ExitDeadline: the process ends at its deadline, whatever holds it (no real waiting)."""

from __future__ import annotations

import threading

from twisted.trial.unittest import SynchronousTestCase

from gateway.exitdeadline import STUCK_EXIT_STATUS, ExitDeadline


class ExitDeadlineTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.now = 100.0
        self.ended: list[int] = []
        self.ended_once = threading.Event()

    def end(self, status: int) -> None:
        self.ended.append(status)
        self.ended_once.set()

    def test_the_earlier_deadline_holds(self) -> None:
        """A later deadline never postpones an earlier one; an earlier one replaces it."""
        deadline = ExitDeadline(self.end, lambda: self.now)
        self.addCleanup(self.finish, deadline)
        deadline.arm(80.0)
        deadline.arm(100.0)
        self.assertEqual(deadline.deadline, 180.0)
        deadline.arm(5.0)
        self.assertEqual((deadline.deadline, self.ended), (105.0, []))

    def test_ends_the_process_once_the_deadline_has_passed(self) -> None:
        """Nothing ends before the deadline; once it has passed, the process ends with
        STUCK_EXIT_STATUS (the watcher is woken by each arm, and waits on its own otherwise)."""
        deadline = ExitDeadline(self.end, lambda: self.now)
        deadline.arm(5.0)
        self.assertEqual(self.ended, [])
        self.now = 105.0
        deadline.arm(60.0)  # (wakes the watcher, which finds the first deadline passed)
        self.assertTrue(self.ended_once.wait(10), "the deadline did not end the process")
        deadline.join(10)
        self.assertEqual(self.ended, [STUCK_EXIT_STATUS])

    def finish(self, deadline: ExitDeadline) -> None:
        self.now = float("inf")
        deadline.arm(0)
        deadline.join(10)
