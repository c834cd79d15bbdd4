"""The one codec: what the encoders write, both framers read back the same."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt import packets
from gateway.mqtt.framing import PacketFramer, PacketReader
from gateway.mqtt.packets import Packet, PublishTemplate, decode_publish, publish


def _server_side(*raw: bytes) -> list[Packet]:
    """Packets as the broker's framer sees them after a CONNECT."""
    framer = PacketFramer(1 << 20)
    return framer.feed(packets.connect("c1", 30, True) + b"".join(raw))[1:]


class PublishEncodingTests(SynchronousTestCase):
    """``publish`` is the only PUBLISH encoder; the broker and the links decode it alike."""

    def test_known_bytes(self) -> None:
        """QoS 1, retained, packet id 5 and QoS 0: the bytes of §3.3."""
        self.assertEqual(packets.publish("a/b", b"x", 1, True, 5).hex(), "33080003612f62000578")
        self.assertEqual(packets.publish("a/b", b"x", 0).hex(), "30060003612f6278")
        self.assertEqual(packets.publish(b"a/b", b"x", 2, False, 7, dup=True)[0], 0x3C)

    def test_broker_framer_reads_what_it_wrote(self) -> None:
        """The server framer parses topic and packet id out of an encoded PUBLISH."""
        (packet,) = _server_side(packets.publish("t/é", b"payload", 2, False, 300))
        self.assertEqual((packet.packet_type, packet.fields["topic"], packet.fields["packet_id"]),
                         (packets.PUBLISH, "t/é", 300))

    def test_link_reader_reads_what_it_wrote(self) -> None:
        """A link's reader and ``decode_publish`` give back every field."""
        (packet,) = PacketReader().feed(packets.publish("t/1", b"p" * 200, 1, True, 9, dup=True))
        publish = decode_publish(packet)
        self.assertEqual((publish.topic, publish.payload, publish.qos, publish.retain, publish.dup, publish.packet_id),
                         ("t/1", b"p" * 200, 1, True, True, 9))

    def test_topic_too_long(self) -> None:
        """A topic over 65535 bytes cannot be encoded."""
        self.assertRaises(ValueError, packets.publish, "t" * 65536, b"", 0)


class AckEncodingTests(SynchronousTestCase):
    """Acknowledgements: PUBREL carries flags 2 (§3.6.1), the others 0."""

    def test_acks(self) -> None:
        self.assertEqual(packets.ack(packets.PUBACK, 1).hex(), "40020001")
        self.assertEqual(packets.ack(packets.PUBREC, 2).hex(), "50020002")
        self.assertEqual(packets.ack(packets.PUBREL, 3).hex(), "62020003")
        self.assertEqual(packets.ack(packets.PUBCOMP, 4).hex(), "70020004")

    def test_broker_framer_accepts_client_acks(self) -> None:
        """Each ack a client sends passes the server's checks and yields its packet id (a
        PUBACK is nothing but that)."""
        puback, pubrel = _server_side(packets.ack(packets.PUBACK, 1), packets.ack(packets.PUBREL, 3))
        self.assertEqual(puback, 1)
        assert not isinstance(pubrel, int)
        self.assertEqual((pubrel.packet_type, pubrel.fields["packet_id"]), (packets.PUBREL, 3))


class PublishTemplateTests(SynchronousTestCase):
    """A message encoded once for many receivers makes the same bytes as :func:`publish`."""

    def test_same_bytes_as_publish(self) -> None:
        """Every QoS and retain flag, short and long payloads (the length field grows), several ids."""
        for topic, payload in (("a/b", b"x"), ("t/ü", b"y" * 200), ("long", b"z" * 20000)):
            template = PublishTemplate(topic, payload)
            for qos in (0, 1, 2):
                for retain in (False, True):
                    for packet_id in ((0,) if qos == 0 else (1, 300, 65535)):
                        self.assertEqual(template.packet(qos, retain, packet_id),
                                         publish(topic, payload, qos, retain, packet_id))

    def test_topic_too_long(self) -> None:
        """A topic over 65535 bytes is refused, as by :func:`publish`."""
        self.assertRaises(ValueError, PublishTemplate, "t" * 65536, b"")
