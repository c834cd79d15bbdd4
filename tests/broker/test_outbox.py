"""A session's bounded queue: what goes when it is full, the counters, the rate-limited logs (no sockets)."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.outbox import Outbox, QueuedMessage, QueuePolicy


def message(name: str, qos: int, size: int = 1) -> QueuedMessage:
    """A message whose payload is ``name`` padded to ``size`` bytes."""
    return QueuedMessage("t", name.encode().ljust(size, b"."), qos, False)


def names(outbox: Outbox) -> list[str]:
    """The queued payloads, oldest first, without padding."""
    return [m.payload.rstrip(b".").decode() for m in outbox.messages]


class OverflowPolicyTests(SynchronousTestCase):
    """Oldest QoS 0 first, then the QoS 1/2 policy; order kept; counted per client and per broker."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.policy = QueuePolicy(max_messages=4, max_bytes=1000, clock=self.clock.seconds)
        self.outbox = Outbox("sub", self.policy)

    def fill(self, *entries: tuple[str, int]) -> None:
        for name, qos in entries:
            self.outbox.push(message(name, qos))

    def test_order_kept_across_qos(self) -> None:
        """Messages leave in arrival order whatever their QoS."""
        self.fill(("a", 0), ("b", 1), ("c", 0), ("d", 2))
        self.assertEqual(names(self.outbox), ["a", "b", "c", "d"])
        self.assertEqual([self.outbox.pop().payload for _ in range(4)], [b"a", b"b", b"c", b"d"])
        self.assertFalse(self.outbox)

    def test_oldest_qos0_goes_first(self) -> None:
        """A full queue drops its oldest QoS 0 message for a new one of any QoS."""
        self.fill(("a", 1), ("b", 0), ("c", 0), ("d", 1))
        self.assertTrue(self.outbox.push(message("e", 1)))
        self.assertEqual(names(self.outbox), ["a", "c", "d", "e"])
        self.assertTrue(self.outbox.push(message("f", 0)))
        self.assertEqual(names(self.outbox), ["a", "d", "e", "f"])
        self.assertEqual((self.outbox.dropped_qos0, self.outbox.dropped_qos12), (2, 0))
        self.assertEqual(self.policy.dropped, [2, 0, 0])
        self.assertIs(self.policy.dropping["sub"], self.outbox)

    def test_new_qos0_dropped_when_only_qos12_queued(self) -> None:
        """QoS 1/2 messages outrank a new QoS 0 one, whatever the policy."""
        for overflow in ("drop_new", "drop_oldest"):
            self.policy.overflow = overflow
            outbox = Outbox(overflow, self.policy)
            for name in "abcd":
                outbox.push(message(name, 1))
            self.assertFalse(outbox.push(message("z", 0)))
            self.assertEqual(names(outbox), ["a", "b", "c", "d"])
            self.assertEqual(outbox.dropped_qos0, 1)

    def test_drop_new(self) -> None:
        """drop_new (the default): with only QoS 1/2 queued, the new QoS 1/2 message is dropped."""
        self.fill(("a", 1), ("b", 2), ("c", 1), ("d", 1))
        self.assertFalse(self.outbox.push(message("e", 2)))
        self.assertEqual(names(self.outbox), ["a", "b", "c", "d"])
        self.assertEqual(self.policy.dropped, [0, 0, 1])

    def test_drop_oldest(self) -> None:
        """drop_oldest: QoS 0 first, then the oldest QoS 1/2 messages make room."""
        self.policy.overflow = "drop_oldest"
        self.fill(("a", 1), ("b", 0), ("c", 2), ("d", 1))
        self.assertTrue(self.outbox.push(message("e", 1)))
        self.assertEqual(names(self.outbox), ["a", "c", "d", "e"])
        self.assertTrue(self.outbox.push(message("f", 1)))
        self.assertEqual(names(self.outbox), ["c", "d", "e", "f"])
        self.assertEqual((self.outbox.dropped_qos0, self.outbox.dropped_qos12), (1, 1))
        self.assertEqual(self.policy.dropped, [1, 1, 0])

    def test_byte_bound(self) -> None:
        """The byte bound works like the message bound; a message larger than it is dropped alone."""
        self.policy.max_messages = 100
        self.outbox.push(message("a", 0, 400))
        self.outbox.push(message("b", 1, 400))
        self.assertTrue(self.outbox.push(message("c", 1, 400)))  # a goes
        self.assertEqual(names(self.outbox), ["b", "c"])
        self.assertEqual(self.outbox.bytes, 800)
        self.assertFalse(self.outbox.push(message("huge", 0, 1001)))
        self.assertFalse(self.outbox.push(message("d", 1, 400)))  # drop_new
        self.assertEqual(names(self.outbox), ["b", "c"])
        self.assertEqual(self.outbox.dropped, 3)

    def test_policy_forget(self) -> None:
        """A session that ends leaves the broker's list of dropping queues; the totals stay."""
        self.fill(("a", 0), ("b", 0), ("c", 0), ("d", 0), ("e", 0))
        self.policy.forget("sub")
        self.assertEqual(self.policy.dropping, {})
        self.assertEqual(self.policy.dropped, [1, 0, 0])

    def test_unknown_policy_refused(self) -> None:
        self.assertRaises(ValueError, QueuePolicy, 1, 1, "drop_random")


class OverflowLogTests(SynchronousTestCase):
    """An overflow is logged when it starts, at most once per interval while it lasts, and when it ends."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.policy = QueuePolicy(max_messages=4, max_bytes=1000, clock=self.clock.seconds, log_interval=60)
        self.outbox = Outbox("sub", self.policy)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        return [e["log_format"] for e in self.events if e.get("log_namespace", "").endswith("Outbox")]

    def test_overflow_start_shows_the_full_queue(self) -> None:
        """The first line says what the full queue holds, whichever message goes (it said one
        message and its bytes fewer when an old one was dropped: "full (3 messages ...)" of 4)."""
        for qos, overflow in ((0, "drop_new"), (1, "drop_oldest"), (1, "drop_new")):
            self.events.clear()
            policy = QueuePolicy(max_messages=4, max_bytes=1000, overflow=overflow, clock=self.clock.seconds)
            outbox = Outbox("sub", policy)
            for index in range(4):
                outbox.push(message(str(index), qos, size=10))
            outbox.push(message("new", 1, size=10))
            [event] = [e for e in self.events if e.get("log_namespace", "").endswith("Outbox")]
            self.assertEqual((event["count"], event["size"]), (4, 40), (qos, overflow))

    def test_one_message_is_counted_in_the_singular(self) -> None:
        """A queue of one message, one more dropped in an interval, one dropped in an overflow:
        ``1 message``, ``1 more message``, ``1 message was dropped`` (each said ``messages``)."""
        from twisted.logger import formatEvent
        policy = QueuePolicy(max_messages=1, max_bytes=1000, clock=self.clock.seconds, log_interval=60)
        outbox = Outbox("sub", policy)
        outbox.push(message("a", 1, size=10))
        outbox.push(message("b", 1))
        self.clock.advance(60)
        outbox.push(message("c", 1))
        outbox.pop()
        logged = [formatEvent(e) for e in self.events if e.get("log_namespace", "").endswith("Outbox")]
        self.assertEqual(logged[0], "queue for 'sub' is full (1 message, 10 bytes): dropping its messages (QoS 0"
                                    " first, then QoS 1/2: drop_new)")
        self.assertEqual(logged[1], "queue for 'sub' is still full: 1 more message dropped in 60 s (2 in all)")
        self.clock.advance(60)
        outbox.push(message("c", 1))
        outbox.pop()
        logged = [formatEvent(e) for e in self.events if e.get("log_namespace", "").endswith("Outbox")]
        self.assertEqual(logged[2], "queue for 'sub' has room again; 2 messages were dropped")
        self.clock.advance(60)
        outbox.push(message("d", 1))
        outbox.push(message("e", 1))
        self.clock.advance(60)
        outbox.pop()
        logged = [formatEvent(e) for e in self.events if e.get("log_namespace", "").endswith("Outbox")]
        self.assertEqual(logged[-1], "queue for 'sub' has room again; 1 message was dropped")

    def test_rate_limited(self) -> None:
        for index in range(4):
            self.outbox.push(message(str(index), 1))
        for _ in range(1000):
            self.outbox.push(message("x", 1))
        self.assertEqual(len(self.lines()), 1)
        self.clock.advance(60)
        self.outbox.push(message("x", 1))
        self.assertEqual(len(self.lines()), 2)
        self.assertEqual(self.events[-1]["count"], 1000)
        self.outbox.pop()
        self.assertEqual(len(self.lines()), 2)  # 3 of 4: no room yet
        self.outbox.pop()
        self.assertEqual(len(self.lines()), 2)  # room, but the last line was just now: owed
        self.clock.advance(60)
        self.outbox.pop()
        self.assertEqual(len(self.lines()), 3)
        self.assertEqual(self.events[-1]["count"], 1001)
        for _ in range(4):
            self.outbox.push(message("y", 1))
        self.assertEqual(len(self.lines()), 3)  # a new overflow starts within the interval: unlogged
        self.clock.advance(60)
        self.outbox.push(message("y", 1))
        self.assertEqual(len(self.lines()), 4)
        self.assertEqual(self.lines()[-1], self.lines()[1])  # ("still full": 2 more dropped in 60 s)
        self.assertEqual(self.events[-1]["count"], 2)

    def test_an_overflow_that_comes_and_goes_is_logged_at_most_once_an_interval(self) -> None:
        """A queue that fills, drains to half and fills again, over and over, logs no more than
        one line per interval (before, two lines a cycle: "is full", then "has room again"), and
        its drops are all told: the owed "has room again" line comes at a pop once due."""
        for _ in range(100):  # 100 cycles in 50 s
            for _ in range(6):
                self.outbox.push(message("x", 1))  # (4 kept, 2 dropped)
            while self.outbox:
                self.outbox.pop()
            self.clock.advance(0.5)
        self.assertEqual(len(self.lines()), 1)  # the first "is full"
        self.clock.advance(10)
        self.outbox.push(message("x", 1))
        self.outbox.pop()
        self.assertEqual(len(self.lines()), 2)
        self.assertEqual(self.lines()[-1], "queue for {client_id!r} has room again; {count} message{s} dropped")
        self.assertEqual(self.events[-1]["count"], 200)


class ManySessionsOverflowLogTests(SynchronousTestCase):
    """A thousand persistent sessions overflowing log a few sessions' lines and one summary an
    interval, not a line each; the per-client counts stay where they were."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.policy = QueuePolicy(max_messages=2, max_bytes=100, clock=self.clock.seconds, log_interval=60)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def outbox_lines(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace", "").endswith("Outbox")]

    def summaries(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("log_namespace", "").endswith("OverflowLines")]

    def test_the_summary_counts_every_drop_of_the_sessions_it_stands_for(self) -> None:
        """Two sessions summed up that drop 5 messages each in a minute: the summary says 10, not
        the 2 their first drops made due (a real run: 2 sessions dropped 8, the summary said 2);
        a session summed up and then named says the drops since the summary, over the time since it."""
        from twisted.logger import formatEvent
        outboxes = [Outbox(f"dev{index}", self.policy, persistent=True) for index in range(7)]
        for outbox in outboxes:
            for _ in range(6):
                outbox.push(message("x", 1))
        self.clock.advance(30)
        for outbox in outboxes[5:]:  # (more drops, half a minute later)
            outbox.push(message("x", 1))
        self.clock.advance(30)
        outboxes[0].push(message("x", 1))  # (its line due: a new minute, the summary said first)
        [summary] = self.summaries()
        outboxes[6].push(message("x", 1))  # (named this minute)
        self.assertEqual((summary["sessions"], summary["count"], summary["qos12"]), (2, 10, 10))
        last = self.outbox_lines()[-1]
        self.assertEqual(formatEvent(last), "queue for 'dev6' is still full: 1 more message dropped in 0 s (6 in all)")
        self.policy.lines.flush()
        self.assertEqual(len(self.summaries()), 1)  # (nothing more summed up)
        self.assertEqual(summary["count"] + 1, sum(outbox.dropped for outbox in outboxes[5:]))

    def test_a_few_sessions_in_detail_and_one_summary_an_interval(self) -> None:
        """1,000 sessions each drop 3 messages (2 QoS 1, 1 too large) in a minute, and 5 (4 and 1)
        the next: each minute logs 5 sessions' lines and, at the next minute or the broker's stop,
        one summary of the 995 others, with every drop of theirs since their last line, by reason
        (before: 1,000 lines a minute)."""
        from twisted.logger import formatEvent
        from gateway.broker.overflowlines import DETAILED_SESSIONS
        outboxes = [Outbox(f"dev{index}", self.policy, persistent=True) for index in range(1000)]
        for minute in range(2):
            for outbox in outboxes:
                for _ in range(4):
                    outbox.push(message("x", 1))
                outbox.push(message("big", 1, size=101))
            self.clock.advance(60)
        self.assertEqual(len(self.outbox_lines()), 2 * DETAILED_SESSIONS)
        self.assertEqual({e["client_id"] for e in self.outbox_lines()}, {f"dev{index}" for index in range(5)})
        [summary] = self.summaries()  # (the first minute's, said when the second began)
        self.assertEqual((summary["sessions"], summary["count"], summary["qos0"], summary["qos12"],
                          summary["too_large"]), (995, 995 * 3, 0, 995 * 2, 995))
        self.assertEqual(formatEvent(summary),
                         "queues of 995 more sessions overflowed since 60 s ago (at most 5 sessions are named each"
                         " 60 s): 2985 messages dropped (0 QoS 0 and 1990 QoS 1/2 (drop_new) for full queues,"
                         " 995 larger than max_queued_bytes)")
        self.policy.lines.flush()  # (the broker stops)
        summary = self.summaries()[-1]
        # the second minute's: each session's drops since the first summary (4 QoS 1, 1 too large)
        self.assertEqual((summary["sessions"], summary["count"], summary["qos12"], summary["too_large"]),
                         (995, 995 * 5, 995 * 4, 995))
        # (every drop of the sessions summed up is in a summary, once)
        self.assertEqual(sum(e["count"] for e in self.summaries()), sum(o.dropped for o in outboxes[5:]))
        self.assertEqual(sum(outbox.dropped for outbox in outboxes), 1000 * 8)
        self.assertEqual(self.policy.dropped, [0, 8000, 0])
        self.assertEqual(len(self.policy.dropping), 1000)

    def test_an_ended_session_summed_up_is_let_go_its_drops_counted_once(self) -> None:
        """A session summed up that ends before the summary (its queue cleared): the summary
        still counts it and its drops, once, but holds no more its queue (before: every ended
        session's queue was kept until the next summary, which waits for the next line due:
        10,000 clean sessions that overflowed and left kept 24 MB, for as long as no queue
        overflowed again)."""
        import gc
        import weakref
        outboxes = [Outbox(f"dev{index}", self.policy) for index in range(7)]
        for outbox in outboxes:
            for _ in range(4):
                outbox.push(message("x", 1))  # (2 dropped each; dev5 and dev6 summed up)
        outboxes[6].push(message("x", 1))  # (dropped later, before the session ends)
        gone = weakref.ref(outboxes[6])
        del outbox
        outboxes.pop().clear()  # (its session ends, as RoutingState.forget_session ends it)
        self.policy.forget("dev6")
        gc.collect()
        self.assertIsNone(gone())
        self.policy.lines.flush()
        [summary] = self.summaries()
        self.assertEqual((summary["sessions"], summary["count"]), (2, 5))

    def test_the_summary_comes_when_its_interval_ends_without_a_later_line(self) -> None:
        """Seven sessions overflow once and then nothing more: the summary of the two summed up
        comes when their minute ends, "since 60 s ago", by the policy's timer (before: only at
        the next session's line due or the broker's stop, "since 7200 s ago" two hours later);
        a session summed up in the next minute sets the timer again, and the stop cancels it."""
        policy = QueuePolicy(max_messages=2, max_bytes=100, clock=self.clock.seconds, log_interval=60,
                             timers=self.clock)
        outboxes = [Outbox(f"dev{index}", policy, persistent=True) for index in range(7)]
        self.clock.advance(10)
        for outbox in outboxes:
            for _ in range(3):
                outbox.push(message("x", 1))  # (dev5 and dev6 summed up)
        self.clock.advance(59)
        self.assertEqual(self.summaries(), [])
        self.clock.advance(1)
        [summary] = self.summaries()
        self.assertEqual((summary["sessions"], summary["count"], summary["seconds"]), (2, 2, 60))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(7200)
        self.assertEqual(len(self.summaries()), 1)
        for outbox in outboxes:
            outbox.push(message("x", 1))  # (a new minute, 5 named again, dev5 and dev6 summed up)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        policy.lines.stop()  # (the broker stops: the summary at once, no timer left)
        self.assertEqual([(e["sessions"], e["count"], e["seconds"]) for e in self.summaries()], [(2, 2, 60), (2, 2, 0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        outboxes[6].push(message("x", 1))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_queue_with_room_again_and_no_drops_untold_makes_no_summary(self) -> None:
        """A session summed up whose queue has room again a minute later, having dropped nothing
        since the summary told its drops, while 5 others are named: no summary of "1 more
        session overflowed ...: 0 messages dropped" (before: one such line)."""
        outboxes = [Outbox(f"dev{index}", self.policy) for index in range(6)]
        for outbox in outboxes:
            for _ in range(3):
                outbox.push(message("x", 1))  # (dev5 summed up)
        self.clock.advance(61)
        for outbox in outboxes[:5]:
            outbox.push(message("x", 1))  # (a new minute: dev5's summary said; 5 named again)
        outboxes[5].pop()
        outboxes[5].pop()  # (room again: its line due, nothing dropped since the summary)
        self.policy.lines.flush()
        self.assertEqual([(e["sessions"], e["count"]) for e in self.summaries()], [(1, 1)])
