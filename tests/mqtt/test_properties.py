"""Properties of the one codec, checked on generated input (hypothesis, derandomized): every
packet type survives encode then decode, and whatever bytes arrive, however they are cut,
both framers give packets or their own protocol error, never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt import packets as codec
from gateway.mqtt.framing import REQUIRED_FLAGS, PacketFramer, PacketReader
from gateway.mqtt.errors import MalformedPacket, ProtocolViolation
from gateway.mqtt.packets import Packet, decode_publish, encode_length
from tests.broker import packets as raw

#: Few examples each, always the same ones: the module runs in a few seconds, the same way each time.
FEW = settings(max_examples=120, deadline=None, derandomize=True, database=None)

CONNECT = codec.connect("c1", 60, True)
#: Text MQTT allows in a string (§1.5.3): no surrogates (they cannot be UTF-8), no U+0000.
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
texts = st.text(_chars, max_size=20)
levels = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0+#/"), max_size=8)
topics = st.lists(levels, min_size=1, max_size=5).map("/".join).filter(bool)
filters = st.builds(
    lambda head, tail: "/".join(head + tail) or "#",
    st.lists(st.one_of(levels, st.just("+")), max_size=4),
    st.sampled_from([[], ["#"]]))
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.integers(0, 2)


def server_side(data: bytes, max_packet_size: int = 1 << 20) -> list[Packet | int]:
    """What the broker's framer makes of ``data`` sent after an accepted CONNECT."""
    framer = PacketFramer(max_packet_size)
    framer.feed(CONNECT)
    return framer.feed(data)


def fed(feeder: Any, data: bytes, cuts: list[int]) -> tuple[list[Any], type[Exception] | None]:
    """The packets ``feeder`` gives for ``data`` cut at ``cuts``, and the error it raised (if any)."""
    got: list[Any] = []
    bounds = [0, *sorted(set(cuts)), len(data)]
    for start, end in zip(bounds, bounds[1:]):
        try:
            got += feeder.feed(data[start:end])
        except (ProtocolViolation, MalformedPacket) as exc:
            return got + list(feeder.before_violation), type(exc)
    return got, None


def shape(items: list[Any]) -> list[Any]:
    """Packets as comparable values (a PUBACK from the broker's framer is already an int)."""
    return [item if isinstance(item, int) else (item.packet_type, item.flags, item.body) for item in items]


class RoundTripTests(SynchronousTestCase):
    """What the encoders write, the framers read back with every field."""

    @FEW
    @given(texts, st.integers(0, 0xFFFF), st.booleans(), st.none() | texts, st.none() | texts,
           st.none() | st.tuples(topics, st.binary(max_size=40), qos_levels, st.booleans()))
    def test_connect(self, client_id: str, keepalive: int, clean: bool, username: str | None,
                     password: str | None, will: tuple[str, bytes, int, bool] | None) -> None:
        """CONNECT (§3.1): client id, keep-alive, CleanSession, will, user name and password
        (the encoder sends a password only with a user name, [MQTT-3.1.2-22])."""
        (packet,) = PacketFramer(1 << 20).feed(codec.connect(client_id, keepalive, clean, username, password, will))
        assert isinstance(packet, Packet)
        fields = packet.fields
        self.assertEqual((fields["client_id"], fields["keep_alive"], fields["clean_session"]),
                         (client_id, keepalive, clean))
        self.assertEqual(fields.get("will"), will)
        self.assertEqual(fields.get("username"), username)
        self.assertEqual(fields.get("password"), None if username is None or password is None else password.encode())

    @FEW
    @given(topics, st.binary(max_size=300), qos_levels, st.booleans(), packet_ids, st.booleans())
    def test_publish_both_ways(self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int,
                               dup: bool) -> None:
        """PUBLISH (§3.3) read by the broker (a client's) and by a link (a server's)."""
        dup = dup and qos > 0  # [MQTT-3.3.1-2]
        data = codec.publish(topic, payload, qos, retain, packet_id if qos else 0, dup)
        (packet,) = server_side(data)
        assert isinstance(packet, Packet)
        self.assertEqual((packet.fields["topic"], packet.fields.get("packet_id"), packet.body[packet.fields["offset"]:]),
                         (topic, packet_id if qos else None, payload))
        self.assertEqual((packet.flags >> 1 & 3, bool(packet.flags & 1), bool(packet.flags & 8)), (qos, retain, dup))
        (packet,) = PacketReader().feed(data)
        self.assertEqual(decode_publish(packet),
                         codec.Publish(topic, payload, qos, retain, dup, packet_id if qos else 0))
        self.assertEqual(codec.PublishTemplate(topic, payload).packet(qos, retain, packet_id if qos else 0),
                         codec.publish(topic, payload, qos, retain, packet_id if qos else 0))

    @FEW
    @given(st.sampled_from([codec.PUBACK, codec.PUBREC, codec.PUBREL, codec.PUBCOMP]), packet_ids)
    def test_acknowledgements_both_ways(self, kind: int, packet_id: int) -> None:
        """PUBACK, PUBREC, PUBREL, PUBCOMP (§3.4-§3.7): the packet id, whoever reads it."""
        data = codec.ack(kind, packet_id)
        (packet,) = server_side(data)
        self.assertEqual(packet if kind == codec.PUBACK else packet.fields["packet_id"], packet_id)  # type: ignore
        (packet,) = PacketReader().feed(data)
        self.assertEqual((packet.packet_type, codec.packet_id(packet)), (kind, packet_id))

    @FEW
    @given(packet_ids, st.lists(st.tuples(filters, qos_levels), min_size=1, max_size=8))
    def test_subscribe_and_unsubscribe(self, packet_id: int, pairs: list[tuple[str, int]]) -> None:
        """SUBSCRIBE (§3.8) and UNSUBSCRIBE (§3.10): the packet id and every filter, in order."""
        (subscribe, unsubscribe) = server_side(codec.subscribe(packet_id, pairs)
                                               + raw.unsubscribe(*[f for f, _ in pairs], packet_id=packet_id))
        assert isinstance(subscribe, Packet) and isinstance(unsubscribe, Packet)
        self.assertEqual((subscribe.fields["packet_id"], subscribe.fields["filters"]), (packet_id, pairs))
        self.assertEqual((unsubscribe.fields["packet_id"], unsubscribe.fields["filters"]),
                         (packet_id, [f for f, _ in pairs]))

    @FEW
    @given(st.booleans(), st.integers(0, 5), packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1))
    def test_server_packets(self, present: bool, code: int, packet_id: int, codes: list[int]) -> None:
        """CONNACK, SUBACK, UNSUBACK, PINGRESP (§3.2, §3.9, §3.11, §3.13) as a link reads them."""
        connack, suback, unsuback, pingresp = PacketReader().feed(
            codec.connack(present, code) + codec.suback(packet_id, codes) + codec.unsuback(packet_id)
            + codec.PINGRESP_PACKET)
        self.assertEqual(connack.body, bytes((1 if present and not code else 0, code)))
        self.assertEqual((codec.packet_id(suback), list(suback.body[2:])), (packet_id, codes))
        self.assertEqual(codec.packet_id(unsuback), packet_id)
        self.assertEqual((pingresp.packet_type, pingresp.body), (codec.PINGRESP, b""))

    def test_pingreq_and_disconnect(self) -> None:
        """PINGREQ and DISCONNECT (§3.12, §3.14): a fixed header and nothing else."""
        self.assertEqual(shape(server_side(codec.PINGREQ_PACKET + codec.DISCONNECT_PACKET)),
                         [(codec.PINGREQ, 0, b""), (codec.DISCONNECT, 0, b"")])


class AnyBytesTests(SynchronousTestCase):
    """Whatever arrives, however it is cut: packets, or the framer's own protocol error."""

    @settings(FEW, max_examples=400)
    @given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=6))
    def test_broker_framer(self, data: bytes, cuts: list[int]) -> None:
        """After CONNECT, and as the first bytes: the same packets and the same verdict, fed
        whole, cut anywhere, or a byte at a time."""
        for first in (b"", CONNECT):
            def framer() -> PacketFramer:
                framer = PacketFramer(100)
                framer.feed(first)
                return framer
            whole = fed(framer(), data, [])
            self.assertEqual(shape(fed(framer(), data, cuts)[0]), shape(whole[0]))
            self.assertEqual(fed(framer(), data, cuts)[1], whole[1])
            self.assertEqual(fed(framer(), data, list(range(len(data))))[1], whole[1])

    @settings(FEW, max_examples=400)
    @given(st.binary(max_size=64), st.lists(st.integers(0, 64), max_size=6))
    def test_link_reader(self, data: bytes, cuts: list[int]) -> None:
        """A link's reader: the same packets and verdict however the bytes are cut, and each
        PUBLISH decodes or is refused as malformed."""
        whole = fed(PacketReader(100), data, [])
        for got, error in (fed(PacketReader(100), data, cuts), fed(PacketReader(100), data, list(range(len(data))))):
            self.assertEqual((shape(got), error), (shape(whole[0]), whole[1]))
        for packet in whole[0]:
            if packet.packet_type == codec.PUBLISH:
                try:
                    decode_publish(packet)
                except MalformedPacket:
                    pass

    @settings(FEW, max_examples=200)
    @given(st.tuples(texts, st.none() | st.tuples(topics, st.binary(max_size=8), qos_levels, st.booleans()),
                     st.none() | texts, st.none() | texts),
           st.lists(st.tuples(filters, qos_levels), min_size=1, max_size=3), topics, st.data())
    def test_a_damaged_valid_stream(self, connect: tuple[Any, ...], pairs: list[tuple[str, int]], topic: str,
                                    data: st.DataObject) -> None:
        """A CONNECT, SUBSCRIBE, PUBLISH and UNSUBSCRIBE with one byte changed, fed whole and a
        byte at a time: the same packets and the same verdict (the rules deep in each body)."""
        client_id, will, username, password = connect
        stream = bytearray(codec.connect(client_id, 30, True, username, password, will) + codec.subscribe(5, pairs)
                           + codec.publish(topic, b"payload", 1, packet_id=6) + raw.unsubscribe(topic, packet_id=7))
        stream[data.draw(st.integers(0, len(stream) - 1))] = data.draw(st.integers(0, 255))
        whole = fed(PacketFramer(1 << 10), bytes(stream), [])
        one_by_one = fed(PacketFramer(1 << 10), bytes(stream), list(range(len(stream))))
        self.assertEqual((shape(one_by_one[0]), one_by_one[1]), (shape(whole[0]), whole[1]))

    @FEW
    @given(st.lists(st.one_of(
        st.builds(lambda t, p, q, i: codec.publish(t, p, q, packet_id=i if q else 0), topics, st.binary(max_size=200),
                  qos_levels, packet_ids),
        st.builds(codec.ack, st.sampled_from([codec.PUBACK, codec.PUBREC, codec.PUBREL, codec.PUBCOMP]), packet_ids),
        st.builds(lambda i, f: codec.subscribe(i, f), packet_ids, st.lists(st.tuples(filters, qos_levels), min_size=1,
                                                                             max_size=3)),
        st.just(codec.PINGREQ_PACKET)), min_size=1, max_size=8))
    def test_valid_stream_a_byte_at_a_time(self, stream: list[bytes]) -> None:
        """A stream of valid packets fed a byte at a time gives each packet once, in order."""
        data = b"".join(stream)
        framer = PacketFramer(1 << 20)
        framer.feed(CONNECT)
        got: list[Any] = []
        for i in range(len(data)):
            got += framer.feed(data[i:i + 1])
        self.assertEqual(shape(got), shape(server_side(data)))
        self.assertEqual(len(got), len(stream))


class RuleTests(SynchronousTestCase):
    """The edges §1.5.3, §2.2 and §3 draw, for the broker's framer and a link's reader."""

    def test_remaining_length_edges(self) -> None:
        """§2.2.3: lengths at each edge of the 1- to 4-byte encodings (and 0) are read back exactly,
        taken at the maximum, refused one byte over it before the body arrives."""
        for length in (16, 127, 128, 16383, 16384, 2097151, 2097152):  # (the CONNECT before them: 14)
            data = codec.publish("t", b"x" * (length - 3), 0)
            self.assertEqual(data[1:1 + len(encode_length(length))], encode_length(length))
            (packet,) = server_side(data, length)
            assert isinstance(packet, Packet)
            self.assertEqual(packet.length, length)
            (packet,) = PacketReader(length).feed(data)
            self.assertEqual(packet.length, length)
            header = data[:1 + len(encode_length(length))]
            self.assertRaises(ProtocolViolation, server_side, header, length - 1)
            self.assertRaises(MalformedPacket, PacketReader(length - 1).feed, header)
        self.assertEqual(shape(server_side(codec.PINGREQ_PACKET, 16)), [(codec.PINGREQ, 0, b"")])
        # a length written in more bytes than it needs (§2.2.3 does not forbid it): 0 in two
        self.assertEqual(shape(server_side(b"\xc0\x80\x00")), [(codec.PINGREQ, 0, b"")])
        self.assertEqual(shape(PacketReader().feed(b"\xd0\x80\x00")), [(codec.PINGRESP, 0, b"")])

    def test_remaining_length_of_five_bytes(self) -> None:
        """§2.2.3: a fifth length byte is refused, whatever the maximum."""
        self.assertRaises(ProtocolViolation, server_side, b"\x30\x80\x80\x80\x80\x01", 1 << 30)
        self.assertRaises(MalformedPacket, PacketReader(1 << 30).feed, b"\x30\x80\x80\x80\x80\x01")

    def test_every_first_byte(self) -> None:
        """[MQTT-2.2.2-2] every packet type with every flag value: the broker takes a client's
        packet only with the flags Table 2.2 fixes (PUBLISH: any but QoS 3, and DUP only
        above QoS 0), a server's packet types never, reserved types never."""
        bodies = {1: CONNECT[2:], 3: raw.string("t") + b"\x00\x01", 4: b"\x00\x01", 5: b"\x00\x01",
                  6: b"\x00\x01", 7: b"\x00\x01", 8: b"\x00\x01" + raw.string("t") + b"\x00",
                  10: b"\x00\x01" + raw.string("t"), 12: b"", 14: b""}
        for first in range(256):
            kind, flags = first >> 4, first & 0x0F
            body = bodies.get(kind, b"\x00\x00")
            if kind == 3:
                body = body if flags & 0x06 else body[:3]
                ok = flags & 0x06 != 0x06 and not (flags & 0x08 and not flags & 0x06)
            else:
                ok = kind in REQUIRED_FLAGS and flags == REQUIRED_FLAGS[kind] and kind != 1
            data = raw.packet(first, body)
            if ok:
                self.assertEqual(len(server_side(data)), 1, hex(first))
            else:
                self.assertRaises(ProtocolViolation, server_side, data)

    @FEW
    @given(st.binary(min_size=1, max_size=12), qos_levels)
    def test_publish_topic_bytes(self, name: bytes, qos: int) -> None:
        """[MQTT-1.5.3-1] [MQTT-1.5.3-2] [MQTT-3.3.2-2]: a PUBLISH topic is taken exactly when
        it is well-formed UTF-8 without U+0000 or wildcards; both sides agree."""
        try:
            topic = name.decode("utf-8")
        except UnicodeDecodeError:
            topic = None
        valid = topic is not None and not set(topic) & {"\0", "+", "#"}
        data = raw.publish(name, b"p", qos, packet_id=1)
        if valid:
            (packet,) = server_side(data)
            self.assertEqual(packet.fields["topic"], topic)  # type: ignore[union-attr]
            self.assertEqual(decode_publish(PacketReader().feed(data)[0]).topic, topic)
        else:
            self.assertRaises(ProtocolViolation, server_side, data)
            self.assertRaises(MalformedPacket, decode_publish, PacketReader().feed(data)[0])

    def test_qos_3_and_packet_id_0(self) -> None:
        """[MQTT-3.3.1-4] QoS 3 and [MQTT-2.3.1-1] packet id 0 are refused on both sides."""
        for data in (raw.packet(0x36, raw.string("t") + b"\x00\x01"), raw.publish("t", qos=1, packet_id=0),
                     raw.publish("t", qos=2, packet_id=0)):
            self.assertRaises(ProtocolViolation, server_side, data)
            try:
                decode_publish(PacketReader().feed(data)[0])
            except MalformedPacket:
                continue
            self.fail(f"a link took {data!r}")
        for data in (raw.subscribe(("t", 0), packet_id=0), raw.unsubscribe("t", packet_id=0)):
            self.assertRaises(ProtocolViolation, server_side, data)

    def test_subscribe_without_filters(self) -> None:
        """[MQTT-3.8.3-3] [MQTT-3.10.3-2] a SUBSCRIBE or UNSUBSCRIBE needs a filter; a link
        refuses a SUBACK without a return code."""
        self.assertRaises(ProtocolViolation, server_side, raw.subscribe())
        self.assertRaises(ProtocolViolation, server_side, raw.unsubscribe())
        self.assertRaises(MalformedPacket, PacketReader().feed, raw.packet(0x90, b"\x00\x01"))
