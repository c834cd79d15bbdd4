"""The bounds on the broker's retained messages: how many topics, how many bytes, and what they refused.

Without them a local client that retains large messages on topics of its own makes the
gateway hold them all, and reload them all at every start: in a memory limit, an OOM kill and
then a crash loop. :class:`RetainedLimits` holds the two bounds, ``max_retained_messages``
(EMQX's name) and ``max_retained_bytes`` (the topics' and payloads' bytes, named as
mosquitto's ``max_queued_bytes``), decides a client's retained PUBLISH (past them it is
delivered and acknowledged, not retained) and counts what they refused. At start,
:class:`RetainedBudget` keeps what fits of a saved state written under larger bounds.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since
from gateway.mqtt.topics import topic_for_log

#: ``max_retained_messages`` when the config names none.
DEFAULT_MAX_RETAINED_MESSAGES = 10_000
#: ``max_retained_bytes`` when the config names none (one session's ``max_queued_bytes``).
DEFAULT_MAX_RETAINED_BYTES = 16 << 20
#: The causes of a refusal: the bound's key.
BY_COUNT, BY_BYTES = "max_retained_messages", "max_retained_bytes"
#: Topics a start's warning names of those it dropped, at most.
DROPPED_NAMED = 3


def retained_size(topic: str, payload: bytes) -> int:
    """What a retained message counts against ``max_retained_bytes``: its topic's bytes (UTF-8) and its payload's."""
    return len(topic.encode("utf-8", "surrogatepass")) + len(payload)


def over_bound(max_messages: int, max_bytes: int, count: int, held: int, old: int | None, new: int) -> str | None:
    """The bound a retained message of ``new`` bytes would break, or ``None`` when it fits.

    A message to a topic that has one (``old``: its size) adds no topic, and one no larger
    than the old adds no bytes: either always fits, so a client can always replace or clear
    its own. A larger one must fit ``max_bytes`` with the old one's bytes taken out.

    :param max_messages: ``max_retained_messages`` (0: no limit).
    :param max_bytes: ``max_retained_bytes`` (0: no limit).
    :param count: the retained messages held.
    :param held: their bytes (:func:`retained_size`).
    :param old: the size of the topic's retained message, ``None`` when it has none.
    :param new: the new message's size (with ``old``, both sizes may leave the topic's bytes
        out: only their difference counts).
    :returns: :data:`BY_COUNT`, :data:`BY_BYTES` or ``None``.
    """
    if old is None and max_messages and count >= max_messages:
        return BY_COUNT
    if max_bytes and new > (old or 0) and held - (old or 0) + new > max_bytes:
        return BY_BYTES
    return None


class RetainedLimits:
    """The bounds on the retained messages clients' PUBLISHes (and wills) leave, and what
    they refused; what the gateway itself retains (its statuses and reports, the clouds'
    messages the links bring down, an amqtt plugin's ``retain_message``) is neither refused
    nor counted, at run time and at start alike, so that a start keeps what the running
    broker kept.

    :param max_messages: ``max_retained_messages`` (0: no limit).
    :param max_bytes: ``max_retained_bytes`` (0: no limit).
    :param clock: seconds now, on a clock that never steps (for the log's rate limit).
    :ivar refused: cause (:data:`BY_COUNT`, :data:`BY_BYTES`) -> retained PUBLISHes not
        retained for it since the start.
    :ivar dropped_at_start: saved retained messages the start did not restore (over the bounds).
    """

    log = Logger()

    def __init__(self, max_messages: int, max_bytes: int, clock: Callable[[], float]) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.refused = {BY_COUNT: 0, BY_BYTES: 0}
        self.dropped_at_start = 0
        self._lines = {cause: LogThrottle(REFUSED_LOG_INTERVAL, clock) for cause in self.refused}

    def over(self, count: int, held: int, old: int | None, new: int) -> str | None:
        """:func:`over_bound` with these bounds."""
        return over_bound(self.max_messages, self.max_bytes, count, held, old, new)

    def refuse(self, cause: str, client_id: str, topic: str, size: int, count: int, held: int,
               replaced: bool) -> None:
        """Count a retained PUBLISH not retained for ``cause``, and log it (at most one line per
        cause every :data:`~gateway.logthrottle.REFUSED_LOG_INTERVAL`).

        :param size: its size (:func:`retained_size`).
        :param count: the clients' retained messages held.
        :param held: their bytes.
        :param replaced: whether the topic had an older retained message (removed then: it is
            no longer the topic's last).
        """
        self.refused[cause] += 1
        lines = self._lines[cause].note()
        if lines is None:
            return
        if cause == BY_COUNT:
            why = f"the broker holds {count} retained messages, max_retained_messages is {self.max_messages}"
        else:
            why = (f"its {size} bytes (topic and payload) would take the retained messages' {held} bytes past "
                   f"max_retained_bytes ({self.max_bytes})")
        if replaced:  # (past the count: the gateway's own message on the topic, a client's being a replacement)
            why += "; the topic's older retained message is removed (it is no longer the topic's last)"
        self.log.warn("not retaining the message of {client_id!r} on {topic}: {why}; it was delivered and "
                      "acknowledged all the same ({since})", client_id=client_id, topic=topic_for_log(topic),
                      why=why, since=refused_since(lines))

    def warn_dropped(self, budget: "RetainedBudget", kept: int, held: int) -> None:
        """Count and log once the saved retained messages the start did not restore (a state
        written by a version without the bounds, or under larger ones).

        :param budget: what the checkpoint's reading and the replay of the state log dropped.
        :param kept: the clients' retained messages restored.
        :param held: their bytes.
        """
        self.dropped_at_start += budget.dropped
        if not budget.dropped:
            return
        named = ", ".join(topic_for_log(topic) for topic in budget.dropped_topics)
        more = ", ..." if budget.dropped > len(budget.dropped_topics) else ""
        self.log.warn("broker: the saved state holds more retained messages than max_retained_messages "
                      "({max_messages}) and max_retained_bytes ({max_bytes}) let it keep: kept {kept} ({held} "
                      "bytes), dropped {dropped} ({dropped_bytes} bytes: {named}{more}); the next checkpoint "
                      "holds them no more", max_messages=self.max_messages, max_bytes=self.max_bytes, kept=kept,
                      held=held, dropped=budget.dropped, dropped_bytes=budget.dropped_bytes, named=named, more=more)


class RetainedBudget:
    """The clients' saved retained messages a start restores: each kept while it fits the bounds (in
    the order saved; one that does not is dropped, and a smaller one after it may still fit),
    the others counted. Used as the checkpoint is read, before the broker exists
    (:func:`gateway.broker.checkpointreader.read_checkpoint`), and by the replay of the state
    log after it (:meth:`gateway.broker.routing.Router.restore_retained`).

    :param max_messages: ``max_retained_messages`` (0: no limit).
    :param max_bytes: ``max_retained_bytes`` (0: no limit).
    :ivar count: retained messages kept so far (as the checkpoint is read).
    :ivar held: their bytes.
    :ivar dropped: saved retained messages dropped.
    :ivar dropped_bytes: their bytes.
    :ivar dropped_topics: the first :data:`DROPPED_NAMED` of their topics.
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.count = 0
        self.held = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.dropped_topics: list[str] = []

    def admit(self, topic: str, size: int) -> bool:
        """Whether a saved retained message on a topic not kept yet fits: kept (counted in) or dropped (counted)."""
        if over_bound(self.max_messages, self.max_bytes, self.count, self.held, None, size) is None:
            self.count += 1
            self.held += size
            return True
        self.drop(topic, size)
        return False

    def drop(self, topic: str, size: int) -> None:
        """Count a saved retained message dropped."""
        self.dropped += 1
        self.dropped_bytes += size
        if len(self.dropped_topics) < DROPPED_NAMED:
            self.dropped_topics.append(topic)
