"""One connected client's MQTT session protocol, after its CONNECT was accepted.

:class:`SessionHandler` takes the client's packets, already split and validated by the
framing layer (:mod:`gateway.mqtt.framing`, through
:class:`~gateway.broker.connection.MQTTConnection`), and handles them synchronously:
PUBLISH in with its PUBACK/PUBREC/PUBREL/PUBCOMP flows, deliveries out with theirs,
SUBSCRIBE and UNSUBSCRIBE (decided by the broker), PINGREQ and DISCONNECT. Everything it
writes goes to the Twisted transport, which coalesces the writes of one reactor turn.

Extension points (a subclass is plugged in with ``GatewayBroker(handler_class=...)``):

- :meth:`SessionHandler.acknowledge` sends the PUBACK (QoS 1) or PUBREC (QoS 2) for a
  client's PUBLISH once the broker has routed it. Override it to acknowledge later (when a
  journal append is durable: :mod:`gateway.broker.durable_ack`), then call
  ``super().acknowledge(message)``. §4.6 requires PUBACKs in the order the PUBLISH packets
  arrived: a subclass that defers must keep that order.
- :meth:`SessionHandler.deliver` sends one message to this client (QoS, window and queue
  rules applied); the broker calls it for every routed message. It never blocks and
  never slows the publisher: what the client cannot take now waits in the session's
  bounded queue, which drops this client's own messages when full
  (:mod:`gateway.broker.outbox`).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.broker.amqtt_adapter import AmqttPlugins, session_view
from gateway.broker.clientsession import PUBREC_SEEN, ClientSession, Incoming, Will, sent_qos
from gateway.broker.connection import MQTTConnection
from gateway.broker.durablegate import DurableGate
from gateway.broker.outbox import Outbox, QueuedMessage
from gateway.broker.retainedburst import RetainedBurst
from gateway.broker.statelog import StateLog
from gateway.mqtt.packets import (DISCONNECT, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBSCRIBE,
                                  UNSUBSCRIBE, PINGRESP_PACKET, Packet, PublishTemplate, ack, publish)


class HandlerBroker(Protocol):
    """What a connection's handler uses of the broker (:class:`~gateway.broker.core.GatewayBroker`)."""

    max_inflight: int
    max_inflight_bytes: int
    messages_in: list[int]
    messages_out: list[int]
    messages_resent: int
    payload_bytes_in: int
    payload_bytes_out: int
    dollar_publishes_dropped: int
    fast_path: bool
    durable_gate: DurableGate
    plugins: AmqttPlugins
    clock: IReactorTime

    @property
    def state_log(self) -> StateLog | None:
        """Where acknowledged state changes are logged durably."""

    def outbox_for(self, session: ClientSession) -> Outbox:
        """The session's queue of messages waiting to be sent."""

    def dollar_dropped(self, client_id: str, topic: str, what: str) -> None:
        """Count a client's message to a ``$`` topic, dropped (§4.7.2); log it at most once per interval."""

    def qos2_received(self, session: ClientSession, packet_id: int) -> bool:
        """Note a QoS 2 packet id (in memory); whether it was noted already."""

    def log_qos2_received(self, session: ClientSession, packet_id: int) -> int:
        """Log a persistent session's noted QoS 2 packet id; the logged change PUBREC waits for (0: none)."""

    def qos2_released(self, session: ClientSession, packet_id: int) -> int:
        """Forget a QoS 2 packet id; the logged change PUBCOMP waits for (0: none)."""

    def publish_from_client(self, handler: "SessionHandler", message: Incoming) -> None:
        """Route a client's PUBLISH to the subscribers; acknowledge it through ``handler``."""

    def subscribe(self, handler: "SessionHandler", packet_id: int, filters: list[tuple[str, int]]) -> None:
        """Decide a SUBSCRIBE and answer it."""

    def unsubscribe(self, handler: "SessionHandler", packet_id: int, filters: list[str]) -> None:
        """Decide an UNSUBSCRIBE and answer it."""

    def connection_ended(self, handler: "SessionHandler") -> None:
        """``handler``'s connection is gone."""


def _ack_for(message: Incoming) -> bytes:
    """PUBACK (QoS 1) or PUBREC (QoS 2) for a client's PUBLISH."""
    return ack(PUBACK if message.qos == 1 else PUBREC, message.packet_id or 0)


class SessionHandler:
    """The protocol of one accepted connection (see the module docstring).

    :param broker: the broker that routes what this client publishes.
    :param session: the client's session (new, or resumed with CleanSession=0).
    :param connection: the connection the packets come from.
    :param will: the CONNECT's will, published if the connection ends without DISCONNECT.
    :ivar live: whether this handler still serves the client id (false once it ended or was taken over).
    :ivar inbound: PUBLISHes waiting for topic plugins (the checked path), in arrival order.
    """

    log = Logger()
    __slots__ = ("broker", "session", "connection", "will", "live", "inbound", "view",
                 "_on_answered", "_owed", "_retained")

    def __init__(self, broker: HandlerBroker, session: ClientSession, connection: MQTTConnection,
                 will: Will | None = None, view: Any = None) -> None:
        self.broker = broker
        self.session = session
        self.connection = connection
        self.will = will
        self.live = False
        self.inbound: deque[Incoming] | None = None  # made by the first PUBLISH on the checked path
        #: the amqtt session view the topic plugins are asked with (made at CONNECT, or on first use).
        self.view = view
        self._on_answered: Callable[[], None] | None = None  # see when_answered
        self._owed = 0  # answers that wait for the state log or the topic plugins (see owe_answer)
        #: retained messages of new subscriptions not sent yet (see deliver_retained); None: none
        self._retained: deque[RetainedBurst] | None = None

    # -- life cycle -------------------------------------------------------------------

    @property
    def outbox(self) -> Outbox:
        """The session's queue (it outlives connections when the session persists)."""
        return self.broker.outbox_for(self.session)

    def start(self) -> None:
        """Resend what was in flight (DUP set), send the queue, then take the connection's packets."""
        self.live = True
        self.resend_inflight()
        self.flush_outbox()
        self.connection.attach(self)

    def plugin_view(self) -> Any:
        """This client's session as amqtt's plugins see it."""
        if self.view is None:
            connection = self.connection
            self.view = session_view(self.session, will=self.will, address=connection.peer_address(),
                                     certificate=connection.peer_certificate())
        return self.view

    def stop(self) -> None:
        """No more deliveries or acknowledgements through this handler; the connection is detached."""
        self.live = False
        self._retained = None
        self.connection.detach(self)

    def connection_lost(self) -> None:
        """The socket is gone: the broker ends this connection's part of the session."""
        self.broker.connection_ended(self)

    # -- incoming packets ---------------------------------------------------------------

    def packet_received(self, packet: Packet) -> None:
        """Handle one validated packet from the client."""
        if not self.live:
            return
        kind = packet.packet_type
        if kind == PUBLISH:
            self._publish_received(packet)
        elif kind == PUBREC:
            self._pubrec_received(packet.fields["packet_id"])
        elif kind == PUBREL:
            self._pubrel_received(packet.fields["packet_id"])
        elif kind == PUBCOMP:
            self._pubcomp_received(packet.fields["packet_id"])
        elif kind == PINGREQ:
            self._write(PINGRESP_PACKET)
        elif kind == SUBSCRIBE:
            self.broker.subscribe(self, packet.fields["packet_id"], packet.fields["filters"])  # type: ignore[arg-type]
        elif kind == UNSUBSCRIBE:
            self.broker.unsubscribe(self, packet.fields["packet_id"], packet.fields["filters"])  # type: ignore[arg-type]
        elif kind == DISCONNECT:
            self.will = None  # a clean disconnect discards the will (§3.14.4)
            self.connection.close()

    def _publish_received(self, packet: Packet) -> None:
        flags = packet.flags
        qos = (flags >> 1) & 3
        topic: str = packet.fields["topic"]
        payload = bytes(packet.body[packet.fields["offset"]:])
        packet_id = packet.fields.get("packet_id")
        message = Incoming(packet_id, topic, payload, qos, bool(flags & 1))
        broker = self.broker
        if qos == 2:
            if broker.qos2_received(self.session, packet_id or 0):
                # a resent QoS 2 PUBLISH: routed (and counted) already (§4.3.3 method B)
                self.acknowledge(message)
                return
            self.qos2_noted(packet_id or 0)
        broker.messages_in[qos] += 1
        broker.payload_bytes_in += len(payload)
        if topic[0] == "$":  # clients do not publish into the broker's $ namespace (§4.7.2)
            broker.dollar_dropped(self.session.client_id, topic, "a publish")
            if qos:
                self.acknowledge(message)
            return
        broker.publish_from_client(self, message)

    def qos2_noted(self, packet_id: int) -> None:
        """A new QoS 2 PUBLISH's packet id was noted: log it now (a persistent session's)."""
        self.broker.log_qos2_received(self.session, packet_id)

    def qos2_ids_not_logged(self) -> frozenset[int] | set[int]:
        """The QoS 2 packet ids noted whose log waits for their PUBLISH to be stored (none here)."""
        return frozenset()

    def acknowledge(self, message: Incoming) -> None:
        """Send PUBACK (QoS 1) or PUBREC (QoS 2) for a routed client PUBLISH; see the module docstring."""
        self._write(_ack_for(message))

    def undecided(self, message: Incoming) -> None:
        """``message`` waits for the topic plugins, in :attr:`inbound` (nothing to do here: see
        :meth:`gateway.broker.durable_ack.DurableAckHandler.undecided`)."""

    def decided(self, message: Incoming) -> None:
        """The topic plugins decided ``message``, which left :attr:`inbound` (nothing to do here)."""

    def when_answered(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once every acknowledgement owed for the packets handed over so far
        is written (at once when none is owed; never if the connection ends first): the
        connection closes for a violation after them."""
        self._on_answered = callback
        self.answered()

    def answers_owed(self) -> bool:
        """Whether an acknowledgement of a packet handed over is still to be written: here of a
        PUBLISH waiting for the topic plugins, or one :meth:`owe_answer` announced."""
        return bool(self.inbound) or self._owed > 0

    def owe_answer(self) -> None:
        """An answer to a packet handed over leaves later (a SUBACK or PUBCOMP that waits for
        the state log or the topic plugins): :meth:`when_answered` waits for its
        :meth:`answer_written`."""
        self._owed += 1

    def answer_written(self) -> None:
        """An answer :meth:`owe_answer` announced was written."""
        self._owed -= 1
        self.answered()

    def answered(self) -> None:
        """Acknowledgements were written, or are no longer owed: call the :meth:`when_answered`
        callback once none is owed."""
        callback = self._on_answered
        if callback is not None and not self.answers_owed():
            self._on_answered = None
            callback()

    def close_unacknowledged(self) -> None:
        """Close the connection at once, acknowledging nothing more (the client sends its
        unacknowledged PUBLISHes again when it reconnects)."""
        self.connection.abort()

    def acknowledge_all(self, messages: list[Incoming]) -> None:
        """:meth:`acknowledge` several PUBLISHes, in order, with one write."""
        self._write(b"".join([_ack_for(m) for m in messages]))

    # -- outgoing messages ----------------------------------------------------------------

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool,
                template: PublishTemplate | None = None) -> None:
        """Send a message to this client now, or queue it behind a full window or a paused socket.

        The window is full for a QoS 1/2 message when ``max_inflight`` deliveries are
        unacknowledged, or when its payload would take the bytes in flight past
        ``max_inflight_bytes`` (unless nothing is in flight: a message larger than that still goes).

        :param template: the message already encoded for many receivers (the router's).
        """
        session = self.session
        outbox = session.outbox
        if (outbox is not None and outbox) or self._retained is not None or self.connection.sending_paused or qos and (
                len(session.inflight_out) >= self.broker.max_inflight
                or session.inflight_bytes + len(payload) > self.broker.max_inflight_bytes and session.inflight_bytes):
            self.outbox.push(QueuedMessage(topic, payload, qos, retain))
        else:
            self._send_publish(topic, payload, qos, retain, template)

    def _send_publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                      template: PublishTemplate | None = None) -> None:
        broker = self.broker
        broker.messages_out[qos] += 1
        broker.payload_bytes_out += len(payload)
        if qos:
            session = self.session
            packet_id = session.next_packet_id()
            data = session.inflight_out[packet_id] = (
                template.packet(qos, retain, packet_id) if template is not None
                else publish(topic, payload, qos, retain, packet_id))
            session.inflight_bytes += len(data)
            self.connection.write(data)
        else:
            self.connection.write(template.packet(0, retain) if template is not None
                                  else publish(topic, payload, 0, retain))

    def puback_received(self, packet_id: int) -> None:
        """The client acknowledged the QoS 1 delivery ``packet_id``; an unknown id is ignored
        (§4.3 allows it), one of a QoS 2 delivery is a protocol violation (:meth:`_wrong_ack`)."""
        if not self.live:
            return
        session = self.session
        inflight = session.inflight_out
        sent = inflight.get(packet_id)
        if sent and sent[0] & 0x06 == 0x02:
            del inflight[packet_id]
            session.inflight_bytes -= len(sent)
            outbox = session.outbox
            if outbox is not None and outbox or self._retained is not None:
                self.flush_outbox()
        elif sent is not None:
            self._wrong_ack("PUBACK", packet_id, sent)

    def _wrong_ack(self, kind: str, packet_id: int, sent: bytes) -> None:
        """The client answered the delivery ``packet_id`` with an acknowledgement of another
        QoS flow (PUBACK for QoS 2, PUBREC or PUBCOMP for QoS 1, PUBCOMP before PUBREC):
        it broke [MQTT-4.3.2-2] or [MQTT-4.3.3-2], so the connection is closed
        [MQTT-4.8.0-1]. The delivery stays in flight (a persistent session resends it)."""
        stage = "QoS 1" if sent_qos(sent) == 1 else "QoS 2 (PUBREC'd)" if sent == PUBREC_SEEN else "QoS 2"
        self.connection.protocol_violation(f"{kind} for its {stage} delivery {packet_id} [MQTT-4.8.0-1]")

    def _pubrec_received(self, packet_id: int) -> None:
        session = self.session
        inflight = session.inflight_out
        sent = inflight.get(packet_id)
        if sent is not None:
            if sent_qos(sent) != 2:
                self._wrong_ack("PUBREC", packet_id, sent)
                return
            inflight[packet_id] = PUBREC_SEEN  # now waiting for PUBCOMP; PUBREL is what a resend repeats
            session.inflight_bytes -= len(sent)  # (the message itself is let go: its bytes leave the window)
        self._write(ack(PUBREL, packet_id))  # PUBREL (an unknown id gets one too: harmless, §4.3.3)
        if sent and (session.outbox or self._retained is not None):  # (its bytes freed: what waited may go)
            self.flush_outbox()

    def _pubrel_received(self, packet_id: int) -> None:
        """PUBCOMP, known id or not (§4.3.3); for a persistent session, once its release is durable."""
        logged = self.broker.qos2_released(self.session, packet_id)
        log = self.broker.state_log
        if logged and log is not None:
            self.owe_answer()
            log.when_durable(logged, lambda: self._send_pubcomp(packet_id), lambda _: self.close_unacknowledged())
        else:
            self._write(ack(PUBCOMP, packet_id))

    def _send_pubcomp(self, packet_id: int) -> None:
        if self.live:
            self._write(ack(PUBCOMP, packet_id))
        self.answer_written()

    def _pubcomp_received(self, packet_id: int) -> None:
        inflight = self.session.inflight_out
        sent = inflight.get(packet_id)
        if sent is None:
            return  # an unknown id: ignored, as §4.3 allows
        if sent != PUBREC_SEEN:
            self._wrong_ack("PUBCOMP", packet_id, sent)
            return
        del inflight[packet_id]
        self.flush_outbox()

    def packets_done(self) -> None:
        """The packets of one read are handled (nothing to do here: see
        :meth:`gateway.broker.durable_ack.DurableAckHandler.packets_done`)."""

    def resend_inflight(self) -> None:
        """§4.4: resend unacknowledged PUBLISH packets with DUP set (counted in the broker's
        ``messages_resent``, not again in ``messages_out``), and PUBREL where PUBREC came."""
        broker = self.broker
        for packet_id, sent in list(self.session.inflight_out.items()):
            if sent == PUBREC_SEEN:
                self._write(ack(PUBREL, packet_id))
            else:
                broker.messages_resent += 1
                self._write(bytes((sent[0] | 0x08,)) + sent[1:])

    def deliver_retained(self, burst: RetainedBurst) -> None:
        """Send a new subscription's retained messages (in the order given) as the client takes
        them: while its socket accepts them and its window has room, the rest when it has room
        again (:meth:`flush_outbox`). Until all are sent, the messages routed to the client
        wait in its queue behind them, so that a topic's retained message never comes after a
        newer one. They are not copied into the queue: a burst of thousands (a ``#``
        subscription) neither overflows it nor sits whole in the send buffer; the connection's
        end drops what is left (a retained message is sent on SUBSCRIBE only)."""
        if not burst.topics:
            return
        if self._retained is None:
            self._retained = deque((burst,))
        else:
            self._retained.append(burst)
        self.flush_outbox()

    def flush_outbox(self) -> None:
        """Send the retained messages still owed (:meth:`deliver_retained`), then the queued
        messages, while the socket accepts them and the window has room (in messages and in
        bytes, as :meth:`deliver` counts them)."""
        session = self.session
        if not self.live:
            return
        connection = self.connection
        inflight, window, window_bytes = session.inflight_out, self.broker.max_inflight, self.broker.max_inflight_bytes
        retained = self._retained
        while retained:
            burst = retained[0]
            topics, messages, granted, n = burst.topics, burst.messages, burst.granted, burst.sent
            while n < len(topics) and not connection.sending_paused:
                payload, qos = messages[n]
                qos = min(qos, granted)
                if qos and (len(inflight) >= window or session.inflight_bytes + len(payload) > window_bytes
                            and session.inflight_bytes):
                    break
                self._send_publish(topics[n], payload, qos, True)
                n += 1
            burst.sent = n
            if n < len(topics):
                return
            retained.popleft()
        self._retained = None
        outbox = session.outbox
        if not outbox:
            return
        while outbox and not connection.sending_paused:
            message = outbox.peek()
            if message.qos and (len(inflight) >= window or session.inflight_bytes + len(message.payload) > window_bytes
                                and session.inflight_bytes):
                break
            outbox.pop()
            self._send_publish(*message)

    def _write(self, data: bytes) -> None:
        self.connection.write(data)
