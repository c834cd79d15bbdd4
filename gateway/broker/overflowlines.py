"""Which sessions' queue-overflow lines are logged in detail each interval, and one summary for the rest.

Each session's queue logs its overflow at most once per interval (:class:`gateway.broker.outbox.Outbox`);
with a thousand persistent sessions overflowing, that was a thousand lines a minute. Here the
first :data:`DETAILED_SESSIONS` sessions whose line falls due in an interval are logged as
before; every other session's line is folded into one summary line for the interval: how many
sessions, and every message they dropped since their last line (or the last summary) until the
summary is said, by reason: their drops after their folded line are taken from their queues when
it is said (:meth:`FoldedQueue.take_unlogged`; nothing more is done per drop). The summary is said
when the interval ends: by a timer the first session summed up in an interval sets (one per
interval, not per line or drop; without it a summary waited for the next session's line due,
hours later when the overflows had stopped), or at the next session line due if that comes
first, or at :meth:`OverflowLines.stop` (the broker stops, which cancels the timer). The
per-client counts stay in the broker's snapshot and ``/metrics``.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: Sessions whose overflow lines are logged in detail per interval; the others are summed up.
DETAILED_SESSIONS = 5
#: Why a queue dropped a message, as :meth:`OverflowLines.told` counts them (index: reason).
QOS0_FULL, QOS12_FULL, TOO_LARGE = range(3)


class FoldedQueue(Protocol):
    """A session's queue, as a summary sees it (:class:`gateway.broker.outbox.Outbox`)."""

    client_id: str

    def take_unlogged(self) -> Sequence[int]:
        """The queue's drops since its last line or the last take, by reason (:data:`QOS0_FULL`,
        :data:`QOS12_FULL`, :data:`TOO_LARGE`), counted said from now on."""


class OverflowLines:
    """Decides, for each session's overflow line due, whether it is logged or summed up.

    :param interval: seconds of one interval (the sessions' ``log_interval``).
    :param clock: seconds now (a steady clock).
    :param overflow: the QoS 1/2 overflow policy now (``drop_new`` or ``drop_oldest``), named in the summary.
    :param timers: what says the summary when its interval ends (``callLater``); without it
        (tests of the counting), the summary waits for the next line due or :meth:`flush`.
    """

    log = Logger()

    def __init__(self, interval: float, clock: Callable[[], float], overflow: Callable[[], str],
                 timers: IReactorTime | None = None) -> None:
        self.interval = interval
        self.clock = clock
        self.overflow = overflow
        self._timers = timers
        self._due: IDelayedCall | None = None  # the timer of this interval's summary, once one is folded
        self._started = float("-inf")
        self._named: set[str] = set()
        self._folded: set[FoldedQueue] = set()
        self._ended: set[str] = set()  # the client ids of sessions summed up that ended since
        self._drops = [0, 0, 0]

    def told(self, queue: FoldedQueue, drops: Sequence[int]) -> bool:
        """A line of ``queue`` is due, for its ``drops`` since its last line (by reason:
        :data:`QOS0_FULL`, :data:`QOS12_FULL`, :data:`TOO_LARGE`), which the caller took
        (:meth:`FoldedQueue.take_unlogged`) before: ``True`` when the caller logs it; ``False``
        when it is summed up in this interval's summary, with the drops the queue makes until
        the summary is said (or, without drops, not even counted there: a "has room again" line
        that tells none has nothing to sum up)."""
        client_id = queue.client_id
        now = self.clock()
        if now - self._started >= self.interval:
            self.flush()
            self._started = now
            self._named.clear()
        named = self._named
        if client_id in named or len(named) < DETAILED_SESSIONS:
            named.add(client_id)
            return True
        if not any(drops) and queue not in self._folded:
            return False  # (a queue with room again that dropped nothing untold: nothing to sum up)
        self._folded.add(queue)
        for reason, count in enumerate(drops):
            self._drops[reason] += count
        if self._due is None and self._timers is not None:
            self._due = self._timers.callLater(max(0.0, self._started + self.interval - now), self._interval_ended)
        return False

    def _interval_ended(self) -> None:
        """The interval of the sessions summed up ended: their summary is said now, and the next
        line due starts the next interval."""
        self._due = None
        self.flush()
        self._started = float("-inf")

    def ended(self, queue: FoldedQueue) -> None:
        """``queue``'s session ended (its queue was cleared): when it is summed up, its drops
        are counted now and the queue is let go (only its client id is kept, for the count of
        sessions), so that the sessions that ended are not held until the summary."""
        if queue in self._folded:
            self._folded.discard(queue)
            self._ended.add(queue.client_id)
            for reason, count in enumerate(queue.take_unlogged()):
                self._drops[reason] += count

    def flush(self) -> None:
        """Log the summary of the sessions summed up since the last one, if any, with their drops
        since their folded lines."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if not self._folded and not self._ended:
            return
        for queue in self._folded:
            for reason, count in enumerate(queue.take_unlogged()):
                self._drops[reason] += count
        qos0, qos12, too_large = self._drops
        sessions = len(self._ended.union(queue.client_id for queue in self._folded))
        self.log.warn("queues of {sessions} more session{s} overflowed since {seconds:.0f} s ago (at most {named} "
                      "sessions are named each {interval:.0f} s): {count} message{ms} dropped ({qos0} QoS 0 and "
                      "{qos12} QoS 1/2 ({overflow}) for full queues, {too_large} larger than max_queued_bytes)",
                      sessions=sessions, s="" if sessions == 1 else "s", seconds=self.clock() - self._started,
                      named=DETAILED_SESSIONS, interval=self.interval, count=qos0 + qos12 + too_large,
                      ms="" if qos0 + qos12 + too_large == 1 else "s", qos0=qos0, qos12=qos12,
                      too_large=too_large, overflow=self.overflow())
        self._folded = set()
        self._ended = set()
        self._drops = [0, 0, 0]

    def stop(self) -> None:
        """The broker stops: log the summary due (:meth:`flush`) and set no timer from now on
        (the sessions summed up after this are said by the next line due or :meth:`flush`)."""
        self._timers = None
        self.flush()
