"""A session's bounded queue of messages waiting to go out (offline, paused socket or full window).

Each session has its own queue, bounded in messages and in payload bytes
(:class:`QueuePolicy`, from ``max_queued_messages`` and ``max_queued_bytes``). A slow or
absent subscriber only ever loses its own messages: the broker never stops reading from
a publisher because a subscriber's queue is full. When a message does not fit:

1. the queue's oldest QoS 0 messages are dropped first, as many as it takes;
2. a new QoS 0 message that would not fit even without them is dropped itself, and they stay
   (the queue's QoS 1 and 2 messages outrank it);
3. a QoS 1 or 2 message that still does not fit is handled by the policy's ``overflow``:
   ``drop_new`` (the default, as mosquitto) drops the new message, ``drop_oldest`` drops
   the oldest queued QoS 1/2 messages until it fits (the subscriber then gets the newest
   data, with a gap before it).

Queued messages keep their arrival order across QoS levels. Every drop is counted per
session (:attr:`Outbox.dropped_qos0`, :attr:`Outbox.dropped_qos12`) and per broker
(:attr:`QueuePolicy.dropped`), and logged at most once per ``log_interval`` per session:
once when an overflow starts, then a summary while it goes on, and a total when the
queue has room again (below half of both bounds). A line not due yet is not lost: an
overflow that starts within the interval is told by the next "still full" line, and a
"room again" line is said at the first :meth:`Outbox.pop` once due (a queue that fills and
drains every second logged two lines a second). Only a few sessions' lines are logged each
interval; the others' are summed up in one line (:mod:`gateway.broker.overflowlines`).

The persistent sessions' queues are also bounded together (``max_queued_bytes_total``,
:attr:`QueuePolicy.max_total`): each of their messages counts :func:`queued_cost` (its payload
and topic plus :data:`QUEUED_MESSAGE_COST`), so that a fleet of offline subscribers cannot
hold more than the gateway has. A message that would take the total past it makes room
first: the session holding the oldest queued message (arrival numbers are the policy's, so
they compare across sessions) drops its oldest QoS 0 message, or its oldest QoS 1/2
message when it has none, until the new one fits; a new QoS 0 message that would push a
QoS 1/2 message out is dropped itself (only a connected client's queue holds QoS 0 ones),
as is a message larger than ``max_total``. A message dropped itself costs no other: what
its own queue's bounds and the total would drop for it is planned first
(:meth:`QueuePolicy.victims`), and dropped only once it is known to fit. While a start
restores the saved queues (:attr:`QueuePolicy.holding`), the total is applied through the same
planner once they are all back (:meth:`QueuePolicy.apply_total`), and before a queue at its own
bounds takes its next one (:meth:`QueuePolicy.catch_up`), as the running broker had applied it.
The session holding the oldest is found through a heap of each queue's head, updated
lazily: an entry's number is never above its queue's head (a queue only ever loses its
head), so an entry found stale is put back with its head's number, and the accounting stays
O(1) per message. Those drops are counted as the others (and in
:attr:`QueuePolicy.total_drops`) and logged by the policy, at most once per ``log_interval``.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from itertools import islice
from operator import itemgetter
from typing import Callable, Iterator, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.broker.bus import BusMessage
from gateway.broker.overflowlines import QOS0_FULL, QOS12_FULL, TOO_LARGE, OverflowLines
from gateway.logthrottle import LogThrottle

#: One message waiting for its subscriber (its QoS is the delivery QoS).
QueuedMessage = BusMessage
_ARRIVAL = itemgetter(0)
_MESSAGE = itemgetter(1)
#: ``overflow`` policies for QoS 1/2 messages that do not fit (see the module docstring).
OVERFLOW_POLICIES = ("drop_new", "drop_oldest")
#: Seconds between two overflow log lines of one session.
LOG_INTERVAL = 60.0
#: ``max_queued_bytes_total`` when the config names none (64 MiB: fits a 512 MiB gateway).
DEFAULT_MAX_QUEUED_TOTAL = 64 << 20
#: Bytes a queued message counts in ``max_queued_bytes_total`` besides its payload and topic:
#: about what the broker holds for it (its entry, the message tuple; measured 290 to 390).
QUEUED_MESSAGE_COST = 330
#: The heap of queue heads is rebuilt without the emptied queues once it holds this many more
#: entries than when it was last rebuilt (and twice as many).
_HEAP_SLACK = 64
#: A queue none of whose messages a plan of :meth:`QueuePolicy.victims` took yet: (QoS 0, QoS 1/2).
_NONE_TAKEN = (0, 0)


def queued_cost(message: QueuedMessage) -> int:
    """What ``message`` counts in a persistent session's queue towards ``max_queued_bytes_total``:
    its payload's bytes, its topic's (UTF-8) and :data:`QUEUED_MESSAGE_COST`."""
    return len(message.payload) + topic_bytes(message.topic) + QUEUED_MESSAGE_COST


def topic_bytes(topic: str) -> int:
    """The UTF-8 bytes of ``topic`` (its characters when it is ASCII, which a string knows at once)."""
    return len(topic) if topic.isascii() else len(topic.encode("utf-8", "surrogatepass"))


class QueuePolicy:
    """The bounds and overflow policy every session queue of one broker shares, and its drop counters.

    :param max_messages: most messages a queue holds.
    :param max_bytes: most payload bytes a queue holds.
    :param overflow: what goes when a QoS 1/2 message does not fit: ``drop_new`` or ``drop_oldest``.
    :param clock: seconds now (for the rate limit of overflow logs).
    :param log_interval: seconds between two overflow log lines of one session.
    :param max_total: most :func:`queued_cost` the persistent sessions' queues hold together (0: no bound).
    :param timers: the reactor's timers, for the overflow summary at the end of its interval
        (:class:`~gateway.broker.overflowlines.OverflowLines`).
    :ivar dropped: messages dropped over every session, by their QoS (index 0, 1, 2); never decreases.
    :ivar dropping: the queues that dropped messages, by client id, while their session is known.
    :ivar total: the :func:`queued_cost` of the messages the persistent sessions' queues hold now.
    :ivar total_drops: messages dropped to keep :attr:`total` within ``max_total`` (also in :attr:`dropped`).
    :ivar dropped_at_start: those of them a start dropped (:meth:`apply_total`, :meth:`catch_up`).
    :ivar holding: while true (a start restoring saved queues), ``max_total`` is not applied;
        :meth:`apply_total` applies it once everything is restored.
    :ivar on_total_drop: called (without arguments) after messages were dropped for ``max_total``.
    :ivar lines: which sessions' overflow lines are logged, and the summary of the others'.
    """

    log = Logger()

    def __init__(self, max_messages: int, max_bytes: int, overflow: str = "drop_new",
                 clock: Callable[[], float] = time.monotonic, log_interval: float = LOG_INTERVAL,
                 max_total: int = 0, timers: IReactorTime | None = None) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {overflow!r}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.clock = clock
        self.log_interval = log_interval
        self.max_total = max_total
        self.dropped = [0, 0, 0]
        self.dropping: dict[str, Outbox] = {}
        self.total = 0
        self.total_drops = 0
        self.dropped_at_start = 0
        self.holding = False
        self._start_victims: set[str] = set()  # the queues the start dropped messages from (apply_total)
        self.on_total_drop: Callable[[], None] | None = None
        self.arrivals = 0  # the last arrival number given, over every queue
        # (arrival number of a queue's head at most, queue): one entry per persistent queue listed
        self._heads: list[tuple[int, Outbox]] = []
        self._heads_rebuilt = 0
        self._total_lines = LogThrottle(log_interval, clock)
        self.lines = OverflowLines(log_interval, clock, lambda: self.overflow, timers)

    def forget(self, client_id: str) -> None:
        """The session of ``client_id`` is gone: its queue is no longer listed in :attr:`dropping`."""
        self.dropping.pop(client_id, None)

    def listed(self, outbox: Outbox, arrival: int) -> None:
        """A persistent session's queue holds a message again, its head numbered ``arrival``."""
        heads = self._heads
        heapq.heappush(heads, (arrival, outbox))
        if len(heads) > 2 * self._heads_rebuilt + _HEAP_SLACK:  # queues emptied (ended sessions) pile up
            kept = []
            for entry in heads:
                if entry[1] or entry[1] is outbox:  # (the one listed now gets its message next)
                    kept.append(entry)
                else:
                    entry[1].listed = False
            heapq.heapify(kept)
            self._heads = kept
            self._heads_rebuilt = len(kept)

    def victims(self, need: int, keep_acked: bool, outbox: Outbox | None = None,
                taken: tuple[int, int] = (0, 0)) -> list[Outbox] | None:
        """Which persistent sessions' queues drop their oldest message (:meth:`Outbox.drop_oldest`)
        so that :attr:`total` goes down by at least ``need``, in turn, one entry a message:
        each time, the queue holding the oldest message of all drops its oldest QoS 0 message,
        or its oldest QoS 1/2 message when it has none. Nothing is dropped here: the caller
        drops them (all, in this order), so that a message refused costs no other.

        :param need: the :func:`queued_cost` to free (nothing when it is 0 or less).
        :param keep_acked: ``None`` rather than a QoS 1/2 message (for a new QoS 0 one: those outrank it).
        :param outbox: a queue to count without its ``taken`` oldest QoS 0 and QoS 1/2 messages
            (those its own bounds drop for the new message, first).
        :returns: the queues, or ``None`` when ``keep_acked`` and a QoS 1/2 message would go.
        """
        heads = self._heads
        # The queue on top of the heap of heads stays there while it holds the oldest message
        # once its planned drops are gone (the common case: one queue, one drop); one that no
        # longer does is taken off to ``ahead``, by its head after its planned drops, and goes
        # back as it was (nothing is dropped yet) when the plan is done.
        ahead: list[tuple[int, Outbox]] = []
        moved: list[tuple[int, Outbox]] = []
        planned: dict[Outbox, list[int]] = {} if outbox is None or not any(taken) else {outbox: list(taken)}
        victims: list[Outbox] = []
        try:
            while need > 0:
                entry = self._oldest()
                first = ahead[0][0] if ahead else None
                if entry is not None:
                    queue = entry[1]
                    head = queue.head_arrival(planned.get(queue, _NONE_TAKEN))
                    # the top's children bound the rest of the heap from below
                    bound = first
                    for index in (1, 2):
                        if index < len(heads) and (bound is None or heads[index][0] < bound):
                            bound = heads[index][0]
                    if head is not None and (bound is None or head < bound):
                        victim = queue
                    elif first is None or entry[0] < first:
                        moved.append(heapq.heappop(heads))
                        if head is not None:
                            heapq.heappush(ahead, (head, queue))
                        continue
                    else:
                        victim = ahead[0][1]
                elif ahead:
                    victim = ahead[0][1]
                else:  # (cannot happen: total counts only listed queues' messages)
                    break
                counts = planned.setdefault(victim, [0, 0])
                cost = victim.plan_drop(counts, keep_acked)
                if cost is None:
                    return None
                need -= cost
                victims.append(victim)
                if ahead and victim is ahead[0][1]:
                    head = victim.head_arrival(counts)
                    if head is None:
                        heapq.heappop(ahead)
                    else:
                        heapq.heapreplace(ahead, (head, victim))
            return victims
        finally:
            for entry in moved:
                heapq.heappush(heads, entry)

    def apply_total(self) -> tuple[int, int]:
        """Stop :attr:`holding` and drop what is over ``max_total``, oldest first.

        :returns: how many messages the start dropped for ``max_total`` (here and in
            :meth:`catch_up`), and how many queues they came from.
        """
        self.catch_up()
        self.holding = False
        victims, self._start_victims = self._start_victims, set()
        return self.dropped_at_start, len(victims)

    def catch_up(self) -> None:
        """Drop what is over ``max_total`` now, oldest first (planned by :meth:`victims`), while
        :attr:`holding`: a queue being restored is at its own bounds, and the running broker
        decided on that message with what the total had left in it (a start would otherwise
        drop the newest message, ``drop_new``, and keep an older one the total had dropped)."""
        if not self.max_total or self.total <= self.max_total:
            return
        victims = self.victims(self.total - self.max_total, keep_acked=False) or []
        for victim in victims:
            victim.drop_oldest()
            self._start_victims.add(victim.client_id)
        self.total_drops += len(victims)
        self.dropped_at_start += len(victims)

    def _oldest(self) -> tuple[int, Outbox] | None:
        """The heap's entry of the persistent session's queue holding the oldest message (by
        arrival), on top and made exact (emptied queues' entries go, stale ones are put back
        with their head's number), or ``None``."""
        heads = self._heads
        while heads:
            entry = heads[0]
            arrival, outbox = entry
            head = outbox.head_arrival()
            if head == arrival:
                return entry
            if head is None:
                heapq.heappop(heads)
                outbox.listed = False
            else:
                heapq.heapreplace(heads, (head, outbox))  # stale: put back with its head now
        return None

    def note_total_drops(self, count: int, victim: Outbox, incoming: int = 0) -> None:
        """Count ``count`` messages dropped for ``max_total`` (the last from ``victim``) and log,
        at most once per ``log_interval``.

        :param incoming: the cost of the new message they made room for, about to be queued:
            the line says what the queues hold with it (``0``: it was dropped itself).
        """
        if not count:
            return
        self.total_drops += count
        if self.on_total_drop is not None:
            self.on_total_drop()
        lines = self._total_lines.note(count)
        if lines is not None:
            # (the first line's drops are all there were: no "since the last such line" then)
            since = f"{lines} dropped since the last such line, " if lines < self.total_drops else ""
            self.log.warn("the persistent sessions' queues hold {total} bytes, max_queued_bytes_total is {max_total}:"
                          " dropping their oldest messages (now from {client_id!r}; {since}{all} in all; logged at"
                          " most once every {interval:.0f} s while they go on)",
                          total=self.total + incoming, max_total=self.max_total, client_id=victim.client_id,
                          since=since, all=self.total_drops, interval=self.log_interval)


class Outbox:
    """Bounded FIFO of :class:`QueuedMessage` for one session; see the module docstring.

    :param client_id: the session's client id (for logs and :attr:`QueuePolicy.dropping`).
    :param policy: the bounds, overflow policy and broker-wide counters.
    :param persistent: whether the queue is a persistent session's: counted in
        ``max_queued_bytes_total`` (:attr:`QueuePolicy.total`).
    :ivar bytes: payload bytes queued now.
    :ivar dropped_qos0: QoS 0 messages dropped because the queue was full, over the session's life.
    :ivar dropped_qos12: QoS 1 and 2 messages dropped so.
    :ivar listed: whether the policy's heap of queue heads has an entry for this queue.
    """

    log = Logger()

    def __init__(self, client_id: str, policy: QueuePolicy, persistent: bool = False) -> None:
        self.client_id = client_id
        self.policy = policy
        self.persistent = persistent
        self.listed = False
        # Two lanes, each (arrival number, message): the oldest QoS 0 message is always at
        # the head of its lane, and the next message out is the lower number of the heads.
        self._qos0: deque[tuple[int, QueuedMessage]] = deque()
        self._acked: deque[tuple[int, QueuedMessage]] = deque()
        self.bytes = 0
        self._acked_bytes = 0
        self.cost = 0  # the queue's share of QueuePolicy.total (persistent queues only)
        self.dropped_qos0 = 0
        self.dropped_qos12 = 0
        self._overflowing = False
        self._room_unsaid = False  # an overflow ended within log_interval of the last line: its line is owed
        self._overflow_drops = 0  # drops since the last "has room again" line
        self._unlogged = [0, 0, 0]  # drops since the last log line, by reason (overflowlines.QOS0_FULL ...)
        self._logged_at = float("-inf")
        self._counted_at = float("-inf")  # when _unlogged started: the last line, or a summary's take

    def __len__(self) -> int:
        return len(self._qos0) + len(self._acked)

    def __bool__(self) -> bool:
        return bool(self._qos0) or bool(self._acked)

    def __iter__(self) -> Iterator[QueuedMessage]:
        """The queued messages, oldest first (a snapshot: the queue may change afterwards)."""
        return iter(self.messages)

    @property
    def messages(self) -> list[QueuedMessage]:
        """The queued messages in arrival order (a copy)."""
        return list(map(_MESSAGE, self._merged()))

    def numbered(self) -> tuple[list[int], list[QueuedMessage]]:
        """The queued messages in arrival order and their arrival numbers (which order the
        messages of all queues: what ``max_queued_bytes_total`` drops first), as two lists."""
        merged = self._merged()
        return list(map(_ARRIVAL, merged)), list(map(_MESSAGE, merged))

    def _merged(self) -> list[tuple[int, QueuedMessage]]:
        """The queue's entries, both QoS, in arrival order."""
        # Sorted by arrival number alone (numbers are unique, so messages are never compared),
        # and taken out of their entries in C: a checkpoint lists every queue on the reactor thread.
        return sorted([*self._qos0, *self._acked], key=_ARRIVAL)

    @property
    def dropped(self) -> int:
        """Messages dropped because the queue was full, any QoS."""
        return self.dropped_qos0 + self.dropped_qos12

    def push(self, message: QueuedMessage) -> bool:
        """Queue ``message``, making room by the overflow rules; ``False`` when it was dropped
        itself (then nothing else was: the room is found first, then made)."""
        policy = self.policy
        size = len(message.payload)
        persistent = self.persistent
        if persistent:
            topic = message.topic  # (queued_cost, inline: once a message)
            cost = size + (len(topic) if topic.isascii() else topic_bytes(topic)) + QUEUED_MESSAGE_COST
            over = policy.total + cost > policy.max_total and policy.max_total > 0 and not policy.holding
        else:
            cost, over = 0, False
        full = len(self._qos0) + len(self._acked) >= policy.max_messages or self.bytes + size > policy.max_bytes
        if (full or over) and not self._make_room(message, size, cost, full, over):
            return False
        policy.arrivals = arrival = policy.arrivals + 1
        entry = (arrival, message)
        if persistent:
            policy.total += cost
            self.cost += cost
            if not self.listed:
                self.listed = True
                policy.listed(self, arrival)
        if message.qos:
            self._acked.append(entry)
            self._acked_bytes += size
        else:
            self._qos0.append(entry)
        self.bytes += size
        return True

    def _make_room(self, message: QueuedMessage, size: int, cost: int, full: bool, over: bool) -> bool:
        """Drop what the queue's own bounds (``full``: it has no room for ``message``) and then
        ``max_queued_bytes_total`` (``over``: ``cost`` takes the total past it) drop for
        ``message``; or ``False``, when it is dropped itself (counted and logged) and nothing
        else is. While a start restores the queues (:attr:`QueuePolicy.holding`), what is over
        the total goes first (:meth:`QueuePolicy.catch_up`), as it went before ``message`` came."""
        policy = self.policy
        if full and policy.holding and self.persistent:  # (catch_up: nothing while the total is within max_total)
            policy.catch_up()
            full = len(self) + 1 > policy.max_messages or self.bytes + size > policy.max_bytes
        own = _NONE_TAKEN
        if full:
            room = self._room(message, size)
            if room is None:
                self._drop(message.qos, TOO_LARGE if size > policy.max_bytes else None)
                return False
            own = room
        victims: list[Outbox] | None = []
        if over:  # (persistent: only its messages have a cost)
            # (what the total lacks once those are gone)
            need = policy.total - self._oldest_cost(*own) + cost - policy.max_total
            if need > 0:
                victims = policy.victims(need, not message.qos, self, own) if cost <= policy.max_total else None
                if victims is None:  # (larger than the total, or QoS 0 that would push a QoS 1/2 one out)
                    self._count_drop(message.qos)
                    policy.note_total_drops(1, self)
                    return False
        if own is not _NONE_TAKEN:
            self._drop_own(*own)
        if victims:
            for victim in victims:
                victim.drop_oldest()
            policy.note_total_drops(len(victims), victims[-1], cost)
        return True

    def _room(self, message: QueuedMessage, size: int) -> tuple[int, int] | None:
        """What the queue's own bounds drop so that ``message`` fits (see the module docstring):
        how many of its oldest QoS 0 and oldest QoS 1/2 messages; ``None`` when it cannot fit (then
        nothing goes for it)."""
        policy = self.policy
        if size > policy.max_bytes:
            return None
        keeps_acked = not message.qos or policy.overflow == "drop_new"
        if keeps_acked and (len(self._acked) + 1 > policy.max_messages or self._acked_bytes + size > policy.max_bytes):
            return None  # even without any QoS 0 message it would not fit
        count, held = len(self) + 1, self.bytes + size
        taken = [0, 0]
        for lane, index in ((self._qos0, 0), (self._acked, 1)):  # (QoS 1/2 ones only for drop_oldest then)
            for _, queued in lane:
                if count <= policy.max_messages and held <= policy.max_bytes:
                    break
                count -= 1
                held -= len(queued.payload)
                taken[index] += 1
        return taken[0], taken[1]

    def _oldest_cost(self, qos0: int, acked: int) -> int:
        """The :func:`queued_cost` of the ``qos0`` oldest QoS 0 and the ``acked`` oldest QoS 1/2
        messages (what :meth:`_room` drops frees of the total)."""
        return sum(queued_cost(queued) for lane, count in ((self._qos0, qos0), (self._acked, acked))
                   for _, queued in islice(lane, count))

    def _drop_own(self, qos0: int, acked: int) -> None:
        """Drop the ``qos0`` oldest QoS 0 and the ``acked`` oldest QoS 1/2 messages for the
        queue's own bounds (:meth:`_room`); each drop is counted (and logged) before its message
        leaves: the log shows the full queue."""
        for _ in range(qos0):
            self._drop(0)
            self._take_qos0()
        for _ in range(acked):
            self._drop(self._acked[0][1].qos)
            self._take_acked()

    def _take_qos0(self) -> QueuedMessage:
        """Take the oldest QoS 0 message out, and its bytes."""
        _, message = self._qos0.popleft()
        self._taken(message)
        return message

    def _take_acked(self) -> QueuedMessage:
        """Take the oldest QoS 1/2 message out, and its bytes."""
        _, message = self._acked.popleft()
        self._acked_bytes -= len(message.payload)
        self._taken(message)
        return message

    def _taken(self, message: QueuedMessage) -> None:
        self.bytes -= len(message.payload)
        if self.persistent:
            cost = queued_cost(message)
            self.cost -= cost
            self.policy.total -= cost

    def head_arrival(self, taken: Sequence[int] = _NONE_TAKEN) -> int | None:
        """The arrival number of the oldest message (``None``: there is none), or of the oldest
        once the ``taken`` (QoS 0, QoS 1/2) oldest of each lane are gone."""
        skip0, skip12 = taken
        qos0, acked = self._qos0, self._acked
        if len(qos0) > skip0:
            first = qos0[skip0][0]
            if len(acked) > skip12:
                other = acked[skip12][0]
                return other if other < first else first
            return first
        return acked[skip12][0] if len(acked) > skip12 else None

    def plan_drop(self, taken: list[int], keep_acked: bool) -> int | None:
        """Plan the next :meth:`drop_oldest` once the ``taken`` (QoS 0, QoS 1/2) oldest messages
        of each lane are gone: count it in ``taken`` and return its :func:`queued_cost`; ``None``
        (nothing counted) when it would be a QoS 1/2 message and ``keep_acked``."""
        if taken[0] < len(self._qos0):
            _, message = self._qos0[taken[0]]
            taken[0] += 1
        elif keep_acked:
            return None
        else:
            _, message = self._acked[taken[1]]
            taken[1] += 1
        return queued_cost(message)

    def drop_oldest(self) -> None:
        """Drop a message for ``max_queued_bytes_total`` (the queue is not empty), as a full
        queue would: the oldest QoS 0 message, or the oldest QoS 1/2 message when there is none.
        Counted; the policy logs it (:meth:`QueuePolicy.note_total_drops`)."""
        message = self._take_qos0() if self._qos0 else self._take_acked()
        self._count_drop(message.qos)

    def _count_drop(self, qos: int) -> None:
        """Count one dropped message, in the queue's and the policy's counters."""
        policy = self.policy
        policy.dropped[qos] += 1
        if qos:
            self.dropped_qos12 += 1
        else:
            self.dropped_qos0 += 1
        policy.dropping[self.client_id] = self

    def _drop(self, qos: int, reason: int | None = None) -> None:
        """Count one message the queue's own bounds dropped (``reason``: by its QoS unless
        :data:`~gateway.broker.overflowlines.TOO_LARGE`) and log, at most once per ``log_interval``
        (an overflow that starts within it of the queue's last line starts unlogged: its drops
        are in the next line), if the policy's :attr:`~QueuePolicy.lines` name this session."""
        self._count_drop(qos)
        policy = self.policy
        self._overflow_drops += 1
        self._unlogged[(QOS12_FULL if qos else QOS0_FULL) if reason is None else reason] += 1
        starts = not self._overflowing
        if starts:
            self._overflowing = True
            self._room_unsaid = False  # (the next line says where it stands)
        now = policy.clock()
        if now - self._logged_at < policy.log_interval:
            return
        since = self._counted_at
        drops = self.take_unlogged()
        self._logged_at = now
        if not policy.lines.told(self, drops):
            return
        count = sum(drops)
        if starts:
            self.log.warn("queue for {client_id!r} is full ({count} message{s}, {size} bytes): dropping its "
                          "messages (QoS 0 first, then QoS 1/2: {overflow})", client_id=self.client_id,
                          count=len(self), s="" if len(self) == 1 else "s", size=self.bytes,
                          overflow=policy.overflow)
        else:
            self.log.warn("queue for {client_id!r} is still full: {count} more message{s} dropped in {seconds:.0f} s "
                          "({total} in all)", client_id=self.client_id, count=count,
                          s="" if count == 1 else "s", seconds=now - since, total=self.dropped)

    def pop(self) -> QueuedMessage:
        """Take the oldest message.

        :raises IndexError: when the queue is empty.
        """
        qos0, acked = self._qos0, self._acked
        if acked and (not qos0 or acked[0][0] < qos0[0][0]):
            _, message = acked.popleft()
            size = len(message.payload)
            self._acked_bytes -= size
        else:
            _, message = qos0.popleft()
            size = len(message.payload)
        self.bytes -= size
        if self.persistent:  # (_taken, inline: once a message)
            topic = message.topic
            cost = size + (len(topic) if topic.isascii() else topic_bytes(topic)) + QUEUED_MESSAGE_COST
            self.cost -= cost
            self.policy.total -= cost
        if self._overflowing:
            if len(self) * 2 <= self.policy.max_messages and self.bytes * 2 <= self.policy.max_bytes:
                self._end_overflow()
        elif self._room_unsaid:
            self._end_overflow()
        return message

    def peek(self) -> QueuedMessage:
        """The oldest message, left in place.

        :raises IndexError: when the queue is empty.
        """
        qos0, acked = self._qos0, self._acked
        if acked and (not qos0 or acked[0][0] < qos0[0][0]):
            return acked[0][1]
        return qos0[0][1]

    def _end_overflow(self, now_or_never: bool = False) -> None:
        """The queue has room (below half of both bounds): end an overflow episode, logging the
        drops since the last such line, at most once per ``log_interval`` of the queue's last
        line (until then the line is owed, and said at a later :meth:`pop`), or now if
        ``now_or_never`` (the queue is cleared)."""
        self._overflowing = False
        now = self.policy.clock()
        if not now_or_never and now - self._logged_at < self.policy.log_interval:
            self._room_unsaid = True
            return
        if self.policy.lines.told(self, self.take_unlogged()):
            self.log.warn("queue for {client_id!r} has room again; {count} message{s} dropped",
                          client_id=self.client_id, count=self._overflow_drops,
                          s=" was" if self._overflow_drops == 1 else "s were")
        self._logged_at = now
        self._room_unsaid = False
        self._overflow_drops = 0

    def take_unlogged(self) -> list[int]:
        """The drops since the queue's last line (or a summary's last take), by reason
        (:data:`~gateway.broker.overflowlines.QOS0_FULL` ...), counted said from now on: by the
        line due, or by the summary of the sessions summed up
        (:class:`gateway.broker.overflowlines.OverflowLines`)."""
        drops, self._unlogged = self._unlogged, [0, 0, 0]
        self._counted_at = self.policy.clock()
        return drops

    def clear(self) -> None:
        """Forget every message: the session ends (a summary of overflows lets its queue go,
        :meth:`OverflowLines.ended <gateway.broker.overflowlines.OverflowLines.ended>`)."""
        self._qos0.clear()
        self._acked.clear()
        self.bytes = self._acked_bytes = 0
        self.policy.total -= self.cost
        self.cost = 0
        if self._overflowing or self._room_unsaid:
            self._end_overflow(now_or_never=True)
        self.policy.lines.ended(self)
