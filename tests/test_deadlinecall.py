"""A deadline's verdict comes in the reactor's turn after the deadline, cancellable until then."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.deadlinecall import DeadlineCall


class DeadlineCallTests(SynchronousTestCase):
    """``task.Clock`` runs what is due in the order of the times it was due at: a turn that
    advances it from 0 to 6 s runs a read due at 5.2 s before the verdict the deadline at
    5 s scheduled for the next turn (at 6 s), as the reactor reads before it runs that turn's
    timers."""

    def test_the_verdict_waits_for_the_next_turn(self) -> None:
        """What the long turn left unread is read before the verdict, which is still to come
        then; the verdict runs after it, with its arguments."""
        clock, seen = Clock(), []
        call = DeadlineCall(clock, 5.0, seen.append, "CONNACK")
        clock.callLater(5.2, lambda: seen.append(f"read, verdict to come: {call.active()}"))
        clock.advance(6.0)
        self.assertEqual((seen, call.active()), (["read, verdict to come: True", "CONNACK"], False))

    def test_what_the_next_turn_reads_cancels_it(self) -> None:
        """Cancelled by what the next turn reads, or before the deadline, it never runs."""
        clock, seen = Clock(), []
        for cancel_at in (5.2, 1.0):
            call = DeadlineCall(clock, 5.0, seen.append, "late")
            clock.callLater(cancel_at, call.cancel)
            clock.advance(6.0)
            self.assertFalse(call.active())
        clock.advance(10)
        self.assertEqual(seen, [])
