"""Builders for raw MQTT 3.1.1 packets, so tests can send exactly the bytes a rule is about."""

from __future__ import annotations

import struct

from gateway.mqtt.packets import encode_length


def string(text: str | bytes) -> bytes:
    """A length-prefixed string (raw bytes pass through unchecked)."""
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("!H", len(raw)) + raw


def packet(first: int, body: bytes) -> bytes:
    """A packet from its first byte and body."""
    return bytes([first]) + encode_length(len(body)) + body


def connect(client_id: str | bytes = "c1", *, name: str | bytes = "MQTT", level: int = 4, flags: int = 0x02,
            keep_alive: int = 60, will: tuple[str | bytes, bytes] | None = None,
            username: str | None = None, password: bytes | None = None, first: int = 0x10) -> bytes:
    """A CONNECT; ``flags`` is taken as given (will/user/password bits are not added for you)."""
    payload = string(client_id)
    if will is not None:
        payload += string(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    if username is not None:
        payload += string(username)
    if password is not None:
        payload += struct.pack("!H", len(password)) + password
    return packet(first, string(name) + bytes([level, flags]) + struct.pack("!H", keep_alive) + payload)


def publish(topic: str | bytes, payload: bytes = b"", qos: int = 0, packet_id: int = 1, retain: bool = False,
            dup: bool = False) -> bytes:
    """A PUBLISH."""
    body = string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(0x30 | dup << 3 | qos << 1 | retain, body)


def subscribe(*filters: tuple[str | bytes, int], packet_id: int = 1, first: int = 0x82) -> bytes:
    """A SUBSCRIBE with ``(filter, qos)`` pairs."""
    return packet(first, struct.pack("!H", packet_id) + b"".join(string(f) + bytes([q]) for f, q in filters))


def unsubscribe(*filters: str | bytes, packet_id: int = 1) -> bytes:
    """An UNSUBSCRIBE."""
    return packet(0xA2, struct.pack("!H", packet_id) + b"".join(string(f) for f in filters))


def ack(packet_type: int, packet_id: int) -> bytes:
    """PUBACK (4), PUBREC (5), PUBREL (6) or PUBCOMP (7)."""
    return packet(packet_type << 4 | (2 if packet_type == 6 else 0), struct.pack("!H", packet_id))


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
#: A CONNECT that every test broker accepts (anonymous, clean session).
CONNECT_OK = connect("raw-client")


def split(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split server bytes into ``(first byte, body)`` packets; return them and the incomplete rest."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        length, shift, i = 0, 0, pos + 1
        while i < len(data):
            length |= (data[i] & 0x7F) << shift
            i += 1
            if not data[i - 1] & 0x80:
                break
            shift += 7
        else:
            break
        if i + length > len(data):
            break
        out.append((data[pos], data[i:i + length]))
        pos = i + length
    return out, data[pos:]


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, int | None, bool, bool]:
    """``(topic, payload, qos, packet_id, retain, dup)`` of a PUBLISH from the server."""
    qos = (first >> 1) & 3
    length = struct.unpack("!H", body[:2])[0]
    topic, pos = body[2:2 + length].decode(), 2 + length
    packet_id = None
    if qos:
        packet_id, pos = struct.unpack("!H", body[pos:pos + 2])[0], pos + 2
    return topic, body[pos:], qos, packet_id, bool(first & 1), bool(first & 8)
