"""A session's queue releases the publishers it holds back on every path (no sockets)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.outbox import Outbox, QueuedMessage


class OutboxHoldTests(SynchronousTestCase):
    """A queue releases the publishers it holds on every path its cause goes away."""

    def setUp(self) -> None:
        self.outbox = Outbox("sub", max_messages=8, max_bytes=1 << 20)
        self.resumed: list[str] = []
        for index in range(4):
            self.outbox.push(QueuedMessage("t", b"%d" % index, 1, False))
        self.assertTrue(self.outbox.congested)
        for key in ("p1", "p2"):
            self.outbox.block(key, lambda key=key: self.resumed.append(key))

    def test_drained_releases(self) -> None:
        """Below the low-water mark every held publisher goes on, once."""
        self.outbox.pop()
        self.assertEqual(self.resumed, [])
        self.outbox.pop()
        self.assertEqual(sorted(self.resumed), ["p1", "p2"])
        self.outbox.pop()
        self.assertEqual(len(self.resumed), 2)
        self.assertEqual(self.outbox.blocked, {})

    def test_release_while_congested(self) -> None:
        """The subscriber going away releases everyone, though the queue is still full."""
        self.outbox.release()
        self.assertEqual(sorted(self.resumed), ["p1", "p2"])
        self.assertEqual(len(self.outbox), 4)
        self.assertEqual(self.outbox.blocked, {})

    def test_clear_releases(self) -> None:
        """A cleared session releases everyone."""
        self.outbox.clear()
        self.assertEqual(sorted(self.resumed), ["p1", "p2"])

    def test_unblock_one(self) -> None:
        """A publisher going away leaves; the others stay held."""
        self.outbox.unblock("p1")
        self.outbox.unblock("p1")
        self.assertEqual(self.resumed, ["p1"])
        self.assertEqual(list(self.outbox.blocked), ["p2"])
