"""Record framing: encode/decode round-trips and resynchronisation after damage."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import MAGIC, Damage, Frame, Record, encode, encode_numbered, frame_at, scan, with_seq

_text = st.text(max_size=60)
records = st.builds(
    Record,
    topic=_text,
    payload=st.binary(max_size=600),
    qos=st.integers(0, 2),
    retain=st.booleans(),
    received=st.floats(allow_nan=False, allow_infinity=False),
    headers=st.lists(st.tuples(_text, _text), max_size=4).map(tuple),
)


class RecordTests(SynchronousTestCase):
    """A frame decodes to exactly what was encoded, and damage never reads as data."""

    @settings(max_examples=300, deadline=None)
    @given(records, st.integers(0, 2**64 - 1))
    def test_round_trip(self, rec: Record, seq: int) -> None:
        """Every field, headers included, survives encode then decode."""
        frame = frame_at(encode(rec, seq), 0)
        assert frame is not None
        self.assertEqual(frame.record, Record(rec.topic, rec.payload, rec.qos, rec.retain,
                                              rec.received, rec.headers, seq))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(records, min_size=1, max_size=20))
    def test_scan_many(self, recs: list[Record]) -> None:
        """A run of frames scans back as the same records, in order, without damage."""
        data = b"".join(encode(r, i + 1) for i, r in enumerate(recs))
        items = list(scan(data))
        self.assertTrue(all(isinstance(i, Frame) for i in items))
        self.assertEqual([i.record.seq for i in items], list(range(1, len(recs) + 1)))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(records, min_size=1, max_size=20), st.integers(0, 2**63))
    def test_encode_numbered_is_encode_and_with_seq(self, recs: list[Record], seq: int) -> None:
        """A batch framed and numbered in one pass (a stream's append of many) gives each
        record the frame :func:`encode` gives it and the record :func:`with_seq` gives."""
        frames, numbered = encode_numbered(recs, seq)
        self.assertEqual(frames, [encode(r, s) for s, r in enumerate(recs, seq)])
        self.assertEqual(numbered, [with_seq(r, s) for s, r in enumerate(recs, seq)])

    def test_encode_numbered_refuses_as_encode(self) -> None:
        """A record :func:`encode` refuses fails the batch with the same error."""
        for bad in (Record("a", b"", qos=3), Record("a" * 65536, b""), Record("a", b"", headers=(("k" * 65536, "v"),))):
            with self.assertRaises(ValueError):
                encode_numbered([Record("ok", b"x"), bad], 1)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(records, min_size=3, max_size=8), st.data())
    def test_flipped_byte_never_reads_as_data(self, recs: list[Record], data: st.DataObject) -> None:
        """Flipping any byte of a frame drops that frame, and the scan resumes after it."""
        frames = [encode(r, i + 1) for i, r in enumerate(recs)]
        victim = data.draw(st.integers(0, len(frames) - 1))
        blob = bytearray(b"".join(frames))
        start = sum(map(len, frames[:victim]))
        pos = data.draw(st.integers(start, start + len(frames[victim]) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
        good = [i.record.seq for i in scan(bytes(blob)) if isinstance(i, Frame)]
        expected = [s for s in range(1, len(recs) + 1) if s != victim + 1]
        # A flip can only lose the damaged frame; any other frame is kept.
        self.assertEqual([s for s in good if s in expected], expected)
        self.assertNotIn(victim + 1, good)

    def test_zero_tail_is_damage_at_end(self) -> None:
        """Zeros after the last frame (an ext4 crash tail) are damage, not records."""
        data = encode(Record("a", b"x"), 1) + bytes(4096)
        items = list(scan(data))
        self.assertIsInstance(items[0], Frame)
        self.assertEqual(items[1], Damage(len(data) - 4096, len(data), True))

    def test_magic_inside_payload(self) -> None:
        """A payload holding the magic and even a whole frame does not fool the scan."""
        inner = encode(Record("inner", b"y"), 99)
        data = encode(Record("a", MAGIC + inner), 1) + encode(Record("b", b"z"), 2)
        self.assertEqual([i.record.seq for i in scan(data) if isinstance(i, Frame)], [1, 2])

    def test_bad_fields_refused(self) -> None:
        """QoS outside 0..2 and over-long topics are refused at encode time."""
        self.assertRaises(ValueError, encode, Record("a", b"", qos=3), 1)
        self.assertRaises(ValueError, encode, Record("a" * 70000, b""), 1)
        # (lengths are u16: 65535 bytes is the most; journal.md says so)
        encode(Record("a" * 65535, b"", headers=(("k" * 65535, "v"),)), 1)
        self.assertRaises(ValueError, encode, Record("a" * 65536, b""), 1)
        self.assertRaises(ValueError, encode, Record("a", b"", headers=(("k" * 65536, "v"),)), 1)

    def test_a_frame_whose_qos_no_encode_writes_is_damage(self) -> None:
        """A frame passing its CRC whose QoS byte is outside 0..2 (encode never writes one) is
        not read back as a record: the links would send it as a PUBLISH that cannot be encoded."""
        good = encode(Record("a", b"x", qos=1), 1)
        body = bytearray(good[10:])
        body[16] = 7  # the QoS byte, after seq (8) and received (8)
        bad = MAGIC + struct.pack("<II", len(body), zlib.crc32(body, len(body))) + body
        self.assertIsNone(frame_at(bad, 0))
        self.assertEqual(list(scan(bad)), [Damage(0, len(bad), True)])
