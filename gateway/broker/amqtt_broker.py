"""amqtt's Broker as the gateway uses it: MQTT 3.1.1 rules amqtt misses, fast routing, the bus.

:class:`GatewayBroker` keeps amqtt's connection life cycle, auth plugins and session
objects, and overrides what amqtt gets wrong or slow:

- authentication: a CONNECT is checked by amqtt's auth plugins (through its plugin
  manager) *before* its client id is looked up; a refused client gets CONNACK 5 and never
  touches the session or the connection of a client already using that id (amqtt took
  over, cleared or rewrote the session first and refused afterwards);
- routing (:class:`~gateway.broker.routing.SubscriberRouter` instead of the broadcast queue): one
  copy per subscriber at min(publish QoS, highest granted QoS) (§3.3.5), ``$`` topics not
  matched by leading wildcards (§4.7.2), offline persistent sessions queued;
- subscriptions: a repeated filter replaces the old one (§3.8.4); retained messages go out
  on SUBSCRIBE only, at the lower QoS (§3.3.1.3), not to every reconnecting client;
- sessions: CleanSession=0 sessions persist for anonymous clients too (§3.1.2.4), until
  they expire or the cap on offline sessions pushes them out (:mod:`gateway.broker.sessions`);
  a clean session ends with its connection, and one whose CONNECT was refused ends at once;
- durable state: retained messages, messages queued for offline persistent sessions and
  their subscriptions go to :attr:`GatewayBroker.state_log` as they change (the handler
  holds the acknowledgement until it is durable; :mod:`gateway.broker.persistence`), and so
  does the end of a persistent session;
- handlers: :attr:`GatewayBroker.handler_class` builds each connection's protocol handler.

Relies on amqtt internals; ``tests/broker/test_amqtt_internals.py`` fails loudly if an
amqtt upgrade changes them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.session import Session
from amqtt.utils import gen_client_id
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from gateway.broker.bus import LocalBus
from gateway.broker.durable_ack import DurableAckHandler, DurableGate
from gateway.broker.handler import GatewayProtocolHandler
from gateway.broker.outbox import QueuedMessage, QueuePolicy
from gateway.broker.statelog import StateLog
from gateway.broker.routing import SubscriberRouter
from gateway.broker.sessions import DEFAULT_EXPIRATION, DEFAULT_MAX_OFFLINE, OfflineSessions, sweep_interval
from gateway.mqtt.topics import valid_filter

REFUSED = 0x80
#: CONNACK with return code 5, not authorized (§3.2.2.3), as amqtt answers a refused login.
CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"


class GatewayBroker(SubscriberRouter, Broker):
    """An amqtt :class:`Broker` with the gateway's routing, sessions and handler.

    :param config: amqtt broker configuration (a dict in amqtt's format).
    :param loop: the asyncio loop the reactor runs on.
    :param bus: the bus that sees every message local clients publish.
    :param handler_class: the protocol handler for each connection (a subclass of
        :class:`GatewayProtocolHandler` to change how publishes are acknowledged).
    :param max_packet_size: the largest packet accepted on amqtt's own listeners.
    :param max_inflight: unacknowledged QoS 1/2 messages per client.
    :param max_queued_messages: bound of each session's queue, in messages.
    :param max_queued_bytes: bound of each session's queue, in payload bytes.
    :param queue_overflow: what a full queue drops of QoS 1/2 messages (``drop_new`` or
        ``drop_oldest``; see :mod:`gateway.broker.outbox`).
    :param persistent_client_expiration: seconds an offline persistent session is kept (0: no expiry).
    :param max_offline_sessions: most persistent sessions kept for offline clients.
    :param clock: the reactor's time (expiry, rate-limited logs); the global reactor when ``None``.
    """

    log = Logger()

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop, bus: LocalBus, *,
                 handler_class: type[GatewayProtocolHandler] = DurableAckHandler,
                 durable_gate: DurableGate | None = None,
                 max_packet_size: int = 1 << 20, max_inflight: int = 100, max_queued_messages: int = 1000,
                 max_queued_bytes: int = 16 << 20, queue_overflow: str = "drop_new",
                 persistent_client_expiration: float = DEFAULT_EXPIRATION,
                 max_offline_sessions: int = DEFAULT_MAX_OFFLINE, clock: IReactorTime | None = None) -> None:
        super().__init__(config, loop=loop)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        self.handler_class = handler_class
        self.durable_gate = durable_gate if durable_gate is not None else DurableGate()
        self.max_packet_size = max_packet_size
        #: where acknowledged state changes are logged durably (set by the service once restored).
        self.state_log: StateLog | None = None
        self._init_router(bus, max_inflight,
                          QueuePolicy(max_queued_messages, max_queued_bytes, queue_overflow, self.clock.seconds),
                          OfflineSessions(persistent_client_expiration, max_offline_sessions, self.clock.seconds))
        self._sweeper: LoopingCall | None = None

    async def start(self) -> None:
        """amqtt's start, then the periodic look for expired offline sessions."""
        await super().start()
        if self.offline.expiration > 0:
            self._sweeper = LoopingCall(self.end_due_sessions)
            self._sweeper.clock = self.clock
            self._sweeper.start(sweep_interval(self.offline.expiration), now=False)

    async def shutdown(self) -> None:
        """Stop looking for expired sessions, then amqtt's shutdown."""
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        await super().shutdown()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop this broker runs on."""
        return self._loop

    @property
    def has_client_subscribers(self) -> bool:
        """Whether any MQTT client holds a subscription."""
        return bool(self._subscriptions)

    async def publish_internal(self, topic: str, data: bytes, qos: int, retain: bool) -> None:
        """Publish from inside the gateway to local MQTT clients (and retain it if asked)."""
        self.route(None, topic, bytes(data), qos, retain)

    # -- amqtt's routing entry points -------------------------------------------------------

    async def _broadcast_message(self, session: Session | None, topic: str | None, data: Any,
                                 force_qos: int | None = None) -> None:
        """amqtt's broadcast (wills, plugins): routed now; no QoS given means the subscriber's."""
        if topic:
            qos = 2 if force_qos is None else force_qos
            if self.fast_path:
                self.route(session, topic, bytes(data or b""), qos, False)
            else:
                await self.route_checked(session, topic, bytes(data or b""), qos, False)

    async def retain_message(self, source_session: Session | None, topic_name: str | None,
                             data: bytes | bytearray | None, qos: int | None = None) -> None:
        """amqtt's API: retain (or, with no data, remove) a topic's retained message."""
        if topic_name is not None:
            self.retain_now(source_session, topic_name, bytes(data or b""), qos)

    def retain_now(self, source: Session | None, topic: str, payload: bytes, qos: int | None) -> None:
        """The router's, and the change logged (the publisher's PUBACK waits until it is durable)."""
        super().retain_now(source, topic, payload, qos)
        if self.state_log is not None:
            self.state_log.retained(topic, payload, qos or 0)

    def queue_offline(self, session: Session, message: QueuedMessage) -> None:
        """The router's, and the message logged (the publisher's PUBACK waits until it is durable)."""
        super().queue_offline(session, message)
        if self.state_log is not None:
            self.state_log.queued(str(session.client_id), message)

    # -- subscriptions ------------------------------------------------------------------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        """Add or replace (§3.8.4) a subscription; return the granted QoS or 0x80."""
        topic_filter, qos = subscription
        if not valid_filter(topic_filter):
            return REFUSED
        if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
            return REFUSED
        max_qos = self.config.get("max-qos", qos)
        qos = min(qos, max_qos if isinstance(max_qos, int) else qos)
        subscriptions = self._subscriptions.setdefault(topic_filter, [])
        for index, (existing, _) in enumerate(subscriptions):
            if existing.client_id == session.client_id:
                subscriptions[index] = (session, qos)
                break
        else:
            subscriptions.append((session, qos))
        self.routes_changed()
        if self.state_log is not None and not session.clean_session:
            self.state_log.subscribed(str(session.client_id), topic_filter, qos)
        return qos

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        subscriptions = self._subscriptions.get(a_filter, [])
        kept = [entry for entry in subscriptions if entry[0].client_id != session.client_id]
        if kept:
            self._subscriptions[a_filter] = kept
        else:
            self._subscriptions.pop(a_filter, None)
        self.routes_changed()
        removed = len(subscriptions) - len(kept)
        if removed and self.state_log is not None and not session.clean_session:
            self.state_log.unsubscribed(str(session.client_id), a_filter)
        return removed

    async def _del_all_subscriptions(self, session: Session) -> None:
        for topic_filter in list(self._subscriptions):
            self._del_subscription(topic_filter, session)

    async def _handle_subscription(self, client_session: Session, handler: Any, subscribe_waiter: Any) -> None:
        subscriptions = subscribe_waiter.result()
        log = self.state_log
        mark = log.appended if log is not None else 0
        codes = [await self.add_subscription(subscription, client_session) for subscription in subscriptions.topics]
        if log is not None and log.appended > mark:  # a persistent session's: SUBACK once durable
            try:
                await log.wait(log.appended).asFuture(self._loop)
            except Exception as exc:
                self.log.warn("not acknowledging the SUBSCRIBE of {client_id}: {error}; closing the connection",
                              client_id=client_session.client_id, error=str(exc))
                connection = getattr(handler, "connection", None)
                if connection is not None:
                    connection.transport.abortConnection()
                return
        await handler.mqtt_acknowledge_subscription(subscriptions.packet_id, codes)
        for (topic_filter, _), code in zip(subscriptions.topics, codes):
            if code != REFUSED:
                await self.plugins_manager.fire_event(BrokerEvents.CLIENT_SUBSCRIBED, client_id=client_session.client_id,
                                                      topic=topic_filter, qos=code)
                self.send_retained(topic_filter, code, handler)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        """Nothing: amqtt calls this for *every* filter on reconnect; retained messages go out on SUBSCRIBE."""

    # -- sessions -------------------------------------------------------------------------------

    async def _initialize_client_session(self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str,
                                         remote_port: int) -> tuple[Any, Session]:
        """amqtt's, with :attr:`handler_class` and the handler told its broker."""
        try:
            handler, client_session = await self.handler_class.init_from_connect(reader, writer,
                                                                                 self.plugins_manager)
        except MQTTError as exc:
            await writer.close()
            raise MQTTError(exc) from exc
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(exc) from exc
        # Authenticated first, on the CONNECT's own credentials: a refused client must not
        # find, take over, clear or rewrite the session of a client already using its id.
        if not await self.authenticate(client_session):
            self.log.warn("refusing client {client_id} from {address}: not authorized",
                          client_id=client_session.client_id, address=remote_address)
            writer.write(CONNACK_NOT_AUTHORIZED)
            await writer.drain()
            await writer.close()
            raise AMQTTError(f"client {client_session.client_id!r} from {remote_address} not authorized")
        handler.broker = self
        if client_session.clean_session:
            if client_session.client_id:
                await self._delete_session(client_session.client_id)
            else:
                client_session.client_id = gen_client_id()
            client_session.parent = 0
        elif client_session.client_id in self._sessions:
            existing, _ = self._sessions[client_session.client_id]
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "username", "password", "remote_address", "remote_port", "ssl_object"):
                setattr(existing, name, getattr(client_session, name))
            client_session = existing
            client_session.parent = 1  # SessionPresent (§3.2.2.2)
        else:
            client_session.parent = 0
        self.state_changed()
        return handler, client_session

    async def authenticate(self, session: Session) -> bool:
        """Ask amqtt's auth plugins (through its plugin manager) about a CONNECT's ``session``.

        amqtt's rule: accepted when at least one plugin answers and every answer is true
        (a plugin answering ``None`` abstains).
        """
        answers = await self.plugins_manager.map_plugin_auth(session=session)
        results = [result for result in (answers or {}).values() if result is not None]
        return bool(results) and all(results)

    async def _authenticate(self, session: Session, listener: Any) -> bool:
        """amqtt's check, asked again after the session lookup: already done, before it."""
        return True

    async def take_over(self, handler: GatewayProtocolHandler) -> None:
        """Close the connection that still holds ``handler``'s client id (§3.1.4-2); called as it starts.

        amqtt takes over only for CleanSession=0, and only while the session's state says
        connected, which its old connection's task resets after a takeover: with
        CleanSession=1, or at the second takeover, the old connection stayed open beside
        the new one, holding the client id's deliveries. This goes
        by which handler is live for the id, and runs once the client is authenticated.
        """
        session = handler.session
        assert session is not None
        old = self._live.get(str(session.client_id))
        if old is not None and old is not handler:
            self.log.info("client {client_id} connected again: closing its old connection",
                          client_id=session.client_id)
            await old.handle_connection_closed()
            await old.stop()

    def create_offline_session(self, client_id: str) -> tuple[Any, Session]:
        """A disconnected session (restored from disk, or made by a plugin) with our handler.

        It is listed offline from now: it expires ``persistent_client_expiration`` later
        unless its client connects.
        """
        session = Session()
        session.client_id = client_id
        session.clean_session = False
        handler = self.offline_handler(session)
        session.transitions.disconnect()
        self.offline.went_offline(client_id)
        return handler, session

    def offline_handler(self, session: Session) -> GatewayProtocolHandler:
        """A handler of :attr:`handler_class` with no connection, for an offline session."""
        handler = self.handler_class(self.plugins_manager, session)
        handler.broker = self
        return handler

    async def _delete_session(self, client_id: str) -> None:
        """A CleanSession=1 CONNECT discards the client's old session (§3.1.2-6)."""
        self.forget_session(client_id)

    def forget_session(self, client_id: str) -> None:
        """The router's, and the end of a persistent session goes to the state log (so a
        restart does not bring it back)."""
        entry = self._sessions.get(client_id)
        if entry is not None and self.state_log is not None and not entry[0].clean_session:
            self.state_log.dropped(client_id)
        super().forget_session(client_id)

    async def _session_monitor(self) -> None:
        """Nothing: clean sessions end with their connection, persistent ones expire by :attr:`offline`."""
