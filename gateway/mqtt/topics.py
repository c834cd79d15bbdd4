"""MQTT topic names and filters (MQTT 3.1.1 §4.7): validation and matching."""

from __future__ import annotations

from gateway.shown import escaped


def valid_filter(topic_filter: str) -> bool:
    """Whether ``topic_filter`` is a valid subscription filter (§4.7.1)."""
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def valid_topic(topic: str) -> bool:
    """Whether ``topic`` is a valid topic name to publish to (no wildcards, not empty, at
    most 65535 bytes of UTF-8: §1.5.3)."""
    return (bool(topic) and "+" not in topic and "#" not in topic and "\0" not in topic
            and (len(topic) <= 16383 or len(topic.encode("utf-8", "surrogatepass")) <= 65535))


def too_deep(topic: str, max_levels: int) -> bool:
    """Whether ``topic`` (a name or a filter) has more than ``max_levels`` levels (``a//b`` has
    three); ``max_levels`` 0 is no limit. Levels, not bytes, are what a tree of topics keeps
    one node for (:mod:`gateway.mqtt.topictree`)."""
    return bool(max_levels) and topic.count("/") >= max_levels


def unreachable_request_topic(topic: str) -> str | None:
    """Why clients could never send requests on ``topic`` (a topic, or a filter) the gateway
    takes them on, or None: a ``$`` topic, since the broker drops what clients publish there
    (MQTT 3.1.1 §4.7.2).

    :param topic: a configured request topic.
    """
    if topic.startswith("$"):
        return f"{topic!r} is a $ topic: the broker drops what clients publish there, so no request would ever arrive"
    return None


def topic_for_log(topic: str, limit: int = 200) -> str:
    """``topic`` (or a filter) for a log line: as it is up to ``limit`` characters, else its
    first ``limit`` characters, ``...`` and its length in bytes (a topic may be 64 KiB); its
    control characters escaped (``\\n``: MQTT allows a newline in a topic, which would split
    the line and could forge the next one)."""
    if len(topic) <= limit:
        return escaped(topic)
    return f"{escaped(topic[:limit])}... ({len(topic.encode('utf-8', 'surrogatepass'))} bytes)"


def has_wildcard(topic_filter: str) -> bool:
    """Whether ``topic_filter`` has a ``+`` or ``#`` (else it matches only the topic written the same)."""
    return "+" in topic_filter or "#" in topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter``; ``$`` topics never match a leading wildcard (§4.7.2)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if not has_wildcard(topic_filter):
        return topic_filter == topic
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels) or (level != "+" and level != topic_levels[i]):
            return False
    return len(filter_levels) == len(topic_levels)
