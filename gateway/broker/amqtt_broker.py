"""amqtt's Broker as the gateway uses it: messages also reach the in-process bus.

Relies on amqtt internals (``_handle_message_delivery``, ``_broadcast_message``,
``_subscriptions``); ``tests/broker/test_amqtt_internals.py`` fails loudly if an amqtt
upgrade changes them.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from amqtt.broker import Broker
from amqtt.session import ApplicationMessage, Session

from gateway.broker.bus import BusMessage, LocalBus
from gateway.broker.durable_ack import DurableAckHandler, DurableGate

#: The application message a client task is delivering, so that the broadcast hook can
#: tell the bus its QoS and retain flag (amqtt passes only topic and payload on).
_DELIVERING: contextvars.ContextVar[ApplicationMessage | None] = contextvars.ContextVar("delivering", default=None)


class GatewayBroker(Broker):
    """An amqtt :class:`Broker` that also feeds the gateway's :class:`LocalBus`.

    :param config: amqtt broker configuration (a dict in amqtt's format).
    :param loop: the asyncio loop the reactor runs on.
    :param bus: the bus that sees every message local clients publish.
    """

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop, bus: LocalBus) -> None:
        super().__init__(config, loop=loop)
        self.bus = bus
        self.durable_gate = DurableGate()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop this broker runs on."""
        return self._loop

    @property
    def has_client_subscribers(self) -> bool:
        """Whether any MQTT client holds a subscription."""
        return bool(self._subscriptions)

    async def _initialize_client_session(self, reader: Any, writer: Any, remote_address: str,
                                         remote_port: int) -> tuple[Any, Session]:
        # amqtt's handler acks before anything is durable: use ours (see durable_ack).
        _, session = await super()._initialize_client_session(reader, writer, remote_address, remote_port)
        return DurableAckHandler(self.plugins_manager, self.durable_gate, self._topic_filtering, self._loop), session

    async def _handle_message_delivery(self, client_session: Session, handler: Any, wait_deliver: Any) -> bool:
        token = _DELIVERING.set(wait_deliver.result())
        try:
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        finally:
            _DELIVERING.reset(token)

    async def _broadcast_message(self, session: Session | None, topic: str | None, data: Any,
                                 force_qos: int | None = None) -> None:
        message = _DELIVERING.get()
        if session is not None and message is not None and topic and self.bus.has_subscribers:
            packet = message.publish_packet
            self.bus.dispatch(BusMessage(topic, bytes(data or b""), message.qos or 0,
                                         bool(packet and packet.retain_flag)))
        await super()._broadcast_message(session, topic, data, force_qos)

    async def publish_internal(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        """Publish from inside the gateway to local MQTT clients (and retain it if asked)."""
        await super()._broadcast_message(None, topic, data, qos)
        if retain:
            await self.retain_message(None, topic, data, qos)
