"""What a link's cloud takes in one PUBLISH: a payload size, a packet size, AWS IoT Core's topic rules.

A cloud that refuses a message closes the connection (AWS IoT Core for a payload over
128 KiB, a topic over 256 bytes or with more than 7 slashes; mosquitto for a packet over its
``max_packet_size``); sent as it is, such a message would be sent again after every
reconnect, for ever, and hold up everything behind it. The forwarder checks each record
against its link's :class:`CloudLimits` before it sends it, and skips what the cloud would
refuse.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.mqtt.packets import encode_length

#: AWS IoT Core's largest PUBLISH payload: 128 KB, a quota AWS does not raise.
AWS_MAX_PAYLOAD = 128 * 1024
#: AWS IoT Core's longest topic, in bytes of UTF-8 (not counting a Basic Ingest prefix).
AWS_MAX_TOPIC_BYTES = 256
#: AWS IoT Core's most slashes in a topic (not counting a Basic Ingest prefix's).
AWS_MAX_TOPIC_SLASHES = 7
#: Basic Ingest topics, ``$aws/rules/<rule name>/<topic>``: AWS does not count this prefix.
_BASIC_INGEST = "$aws/rules/"
#: MQTT's largest payload (the most a remaining length can say) and largest whole packet.
MQTT_MAX_PAYLOAD = 268435455
MQTT_MAX_PACKET = MQTT_MAX_PAYLOAD + 5
#: The smallest PUBLISH: one byte of topic, no payload, QoS 0.
MIN_PUBLISH = 5


def publish_size(topic_bytes: int, payload_bytes: int, qos: int) -> int:
    """Bytes of a whole PUBLISH packet (fixed header included, as MQTT 5's maximum packet
    size counts them) with a topic of ``topic_bytes`` bytes of UTF-8 and that payload."""
    remaining = 2 + topic_bytes + (2 if qos else 0) + payload_bytes
    return 1 + len(encode_length(remaining)) + remaining


def aws_topic_problem(topic: str) -> str | None:
    """Why AWS IoT Core would refuse a PUBLISH on ``topic`` (and close the connection), or
    ``None``: more than 7 slashes, or more than 256 bytes of UTF-8, both without the Basic
    Ingest prefix ``$aws/rules/<rule name>/`` (AWS's own rule: its quotas page, and the
    AWS IoT device SDKs' checks). Other ``$aws/...`` topics count whole: the shadow topics,
    ``$aws/things/<thing>/shadow/name/<shadow>/update``, have 6 slashes and, with AWS's
    longest thing (128) and shadow (64) names, 224 bytes."""
    counted = topic
    if topic[:len(_BASIC_INGEST)].lower() == _BASIC_INGEST:  # (AWS's SDKs match it in any case)
        rule, slash, rest = topic[len(_BASIC_INGEST):].partition("/")
        if rule and slash:
            counted = rest
    slashes = counted.count("/")
    if slashes > AWS_MAX_TOPIC_SLASHES:
        return f"its topic has {slashes} slashes, AWS IoT Core takes {AWS_MAX_TOPIC_SLASHES} at most"
    size = len(counted.encode("utf-8", "surrogatepass"))
    if size > AWS_MAX_TOPIC_BYTES:
        return f"its topic is {size} bytes long, AWS IoT Core takes {AWS_MAX_TOPIC_BYTES} at most"
    return None


@dataclass(frozen=True)
class CloudLimits:
    """The largest message a link's cloud takes (see :meth:`LinkSettings.cloud_limits
    <gateway.links.settings.LinkSettings.cloud_limits>`).

    :param max_payload: bytes of payload, at most (0: no limit).
    :param max_packet: bytes of the whole PUBLISH packet, at most (0: no limit).
    :param aws_topics: AWS IoT Core's topic rules apply (:func:`aws_topic_problem`).
    """

    max_payload: int = 0
    max_packet: int = 0
    aws_topics: bool = False

    @property
    def checks_topic(self) -> bool:
        """Whether a message's topic matters (AWS's rules, or the packet size): else its
        payload's size is all there is to compare."""
        return self.aws_topics or self.max_packet > 0

    def topic_bytes(self, topic: str) -> int:
        """``topic``'s length in bytes of UTF-8, or -1 when the cloud takes no message on it."""
        if self.aws_topics and aws_topic_problem(topic) is not None:
            return -1
        return len(topic.encode("utf-8", "surrogatepass"))

    def problem(self, topic: str, payload_bytes: int, qos: int) -> str | None:
        """Which limit a message on ``topic`` with that payload breaks, in words for a log
        line, or ``None`` when the cloud takes it."""
        if self.max_payload and payload_bytes > self.max_payload:
            return f"its payload is {payload_bytes} bytes, the cloud takes {self.max_payload} (max_message_bytes)"
        if self.aws_topics:
            problem = aws_topic_problem(topic)
            if problem is not None:
                return problem
        if self.max_packet:
            size = publish_size(len(topic.encode("utf-8", "surrogatepass")), payload_bytes, qos)
            if size > self.max_packet:
                return f"its PUBLISH is {size} bytes, the cloud takes {self.max_packet} (max_publish_bytes)"
        return None

    def payload_room(self, topic: str, qos: int) -> int | None:
        """The most payload bytes a message on ``topic`` may carry (``None``: no limit; -1:
        the cloud takes no message on that topic)."""
        topic_bytes = self.topic_bytes(topic)
        if topic_bytes < 0:
            return -1
        room = self.max_payload or None
        if self.max_packet:
            # (the remaining length's field is counted at its longest, 4 bytes: a few bytes short at worst)
            packet_room = self.max_packet - 5 - 2 - topic_bytes - (2 if qos else 0)
            room = packet_room if room is None else min(room, packet_room)
        return None if room is None else max(room, -1)
