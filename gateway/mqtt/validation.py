"""MQTT 3.1.1 rules for the variable header and payload of the packets a client sends.

:func:`check_body` runs on every complete packet the framer finds. It parses what the
rules need (and keeps it in ``packet.fields`` for the broker to use): CONNECT (§3.1),
PUBLISH (§3.3), SUBSCRIBE (§3.8), UNSUBSCRIBE (§3.10), the fixed-length packets, and the
UTF-8 strings in all of them (§1.5.3). A broker may bound the levels of the topics it is
sent (``max_topic_levels``, as mosquitto does with its fixed ``TOPIC_HIERARCHY_LIMIT``, which
counts 200 ``/``: 201 levels): a PUBLISH topic or a will topic with more is refused as an
invalid topic is (:class:`~gateway.mqtt.errors.TopicTooDeep`).
"""

from __future__ import annotations

from gateway.mqtt.errors import ProtocolViolation, TopicTooDeep
from gateway.mqtt.packets import CONNACK_UNACCEPTABLE_PROTOCOL, Packet
from gateway.mqtt.topics import too_deep, topic_for_log, valid_filter

#: Remaining length of the packets that have a fixed size (PUBACK ... PUBCOMP, PINGREQ, DISCONNECT).
FIXED_LENGTH = {4: 2, 5: 2, 6: 2, 7: 2, 12: 0, 14: 0}


def _string(body: bytes, pos: int, what: str) -> tuple[str, int]:
    """Decode the UTF-8 string at ``pos`` (§1.5.3); return it and the offset after it."""
    if pos + 2 > len(body):
        raise ProtocolViolation(f"{what} is cut short [MQTT-1.5.3]")
    end = pos + 2 + (body[pos] << 8 | body[pos + 1])
    if end > len(body):
        raise ProtocolViolation(f"{what} is longer than its packet [MQTT-1.5.3]")
    raw = body[pos + 2:end]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolViolation(f"{what} is not well-formed UTF-8 [MQTT-1.5.3-1]") from exc
    if "\0" in text:
        raise ProtocolViolation(f"{what} contains U+0000 [MQTT-1.5.3-2]")
    return text, end


def _binary(body: bytes, pos: int, what: str) -> int:
    """Skip the length-prefixed binary field at ``pos``; return the offset after it."""
    if pos + 2 > len(body):
        raise ProtocolViolation(f"{what} is cut short [MQTT-3.1.3]")
    end = pos + 2 + (body[pos] << 8 | body[pos + 1])
    if end > len(body):
        raise ProtocolViolation(f"{what} is longer than its packet [MQTT-3.1.3]")
    return end


def _packet_id(body: bytes, pos: int, what: str) -> int:
    if pos + 2 > len(body):
        raise ProtocolViolation(f"{what} has no packet identifier [MQTT-2.3.1]")
    packet_id = body[pos] << 8 | body[pos + 1]
    if not packet_id:
        raise ProtocolViolation(f"{what} with packet identifier 0 [MQTT-2.3.1-1]")
    return packet_id


def _levels_problem(topic: str, max_levels: int) -> str | None:
    """What is wrong with ``topic``'s depth, or ``None`` when it has at most ``max_levels`` levels."""
    if not too_deep(topic, max_levels):
        return None
    return f"has {topic.count('/') + 1} levels, more than max_topic_levels ({max_levels})"


def check_connect(packet: Packet, max_topic_levels: int = 0) -> None:
    """§3.1: protocol name and level, connect flags, and a payload that matches the flags; a
    will topic of at most ``max_topic_levels`` levels (0: any)."""
    body = packet.body
    name, pos = _string(body, 0, "CONNECT protocol name")
    if name != "MQTT":
        raise ProtocolViolation(f"CONNECT protocol name {name!r}, not 'MQTT' [MQTT-3.1.2-1]")
    if pos + 4 > len(body):
        raise ProtocolViolation("CONNECT variable header is cut short [MQTT-3.1.2]")
    level, flags = body[pos], body[pos + 1]
    if level != 4:
        raise ProtocolViolation(f"CONNECT protocol level {level}, not 4 [MQTT-3.1.2-2]",
                                CONNACK_UNACCEPTABLE_PROTOCOL)
    if flags & 0x01:
        raise ProtocolViolation("CONNECT reserved flag is set [MQTT-3.1.2-3]")
    will, will_qos, will_retain = flags & 0x04, (flags >> 3) & 0x03, flags & 0x20
    if will_qos == 3:
        raise ProtocolViolation("CONNECT will QoS 3 [MQTT-3.1.2-14]")
    if not will and (will_qos or will_retain):
        raise ProtocolViolation("CONNECT will QoS or will retain set without the will flag "
                                "[MQTT-3.1.2-13] [MQTT-3.1.2-15]")
    if flags & 0x40 and not flags & 0x80:
        raise ProtocolViolation("CONNECT password flag without user name flag [MQTT-3.1.2-22]")
    packet.fields["keep_alive"] = body[pos + 2] << 8 | body[pos + 3]
    packet.fields["clean_session"] = bool(flags & 0x02)
    client_id, pos = _string(body, pos + 4, "CONNECT client identifier")
    packet.fields["client_id"] = client_id
    if will:
        will_topic, pos = _string(body, pos, "CONNECT will topic")
        if not will_topic or "+" in will_topic or "#" in will_topic:
            raise ProtocolViolation(f"CONNECT will topic {will_topic!r} is not a topic name [MQTT-3.1.3-10]")
        problem = _levels_problem(will_topic, max_topic_levels)
        if problem is not None:
            raise TopicTooDeep(f"the will topic of client {client_id!r} {problem}")
        start = pos
        pos = _binary(body, pos, "CONNECT will message")
        packet.fields["will"] = (will_topic, bytes(body[start + 2:pos]), will_qos, bool(will_retain))
    if flags & 0x80:
        packet.fields["username"], pos = _string(body, pos, "CONNECT user name")
    if flags & 0x40:
        start = pos
        pos = _binary(body, pos, "CONNECT password")
        packet.fields["password"] = bytes(body[start + 2:pos])
    if pos != len(body):
        raise ProtocolViolation("CONNECT payload has bytes its flags do not account for [MQTT-3.1.3]")


def check_publish(packet: Packet, max_topic_levels: int = 0) -> None:
    """§3.3.2: a topic name without wildcards (of at most ``max_topic_levels`` levels; 0: any),
    and a non-zero packet identifier at QoS 1/2."""
    topic, pos = _string(packet.body, 0, "PUBLISH topic")
    if not topic:
        raise ProtocolViolation("PUBLISH with an empty topic [MQTT-4.7.3-1]")
    if "+" in topic or "#" in topic:
        raise ProtocolViolation(f"PUBLISH topic {topic!r} contains wildcards [MQTT-3.3.2-2]")
    if max_topic_levels and topic.count("/") >= max_topic_levels:  # (inline: every PUBLISH passes here)
        raise TopicTooDeep(f"PUBLISH topic {topic_for_log(topic)} {_levels_problem(topic, max_topic_levels)}")
    packet.fields["topic"] = topic
    if packet.flags & 0x06:
        packet.fields["packet_id"] = _packet_id(packet.body, pos, "PUBLISH")
        pos += 2
    packet.fields["offset"] = pos


def _topic_filter(body: bytes, pos: int, kind: str) -> tuple[str, int]:
    """A valid topic filter at ``pos`` (§4.7.1) and the position after it."""
    topic_filter, pos = _string(body, pos, f"{kind} topic filter")
    if not valid_filter(topic_filter):
        raise ProtocolViolation(f"{kind} topic filter {topic_filter!r} is invalid [MQTT-4.7.1]")
    return topic_filter, pos


def check_subscribe(packet: Packet) -> None:
    """§3.8.3: at least one valid topic filter, each with a requested QoS of 0, 1 or 2."""
    body = packet.body
    packet.fields["packet_id"] = _packet_id(body, 0, "SUBSCRIBE")
    pos, filters = 2, []
    while pos < len(body):
        topic_filter, pos = _topic_filter(body, pos, "SUBSCRIBE")
        if pos >= len(body):
            raise ProtocolViolation("SUBSCRIBE topic filter without a requested QoS [MQTT-3.8.3]")
        if body[pos] > 2:
            raise ProtocolViolation(f"SUBSCRIBE requested QoS byte {body[pos]:#x} [MQTT-3-8.3-4]")
        filters.append((topic_filter, body[pos]))
        pos += 1
    if not filters:
        raise ProtocolViolation("SUBSCRIBE with no topic filter [MQTT-3.8.3-3]")
    packet.fields["filters"] = filters


def check_unsubscribe(packet: Packet) -> None:
    """§3.10.3: at least one valid topic filter."""
    body = packet.body
    packet.fields["packet_id"] = _packet_id(body, 0, "UNSUBSCRIBE")
    pos, filters = 2, []
    while pos < len(body):
        topic_filter, pos = _topic_filter(body, pos, "UNSUBSCRIBE")
        filters.append(topic_filter)
    if not filters:
        raise ProtocolViolation("UNSUBSCRIBE with no topic filter [MQTT-3.10.3-2]")
    packet.fields["filters"] = filters


_CHECKS = {8: check_subscribe, 10: check_unsubscribe}


def check_body(packet: Packet, max_topic_levels: int = 0) -> None:
    """Apply the rules for ``packet``'s type to its variable header and payload.

    :param max_topic_levels: the most levels of a PUBLISH or will topic (0: any).
    :raises ProtocolViolation: naming the rule broken (:class:`~gateway.mqtt.errors.TopicTooDeep`
        for a topic with too many levels).
    """
    expected = FIXED_LENGTH.get(packet.packet_type)
    if expected is not None:
        if len(packet.body) != expected:
            raise ProtocolViolation(f"packet type {packet.packet_type} with remaining length "
                                    f"{len(packet.body)}, not {expected} [MQTT-2.2.3]")
        if expected:
            packet.fields["packet_id"] = packet.body[0] << 8 | packet.body[1]
        return
    if packet.packet_type == 3:
        check_publish(packet, max_topic_levels)
    elif packet.packet_type == 1:
        check_connect(packet, max_topic_levels)
    else:
        _CHECKS[packet.packet_type](packet)
