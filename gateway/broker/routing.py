"""Message routing for the gateway's broker: topic -> sessions, at the right QoS, without a task per message.

:class:`SubscriberRouter` is the part of :class:`~gateway.broker.amqtt_broker.GatewayBroker` that
replaces amqtt's broadcast queue and loop. A message is routed synchronously when it
arrives: the subscribers of its topic are looked up in a cache (rebuilt when
subscriptions change), each gets one copy at the lower of the publish QoS and the highest
QoS it was granted among its matching subscriptions (§3.3.5), connected sessions through
their handler, offline persistent sessions through their queue (QoS 1 and 2, §3.1.2.4).

Delivery never waits for a subscriber: a message that a subscriber cannot take now goes
into that subscriber's bounded queue (:mod:`gateway.broker.outbox`), which drops its own
oldest QoS 0 messages first when full. The publisher, and every other subscriber, go on
at their own speed.

The router also keeps the session bookkeeping: a clean session is forgotten as its
connection ends, a persistent one is listed as offline (:mod:`gateway.broker.sessions`)
until its client returns or it expires.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from amqtt.contexts import Action
from amqtt.events import BrokerEvents
from amqtt.session import ApplicationMessage, Session
from twisted.logger import Logger

from gateway.broker.bus import BusMessage, LocalBus
from gateway.broker.handler import GatewayProtocolHandler
from gateway.broker.outbox import Outbox, QueuedMessage, QueuePolicy
from gateway.broker.sessions import OfflineSessions
from gateway.mqtt.topics import matches


#: Where a session keeps its :class:`Outbox` (amqtt's ``Session.attributes`` is for extensions).
OUTBOX_KEY = "gateway.outbox"
#: Topics whose subscriber lists are cached at most (the cache starts over past this).
ROUTE_CACHE_SIZE = 10_000
#: Seconds between two log lines about ended offline sessions (the counts are in the snapshot).
SESSION_LOG_INTERVAL = 60.0


class SubscriberRouter:
    """Routing state and logic; mixed into the broker, which provides amqtt's attributes.

    :ivar bus: the in-process bus that sees every client message.
    :ivar max_inflight: QoS 1/2 messages a client may have unacknowledged.
    :ivar queue_policy: bounds and overflow policy of every session's queue, and the drop counters.
    :ivar offline: the persistent sessions whose clients are offline (expiry and cap).
    :ivar dollar_publishes_dropped: client publishes to ``$`` topics that were dropped.
    """

    log = Logger()
    _subscriptions: dict[str, list[tuple[Session, int]]]
    _retained_messages: dict[str, Any]
    _sessions: dict[str, tuple[Session, Any]]
    _loop: asyncio.AbstractEventLoop
    plugins_manager: Any
    _topic_filtering: Any  # amqtt's Broker: async (session, topic, action) -> bool

    def _init_router(self, bus: LocalBus, max_inflight: int, queue_policy: QueuePolicy,
                     offline: OfflineSessions) -> None:
        self.bus = bus
        self.max_inflight = max_inflight
        self.queue_policy = queue_policy
        self.offline = offline
        self.dollar_publishes_dropped = 0
        self._sessions_ended_unlogged = 0
        self._sessions_ended_logged_at = float("-inf")
        #: PUBLISHes from clients and to clients, by QoS, and their payload bytes (read side).
        self.messages_in = [0, 0, 0]
        self.messages_out = [0, 0, 0]
        self.payload_bytes_in = 0
        self.payload_bytes_out = 0
        self._live: dict[str, GatewayProtocolHandler] = {}
        self._routes: dict[str, list[tuple[Session, int]]] = {}
        self._draining: set[Any] = set()
        #: called (without arguments) when persistent state changed.
        self.on_state_changed: Callable[[], None] | None = None
        events = self.plugins_manager._event_plugin_callbacks
        # Without topic ACL plugins or message event listeners, a publish needs no await at all.
        self.fast_path = not self.plugins_manager._topic_plugins and not any(
            event in events for event in (BrokerEvents.MESSAGE_RECEIVED, BrokerEvents.MESSAGE_BROADCAST))

    def state_changed(self) -> None:
        """Sessions, subscriptions, queues or retained messages changed: tell whoever persists them."""
        if self.on_state_changed is not None:
            self.on_state_changed()

    def routes_changed(self) -> None:
        """Subscriptions changed: forget the cached subscriber lists."""
        self._routes.clear()
        self.state_changed()

    # -- sessions and handlers ----------------------------------------------------------

    def outbox_for(self, session: Session) -> Outbox:
        """The session's queue, created on first use."""
        outbox = session.attributes.get(OUTBOX_KEY)
        if outbox is None:
            outbox = session.attributes[OUTBOX_KEY] = Outbox(str(session.client_id), self.queue_policy)
        return outbox

    @property
    def messages_dropped(self) -> int:
        """Messages dropped because a session's queue was full, since the broker started."""
        return sum(self.queue_policy.dropped)

    @property
    def session_count(self) -> int:
        """Sessions known (connected, and persistent offline ones)."""
        return len(self._sessions)

    @property
    def live_client_ids(self) -> set[str]:
        """Client ids with a live connection (a copy)."""
        return set(self._live)

    @property
    def retained_count(self) -> int:
        """Retained messages held."""
        return len(self._retained_messages)

    @property
    def subscription_count(self) -> int:
        """Topic filters with at least one subscriber."""
        return len(self._subscriptions)

    def handler_started(self, handler: GatewayProtocolHandler) -> None:
        """``handler``'s client is connected: route to it directly."""
        client_id = str(handler.session.client_id)
        self._live[client_id] = handler
        self.offline.came_back(client_id)

    def handler_stopped(self, handler: GatewayProtocolHandler) -> None:
        """``handler``'s client is gone: its clean session ends, its persistent session goes offline.

        Only when ``handler`` still owns the client id's session: a connection taken over
        by a newer one leaves the session to the newer one.
        """
        session = handler.session
        assert session is not None
        client_id = str(session.client_id)
        if self._live.get(client_id) is handler:
            del self._live[client_id]
            self.state_changed()
        self.session_ended(session, handler)

    def session_ended(self, session: Session, handler: GatewayProtocolHandler) -> None:
        """``handler``'s connection of ``session`` is over: forget the session (clean) or list it offline.

        Nothing happens when the broker's entry for the client id is no longer this
        session and handler (a newer connection has taken the id over). A persistent
        session keeps a fresh handler without a connection (:meth:`offline_handler`), so
        the dead connection's objects (transport, buffers, timers) are freed.
        """
        client_id = str(session.client_id)
        entry = self._sessions.get(client_id)
        if entry is None or entry[0] is not session or entry[1] is not handler or client_id in self._live:
            return
        if session.clean_session:
            self.forget_session(client_id)
            return
        self._sessions[client_id] = (session, self.offline_handler(session))
        self.offline.went_offline(client_id)
        self.end_due_sessions()

    def offline_handler(self, session: Session) -> Any:
        """A handler with no connection for an offline persistent session (amqtt keeps one per session)."""
        raise NotImplementedError

    def forget_session(self, client_id: str) -> None:
        """Drop every trace of ``client_id``'s session: entry, subscriptions, queue, routes."""
        entry = self._sessions.pop(client_id, None)
        self.offline.came_back(client_id)
        self.queue_policy.forget(client_id)
        if entry is None:
            return
        session = entry[0]
        outbox = session.attributes.pop(OUTBOX_KEY, None)
        if outbox is not None:
            outbox.clear()
        removed = False
        for topic_filter in list(self._subscriptions):
            subscriptions = self._subscriptions[topic_filter]
            kept = [item for item in subscriptions if item[0].client_id != session.client_id]
            if len(kept) != len(subscriptions):
                removed = True
                if kept:
                    self._subscriptions[topic_filter] = kept
                else:
                    del self._subscriptions[topic_filter]
        session.clear_queues()
        if removed:
            self.routes_changed()
        else:
            self.state_changed()

    def end_due_sessions(self) -> list[str]:
        """Forget the offline persistent sessions that expired or are over the cap; their client ids."""
        due = self.offline.due()
        for client_id in due:
            entry = self._sessions.get(client_id)
            if entry is not None and client_id not in self._live:
                self.forget_session(client_id)
        if due:
            self._sessions_ended_unlogged += len(due)
            now = self.offline.clock()
            if now - self._sessions_ended_logged_at >= SESSION_LOG_INTERVAL:
                self.log.info("ended {count} offline persistent sessions ({expired} expired, {evicted} over the "
                              "cap since the start)", count=self._sessions_ended_unlogged,
                              expired=self.offline.expired, evicted=self.offline.evicted)
                self._sessions_ended_logged_at = now
                self._sessions_ended_unlogged = 0
        return due

    def schedule_drain(self, writer: Any) -> None:
        """Flush an amqtt writer (websockets) once this loop iteration's writes are in."""
        if writer not in self._draining:
            self._draining.add(writer)
            self._loop.call_soon(self._drain, writer)

    def _drain(self, writer: Any) -> None:
        self._draining.discard(writer)
        self._loop.create_task(writer.drain())

    # -- routing ------------------------------------------------------------------------

    def publish_from_client(self, handler: GatewayProtocolHandler, message: ApplicationMessage) -> None:
        """Route a client's PUBLISH, then have the handler acknowledge it (in arrival order)."""
        if self.fast_path:
            self.route(handler.session, message.topic, message.data, message.qos or 0, message.retain)
            if message.qos:
                handler.acknowledge(message)
            return
        inbound = handler.__dict__.setdefault("inbound", [])
        inbound.append(message)
        if len(inbound) == 1:
            self._loop.create_task(self._route_inbound(handler, inbound))

    async def _route_inbound(self, handler: GatewayProtocolHandler, inbound: list[ApplicationMessage]) -> None:
        """The checked path (ACL plugins, message events): one task per client, in order."""
        session = handler.session
        while inbound:
            message = inbound[0]
            await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_RECEIVED,
                                                  client_id=session.client_id, message=message)
            if await self._topic_filtering(session, topic=message.topic, action=Action.PUBLISH):
                await self.plugins_manager.fire_event(BrokerEvents.MESSAGE_BROADCAST,
                                                      client_id=session.client_id, message=message)
                await self.route_checked(session, message.topic, message.data, message.qos or 0, message.retain)
            del inbound[0]
            if message.qos and handler.live:
                handler.acknowledge(message)

    def _targets(self, source: Session | None, topic: str, payload: bytes, qos: int,
                 retain: bool) -> list[tuple[Session, int]]:
        if retain:
            self.retain_now(source, topic, payload, qos)
        if source is not None and self.bus.has_subscribers and self.bus.wants(topic):
            self.bus.dispatch(BusMessage(topic, bytes(payload), qos, retain))
        targets = self._routes.get(topic)
        if targets is None:
            best: dict[Any, tuple[Session, int]] = {}
            for topic_filter, subscriptions in self._subscriptions.items():
                if matches(topic_filter, topic):
                    for session, granted in subscriptions:
                        known = best.get(session.client_id)
                        if known is None or granted > known[1]:
                            best[session.client_id] = (session, granted)
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            targets = self._routes[topic] = list(best.values())
        return targets

    def route(self, source: Session | None, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Deliver a message to every subscriber now (no ACL plugin to ask)."""
        self._deliver(self._targets(source, topic, payload, qos, retain), topic, payload, qos)

    async def route_checked(self, source: Session | None, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Deliver a message to the subscribers the topic ACL plugins let receive it."""
        allowed = [target for target in self._targets(source, topic, payload, qos, retain)
                   if await self._topic_filtering(target[0], topic=topic, action=Action.RECEIVE)]
        self._deliver(allowed, topic, payload, qos)

    def _deliver(self, targets: list[tuple[Session, int]], topic: str, payload: bytes, qos: int) -> None:
        """One copy to each target: sent now or queued by its own handler, or queued offline.

        Nothing here waits for a subscriber or holds its publisher back: a subscriber that
        cannot keep up loses messages from its own queue (:mod:`gateway.broker.outbox`).
        """
        live = self._live
        for session, granted in targets:
            level = qos if qos < granted else granted
            handler = live.get(session.client_id)
            if handler is not None:
                handler.deliver(topic, payload, level, False)
            elif level and not session.clean_session:
                self.queue_offline(session, QueuedMessage(topic, payload, level, False))

    def queue_offline(self, session: Session, message: QueuedMessage) -> None:
        """Queue ``message`` for ``session``, a persistent session whose client is offline."""
        self.outbox_for(session).push(message)
        self.state_changed()

    # -- retained messages ----------------------------------------------------------------

    def retain_now(self, source: Session | None, topic: str, payload: bytes, qos: int | None) -> None:
        """Keep ``payload`` as the topic's retained message; an empty payload removes it (§3.3.1.3)."""
        from amqtt.broker import RetainedApplicationMessage

        if payload:
            # (no source session: a retained message must not keep its publisher's session alive)
            message = self._retained_messages[topic] = RetainedApplicationMessage(None, topic, payload, qos or 0)
        else:
            message = self._retained_messages.pop(topic, None)
            if message is None:
                return
            message.data = b""
        self.state_changed()
        if BrokerEvents.RETAINED_MESSAGE in self.plugins_manager._event_plugin_callbacks:
            self._loop.create_task(self.plugins_manager.fire_event(
                BrokerEvents.RETAINED_MESSAGE, client_id=None, retained_message=message))

    def send_retained(self, topic_filter: str, granted: int, handler: GatewayProtocolHandler) -> None:
        """Send the retained messages matching a new subscription, at the lower QoS (§3.3.1.3)."""
        for topic, message in list(self._retained_messages.items()):
            if matches(topic_filter, topic):
                handler.deliver(topic, bytes(message.data), min(granted, message.qos or 0), True)
