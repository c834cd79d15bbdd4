"""Durable acknowledgement: a local QoS 1/2 publish is acked only once the journal holds it.

amqtt's ``BrokerProtocolHandler`` sends PUBACK (QoS 1) or PUBREC (QoS 2) as soon as it has
queued an incoming message. :class:`DurableAckHandler` first hands the message to the
:class:`DurableGate`'s ``persist`` hook (the links service routes it and appends it to the
journal stream of every link it goes to) and sends the acknowledgement only when that
Deferred fires. If persisting fails, the connection is closed unacknowledged: the client
sends the message again when it reconnects. QoS 0 messages are handed over without waiting.

Relies on amqtt internals (``_handle_qos{0,1,2}_message_flow``, ``session.inflight_in``,
``Broker._initialize_client_session``, ``Broker._topic_filtering``);
``tests/links/test_amqtt_durable.py`` fails loudly if an amqtt upgrade changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from amqtt.contexts import Action
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import INCOMING, ApplicationMessage
from twisted.internet.defer import Deferred
from twisted.logger import Logger

#: ``(topic, payload, qos, retain) -> Deferred`` firing when the message is durable, or
#: ``None`` when there is nothing to wait for.
PersistHook = Callable[[str, bytes, int, bool], "Deferred[Any] | None"]
#: amqtt's ``Broker._topic_filtering(session, topic, action)``.
PermissionCheck = Callable[[Any, str, Action], Awaitable[bool]]


class DurableGate:
    """Where the broker's handlers find the persist hook (set by the links service).

    :ivar persist: the hook, or ``None`` (then the broker acks as amqtt does).
    :ivar wants: whether a topic is persisted at all (checked before the topic ACL).
    """

    def __init__(self) -> None:
        self.persist: PersistHook | None = None
        self.wants: Callable[[str], bool] = lambda topic: False
        self.failures = 0

    def install(self, persist: PersistHook, wants: Callable[[str], bool]) -> None:
        """Start persisting the topics ``wants`` accepts with ``persist``."""
        self.persist, self.wants = persist, wants

    def remove(self) -> None:
        """Go back to amqtt's immediate acknowledgements."""
        self.persist, self.wants = None, lambda topic: False


class DurableAckHandler(BrokerProtocolHandler):
    """A broker protocol handler that acknowledges incoming QoS 1/2 only once they are durable.

    :param plugins_manager: amqtt's plugin manager.
    :param gate: holds the persist hook.
    :param permitted: the broker's topic ACL check (nothing refused is persisted).
    :param loop: the asyncio loop.
    """

    log = Logger()

    def __init__(self, plugins_manager: Any, gate: DurableGate, permitted: PermissionCheck,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(plugins_manager, loop=loop)
        self.gate = gate
        self.permitted = permitted

    async def _persisted(self, message: ApplicationMessage) -> bool:
        """Persist ``message`` if the gate wants it; ``False`` if that failed (connection closed)."""
        gate = self.gate
        topic = message.topic
        if gate.persist is None or not topic or topic.startswith("$") or "+" in topic or "#" in topic:
            return True  # amqtt itself refuses the invalid ones
        if not gate.wants(topic) or not await self.permitted(self.session, topic, Action.PUBLISH):
            return True
        packet = message.publish_packet
        d = gate.persist(topic, bytes(message.data or b""), message.qos or 0,
                         bool(packet is not None and packet.retain_flag))
        if d is None:
            return True
        try:
            await d.asFuture(asyncio.get_running_loop())
        except Exception as exc:  # any failure to persist means: do not acknowledge
            gate.failures += 1
            self.log.warn("not acknowledging {topic}: {error}; closing the connection", topic=topic, error=str(exc))
            if self.writer is not None:
                await self.writer.close()
            return False
        return True

    async def _handle_qos0_message_flow(self, app_message: Any) -> None:
        if app_message.direction == INCOMING and not await self._persisted(app_message):
            return
        await super()._handle_qos0_message_flow(app_message)

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        if app_message.direction == INCOMING and not await self._persisted(app_message):
            return
        await super()._handle_qos1_message_flow(app_message)

    async def _handle_qos2_message_flow(self, app_message: Any) -> None:
        if (app_message.direction == INCOMING and self.session is not None
                and app_message.packet_id not in self.session.inflight_in  # a resend before PUBREL: stored
                and not await self._persisted(app_message)):
            return
        await super()._handle_qos2_message_flow(app_message)
