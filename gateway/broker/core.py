"""The gateway's MQTT 3.1.1 broker: the session life cycle, on Twisted, in our code.

:class:`GatewayBroker` decides every CONNECT, SUBSCRIBE and UNSUBSCRIBE, publishes wills
and routes messages (:class:`~gateway.broker.routing.Router`); each accepted connection is
served by a :class:`~gateway.broker.handler.SessionHandler` (QoS flows, keep-alive through
:class:`~gateway.broker.connection.MQTTConnection`). amqtt is used only for what users
bring from it, its plugins (:mod:`gateway.broker.amqtt_adapter`).

CONNECT (§3.1):

- the client is authenticated by amqtt's auth plugins *before* its client id touches any
  session: a refused client gets CONNACK 5 (4 is not used: amqtt's plugins answer yes or
  no), and cannot take over, clear or rewrite the session of a client using that id. A
  plugin that fails gets CONNACK 3 (server unavailable);
- an empty client id is given one (``auto-<hex>``) with CleanSession=1, and refused with
  CONNACK 2 with CleanSession=0 (§3.1.3-8);
- a client id already connected: the old connection is closed and its will published
  (§3.1.4-2);
- CleanSession=1 discards any previous session and ends the new one with its connection;
  CleanSession=0 resumes the previous persistent session (CONNACK session present, §3.2.2.2),
  resends its unacknowledged deliveries with DUP and sends what queued while it was away.

SUBSCRIBE (§3.8): each filter is checked by the topic plugins and granted the QoS asked for;
a repeated filter replaces the old subscription (§3.8.4); a new filter with more than
``max_topic_levels`` levels, or one past the session's ``max_subscriptions``, gets 0x80
(:mod:`gateway.broker.limits`); a persistent session's SUBACK
waits until the subscriptions are durable; retained messages follow the SUBACK, at the
lower QoS (§3.3.1.3). Wills (§3.1.2.5) are published when a connection ends without
DISCONNECT (keep-alive expiry, network error, protocol violation, takeover), retained if
asked; never at broker shutdown.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Callable, Iterator

from amqtt.session import Session
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.amqtt_adapter import Action, AmqttPlugins, BrokerEvents, session_view
from gateway.broker.bus import LocalBus
from gateway.broker.clientsession import ClientSession, Will
from gateway.broker.connection import STOP_GRACE, MQTTConnection
from gateway.broker.durable_ack import DurableAckHandler
from gateway.broker.durablegate import DurableGate
from gateway.broker.handler import SessionHandler
from gateway.broker.limits import DEFAULT_MAX_SUBSCRIPTIONS, DEFAULT_MAX_TOPIC_LEVELS, SubscriptionLimits
from gateway.broker.outbox import DEFAULT_MAX_QUEUED_TOTAL, QueuePolicy
from gateway.broker.retainedlimits import DEFAULT_MAX_RETAINED_BYTES, DEFAULT_MAX_RETAINED_MESSAGES, RetainedLimits
from gateway.broker.routing import Router
from gateway.broker.sessions import DEFAULT_EXPIRATION, DEFAULT_MAX_OFFLINE, OfflineSessions, sweep_interval
from gateway.clockstep import BootClock, steady_seconds, watch_steps
from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since, since_last_line
from gateway.mqtt.packets import SUBACK_FAILURE, Packet, connack, suback, unsuback
from gateway.mqtt.topics import topic_for_log
from gateway.shown import shown_repr

#: CONNACK return codes used here (§3.2.2.3).
IDENTIFIER_REJECTED, SERVER_UNAVAILABLE, NOT_AUTHORIZED = 2, 3, 5
#: Seconds between two log lines about connections taken over (they are counted in between).
TAKEOVER_LOG_INTERVAL = 60.0


class GatewayBroker(Router[SessionHandler]):
    """The broker (see the module docstring).

    :param plugins: amqtt's plugins, loaded from the ``broker:`` section.
    :param bus: the bus that sees every message local clients publish.
    :param clock: the reactor's time (keep-alive, expiry, rate-limited logs).
    :param handler_class: the protocol handler of each connection (a subclass of
        :class:`SessionHandler` to change how publishes are acknowledged).
    :param durable_gate: where the durable acknowledgement's persist hook is installed.
    :param max_inflight: unacknowledged QoS 1/2 messages per client.
    :param max_inflight_bytes: bytes of their PUBLISH packets per client (0: no limit).
    :param max_queued_messages: bound of each session's queue, in messages.
    :param max_queued_bytes: bound of each session's queue, in payload bytes.
    :param queue_overflow: what a full queue drops of QoS 1/2 messages (``drop_new`` or
        ``drop_oldest``; see :mod:`gateway.broker.outbox`).
    :param max_queued_bytes_total: bound of the persistent sessions' queues together, in
        :func:`~gateway.broker.outbox.queued_cost` (0: none).
    :param persistent_client_expiration: seconds an offline persistent session is kept (0: no expiry).
    :param max_offline_sessions: most persistent sessions kept for offline clients.
    :param max_topic_levels: the most levels of a filter a client subscribes to, of a topic a
        plugin or the gateway publishes to (0: any; a client's PUBLISH and will topics are
        checked by its connection's framing).
    :param max_subscriptions: the most filters one session holds (0: any).
    :param max_retained_messages: the most retained messages a client's PUBLISH may leave (0: any).
    :param max_retained_bytes: the most bytes (topics and payloads) of retained messages a
        client's PUBLISH may leave (0: any).
    :param boot_clock: this boot's clock, saved beside the offline times so that a restart in
        the same boot counts them on it (:mod:`gateway.broker.offlinetimes`; None: not known,
        the wall clock's alone).
    :ivar refused: CONNECTs refused since the start (any return code).
    """

    log = Logger()

    def __init__(self, plugins: AmqttPlugins, bus: LocalBus, clock: IReactorTime, *,
                 handler_class: type[SessionHandler] = DurableAckHandler,
                 durable_gate: DurableGate | None = None, max_inflight: int = 100, max_inflight_bytes: int = 4 << 20,
                 max_queued_messages: int = 1000, max_queued_bytes: int = 16 << 20,
                 queue_overflow: str = "drop_new", max_queued_bytes_total: int = DEFAULT_MAX_QUEUED_TOTAL,
                 persistent_client_expiration: float = DEFAULT_EXPIRATION,
                 max_offline_sessions: int = DEFAULT_MAX_OFFLINE, max_topic_levels: int = DEFAULT_MAX_TOPIC_LEVELS,
                 max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS,
                 max_retained_messages: int = DEFAULT_MAX_RETAINED_MESSAGES,
                 max_retained_bytes: int = DEFAULT_MAX_RETAINED_BYTES, boot_clock: BootClock | None = None) -> None:
        super().__init__(bus, plugins, max_inflight, max_inflight_bytes,
                         QueuePolicy(max_queued_messages, max_queued_bytes, queue_overflow,
                                     partial(steady_seconds, clock), max_total=max_queued_bytes_total, timers=clock),
                         OfflineSessions(persistent_client_expiration, max_offline_sessions,
                                         partial(steady_seconds, clock)),
                         SubscriptionLimits(max_topic_levels, max_subscriptions, partial(steady_seconds, clock)),
                         RetainedLimits(max_retained_messages, max_retained_bytes, partial(steady_seconds, clock)),
                         clock)
        plugins.bind(self)
        self.boot_clock = boot_clock
        self.handler_class = handler_class
        self.durable_gate = durable_gate if durable_gate is not None else DurableGate()
        self.refused = 0
        self._refusal_lines = LogThrottle(REFUSED_LOG_INTERVAL, partial(steady_seconds, clock))
        #: when a connection taken over is logged (two clients that share a client id take
        #: each other's connection over, each time they reconnect, for ever).
        self._takeover_lines = LogThrottle(TAKEOVER_LOG_INTERVAL, partial(steady_seconds, clock))
        #: when a message to a ``$`` topic dropped is logged (a client may send them in a loop).
        self._dollar_lines = LogThrottle(REFUSED_LOG_INTERVAL, partial(steady_seconds, clock))
        self._sweeper: LoopingCall | None = None
        self._unwatch_steps: Callable[[], None] | None = None

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Fire the plugins' start events; start looking for expired offline sessions, and
        hearing of the wall clock's steps."""
        if self.offline.expiration > 0:
            self._sweeper = LoopingCall(self.end_due_sessions)
            self._sweeper.clock = self.clock
            self._sweeper.start(sweep_interval(self.offline.expiration), now=False)
        self._unwatch_steps = watch_steps(self.clock, self._clock_stepped)
        return self.plugins.start()

    def _clock_stepped(self, step: float) -> None:
        """The wall clock stepped (NTP after a boot at 1970, say): the checkpoint's offline
        times were read off the clock before it; a new checkpoint saves them on this one
        (they are kept on the steady clock, :mod:`gateway.broker.sessions`)."""
        if len(self.offline):
            self.state_changed()

    def shutdown(self, grace: float = STOP_GRACE) -> Deferred[None]:
        """Close every connection in order (no wills: the clients did nothing wrong), close the
        plugins; log the queue overflows summed up since the last summary.

        :param grace: seconds a connection has to send what it holds before it is aborted
            (:meth:`~gateway.broker.connection.MQTTConnection.close_in_order`).
        """
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        if self._unwatch_steps is not None:
            self._unwatch_steps()
            self._unwatch_steps = None
        self.queue_policy.lines.stop()  # (the sessions summed up since the last summary; no timer left)
        for handler in list(self.live.values()):
            handler.will = None
            handler.connection.close_in_order(grace)
        return self.plugins.close()

    # -- CONNECT --------------------------------------------------------------------------------

    def client_connecting(self, connection: MQTTConnection, packet: Packet) -> None:
        """Decide a validated CONNECT: authenticate, then make or resume the session and CONNACK."""
        fields = packet.fields
        client_id, clean = fields["client_id"], fields["clean_session"]
        if not client_id:
            if not clean:  # §3.1.3-8: a persistent session needs an id to be found again
                self._refuse(connection, IDENTIFIER_REJECTED, "", "an empty client id with CleanSession=0",
                             fields.get("username"))
                return
            client_id = connection.client_id = f"auto-{uuid.uuid4().hex}"
        session = ClientSession(client_id, clean)
        session.username = fields.get("username")
        will = Will(*fields["will"]) if "will" in fields else None
        view = session_view(session, will=will, password=fields.get("password"),
                            address=connection.peer_address(), certificate=connection.peer_certificate(),
                            keep_alive=fields["keep_alive"])
        self.plugins.authenticate(view).addCallbacks(
            self._authenticated, self._authentication_failed,
            callbackArgs=(connection, session, will, view), errbackArgs=(connection, client_id, session.username))

    def connection_of(self, client_id: str) -> MQTTConnection | None:
        """The connection the client ``client_id`` is served on now, or ``None``."""
        handler = self.live.get(client_id)
        return handler.connection if handler is not None else None

    def _authenticated(self, accepted: bool, connection: MQTTConnection, fresh: ClientSession, will: Will | None,
                       view: Session) -> None:
        # A client that hung up meanwhile is still served what it sent before (§3.1.4): its
        # session starts, its packets are handled, then it ends (the will goes out without a
        # DISCONNECT). Not once the broker gave up on the CONNECT (its deadline passed).
        if connection.abandoned or (connection.lost and not accepted):
            return
        client_id = fresh.client_id
        if not accepted:
            self._refuse(connection, NOT_AUTHORIZED, client_id, "not authorized", fresh.username)
            return
        view.password = None  # kept no longer than the authentication needed it
        old = self.live.get(client_id)
        if old is not None:
            self._log_takeover(client_id)
            self._end_connection(old, taken_over=True)
            old.connection.close_in_order()
        existing = self.sessions.get(client_id)
        present = existing is not None and not existing.clean and not fresh.clean
        if present:
            assert existing is not None
            session = existing
            user_changed = session.username != fresh.username
            session.username = fresh.username
        else:
            if existing is not None:
                self.forget_session(client_id)  # CleanSession=1 discards the old session (§3.1.2-6)
            session = self.sessions[client_id] = fresh
            user_changed = fresh.username is not None
        if user_changed and not session.clean and self.state_log is not None:
            self.state_log.user(client_id, session.username)  # topic plugins decide on it after a restart
        if present and client_id in self.offline and self.state_log is not None:
            self.state_log.online(client_id)  # a restart after a crash does not count it offline since it left
        handler = self.handler_class(self, session, connection, will,
                                     view if self.plugins.checks_topics else None)
        self.live[client_id] = handler
        self.offline.came_back(client_id)
        connection.write(connack(present, 0))
        # (connected before start: start hands over the packets that came meanwhile, and a
        # client that already hung up ends in it, which fires disconnected)
        self.plugins.fire(BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=view)
        handler.start()
        if not session.clean:
            self.state_changed()

    def _log_takeover(self, client_id: str) -> None:
        """Log that ``client_id`` took its old connection over: at most once per
        :data:`TAKEOVER_LOG_INTERVAL`, a warning when the line stands for more than one."""
        count = self._takeover_lines.note()
        if count == 1:
            self.log.info("client {client_id!r} connected again: closing its old connection", client_id=client_id)
        elif count is not None:
            self.log.warn("client {client_id!r} connected again: closing its old connection ({count} connections "
                          "taken over since the last such line; clients that share a client id take each other's "
                          "connection over at every reconnect: give each its own)", client_id=client_id, count=count)

    def _authentication_failed(self, failure: Failure, connection: MQTTConnection, client_id: str,
                               username: str | None) -> None:
        self.log.failure("authenticating client {client_id!r} failed", failure, client_id=client_id)
        if not connection.lost:
            self._refuse(connection, SERVER_UNAVAILABLE, client_id, "an authentication plugin failed", username)

    def _refuse(self, connection: MQTTConnection, code: int, client_id: str, reason: str,
                username: str | None = None) -> None:
        """CONNACK ``code`` and close; logged at most once per :data:`REFUSED_LOG_INTERVAL`,
        with the CONNECT's user name when it has one (never its password)."""
        self.refused += 1
        count = self._refusal_lines.note()
        if count is not None:
            self.log.warn("refusing client {client_id!r}{user} from {address}: {reason} (CONNACK {code}; {since})",
                          client_id=client_id, user="" if username is None else f" (user {shown_repr(username)})",
                          address=connection.peer_text(), reason=reason, code=code, since=refused_since(count))
        connection.refuse(code)

    # -- the end of a connection ---------------------------------------------------------------------

    def connection_ended(self, handler: SessionHandler) -> None:
        """``handler``'s connection is gone: publish its will, end or park its session."""
        self._end_connection(handler, taken_over=False)

    def _end_connection(self, handler: SessionHandler, taken_over: bool) -> None:
        """Once per handler: publish the will (no DISCONNECT came), then, unless another connection
        took the client id over, end a clean session or list a persistent one offline."""
        if not handler.live:
            return
        handler.stop()
        will, handler.will = handler.will, None
        session = handler.session
        client_id = session.client_id
        if self.live.get(client_id) is handler:
            del self.live[client_id]
            if not taken_over and self.sessions.get(client_id) is session:
                if session.clean:
                    self.forget_session(client_id)
                else:
                    self.offline.went_offline(client_id)
                    if self.state_log is not None:
                        self.state_log.offline(client_id)  # so its idle time goes on across a restart
                    self.end_due_sessions()
            if not session.clean:
                self.state_changed()
        if will is not None:
            self.publish_will(session, will)
        self.plugins.fire(BrokerEvents.CLIENT_DISCONNECTED, client_id=client_id, client_session=handler.view)

    def dollar_dropped(self, client_id: str, topic: str, what: str) -> None:
        """Count a client's message (a PUBLISH, its will) to a ``$`` topic, which is dropped
        (§4.7.2); logged at most once per :data:`REFUSED_LOG_INTERVAL`, with how many were
        dropped since the last such line.

        :param what: the message, for the log (``a publish``, ``the will``).
        """
        self.dollar_publishes_dropped += 1
        count = self._dollar_lines.note()
        if count is not None:
            self.log.warn("dropping {what} of {client_id!r} to {topic}: clients do not publish to $ topics ({since})",
                          what=what, client_id=client_id, topic=topic_for_log(topic),
                          since=since_last_line(count, "dropped", f"logged at most once every {REFUSED_LOG_INTERVAL:g}"
                                                " s while they go on"))

    def publish_will(self, session: ClientSession, will: Will) -> None:
        """Publish a will as its client's message (§3.1.2.5), checked like any PUBLISH of that client:
        one to a ``$`` topic is dropped and counted, as its PUBLISH would be (§4.7.2); one on
        a topic the links route goes to their journal, as its PUBLISH would."""
        if will.topic[:1] == "$":
            self.dollar_dropped(session.client_id, will.topic, "the will")
            return
        self.log.info("publishing the will of {client_id!r} to {topic}", client_id=session.client_id,
                      topic=topic_for_log(will.topic))
        if self.fast_path:
            self._journal_will(session, will)
            self.route(session, will.topic, will.payload, will.qos, will.retain)
            return

        def allowed(ok: bool) -> Deferred[None] | None:
            if not ok:
                return None
            self._journal_will(session, will)
            return self.route_checked(session, will.topic, will.payload, will.qos, will.retain)

        self.plugins.topic_allowed(session_view(session), will.topic, Action.PUBLISH).addCallback(
            allowed).addErrback(lambda f: self.log.failure("publishing the will of {client_id!r} failed", f,
                                                           client_id=session.client_id))

    def _journal_will(self, session: ClientSession, will: Will) -> None:
        """Hand a will to the durable gate (the links' journal streams) where a link routes its
        topic; nobody waits for it, so a failed append is only logged."""
        maybeDeferred(self.durable_gate.persist, will.topic, will.payload, will.qos, will.retain).addErrback(
            lambda f: self.log.warn("the will of {client_id!r} to {topic} was not journaled: {error}",
                                    client_id=session.client_id, topic=topic_for_log(will.topic),
                                    error=f.getErrorMessage()))

    # -- SUBSCRIBE and UNSUBSCRIBE ----------------------------------------------------------------------

    def subscribe(self, handler: SessionHandler, packet_id: int, filters: list[tuple[str, int]]) -> None:
        """Decide each filter, SUBACK (once durable for a persistent session), then the retained messages."""
        log = self.state_log
        mark = log.appended if log is not None else 0
        handler.owe_answer()  # (the SUBACK may wait for the state log or the plugins: see _suback)
        if not self.plugins.checks_topics:
            self._subscribed(self._grant(handler, filters, [True] * len(filters)), handler, packet_id, filters, mark)
            return
        asked = [self.plugins.topic_allowed(handler.plugin_view(), topic_filter, Action.SUBSCRIBE)
                 for topic_filter, _ in filters]
        gatherResults(asked, consumeErrors=True).addCallback(
            lambda answers: self._subscribed(self._grant(handler, filters, answers), handler, packet_id, filters, mark)
        ).addErrback(lambda f: self._not_subscribed(f, handler))

    def _grant(self, handler: SessionHandler, filters: list[tuple[str, int]], allowed: list[bool]) -> list[int]:
        codes = []
        session, limits = handler.session, self.limits
        for (topic_filter, qos), ok in zip(filters, allowed):
            if not ok or not handler.live or not limits.allows(session.client_id, session.filters, topic_filter):
                codes.append(SUBACK_FAILURE)
                continue
            self.subscribe_session(handler.session, topic_filter, qos)
            codes.append(qos)
        return codes

    def _subscribed(self, codes: list[int], handler: SessionHandler, packet_id: int,
                    filters: list[tuple[str, int]], mark: int) -> None:
        log = self.state_log
        if log is not None and log.appended > mark:  # a persistent session's: SUBACK once durable
            log.when_durable(log.appended, lambda: self._suback(codes, handler, packet_id, filters),
                             lambda failure: self._not_subscribed(failure, handler))
        else:
            self._suback(codes, handler, packet_id, filters)

    def _suback(self, codes: list[int], handler: SessionHandler, packet_id: int,
                filters: list[tuple[str, int]]) -> None:
        if not handler.live:
            return
        handler.connection.write(suback(packet_id, codes))
        for (topic_filter, _), code in zip(filters, codes):
            if code != SUBACK_FAILURE:
                self.plugins.fire(BrokerEvents.CLIENT_SUBSCRIBED, client_id=handler.session.client_id,
                                  topic=topic_filter, qos=code)
                self.send_retained(topic_filter, code, handler)
        handler.answer_written()

    def _not_subscribed(self, failure: Failure, handler: SessionHandler) -> None:
        handler.connection.factory.not_acknowledged(f"not acknowledging the SUBSCRIBE of "
                                                    f"{handler.session.client_id!r}: {failure.getErrorMessage()}; "
                                                    "closing the connection")
        handler.connection.abort()

    def unsubscribe(self, handler: SessionHandler, packet_id: int, filters: list[str]) -> None:
        """Remove the session's subscriptions to ``filters`` (those it has), then UNSUBACK (§3.10.4)."""
        for topic_filter in filters:
            if self.unsubscribe_session(handler.session, topic_filter):
                self.plugins.fire(BrokerEvents.CLIENT_UNSUBSCRIBED, client_id=handler.session.client_id,
                                  topic=topic_filter)
        handler.connection.write(unsuback(packet_id))

    # -- from inside the gateway ----------------------------------------------------------------

    def check_topic_levels(self, topic: str) -> None:
        """Refuse a topic a plugin publishes to with more than ``max_topic_levels`` levels, as a
        client's PUBLISH to it would be: the broker keeps one node per level of a retained topic.

        :raises ValueError: naming the topic and the limit.
        """
        if self.limits.too_deep(topic):
            raise ValueError(f"topic {topic_for_log(topic)} has {topic.count('/') + 1} levels, more than the "
                             f"broker's max_topic_levels ({self.limits.max_topic_levels})")

    def publish_internal(self, topic: str, payload: bytes, qos: int, retain: bool, link: str = "") -> None:
        """Publish from inside the gateway to local MQTT clients (and retain it if asked); the
        topic plugins, if any, are asked for each delivery, as for a client's PUBLISH (one that
        fails withholds the message, logged).

        :param link: the cloud link whose downlink brought it: a retained one is kept as that
            link's (:attr:`~gateway.broker.routing.Router.retained_links`).
        """
        if retain:
            self.retain_now(topic, payload, qos, link=link)
        self.route_checked(None, topic, payload, qos, False).addErrback(
            lambda f: self.log.failure("a topic plugin failed on a delivery of {topic}; not delivered", f,
                                       topic=topic_for_log(topic)))

    def state_durable(self) -> Deferred[None] | None:
        """A Deferred for when every state change logged so far is durable (``None``: it is,
        or nothing is logged)."""
        log = self.state_log
        if log is None or log.durable >= log.appended:
            return None
        return log.wait(log.appended)

    # -- amqtt's BrokerContext (gateway.broker.amqtt_adapter.PluginBroker) ----------------------

    def plugin_publish(self, topic: str, payload: bytes, qos: int | None, retain: bool) -> None:
        """A plugin's broadcast (routed like an internal publish) or retain (kept as the topic's
        retained message, or removed by an empty payload, and sent to no one now, as amqtt's
        ``retain_message`` does); QoS 0 when none is given.

        :raises ValueError: the topic has more than ``max_topic_levels`` levels.
        """
        self.check_topic_levels(topic)
        if retain:
            self.retain_now(topic, payload, qos or 0)
        else:
            self.publish_internal(topic, payload, qos or 0, False)

    def plugin_sessions(self) -> Iterator[ClientSession]:
        """Every known session."""
        return iter(list(self.sessions.values()))

    def plugin_subscriptions(self) -> Iterator[tuple[str, ClientSession, int]]:
        """``(filter, session, granted QoS)`` of every subscription."""
        return iter([(topic_filter, session, qos) for topic_filter, subscribers in self.subscriptions.items()
                     for session, qos in subscribers.values()])

    def plugin_retained(self) -> Iterator[tuple[str, bytes, int]]:
        """``(topic, payload, qos)`` of every retained message."""
        return iter([(topic, message.payload, message.qos) for topic, message in self.retained.items()])

    def plugin_subscribe(self, client_id: str, topic_filter: str, qos: int) -> int:
        """Subscribe the known session ``client_id`` to ``topic_filter``, as its SUBSCRIBE would
        be: 0x80 for a new filter too deep or past ``max_subscriptions`` (counted and logged).

        :returns: the granted QoS, or :data:`~gateway.mqtt.packets.SUBACK_FAILURE`.
        """
        session = self.sessions.get(client_id)
        if session is None:
            raise KeyError(f"no session for client {client_id!r}")
        if not self.limits.allows(client_id, session.filters, topic_filter):
            return SUBACK_FAILURE
        self.subscribe_session(session, topic_filter, qos)
        return qos

