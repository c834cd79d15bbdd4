"""What one client may make the broker keep: the levels of a topic, the subscriptions of a session.

The broker keeps one node per level of every retained topic and of every filter with a
wildcard (:mod:`gateway.mqtt.topictree`), and every filter of every session (a persistent
one while its client is offline too). Without bounds one local client could make it keep
millions of nodes: a 64 KiB filter ``x/+/+/...`` has 32,767 levels. :class:`SubscriptionLimits`
holds the two bounds, ``max_topic_levels`` (mosquitto has a fixed ``TOPIC_HIERARCHY_LIMIT``:
200 ``/``, 201 levels) and ``max_subscriptions`` (EMQX's name), decides each new subscription
and counts what it refuses, per client too. A PUBLISH or will topic over ``max_topic_levels`` is refused before it gets
here, by the framing layer, as any invalid topic is (:mod:`gateway.mqtt.validation`).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from twisted.logger import Logger

from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since
from gateway.mqtt.topics import too_deep, topic_for_log

#: ``max_topic_levels`` when the config names none (one level under mosquitto's fixed
#: ``TOPIC_HIERARCHY_LIMIT``, which counts 200 ``/``: 201 levels).
DEFAULT_MAX_TOPIC_LEVELS = 200
#: ``max_subscriptions`` when the config names none.
DEFAULT_MAX_SUBSCRIPTIONS = 1000


class SubscriptionLimits:
    """The bounds on a topic's levels and a session's subscriptions, and what they refused.

    :param max_topic_levels: the most levels of a topic or filter (0: any).
    :param max_subscriptions: the most filters one session holds (0: any).
    :param clock: seconds now, on a clock that never steps (for the log's rate limit).
    :ivar filters_too_deep: filters refused for having more than ``max_topic_levels`` levels.
    :ivar subscriptions_refused: new filters refused because their session had ``max_subscriptions``.
    :ivar refused_by_client: client id -> its ``subscriptions_refused``, for the sessions known.
    """

    log = Logger()

    def __init__(self, max_topic_levels: int, max_subscriptions: int, clock: Callable[[], float]) -> None:
        self.max_topic_levels = max_topic_levels
        self.max_subscriptions = max_subscriptions
        self.filters_too_deep = 0
        self.subscriptions_refused = 0
        self.refused_by_client: dict[str, int] = {}
        self._lines = LogThrottle(REFUSED_LOG_INTERVAL, clock)

    def too_deep(self, topic: str) -> bool:
        """Whether ``topic`` (a name or a filter) has more than ``max_topic_levels`` levels."""
        return too_deep(topic, self.max_topic_levels)

    def allows(self, client_id: str, filters: dict[str, None], topic_filter: str) -> bool:
        """Whether a session with ``filters`` may subscribe to ``topic_filter``: a filter it
        has already is always allowed (a new QoS replaces the old one, §3.8.4); a new one when
        it has at most ``max_topic_levels`` levels and the session is under ``max_subscriptions``.
        A refusal is counted and logged (at most once per :data:`REFUSED_LOG_INTERVAL`)."""
        if topic_filter in filters:
            return True
        if too_deep(topic_filter, self.max_topic_levels):
            self.filters_too_deep += 1
            self._refused(client_id, topic_filter, f"it has {topic_filter.count('/') + 1} levels, more than "
                                                   f"max_topic_levels ({self.max_topic_levels})")
            return False
        if self.max_subscriptions and len(filters) >= self.max_subscriptions:
            self.subscriptions_refused += 1
            self.refused_by_client[client_id] = self.refused_by_client.get(client_id, 0) + 1
            self._refused(client_id, topic_filter, f"it has {len(filters)} subscriptions, max_subscriptions is "
                                                   f"{self.max_subscriptions}")
            return False
        return True

    def _refused(self, client_id: str, topic_filter: str, reason: str) -> None:
        count = self._lines.note()
        if count is not None:
            self.log.warn("refusing the subscription of {client_id!r} to {filter}: {reason} (SUBACK 0x80; {since})",
                          client_id=client_id, filter=topic_for_log(topic_filter), reason=reason,
                          since=refused_since(count))

    def warn_restored(self, filters_by_client: Mapping[str, Mapping[str, None]], retained: Iterable[str]) -> None:
        """Log once what restored state holds over the bounds (a checkpoint or state log written
        before them, or under larger ones): it is kept as it was; an over-full session gets no new
        filter until it holds fewer than ``max_subscriptions``.

        :param filters_by_client: each restored session's filters, by client id.
        :param retained: the topics of the retained messages.
        """
        full = {client_id: len(filters) for client_id, filters in filters_by_client.items()
                if self.max_subscriptions and len(filters) > self.max_subscriptions}
        deep_filters = sum(1 for filters in filters_by_client.values() for topic_filter in filters
                           if self.too_deep(topic_filter))
        deep_topics = sum(1 for topic in retained if self.too_deep(topic))
        parts = []
        if full:
            most = max(full, key=full.__getitem__)
            parts.append(f"{len(full)} sessions with more than max_subscriptions ({self.max_subscriptions}) "
                         f"subscriptions (the most: {most!r} with {full[most]}; they get no new one until they hold "
                         "fewer)")
        if deep_filters or deep_topics:
            parts.append(f"{deep_filters} subscriptions and {deep_topics} retained topics with more than "
                         f"max_topic_levels ({self.max_topic_levels}) levels")
        if parts:
            self.log.warn("broker: the saved state holds {parts}: kept as saved", parts=" and ".join(parts))

    def forget(self, client_id: str) -> None:
        """The session of ``client_id`` is gone: its refusals are no longer listed per client."""
        self.refused_by_client.pop(client_id, None)
