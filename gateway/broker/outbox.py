"""A session's bounded queue of messages waiting to go out (offline, paused socket or full window).

Each session has its own queue, bounded in messages and in payload bytes
(:class:`QueuePolicy`, from ``max_queued_messages`` and ``max_queued_bytes``). A slow or
absent subscriber only ever loses its own messages: the broker never stops reading from
a publisher because a subscriber's queue is full. When a message does not fit:

1. the queue's oldest QoS 0 messages are dropped first, as many as it takes;
2. a new QoS 0 message that still does not fit is dropped itself (every queued message is
   QoS 1 or 2 then, and those outrank it);
3. a QoS 1 or 2 message that still does not fit is handled by the policy's ``overflow``:
   ``drop_new`` (the default, as mosquitto) drops the new message, ``drop_oldest`` drops
   the oldest queued QoS 1/2 messages until it fits (the subscriber then gets the newest
   data, with a gap before it).

Queued messages keep their arrival order across QoS levels. Every drop is counted per
session (:attr:`Outbox.dropped_qos0`, :attr:`Outbox.dropped_qos12`) and per broker
(:attr:`QueuePolicy.dropped`), and logged at most once per ``log_interval`` per session:
once when an overflow starts, then a summary while it goes on, and a total when the
queue has room again (below half of both bounds).
"""

from __future__ import annotations

import time
from collections import deque
from operator import itemgetter
from typing import Callable, Iterator

from twisted.logger import Logger

from gateway.broker.bus import BusMessage

#: One message waiting for its subscriber (its QoS is the delivery QoS).
QueuedMessage = BusMessage
_ARRIVAL = itemgetter(0)
_MESSAGE = itemgetter(1)
#: ``overflow`` policies for QoS 1/2 messages that do not fit (see the module docstring).
OVERFLOW_POLICIES = ("drop_new", "drop_oldest")
#: Seconds between two overflow log lines of one session.
LOG_INTERVAL = 60.0


class QueuePolicy:
    """The bounds and overflow policy every session queue of one broker shares, and its drop counters.

    :param max_messages: most messages a queue holds.
    :param max_bytes: most payload bytes a queue holds.
    :param overflow: what goes when a QoS 1/2 message does not fit: ``drop_new`` or ``drop_oldest``.
    :param clock: seconds now (for the rate limit of overflow logs).
    :param log_interval: seconds between two overflow log lines of one session.
    :ivar dropped: messages dropped over every session, by their QoS (index 0, 1, 2); never decreases.
    :ivar dropping: the queues that dropped messages, by client id, while their session is known.
    """

    def __init__(self, max_messages: int, max_bytes: int, overflow: str = "drop_new",
                 clock: Callable[[], float] = time.monotonic, log_interval: float = LOG_INTERVAL) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {overflow!r}")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.clock = clock
        self.log_interval = log_interval
        self.dropped = [0, 0, 0]
        self.dropping: dict[str, Outbox] = {}

    def forget(self, client_id: str) -> None:
        """The session of ``client_id`` is gone: its queue is no longer listed in :attr:`dropping`."""
        self.dropping.pop(client_id, None)


class Outbox:
    """Bounded FIFO of :class:`QueuedMessage` for one session; see the module docstring.

    :param client_id: the session's client id (for logs and :attr:`QueuePolicy.dropping`).
    :param policy: the bounds, overflow policy and broker-wide counters.
    :ivar bytes: payload bytes queued now.
    :ivar dropped_qos0: QoS 0 messages dropped because the queue was full, over the session's life.
    :ivar dropped_qos12: QoS 1 and 2 messages dropped so.
    """

    log = Logger()

    def __init__(self, client_id: str, policy: QueuePolicy) -> None:
        self.client_id = client_id
        self.policy = policy
        # Two lanes, each (arrival number, message): the oldest QoS 0 message is always at
        # the head of its lane, and the next message out is the lower number of the heads.
        self._qos0: deque[tuple[int, QueuedMessage]] = deque()
        self._acked: deque[tuple[int, QueuedMessage]] = deque()
        self._next = 0
        self.bytes = 0
        self._acked_bytes = 0
        self.dropped_qos0 = 0
        self.dropped_qos12 = 0
        self._overflowing = False
        self._overflow_drops = 0  # drops in the current overflow episode
        self._unlogged = 0  # drops since the last log line
        self._logged_at = 0.0

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
        # Sorted by arrival number alone (numbers are unique, so messages are never compared),
        # and taken out of their entries in C: a checkpoint lists every queue on the reactor thread.
        merged = sorted([*self._qos0, *self._acked], key=_ARRIVAL)
        return list(map(_MESSAGE, merged))

    @property
    def dropped(self) -> int:
        """Messages dropped because the queue was full, any QoS."""
        return self.dropped_qos0 + self.dropped_qos12

    def push(self, message: QueuedMessage) -> bool:
        """Queue ``message``, making room by the overflow rules; ``False`` when it was dropped itself."""
        policy = self.policy
        size = len(message.payload)
        if len(self) + 1 > policy.max_messages or self.bytes + size > policy.max_bytes:
            if not self._make_room(message, size):
                self._drop(message.qos)
                return False
        entry = (self._next, message)
        self._next += 1
        if message.qos:
            self._acked.append(entry)
            self._acked_bytes += size
        else:
            self._qos0.append(entry)
        self.bytes += size
        return True

    def _make_room(self, message: QueuedMessage, size: int) -> bool:
        """Drop queued messages so that ``message`` fits, or ``False`` (nothing dropped) if it cannot."""
        policy = self.policy
        if size > policy.max_bytes:
            return False
        keeps_acked = not message.qos or policy.overflow == "drop_new"
        if keeps_acked and (len(self._acked) + 1 > policy.max_messages or self._acked_bytes + size > policy.max_bytes):
            return False  # even without any QoS 0 message it would not fit
        # each drop is counted (and logged) before its message leaves: the log shows the full queue
        while self._qos0 and (len(self) + 1 > policy.max_messages or self.bytes + size > policy.max_bytes):
            self._drop(0)
            _, old = self._qos0.popleft()
            self.bytes -= len(old.payload)
        while len(self) + 1 > policy.max_messages or self.bytes + size > policy.max_bytes:
            _, old = self._acked[0]  # drop_oldest, QoS 1/2: there is one, or it would fit
            self._drop(old.qos)
            self._acked.popleft()
            self.bytes -= len(old.payload)
            self._acked_bytes -= len(old.payload)
        return True

    def _drop(self, qos: int) -> None:
        """Count one dropped message and log, at most once per ``log_interval``."""
        policy = self.policy
        policy.dropped[qos] += 1
        if qos:
            self.dropped_qos12 += 1
        else:
            self.dropped_qos0 += 1
        policy.dropping[self.client_id] = self
        self._overflow_drops += 1
        now = policy.clock()
        if not self._overflowing:
            self._overflowing = True
            self._logged_at = now
            self.log.warn("queue for {client_id!r} is full ({count} message{s}, {size} bytes): dropping its "
                          "messages (QoS 0 first, then QoS 1/2: {overflow})", client_id=self.client_id,
                          count=len(self), s="" if len(self) == 1 else "s", size=self.bytes,
                          overflow=policy.overflow)
            return
        self._unlogged += 1
        if now - self._logged_at >= policy.log_interval:
            self.log.warn("queue for {client_id!r} is still full: {count} more message{s} dropped in {seconds:.0f} s "
                          "({total} in all)", client_id=self.client_id, count=self._unlogged,
                          s="" if self._unlogged == 1 else "s", seconds=now - self._logged_at, total=self.dropped)
            self._logged_at = now
            self._unlogged = 0

    def pop(self) -> QueuedMessage:
        """Take the oldest message.

        :raises IndexError: when the queue is empty.
        """
        qos0, acked = self._qos0, self._acked
        if acked and (not qos0 or acked[0][0] < qos0[0][0]):
            _, message = acked.popleft()
            self._acked_bytes -= len(message.payload)
        else:
            _, message = qos0.popleft()
        self.bytes -= len(message.payload)
        if self._overflowing and len(self) * 2 <= self.policy.max_messages and self.bytes * 2 <= self.policy.max_bytes:
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

    def _end_overflow(self) -> None:
        """The queue has room: end an overflow episode, logging its drops."""
        if self._overflowing:
            self.log.warn("queue for {client_id!r} has room again; {count} message{s} dropped",
                          client_id=self.client_id, count=self._overflow_drops,
                          s=" was" if self._overflow_drops == 1 else "s were")
        self._overflowing = False
        self._overflow_drops = self._unlogged = 0

    def clear(self) -> None:
        """Forget every message (the session starts over or ends)."""
        self._qos0.clear()
        self._acked.clear()
        self.bytes = self._acked_bytes = 0
        self._end_overflow()
