"""Journal records and their on-disk framing: length-prefixed, CRC-checked frames.

A frame is ``MAGIC (2) | body length (4) | CRC32 (4) | body``; the CRC covers the
body and is seeded with the length, so a damaged length fails the check too. The
body is ``seq (8) | received (8, float) | qos (1) | flags (1) | topic length (2) |
header count (2) | payload length (4) | topic | headers | payload``, each header
``key length (2) | value length (4) | key | value``, all little-endian.

The magic lets a reader find the next good frame after a damaged one (bit rot in
the middle of a segment) and makes an all-zero tail (what ext4 can leave after a
crash) read as "no frame here".
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import NamedTuple

MAGIC = b"\xa5\x4a"
_FRAME = struct.Struct("<2sII")
_BODY = struct.Struct("<QdBBHHI")
_HEADER = struct.Struct("<HI")
FRAME_OVERHEAD = _FRAME.size
_BODY_SIZE = _BODY.size
_pack_body = _BODY.pack
_pack_frame = _FRAME.pack
_crc32 = zlib.crc32
#: Largest body a frame may claim; anything bigger is treated as damage.
MAX_BODY = 64 * 2**20
#: The largest message (an MQTT packet, an HTTP write's body) the gateway takes in when it
#: may go to the journal: it must fit one record, where a routing template may lengthen its
#: topic and the broker's state log adds headers with the client id (each at most 64 KiB).
MAX_MESSAGE = MAX_BODY - 2 * 65536
_RETAIN = 0x01
#: The largest seq a record holds (its body's 8-byte unsigned field).
MAX_SEQ = 2**64 - 1


class Record(NamedTuple):
    """One message as the journal stores it.

    :param topic: the MQTT topic it was published on.
    :param payload: the message bytes.
    :param qos: MQTT QoS level (0, 1 or 2).
    :param retain: the MQTT retain flag.
    :param received: when the gateway received it (seconds since the epoch).
    :param headers: extra key/value pairs (MQTT 5 user properties, routing hints).
    :param seq: the stream sequence number; assigned by the journal on append,
        ignored in what producers hand in.

    A named tuple rather than a dataclass: replay builds hundreds of thousands a
    second, and a tuple is the cheapest immutable object to build.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    received: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    seq: int = 0


def with_seq(record: Record, seq: int) -> Record:
    """``record`` carrying ``seq`` (cheaper than ``_replace``, which goes through ``_make``;
    an unpack, cheaper than a slice)."""
    topic, payload, qos, retain, received, headers, _ = record
    return _new_record(Record, (topic, payload, qos, retain, received, headers, seq))


def encode(record: Record, seq: int) -> bytes:
    """Frame ``record`` with sequence number ``seq``.

    :raises ValueError: a field does not fit the format (topic over 64 KiB, QoS
        outside 0..2, body over :data:`MAX_BODY`).
    """
    text, payload, qos, retain, received, headers, _ = record  # one unpack, not seven lookups
    topic = text.encode("utf-8")
    topic_len = len(topic)
    if topic_len > 0xFFFF:
        raise ValueError("topic longer than 65535 bytes")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
    if not headers:  # the common case
        size = _BODY_SIZE + topic_len + len(payload)
        if size > MAX_BODY:
            raise ValueError(f"record body of {size} bytes exceeds {MAX_BODY}")
        body = _pack_body(seq, received, qos, _RETAIN if retain else 0, topic_len, 0, len(payload)) + topic + payload
        return _pack_frame(MAGIC, size, _crc32(body, size)) + body
    parts = [b"", topic]
    for key, value in headers:
        k = key.encode("utf-8")
        v = value.encode("utf-8")
        if len(k) > 0xFFFF:
            raise ValueError("header key longer than 65535 bytes")
        parts.append(_HEADER.pack(len(k), len(v)))
        parts.append(k)
        parts.append(v)
    parts.append(payload)
    parts[0] = _pack_body(seq, received, qos, _RETAIN if retain else 0, topic_len, len(headers), len(payload))
    body = b"".join(parts)
    if len(body) > MAX_BODY:
        raise ValueError(f"record body of {len(body)} bytes exceeds {MAX_BODY}")
    return _pack_frame(MAGIC, len(body), _crc32(body, len(body))) + body


def encode_numbered(records: Iterable[Record], seq: int) -> tuple[list[bytes], list[Record]]:
    """Frame ``records`` with the seqs from ``seq`` on, and give them those seqs: a batch's
    frames and the records as the journal holds them (:func:`encode` and :func:`with_seq`
    each, in one pass: the record is unpacked once).

    :raises ValueError: as :func:`encode`.
    """
    frames: list[bytes] = []
    numbered: list[Record] = []
    add_frame, add_record = frames.append, numbered.append
    for text, payload, qos, retain, received, headers, _ in records:
        record = _new_record(Record, (text, payload, qos, retain, received, headers, seq))
        topic = text.encode("utf-8")
        size = _BODY_SIZE + len(topic) + len(payload)
        if headers or len(topic) > 0xFFFF or qos not in (0, 1, 2) or size > MAX_BODY:
            add_frame(encode(record, seq))  # (the uncommon cases, and their errors, as one by one)
        else:
            body = _pack_body(seq, received, qos, _RETAIN if retain else 0, len(topic), 0, len(payload)) + topic + payload
            add_frame(_pack_frame(MAGIC, size, _crc32(body, size)) + body)
        add_record(record)
        seq += 1
    return frames, numbered


_new_record = tuple.__new__
_unpack_body = _BODY.unpack_from


def _decode_body(body: memoryview) -> Record:
    """Turn a CRC-checked body into a :class:`Record` (ValueError if malformed)."""
    seq, received, qos, flags, topic_len, n_headers, payload_len = _unpack_body(body)
    if qos > 2:
        raise ValueError(f"qos {qos}")
    pos = _BODY_SIZE + topic_len
    topic = str(body[_BODY_SIZE:pos], "utf-8")
    headers: tuple[tuple[str, str], ...] = ()
    if n_headers:
        pairs = []
        for _ in range(n_headers):
            klen, vlen = _HEADER.unpack_from(body, pos)
            pos += _HEADER.size
            key = str(body[pos : pos + klen], "utf-8")
            pos += klen
            pairs.append((key, str(body[pos : pos + vlen], "utf-8")))
            pos += vlen
        headers = tuple(pairs)
    if pos + payload_len != len(body):
        raise ValueError("payload length does not match the body")
    # tuple.__new__ skips the NamedTuple's Python-level __new__: replay builds many.
    return _new_record(Record, (topic, body[pos:].tobytes(), qos, bool(flags & _RETAIN), received, headers, seq))


class Damage(NamedTuple):
    """A stretch of bytes that held no valid frame.

    :param start: offset of the first damaged byte.
    :param end: offset of the next good frame (or of the end of the data scanned).
    :param at_end: no good frame follows: the damage runs to the end of the data.
    """

    start: int
    end: int
    at_end: bool


class Frame(NamedTuple):
    """A valid frame found by :func:`scan`: its offset, length and record."""

    offset: int
    size: int
    record: Record


def frame_at(data: bytes | memoryview, pos: int) -> Frame | None:
    """The valid frame starting exactly at ``pos`` in ``data``, or None."""
    return _frame_at(data, memoryview(data), pos, len(data))


def _frame_at(data: bytes | memoryview, view: memoryview, pos: int, end: int) -> Frame | None:
    if pos + FRAME_OVERHEAD > end:
        return None
    magic, length, crc = _unpack_frame(data, pos)
    start = pos + FRAME_OVERHEAD
    if magic != MAGIC or length < _BODY_SIZE or length > MAX_BODY or start + length > end:
        return None
    body = view[start : start + length]
    if _crc32(body, length) != crc:
        return None
    try:
        record = _decode_body(body)
    except (ValueError, UnicodeDecodeError, struct.error):
        return None
    return _new_record(Frame, (pos, FRAME_OVERHEAD + length, record))


_unpack_frame = _FRAME.unpack_from


def scan(data: bytes | memoryview, start: int = 0) -> Iterator[Frame | Damage]:
    """Yield every valid frame in ``data`` from ``start`` and every damaged stretch.

    After a damaged spot the scan resynchronises on the next magic that starts a
    frame passing its CRC. A frame cut off by the end of ``data`` is reported as
    :class:`Damage` with ``at_end`` set (the caller decides whether that is a torn
    tail or a short read).
    """
    pos = start
    end = len(data)
    view = memoryview(data)
    find = data.find if isinstance(data, bytes) else bytes(data).find
    while pos < end:
        frame = _frame_at(data, view, pos, end)
        if frame is not None:
            yield frame
            pos += frame.size
            continue
        nxt = find(MAGIC, pos + 1)
        while nxt != -1 and _frame_at(data, view, nxt, end) is None:
            nxt = find(MAGIC, nxt + 1)
        if nxt == -1:
            yield Damage(pos, end, True)
            return
        yield Damage(pos, nxt, False)
        pos = nxt
