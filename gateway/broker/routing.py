"""Message routing: topic -> sessions, at the right QoS, synchronously, and the session bookkeeping.

:class:`Router` is the part of :class:`~gateway.broker.core.GatewayBroker` that holds the
broker's state (sessions, subscriptions, retained messages, the live connections) and
routes each message as it arrives: the subscribers of its topic are looked up in a cache
(rebuilt when subscriptions change; a topic not in it is looked up by name among the
filters without wildcards and in a tree of the others, :mod:`gateway.mqtt.topictree`, so
the cost does not grow with the number of subscriptions), each gets one copy at the lower
of the publish QoS and the highest QoS it was granted among its matching subscriptions
(§3.3.5), connected sessions through their handler, offline persistent sessions through
their queue (QoS 1 and 2, §3.1.2.4). ``$`` topics are not matched by leading wildcards
(§4.7.2). A new subscription finds its retained messages the same way: by name, or in a
tree of the retained topics.

Delivery never waits for a subscriber: a message that a subscriber cannot take now goes
into that subscriber's bounded queue (:mod:`gateway.broker.outbox`), which drops its own
messages when full. The publisher, and every other subscriber, go on at their own speed.

Every change the broker acknowledges goes to :attr:`Router.state_log` (a retained message,
a message queued for an offline persistent session, a persistent session's subscription
and its end), so the acknowledgement can wait until it is durable
(:mod:`gateway.broker.persistence`).
"""

from __future__ import annotations

import sys
from collections import deque
from typing import Any, Callable, Generic, NamedTuple, Protocol, TypeVar

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gateway.broker.amqtt_adapter import Action, AmqttPlugins, BrokerEvents, session_view
from gateway.broker.bus import BusMessage, LocalBus
from gateway.broker.clientsession import ClientSession, Incoming
from gateway.broker.limits import SubscriptionLimits
from gateway.broker.outbox import Outbox, QueuedMessage, QueuePolicy
from gateway.broker.retainedburst import RetainedBurst
from gateway.broker.retainedlimits import RetainedBudget, RetainedLimits, retained_size
from gateway.broker.sessions import OfflineSessions
from gateway.broker.statelog import StateLog
from gateway.logthrottle import LogThrottle
from gateway.mqtt.packets import PublishTemplate
from gateway.mqtt.topics import has_wildcard, topic_for_log
from gateway.mqtt.topictree import TopicTree

#: Topics whose subscriber lists are cached at most (the cache starts over past this).
ROUTE_CACHE_SIZE = 10_000
#: Seconds between two log lines about ended offline sessions (the counts are in the snapshot).
SESSION_LOG_INTERVAL = 60.0


class Retained(NamedTuple):
    """A topic's retained message (§3.3.1.3)."""

    payload: bytes
    qos: int


Target = tuple[ClientSession, int]


def _levels(topic: str) -> list[str]:
    """A topic's levels: the sort key that puts a topic before those under it, siblings by name."""
    return topic.split("/")


class LiveClient(Protocol):
    """A connected client as the router sees it (:class:`~gateway.broker.handler.SessionHandler`)."""

    session: ClientSession
    live: bool
    inbound: deque[Incoming] | None

    def plugin_view(self) -> Any:
        """The client's session as amqtt's plugins see it."""

    def acknowledge(self, message: Incoming) -> None:
        """PUBACK/PUBREC ``message`` (when its turn comes)."""

    def close_unacknowledged(self) -> None:
        """Close the connection at once, acknowledging nothing more."""

    def answered(self) -> None:
        """Its PUBLISHes waiting for the topic plugins are all handled."""

    def undecided(self, message: Incoming) -> None:
        """``message`` waits for the topic plugins (it joined ``inbound``)."""

    def decided(self, message: Incoming) -> None:
        """The topic plugins decided ``message`` (it left ``inbound``)."""

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool,
                template: PublishTemplate | None = None) -> None:
        """Send (or queue) one message to the client (``template``: the message encoded once for all)."""

    def deliver_retained(self, burst: RetainedBurst) -> None:
        """Send a new subscription's retained messages, in order, as the client takes them."""


Client = TypeVar("Client", bound=LiveClient)


class Router(Generic[Client]):
    """Routing state and logic (see the module docstring).

    :param bus: the in-process bus that sees every client message.
    :param plugins: amqtt's plugins (topic checks and message events).
    :param max_inflight: QoS 1/2 messages a client may have unacknowledged.
    :param max_inflight_bytes: bytes of those messages' PUBLISH packets a client may have
        unacknowledged (0: no limit); one message always may, whatever its size.
    :param queue_policy: bounds and overflow policy of every session's queue, and the drop counters.
    :param offline: the persistent sessions whose clients are offline (expiry and cap).
    :param limits: the bounds on a topic's levels and a session's subscriptions, and their counters.
    :param retained_limits: the bounds on the retained messages, and their counters.
    :param clock: the reactor's time.
    :ivar sessions: client id -> session (connected ones, and persistent offline ones).
    :ivar subscriptions: topic filter -> client id -> (session, granted QoS); the filters with
        wildcards are also in a tree, by their levels, with the same client id -> target dicts.
    :ivar retained: topic -> its retained message (changed through :meth:`keep_retained` only,
        which keeps the tree of retained topics and the tallies below with it).
    :ivar retained_bytes: the retained messages' bytes, topics and payloads.
    :ivar retained_links: topic -> the cloud link whose downlink brought its retained message
        (a copy its cloud kept); a client's, a plugin's or the gateway's own are not in it.
    :ivar retained_own: the topics whose retained message the gateway itself (or a plugin)
        left, not a client and not a link's cloud.
    :ivar clients_retained_count: the retained messages clients left (neither a link's nor in
        :attr:`retained_own`): what ``max_retained_messages`` bounds.
    :ivar clients_retained_bytes: their bytes, topics and payloads: what ``max_retained_bytes`` bounds.
    :ivar live: client id -> the handler of its live connection.
    :ivar state_log: where acknowledged state changes are logged durably (set once restored).
    """

    log = Logger()

    def __init__(self, bus: LocalBus, plugins: AmqttPlugins, max_inflight: int, max_inflight_bytes: int,
                 queue_policy: QueuePolicy, offline: OfflineSessions, limits: SubscriptionLimits,
                 retained_limits: RetainedLimits, clock: IReactorTime) -> None:
        self.bus = bus
        self.limits = limits
        self.retained_limits = retained_limits
        self.plugins = plugins
        self.max_inflight = max_inflight
        self.max_inflight_bytes = max_inflight_bytes or sys.maxsize  # (one number to compare with, limit or not)
        self.queue_policy = queue_policy
        # (a drop for max_queued_bytes_total may come from an offline session's queue: checkpoint it)
        queue_policy.on_total_drop = self.state_changed
        self.offline = offline
        self.clock = clock
        self.sessions: dict[str, ClientSession] = {}
        self.subscriptions: dict[str, dict[str, Target]] = {}
        self._wildcard_filters: TopicTree[dict[str, Target]] = TopicTree()
        self.retained: dict[str, Retained] = {}
        self.retained_bytes = 0
        self.retained_links: dict[str, str] = {}
        self.retained_own: set[str] = set()
        self.clients_retained_count = 0
        self.clients_retained_bytes = 0
        self._retained_topics: TopicTree[str] = TopicTree()
        self.live: dict[str, Client] = {}
        self.state_log: StateLog | None = None
        self.dollar_publishes_dropped = 0
        #: PUBLISHes from clients and to clients, by QoS, and their payload bytes (read side);
        #: deliveries sent again with DUP when their persistent session's client came back.
        self.messages_in = [0, 0, 0]
        self.messages_out = [0, 0, 0]
        self.messages_resent = 0
        self.payload_bytes_in = 0
        self.payload_bytes_out = 0
        self._routes: dict[str, list[Target]] = {}
        self._session_lines = LogThrottle(SESSION_LOG_INTERVAL, offline.clock)
        #: called (without arguments) when persistent state changed.
        self.on_state_changed: Callable[[], None] | None = None
        #: without topic-checking plugins or message event listeners, a publish needs no await at all.
        self.fast_path = not plugins.checks_topics and not (
            plugins.wants(BrokerEvents.MESSAGE_RECEIVED) or plugins.wants(BrokerEvents.MESSAGE_BROADCAST))

    def state_changed(self) -> None:
        """Sessions, subscriptions, queues or retained messages changed: tell whoever checkpoints them."""
        if self.on_state_changed is not None:
            self.on_state_changed()

    def routes_changed(self, persistent: bool = True) -> None:
        """Subscriptions changed: forget the cached subscriber lists (and, when a persistent
        session's changed, tell whoever checkpoints them; a clean session is never saved)."""
        self._routes.clear()
        if persistent:
            self.state_changed()

    # -- read side ------------------------------------------------------------------------

    def outbox_for(self, session: ClientSession) -> Outbox:
        """The session's queue, created on first use."""
        outbox = session.outbox
        if outbox is None:
            outbox = session.outbox = Outbox(session.client_id, self.queue_policy, persistent=not session.clean)
        return outbox

    @property
    def messages_dropped(self) -> int:
        """Messages dropped because a session's queue was full (or all persistent ones were), since the start."""
        return sum(self.queue_policy.dropped)

    @property
    def routes_cached(self) -> int:
        """Topics whose subscribers are cached now (at most :data:`ROUTE_CACHE_SIZE`: then the
        cache starts again empty)."""
        return len(self._routes)

    @property
    def session_count(self) -> int:
        """Sessions known (connected, and persistent offline ones)."""
        return len(self.sessions)

    @property
    def live_client_ids(self) -> set[str]:
        """Client ids with a live connection (a copy)."""
        return set(self.live)

    @property
    def retained_count(self) -> int:
        """Retained messages held."""
        return len(self.retained)

    @property
    def subscription_count(self) -> int:
        """Subscriptions held: every session's topic filters (two sessions with one filter: two)."""
        return sum(map(len, self.subscriptions.values()))

    @property
    def has_client_subscribers(self) -> bool:
        """Whether any MQTT client holds a subscription."""
        return bool(self.subscriptions)

    # -- sessions -------------------------------------------------------------------------

    def create_offline_session(self, client_id: str) -> ClientSession:
        """A persistent session without a connection (restored from disk), listed offline from now."""
        session = self.sessions[client_id] = ClientSession(client_id, clean=False)
        self.offline.went_offline(client_id)
        return session

    def forget_session(self, client_id: str) -> None:
        """Drop every trace of ``client_id``'s session: entry, subscriptions, queue, routes.

        The end of a persistent session goes to the state log, so a restart does not bring it back.
        """
        session = self.sessions.pop(client_id, None)
        self.offline.came_back(client_id)
        self.queue_policy.forget(client_id)
        self.limits.forget(client_id)
        if session is None:
            return
        if self.state_log is not None and not session.clean:
            self.state_log.dropped(client_id)
        if session.outbox is not None:
            session.outbox.clear()
            session.outbox = None
        for topic_filter in session.filters:
            subscribers = self.subscriptions.get(topic_filter)
            if subscribers is not None:
                subscribers.pop(client_id, None)
                if not subscribers:
                    self._filter_unused(topic_filter)
        session.filters = {}
        self.routes_changed(not session.clean)

    def end_due_sessions(self) -> list[str]:
        """Forget the offline persistent sessions that expired or are over the cap; their client ids."""
        due = self.offline.due()
        for client_id in due:
            if client_id in self.sessions and client_id not in self.live:
                self.forget_session(client_id)
        count = self._session_lines.note(len(due)) if due else None
        if count is not None:
            self.log.info("ended {count} offline persistent sessions ({expired} expired, {evicted} over the "
                          "cap since the start)", count=count, expired=self.offline.expired,
                          evicted=self.offline.evicted)
        return due

    def qos2_received(self, session: ClientSession, packet_id: int) -> bool:
        """Note a client's QoS 2 PUBLISH's packet id in ``session`` (in memory: the handler
        logs it with :meth:`log_qos2_received`); whether it was noted already (a resend
        before PUBREL, §4.3.3)."""
        return session.received_qos2(packet_id)

    def log_qos2_received(self, session: ClientSession, packet_id: int) -> int:
        """Log that persistent ``session`` holds QoS 2 ``packet_id``, once its PUBLISH is
        stored wherever it goes: a held id whose message was never stored would make the
        client's resend after a crash look like a duplicate, and the message would be lost.

        :returns: the number of the logged change that PUBREC waits for, or 0 when nothing
            was logged (a clean session, or an id released meanwhile).
        """
        if session.clean or packet_id not in session.inflight_in:
            return 0
        self.state_changed()
        return self.state_log.qos2_received(session.client_id, packet_id) if self.state_log is not None else 0

    def qos2_released(self, session: ClientSession, packet_id: int) -> int:
        """Forget a QoS 2 packet id of ``session`` (PUBREL came, or its PUBLISH was never stored).

        :returns: the number of the logged change (a persistent session's) that PUBCOMP waits
            for, or 0 when nothing was logged.
        """
        if packet_id not in session.inflight_in:
            return 0
        session.released(packet_id)
        if session.clean:
            return 0
        self.state_changed()
        return self.state_log.qos2_released(session.client_id, packet_id) if self.state_log is not None else 0

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe_session(self, session: ClientSession, topic_filter: str, qos: int) -> None:
        """Add or replace (§3.8.4) ``session``'s subscription to ``topic_filter``; logged if persistent."""
        subscribers = self.subscriptions.get(topic_filter)
        if subscribers is None:
            subscribers = self.subscriptions[topic_filter] = {}
            if has_wildcard(topic_filter):
                self._wildcard_filters.add(topic_filter, subscribers)
        subscribers[session.client_id] = (session, qos)
        session.add_filter(topic_filter)
        self.routes_changed(not session.clean)
        if self.state_log is not None and not session.clean:
            self.state_log.subscribed(session.client_id, topic_filter, qos)

    def unsubscribe_session(self, session: ClientSession, topic_filter: str) -> bool:
        """Remove ``session``'s subscription to ``topic_filter``; whether it had one."""
        subscribers = self.subscriptions.get(topic_filter)
        if subscribers is None or subscribers.pop(session.client_id, None) is None:
            return False
        if not subscribers:
            self._filter_unused(topic_filter)
        session.remove_filter(topic_filter)
        self.routes_changed(not session.clean)
        if self.state_log is not None and not session.clean:
            self.state_log.unsubscribed(session.client_id, topic_filter)
        return True

    def _filter_unused(self, topic_filter: str) -> None:
        """``topic_filter`` has no subscriber left: forget it."""
        del self.subscriptions[topic_filter]
        if has_wildcard(topic_filter):
            self._wildcard_filters.remove(topic_filter)

    # -- routing ------------------------------------------------------------------------

    def publish_from_client(self, handler: Client, message: Incoming) -> None:
        """Route a client's PUBLISH, then have the handler acknowledge it (in arrival order)."""
        if self.fast_path:
            self.route(handler.session, message.topic, message.payload, message.qos, message.retain)
            if message.qos:
                handler.acknowledge(message)
            return
        if handler.inbound is None:
            handler.inbound = deque()
        handler.inbound.append(message)
        handler.undecided(message)
        if len(handler.inbound) == 1:
            self._next_inbound(handler)

    def _next_inbound(self, handler: Client) -> None:
        """The checked path (topic plugins, message events): one message of a client at a time, in order."""
        inbound = handler.inbound
        if not inbound:
            handler.answered()
            return
        message = inbound[0]
        plugins, client_id = self.plugins, handler.session.client_id
        amqtt_message = plugins.message(message.topic, message.payload, message.qos, message.retain,
                                        message.packet_id)
        plugins.fire(BrokerEvents.MESSAGE_RECEIVED, client_id=client_id, message=amqtt_message)

        def allowed(ok: bool) -> Deferred[None] | None:
            if not ok:
                return None
            plugins.fire(BrokerEvents.MESSAGE_BROADCAST, client_id=client_id, message=amqtt_message)
            return self.route_checked(handler.session, message.topic, message.payload, message.qos, message.retain)

        def done(_: object) -> None:
            inbound.popleft()
            handler.decided(message)
            if message.qos and handler.live:
                handler.acknowledge(message)
            self._next_inbound(handler)

        def failed(failure: Any) -> None:
            # Not acknowledged: the client sends it again when it reconnects.
            self.log.failure("a topic plugin failed on a message of {client_id!r} to {topic}; closing the "
                             "connection unacknowledged", failure, client_id=client_id,
                             topic=topic_for_log(message.topic))
            inbound.clear()
            handler.close_unacknowledged()

        plugins.topic_allowed(handler.plugin_view(), message.topic, Action.PUBLISH).addCallback(
            allowed).addCallbacks(done, failed)

    def _targets(self, source: ClientSession | None, topic: str, payload: bytes, qos: int,
                 retain: bool) -> list[Target]:
        if retain:
            self.retain_now(topic, payload, qos, source.client_id if source is not None else None)
        if source is not None and self.bus.has_subscribers and self.bus.wants(topic):
            self.bus.dispatch(BusMessage(topic, payload, qos, retain))
        targets = self._routes.get(topic)
        if targets is None:
            matching = self._wildcard_filters.filters_matching(topic)
            exact = self.subscriptions.get(topic)  # the filter without wildcards that is this topic
            if exact is not None:
                matching.append(exact)
            best: dict[str, Target] = {}
            for subscribers in matching:
                for client_id, target in subscribers.items():
                    known = best.get(client_id)
                    if known is None or target[1] > known[1]:
                        best[client_id] = target
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            targets = self._routes[topic] = list(best.values())
        return targets

    def route(self, source: ClientSession | None, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Deliver a message to every subscriber now (no topic plugin to ask)."""
        self._deliver(self._targets(source, topic, payload, qos, retain), topic, payload, qos)

    def route_checked(self, source: ClientSession | None, topic: str, payload: bytes, qos: int,
                      retain: bool) -> Deferred[None]:
        """Deliver a message to the subscribers the topic plugins let receive it."""
        targets = self._targets(source, topic, payload, qos, retain)
        if not self.plugins.checks_topics:
            self._deliver(targets, topic, payload, qos)
            return succeed(None)
        asked = [self.plugins.topic_allowed(self._view_of(session), topic, Action.RECEIVE) for session, _ in targets]

        def deliver(answers: list[bool]) -> None:
            self._deliver([target for target, ok in zip(targets, answers) if ok], topic, payload, qos)

        return gatherResults(asked, consumeErrors=True).addCallback(deliver)

    def _view_of(self, session: ClientSession) -> Any:
        handler = self.live.get(session.client_id)
        return handler.plugin_view() if handler is not None else session_view(session)

    def _deliver(self, targets: list[Target], topic: str, payload: bytes, qos: int) -> None:
        """One copy to each target: sent now or queued by its own handler, or queued offline.

        Nothing here waits for a subscriber or holds its publisher back: a subscriber that
        cannot keep up loses messages from its own queue (:mod:`gateway.broker.outbox`).
        """
        live = self.live
        template = PublishTemplate(topic, payload) if len(targets) > 1 else None
        for session, granted in targets:
            level = qos if qos < granted else granted
            handler = live.get(session.client_id)
            if handler is not None:
                handler.deliver(topic, payload, level, False, template)
            elif level and not session.clean:
                self.queue_offline(session, QueuedMessage(topic, payload, level, False))

    def queue_offline(self, session: ClientSession, message: QueuedMessage) -> None:
        """Queue ``message`` for ``session``, a persistent session whose client is offline; logged.

        One its queue drops itself (over its own bounds, or larger than ``max_queued_bytes_total``)
        changed nothing and is not logged: a start replaying the log would take it again, and a
        message larger than the total would then push out every older message of every session.
        """
        if not self.outbox_for(session).push(message):
            return
        if self.state_log is not None:
            self.state_log.queued(session.client_id, message)
        self.state_changed()

    # -- retained messages ----------------------------------------------------------------

    def retain_now(self, topic: str, payload: bytes, qos: int, client_id: str | None = None, link: str = "") -> None:
        """Keep ``payload`` as the topic's retained message; an empty payload removes it (§3.3.1.3).

        A client's message past ``max_retained_messages`` or ``max_retained_bytes`` (which
        bound the clients' retained messages only) is not kept (counted and logged; one that
        would replace the topic's older message removes that one, which is no longer the
        topic's last). The change is logged (the publisher's acknowledgement waits until it is
        durable), with whose it is, so that a restart bounds the same messages.

        :param client_id: the client whose PUBLISH or will it is; ``None``: the gateway's own
            message or a plugin's, which the bounds neither refuse nor count.
        :param link: the cloud link whose downlink brought it (:attr:`retained_links`).
        """
        own = client_id is None and not link
        if payload and client_id is not None:
            cause = self._over_bounds(topic, payload)
            if cause is not None:
                self.retained_limits.refuse(cause, client_id, topic, retained_size(topic, payload),
                                            self.clients_retained_count, self.clients_retained_bytes,
                                            topic in self.retained)
                payload = b""  # (removes an older one; changes nothing without)
        if not self.keep_retained(topic, payload, qos, link, own):
            return
        if self.state_log is not None:
            self.state_log.retained(topic, payload, qos, link, own)
        self.state_changed()
        if self.plugins.wants(BrokerEvents.RETAINED_MESSAGE):
            self.plugins.fire(BrokerEvents.RETAINED_MESSAGE, client_id=None,
                              retained_message=self.plugins.retained(topic, payload, qos))

    def keep_retained(self, topic: str, payload: bytes, qos: int, link: str = "", own: bool = False) -> bool:
        """Set the topic's retained message (an empty payload removes it), and do nothing else:
        no log, no event (:meth:`retain_now` does both; a restore does neither).

        :param link: the cloud link whose downlink brought it (:attr:`retained_links`); ``""``:
            none (a message from anyone else replaces a link's as the topic's).
        :param own: whether the gateway itself (or a plugin) left it (:attr:`retained_own`);
            a message neither a link's nor the gateway's own is a client's.

        :returns: whether anything changed (not for an empty payload to a topic without one).
        """
        retained = self.retained
        old = retained.get(topic)
        if (old is not None and payload and not link and not own and topic not in self.retained_links
                and topic not in self.retained_own):
            # a client's message replacing a client's (a device's status kept up to date, the
            # common case): the topic's bytes stay, only the payloads' differ
            grow = len(payload) - len(old.payload)
            self.retained_bytes += grow
            self.clients_retained_bytes += grow
            retained[topic] = Retained(payload, qos)
            return True
        if old is None:
            old_size = 0
        else:
            # (the topic's bytes are counted once, from the old message: a replacement's size
            # follows from its payload's)
            old_size = retained_size(topic, old.payload)
            if topic in self.retained_links:
                del self.retained_links[topic]
            elif topic in self.retained_own:
                self.retained_own.remove(topic)
            else:
                self.clients_retained_count -= 1
                self.clients_retained_bytes -= old_size
        if payload:
            if old is None:
                size = retained_size(topic, payload)
                self._retained_topics.add(topic, topic)
            else:
                size = old_size - len(old.payload) + len(payload)
            self.retained_bytes += size - old_size
            retained[topic] = Retained(payload, qos)
            if link:
                self.retained_links[topic] = link
            elif own:
                self.retained_own.add(topic)
            else:
                self.clients_retained_count += 1
                self.clients_retained_bytes += size
            return True
        if old is None:
            return False
        del retained[topic]
        self.retained_bytes -= old_size
        self._retained_topics.remove(topic)
        return True

    def restore_retained(self, topic: str, payload: bytes, qos: int, budget: RetainedBudget, link: str = "",
                         own: bool = False) -> None:
        """Set a saved retained message (an empty payload removes it) as :meth:`keep_retained`
        does, within the bounds as :meth:`retain_now` keeps them: a client's past them is
        dropped and counted in ``budget`` (an older one on its topic is removed, no longer the
        topic's last); a link's or the gateway's own is kept, as it was when it came."""
        if payload and not link and not own:
            if self._over_bounds(topic, payload) is not None:
                budget.drop(topic, retained_size(topic, payload))
                payload = b""
        self.keep_retained(topic, payload, qos, link, own)

    def _over_bounds(self, topic: str, payload: bytes) -> str | None:
        """The bound a client's ``payload`` retained on ``topic`` would break, or ``None``; a
        message of the gateway's own or a link's on the topic is not the client's to replace:
        the client's needs room as on a new topic."""
        old = self.retained.get(topic)
        if old is None or topic in self.retained_links or topic in self.retained_own:
            return self.retained_limits.over(self.clients_retained_count, self.clients_retained_bytes, None,
                                             retained_size(topic, payload))
        # (a client's replaced: the topic's bytes are in both sizes, only the payloads' differ)
        return self.retained_limits.over(self.clients_retained_count, self.clients_retained_bytes, len(old.payload),
                                         len(payload))

    def send_retained(self, topic_filter: str, granted: int, handler: Client) -> None:
        """Send the retained messages matching a new subscription, at the lower QoS (§3.3.1.3):
        those the topic plugins let the client receive, when there are topic plugins (a
        plugin that fails withholds them all, logged). A topic's message goes before those
        under it, as mosquitto sends them (siblings in the order of their names)."""
        retained = self.retained
        if has_wildcard(topic_filter):
            topics = self._retained_topics.topics_matching(topic_filter)
            if len(topics) > 1:  # the tree gives them in no particular order
                topics.sort(key=_levels)
        else:
            topics = [topic_filter] if topic_filter in retained else []
        if not topics:
            return
        messages: list[tuple[bytes, int]] = [retained[topic] for topic in topics]
        if not self.plugins.checks_topics:
            handler.deliver_retained(RetainedBurst(topics, messages, granted))
            return
        view = handler.plugin_view()
        asked = [self.plugins.topic_allowed(view, topic, Action.RECEIVE) for topic in topics]

        def deliver(answers: list[bool]) -> None:
            if handler.live:
                allowed = [n for n, ok in enumerate(answers) if ok]
                handler.deliver_retained(RetainedBurst([topics[n] for n in allowed], [messages[n] for n in allowed],
                                                       granted))

        gatherResults(asked, consumeErrors=True).addCallback(deliver).addErrback(
            lambda f: self.log.failure("a topic plugin failed on the retained messages for {client_id!r} matching "
                                       "{filter}; not sending them", f, client_id=handler.session.client_id,
                                       filter=topic_for_log(topic_filter)))
