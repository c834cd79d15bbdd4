"""The framing layer splits packets and refuses, rule by rule, what MQTT 3.1.1 forbids."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt.errors import TopicTooDeep
from gateway.mqtt.framing import PacketFramer, ProtocolViolation
from gateway.mqtt.packets import encode_length, encode_packet
from tests.broker.packets import (DISCONNECT, PINGREQ, ack, connect, packet, publish, string, subscribe,
                                  unsubscribe)

CONNECT = connect()


class PacketFramerTests(SynchronousTestCase):
    """Packet boundaries and the fixed header (§2.2)."""

    def test_packets_split_across_chunks(self) -> None:
        """Packets come out whole, in order, however the stream is cut."""
        stream = CONNECT + PINGREQ + publish("a", b"abc") + ack(4, 0x1234) + PINGREQ
        for cut in range(1, len(stream)):
            framer = PacketFramer(1024)
            packets = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
            self.assertEqual([p if isinstance(p, int) else p.packet_type for p in packets], [1, 12, 3, 0x1234, 12])
            self.assertEqual(framer.packets_complete, 5)
        packets = PacketFramer(1024).feed(stream)
        self.assertEqual((packets[2].fields["topic"], packets[2].length), ("a", 6))
        self.assertEqual(encode_packet(packets[0]), CONNECT)

    def test_puback_is_its_packet_id(self) -> None:
        """A PUBACK comes out as its packet id, in its place among the other packets."""
        framer = PacketFramer(1024)
        got = framer.feed(CONNECT + ack(4, 1) + ack(4, 65535) + PINGREQ + ack(4, 2))
        self.assertEqual(got[1:3], [1, 65535])
        self.assertEqual(got[4], 2)

    def test_puback_with_a_longer_length_field_is_its_packet_id(self) -> None:
        """A PUBACK whose remaining length takes more bytes than it needs (§2.2.3 does not
        forbid it) comes out as its packet id too: the broker handles PUBACKs only so."""
        framer = PacketFramer(1024)
        self.assertEqual(framer.feed(CONNECT + b"\x40\x82\x00\x00\x05" + ack(4, 6))[1:], [5, 6])

    def test_3_1_0_1_first_packet_must_be_connect(self) -> None:
        """[MQTT-3.1.0-1] anything but CONNECT first is a violation, refused at its first byte."""
        self.assertRaises(ProtocolViolation, PacketFramer(1024).feed, ack(4, 1))
        self.assertRaises(ProtocolViolation, PacketFramer(1024).feed, PINGREQ)
        self.assertRaises(ProtocolViolation, PacketFramer(1024).feed, b"G")

    def test_3_1_0_2_second_connect(self) -> None:
        """[MQTT-3.1.0-2] a second CONNECT is a protocol violation."""
        framer = PacketFramer(1024)
        framer.feed(CONNECT)
        self.assertRaises(ProtocolViolation, framer.feed, CONNECT)

    def test_violation_keeps_the_packets_before_it(self) -> None:
        """The whole packets before a violation in the same bytes are kept, for the broker to
        handle before it closes the connection (a PUBACK as its packet id)."""
        framer = PacketFramer(1024)
        framer.feed(CONNECT)
        self.assertRaises(ProtocolViolation, framer.feed, publish("a", b"1") + ack(4, 7) + PINGREQ + b"\xf0\x00")
        self.assertEqual([p if isinstance(p, int) else p.packet_type for p in framer.before_violation], [3, 7, 12])
        framer = PacketFramer(1024)
        self.assertRaises(ProtocolViolation, framer.feed, ack(4, 1))
        self.assertEqual(framer.before_violation, [])

    def test_2_2_3_remaining_length_encoding(self) -> None:
        """§2.2.3, table 2.4: the edges of each encoded size, byte for byte (packets in these
        tests are built with this encoder)."""
        table = {0: "00", 127: "7f", 128: "8001", 16383: "ff7f", 16384: "808001", 2097151: "ffff7f",
                 2097152: "80808001", 268435455: "ffffff7f"}
        for length, encoded in table.items():
            self.assertEqual(encode_length(length).hex(), encoded, length)

    def test_2_2_3_remaining_length_over_four_bytes(self) -> None:
        """§2.2.3: the remaining length takes at most four bytes."""
        framer = PacketFramer(1 << 30)
        framer.feed(CONNECT)
        self.assertRaises(ProtocolViolation, framer.feed, bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))

    def test_oversized_packet(self) -> None:
        """A packet larger than the configured maximum is refused before its body arrives."""
        framer = PacketFramer(100)
        framer.feed(CONNECT)
        self.assertRaises(ProtocolViolation, framer.feed, bytes([0x30, 0xE5, 0x00]))  # 101 bytes
        framer = PacketFramer(101)
        framer.feed(CONNECT)
        self.assertEqual(len(framer.feed(publish("t", b"x" * 98))), 1)  # exactly 101 bytes

    def test_2_2_1_reserved_packet_types(self) -> None:
        """§2.2.1: packet types 0 and 15 are reserved."""
        for first in (0x00, 0xF0):
            framer = PacketFramer(1024)
            framer.feed(CONNECT)
            self.assertRaises(ProtocolViolation, framer.feed, bytes([first, 0]))

    def test_2_2_2_reserved_flag_bits(self) -> None:
        """[MQTT-2.2.2-2] each packet type's flag bits are fixed (PUBREL, SUBSCRIBE, UNSUBSCRIBE: 0010)."""
        cases = [connect(first=0x11), bytes([0x41]) + ack(4, 1)[1:],
                 bytes([0x60]) + ack(6, 1)[1:], subscribe(("a", 0), first=0x80), bytes([0xA0]) + unsubscribe("a")[1:],
                 b"\xc1\x00", b"\xe8\x00"]
        for case in cases:
            framer = PacketFramer(1024)
            if case[0] >> 4 != 1:
                framer.feed(CONNECT)
            self.assertRaises(ProtocolViolation, framer.feed, case)

    def test_2_2_1_client_sends_server_packets(self) -> None:
        """§2.2.1: CONNACK, SUBACK, UNSUBACK and PINGRESP go server to client only."""
        for case in (b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x00", b"\xb0\x02\x00\x01", b"\xd0\x00"):
            framer = PacketFramer(1024)
            framer.feed(CONNECT)
            self.assertRaises(ProtocolViolation, framer.feed, case)

    def test_2_2_3_fixed_length_packets(self) -> None:
        """PUBACK..PUBCOMP carry exactly a packet id; PINGREQ and DISCONNECT nothing."""
        for case in (packet(0x40, b"\x00"), packet(0x40, b"\x00\x01\x00"), packet(0x41, b"\x00\x01"),
                     packet(0x62, b"\x00\x01\x00"), b"\xc0\x01\x00", b"\xe0\x01\x00"):
            framer = PacketFramer(1024)
            framer.feed(CONNECT)
            self.assertRaises(ProtocolViolation, framer.feed, case)
        framer = PacketFramer(1024)
        self.assertEqual(len(framer.feed(CONNECT + ack(4, 7) + PINGREQ + DISCONNECT)), 4)


class ConnectRulesTests(SynchronousTestCase):
    """§3.1: what a CONNECT must look like."""

    def refused(self, data: bytes) -> ProtocolViolation:
        with self.assertRaises(ProtocolViolation) as raised:
            PacketFramer(1024).feed(data)
        return raised.exception

    def test_3_1_2_1_protocol_name(self) -> None:
        """[MQTT-3.1.2-1] a protocol name other than "MQTT" closes without a reply."""
        self.assertEqual(self.refused(connect(name="MQIsdp", level=3)).reply, b"")
        self.assertEqual(self.refused(connect(name="mqtt")).reply, b"")

    def test_3_1_2_2_protocol_level(self) -> None:
        """[MQTT-3.1.2-2] an unsupported level is answered with CONNACK 0x01, then closed."""
        self.assertEqual(self.refused(connect(level=5)).reply, b"\x20\x02\x00\x01")

    def test_3_1_2_3_reserved_flag(self) -> None:
        """[MQTT-3.1.2-3] the CONNECT flags' reserved bit must be 0."""
        self.refused(connect(flags=0x03))

    def test_3_1_2_11_will_flags(self) -> None:
        """[MQTT-3.1.2-13] [MQTT-3.1.2-14] [MQTT-3.1.2-15] will QoS/retain need the will flag; QoS 3 never."""
        self.refused(connect(flags=0x02 | 0x08))  # will QoS 1, no will flag
        self.refused(connect(flags=0x02 | 0x20))  # will retain, no will flag
        self.refused(connect(flags=0x02 | 0x04 | 0x18, will=("w", b"x")))  # will QoS 3
        self.refused(connect(flags=0x02 | 0x04, will=("w/#", b"x")))  # will topic with a wildcard
        self.refused(connect(flags=0x02 | 0x04, will=("w/+/x", b"x")))
        self.refused(connect(flags=0x02 | 0x04, will=("", b"x")))  # an empty will topic
        self.refused(connect(flags=0x02 | 0x04))  # will flag but no will topic/message
        framer = PacketFramer(1024)
        self.assertEqual(len(framer.feed(connect(flags=0x02 | 0x04 | 0x08 | 0x20, will=("w", b"x")))), 1)

    def test_3_1_2_22_password_without_user_name(self) -> None:
        """[MQTT-3.1.2-22] a password flag without the user name flag is a violation."""
        self.refused(connect(flags=0x02 | 0x40, password=b"pw"))
        self.assertEqual(len(PacketFramer(1024).feed(connect(flags=0xC2, username="u", password=b"pw"))), 1)

    def test_3_1_3_payload_matches_flags(self) -> None:
        """§3.1.3: the payload holds exactly the fields the flags announce."""
        self.refused(connect(flags=0x02 | 0x80))  # user name flag, no user name
        self.refused(packet(0x10, connect()[2:] + b"junk"))

    def test_1_5_3_invalid_utf8_client_id(self) -> None:
        """[MQTT-1.5.3-1] [MQTT-1.5.3-2] strings are well-formed UTF-8 without U+0000."""
        self.refused(connect(client_id=b"\xff\xfe"))
        self.refused(connect(client_id=b"\xed\xa0\x80"))  # an encoded surrogate
        self.refused(connect(client_id=b"a\x00b"))


class PublishSubscribeRulesTests(SynchronousTestCase):
    """§3.3, §3.8, §3.10 and §1.5.3 for the packets after CONNECT."""

    def refused(self, data: bytes) -> None:
        framer = PacketFramer(1024)
        framer.feed(CONNECT)
        self.assertRaises(ProtocolViolation, framer.feed, data)

    def test_3_3_1_4_publish_qos_3(self) -> None:
        """[MQTT-3.3.1-4] a PUBLISH with both QoS bits set is a violation."""
        self.refused(packet(0x36, string("t") + b"\x00\x01"))

    def test_3_3_1_2_dup_at_qos_0(self) -> None:
        """[MQTT-3.3.1-2] DUP must be 0 at QoS 0."""
        self.refused(publish("t", dup=True))

    def test_3_3_2_2_publish_topic_with_wildcards(self) -> None:
        """[MQTT-3.3.2-2] a topic name has no wildcards; [MQTT-4.7.3-1] nor is it empty."""
        for topic in ("a/+", "a/#", "#", ""):
            self.refused(publish(topic))

    def test_2_3_1_1_packet_id_zero(self) -> None:
        """[MQTT-2.3.1-1] QoS 1/2 PUBLISH, SUBSCRIBE and UNSUBSCRIBE need a non-zero packet id."""
        self.refused(publish("t", qos=1, packet_id=0))
        self.refused(subscribe(("a", 0), packet_id=0))
        self.refused(unsubscribe("a", packet_id=0))

    def test_1_5_3_publish_topic_utf8(self) -> None:
        """[MQTT-1.5.3-1] a PUBLISH topic that is not UTF-8 is a violation."""
        self.refused(publish(b"t/\xc3"))
        self.refused(publish(b"t/\x00"))

    def test_3_8_3_3_subscribe_without_filters(self) -> None:
        """[MQTT-3.8.3-3] a SUBSCRIBE carries at least one filter."""
        self.refused(subscribe())

    def test_3_8_3_subscribe_invalid_filter_or_qos(self) -> None:
        """§4.7.1 filters, [MQTT-3-8.3-4] requested QoS 0..2 with reserved bits 0, §1.5.3 UTF-8."""
        for case in (subscribe(("a/#/b", 0)), subscribe(("a+", 1)), subscribe(("", 0)), subscribe(("a", 3)),
                     subscribe(("a", 0x81)), subscribe((b"\xff", 0)), packet(0x82, b"\x00\x01" + string("a"))):
            self.refused(case)

    def test_3_10_3_2_unsubscribe_without_filters(self) -> None:
        """[MQTT-3.10.3-2] an UNSUBSCRIBE carries at least one valid filter."""
        self.refused(unsubscribe())
        self.refused(unsubscribe("a/#/b"))

    def test_valid_packets_pass(self) -> None:
        """The packets a well-behaved client sends all pass, with their fields parsed."""
        framer = PacketFramer(1024)
        packets = framer.feed(CONNECT + publish("t/1", b"x", qos=2, packet_id=9, retain=True)
                              + subscribe(("a/+", 1), ("$SYS/#", 0)) + unsubscribe("a/+") + ack(6, 9))
        self.assertEqual(packets[0].fields["keep_alive"], 60)
        self.assertEqual((packets[1].fields["topic"], packets[1].fields["packet_id"]), ("t/1", 9))
        self.assertEqual(packets[2].fields["filters"], [("a/+", 1), ("$SYS/#", 0)])
        self.assertEqual(packets[3].fields["filters"], ["a/+"])
        self.assertEqual(packets[4].fields["packet_id"], 9)


class TopicLevelsTests(SynchronousTestCase):
    """A broker's ``max_topic_levels`` (here 3) on what its clients publish (mosquitto's
    ``TOPIC_HIERARCHY_LIMIT``): a PUBLISH or will topic with more is refused as an invalid topic."""

    def test_a_publish_topic_with_more_levels_is_refused(self) -> None:
        """``a/b/c`` passes, ``a/b/c/d`` and ``a//c/`` (an empty level counts) do not; the
        packets before the refused one are kept; 0 takes any depth."""
        framer = PacketFramer(1024, 3)
        with self.assertRaises(TopicTooDeep) as caught:
            framer.feed(CONNECT + publish("a/b/c") + publish("a/b/c/d"))
        self.assertEqual(str(caught.exception), "PUBLISH topic a/b/c/d has 4 levels, more than max_topic_levels (3)")
        self.assertEqual([p.fields["topic"] for p in framer.before_violation[1:]], ["a/b/c"])
        self.assertRaises(TopicTooDeep, PacketFramer(1024, 3).feed, CONNECT + publish("a//c/"))
        self.assertEqual(len(PacketFramer(1 << 17, 0).feed(CONNECT + publish("/" * 40000))), 2)

    def test_a_will_topic_with_more_levels_is_refused(self) -> None:
        with self.assertRaises(TopicTooDeep) as caught:
            PacketFramer(1024, 3).feed(connect("dev", flags=0x06, will=("w/x/y/z", b"gone")))
        self.assertEqual(str(caught.exception), "the will topic of client 'dev' has 4 levels, more than "
                                                "max_topic_levels (3)")
        self.assertEqual(len(PacketFramer(1024, 3).feed(connect("dev", flags=0x06, will=("w/x/y", b"")))), 1)

    def test_filters_are_left_to_the_broker(self) -> None:
        """A SUBSCRIBE or UNSUBSCRIBE filter with more levels passes the framer: the broker
        answers it (SUBACK 0x80) rather than closing the connection."""
        framer = PacketFramer(1024, 3)
        self.assertEqual(len(framer.feed(CONNECT + subscribe(("a/+/c/#", 0)) + unsubscribe("a/b/c/d"))), 3)
