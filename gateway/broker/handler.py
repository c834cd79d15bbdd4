"""The broker's per-connection MQTT protocol handler: amqtt's, without a task per packet.

:class:`GatewayProtocolHandler` is an amqtt ``BrokerProtocolHandler`` that takes its
packets already split and validated from the framing layer (:mod:`gateway.mqtt.framing`)
and handles the hot ones synchronously: PUBLISH in, PUBACK/PUBREC/PUBREL/PUBCOMP,
PINGREQ, and deliveries out, written straight to the Twisted transport (which coalesces
them). SUBSCRIBE, UNSUBSCRIBE and DISCONNECT go to amqtt's own queues and waiters, so
amqtt's broker loop, plugins and session state keep working.

Extension points (a subclass is plugged in with ``GatewayBroker(handler_class=...)``):

- :meth:`GatewayProtocolHandler.acknowledge` sends the PUBACK (QoS 1) or PUBREC (QoS 2)
  for a client's PUBLISH once the broker has routed it. Override it to acknowledge later,
  e.g. when an async callback fires (a journal append is durable), then call
  ``super().acknowledge(message)``. §4.6 requires PUBACKs in the order the PUBLISH packets
  arrived: a subclass that defers must keep that order.
- :meth:`GatewayProtocolHandler.deliver` sends one message to this client (QoS, window
  and queue rules applied); the broker calls it for every routed message. It never
  blocks and never slows the publisher: what the client cannot take now waits in the
  session's bounded queue, which drops this client's own messages when full
  (:mod:`gateway.broker.outbox`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from amqtt.mqtt.disconnect import DisconnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler, Subscription, UnSubscription
from amqtt.session import IncomingApplicationMessage, OutgoingApplicationMessage
from twisted.logger import Logger

from gateway.mqtt.framing import PacketFramer
from gateway.mqtt.packets import PINGRESP_PACKET, PUBACK, PUBCOMP, PUBREC, PUBREL, Packet, ack, publish
from gateway.broker.outbox import Outbox, QueuedMessage



class HandlerBroker(Protocol):
    """What a connection's handler uses of the broker (:class:`~gateway.broker.amqtt_broker.GatewayBroker`)."""

    max_packet_size: int
    max_inflight: int
    messages_in: list[int]
    messages_out: list[int]
    payload_bytes_in: int
    payload_bytes_out: int
    dollar_publishes_dropped: int

    def outbox_for(self, session: Any) -> Outbox:
        """The session's queue of messages waiting to be sent."""

    async def take_over(self, handler: Any) -> None:
        """Close an older connection with the same client id (§3.1.4-2)."""

    def handler_started(self, handler: Any) -> None:
        """``handler``'s client is connected and may be delivered to."""

    def handler_stopped(self, handler: Any) -> None:
        """``handler``'s connection ended."""

    def publish_from_client(self, handler: Any, message: Any) -> None:
        """Route a client's PUBLISH to the subscribers."""

    def schedule_drain(self, writer: Any) -> None:
        """Drain ``writer`` (an amqtt-listener connection) at the end of this turn."""

def _ack_for(message: IncomingApplicationMessage) -> bytes:
    """PUBACK (QoS 1) or PUBREC (QoS 2) for a client's PUBLISH."""
    return ack(PUBACK if message.qos == 1 else PUBREC, message.packet_id)


class GatewayProtocolHandler(BrokerProtocolHandler):
    """amqtt's broker handler, fed packets by the framing layer; see the module docstring.

    :ivar broker: the broker that routes what this client publishes (set by the broker).
    :ivar connection: the Twisted connection feeding packets, or ``None`` for amqtt's own
        listeners (websockets), whose bytes a task pumps through a framer.
    """

    log = Logger()
    broker: HandlerBroker

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection: Any = None
        self.live = False
        self._pump: asyncio.Task[None] | None = None
        self._dollar_warned = False

    # -- life cycle -------------------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        """The session's queue (it outlives connections when the session persists)."""
        assert self.session is not None
        return self.broker.outbox_for(self.session)

    async def start(self) -> None:
        """Close an older connection with this client id, resend what was in flight (DUP set), send the queue.

        Then the connection's packets come to this handler.
        """
        await self.broker.take_over(self)
        loop = self._loop
        self._disconnect_waiter = loop.create_future()
        self.live = True
        self.broker.handler_started(self)
        self.resend_inflight()
        self.connection = getattr(self.reader, "connection", None)
        if self.connection is not None:
            self.writer.on_resume = self.flush_outbox
            self.connection.attach(self)
        else:
            self._pump = loop.create_task(self._pump_reader())
        self.flush_outbox()

    async def stop(self) -> None:
        """Detach from the connection and close it (amqtt's stop: waiters, writer)."""
        if self.connection is not None:
            self.connection.detach(self)  # first: packets still arriving are not ours any more
        if self.live:
            self.live = False
            self.broker.handler_stopped(self)
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        await super().stop()

    async def handle_connection_closed(self) -> None:
        """amqtt's takeover hook: another connection took this client id, so close this one now (§3.1.4-2).

        Aborted rather than closed after its pending writes: a client that stopped reading
        would otherwise hold the new connection's CONNECT forever.
        """
        if self.connection is not None:
            self.connection.transport.abortConnection()
        await super().handle_connection_closed()

    def connection_lost(self) -> None:
        """The socket is gone: end the session's message loop like amqtt's reader would."""
        if self._disconnect_waiter is not None and not self._disconnect_waiter.done():
            self._disconnect_waiter.set_result(None)

    async def _pump_reader(self) -> None:
        """Feed packets from an amqtt reader (websockets) through a framer, for listeners Twisted does not own."""
        framer = PacketFramer(self.broker.max_packet_size)
        framer.packets_complete = 1  # amqtt has read the CONNECT
        try:
            while self.live:
                first = await self.reader.read(1)
                if not first:
                    break
                header = bytearray(first)
                while True:
                    byte = await self.reader.read(1)
                    if not byte:
                        return
                    header += byte
                    if not byte[0] & 0x80 or len(header) > 5:
                        break
                packets = framer.feed(bytes(header))
                length = sum((b & 0x7F) << (7 * i) for i, b in enumerate(header[1:]))
                if length:
                    packets = framer.feed(await self.reader.read(length))
                for packet in packets:
                    self.packet_received(packet)
        except Exception as exc:  # a violation or a broken stream ends this connection either way
            self.log.warn("closing websocket client {client_id}: {reason}",
                          client_id=self.session.client_id if self.session else None, reason=str(exc))
        finally:
            self.connection_lost()

    # -- incoming packets ---------------------------------------------------------------

    def packet_received(self, packet: Packet) -> None:
        """Handle one validated packet from the client."""
        kind = packet.packet_type
        if kind == 3:
            self._publish_received(packet)
        elif kind == 4:
            self._outgoing_done(packet.fields["packet_id"], 1)
        elif kind == 5:
            self._pubrec_received(packet.fields["packet_id"])
        elif kind == 6:
            packet_id = packet.fields["packet_id"]
            self.session.inflight_in.pop(packet_id, None)
            self._write(ack(PUBCOMP, packet_id))  # PUBCOMP, known id or not (§4.3.3)
        elif kind == 7:
            self._outgoing_done(packet.fields["packet_id"], 2)
        elif kind == 12:
            self._write(PINGRESP_PACKET)
        elif kind == 8:
            self._pending_subscriptions.put_nowait(Subscription(packet.fields["packet_id"],
                                                                packet.fields["filters"]))
        elif kind == 10:
            self._pending_unsubscriptions.put_nowait(UnSubscription(
                packet.fields["packet_id"], packet.fields["filters"]))
        elif kind == 14:
            if self._disconnect_waiter is not None and not self._disconnect_waiter.done():
                self._disconnect_waiter.set_result(DisconnectPacket())

    def _publish_received(self, packet: Packet) -> None:
        flags = packet.flags
        qos = (flags >> 1) & 3
        topic: str = packet.fields["topic"]
        payload = packet.body[packet.fields["offset"]:]
        packet_id: int | None = packet.fields.get("packet_id")
        message = IncomingApplicationMessage(packet_id, topic, qos, payload, bool(flags & 1))
        broker = self.broker
        broker.messages_in[qos] += 1
        broker.payload_bytes_in += len(payload)
        if qos == 2:
            inflight_in = self.session.inflight_in
            if packet_id in inflight_in:  # a resent QoS 2 PUBLISH: routed already (§4.3.3 method B)
                self.acknowledge(message)
                return
            inflight_in[packet_id] = message
        if topic[0] == "$":  # clients do not publish into the broker's $ namespace (§4.7.2)
            if not self._dollar_warned:
                self._dollar_warned = True
                self.log.warn("dropping publishes of {client_id} to $ topics such as {topic}",
                              client_id=self.session.client_id, topic=topic)
            self.broker.dollar_publishes_dropped += 1
            if qos:
                self.acknowledge(message)
            return
        self.broker.publish_from_client(self, message)

    def acknowledge(self, message: IncomingApplicationMessage) -> None:
        """Send PUBACK (QoS 1) or PUBREC (QoS 2) for a routed client PUBLISH; see the module docstring."""
        self._write(_ack_for(message))

    def acknowledge_all(self, messages: list[IncomingApplicationMessage]) -> None:
        """:meth:`acknowledge` several PUBLISHes, in order, with one write."""
        self._write(b"".join([_ack_for(m) for m in messages]))

    # -- outgoing messages ----------------------------------------------------------------

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Send a message to this client now, or queue it behind a full window or a paused socket."""
        outbox = self.outbox
        if outbox or getattr(self.writer, "paused", False) or (
                qos and len(self.session.inflight_out) >= self.broker.max_inflight):
            outbox.push(QueuedMessage(topic, payload, qos, retain))
        else:
            self._send_publish(topic, payload, qos, retain)

    def _send_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        broker = self.broker
        broker.messages_out[qos] += 1
        broker.payload_bytes_out += len(payload)
        if qos:
            session = self.session
            packet_id = session.next_packet_id
            session.inflight_out[packet_id] = OutgoingApplicationMessage(
                packet_id, topic, qos, payload, retain)
            self._write(publish(topic, payload, qos, retain, packet_id))
        else:
            self._write(publish(topic, payload, 0, retain))

    async def mqtt_publish(self, topic: str, data: bytes | bytearray, qos: int | None, retain: bool,
                           ack_timeout: int | None = None) -> OutgoingApplicationMessage:
        """amqtt's API for sending to this client: delivered (or queued) at once, no task waits for the ack."""
        self.deliver(topic, bytes(data), qos or 0, retain)
        return OutgoingApplicationMessage(None, topic, qos, data, retain)

    def _pubrec_received(self, packet_id: int) -> None:
        message = self.session.inflight_out.get(packet_id)
        if message is not None and message.qos == 2:
            message.pubrec_packet = True  # now waiting for PUBCOMP; PUBREL is what a resend repeats
        self._write(ack(PUBREL, packet_id))  # PUBREL (an unknown id gets one too: harmless, §4.3.3)

    def _outgoing_done(self, packet_id: int, qos: int) -> None:
        inflight = self.session.inflight_out
        message = inflight.get(packet_id)
        if message is None or message.qos != qos:
            return  # unknown or mismatched acknowledgement: ignored, as §4.3 allows
        del inflight[packet_id]
        self.flush_outbox()

    def resend_inflight(self) -> None:
        """§4.4: resend unacknowledged PUBLISH packets with DUP set, and PUBREL where PUBREC came."""
        for packet_id, message in list(self.session.inflight_out.items()):
            if message.pubrec_packet:
                self._write(ack(PUBREL, packet_id))
                continue
            self._write(publish(message.topic, bytes(message.data), message.qos or 0, bool(message.retain),
                                packet_id, dup=True))

    def flush_outbox(self) -> None:
        """Send queued messages while the socket accepts them and the window has room."""
        if not self.live:
            return
        outbox, writer = self.outbox, self.writer
        inflight, window = self.session.inflight_out, self.broker.max_inflight
        while outbox and not getattr(writer, "paused", False):
            message = outbox.peek()
            if message.qos and len(inflight) >= window:
                break
            outbox.pop()
            self._send_publish(*message)

    def _write(self, data: bytes) -> None:
        writer = self.writer
        if writer is not None:
            writer.write(data)
            if self.connection is None:
                self.broker.schedule_drain(writer)
