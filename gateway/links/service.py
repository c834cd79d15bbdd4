"""The links service: routes local publishes into each link's journal stream and runs the links.

It installs the broker's durable-acknowledgement hook (:meth:`LinksService.persist_many`),
so a local QoS 1/2 publish is acknowledged only once it is durable in the stream of every
link it routes to; it keeps ``edge/connection/remote/status`` (retained) up to date and
answers ``edge/thing/request``.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Protocol as TypingProtocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, FirstError, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.blocking import RunBlocking, in_reactor_threads
from gateway.clockstep import steady_seconds
from gateway.broker.bus import BusMessage, request_handler
from gateway.broker.durablegate import LocalMessage
from gateway.links.http_settings import HTTPLinkSettings, HTTPLinksSettings
from gateway.links.reportaliases import DEFAULT_REPORT_PREFIX, report_aliases
from gateway.links.router import Router, Rule
from gateway.links.settings import DEFAULT_DEVICE_ID, LinksSettings
from gateway.links.cikplace import cik_path, volatile_cik_warnings
from gateway.links.sharedsessions import shared_sessions
from gateway.links.snapshot import LinksSnapshot, links_cursor_failing
from gateway.journal.errors import JournalClosedError
from gateway.journal.record import Record, with_seq
from gateway.links.stream import CURSOR, LinkStream
from gateway.links.valuetime import timestamp_headers
from gateway.logthrottle import NOT_PUBLISHED_LOG_INTERVAL, LogThrottle, not_published_since, since_last_line
from gateway.mqtt.topics import topic_for_log
from gateway.proxysettings import ProxySettings

if TYPE_CHECKING:  # imported where a link is made: a gateway without links does without them
    from gateway.links.httplink import HTTPLink  # (and treq)
    from gateway.links.mqtt import MQTTLink  # (and ClientService, automat)


#: Why a local message is refused once the links have stopped.
STOPPED = "the cloud links have stopped (a configuration change or a shutdown is under way): send it again"
#: Seconds between two log lines about routed QoS 0 messages the journal refused, at least.
QOS0_REFUSED_LOG_INTERVAL = 10.0


class DurableHookGate(TypingProtocol):
    """Where the links install their persist hook (:class:`gateway.broker.durablegate.DurableGate`)."""

    def install(self, persist_many: Any, wants: Callable[[str], bool]) -> None:
        """Start persisting the topics ``wants`` accepts with ``persist_many``."""


class LinksBus(TypingProtocol):
    """What the links use of the broker's in-process bus (:class:`gateway.broker.bus.LocalBus`)."""

    def subscribe(self, topic_filter: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Call ``callback`` with each local message matching ``topic_filter``; returns the unsubscribe."""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, *,
                link: str = "") -> "Deferred[None]":
        """Publish to local clients (a downlink, from ``link``'s cloud; a status)."""

    def retained_link(self, topic: str) -> str:
        """The link whose downlink brought the topic's retained message (``""``: none did)."""


class LinkStreams(TypingProtocol):
    """Where each link's journal stream comes from (:class:`gateway.journal.service.JournalService`)."""

    def stream(self, name: str) -> Any:
        """The stream ``name`` (a :class:`~gateway.links.stream.LinkStream`)."""

    def streams(self) -> Mapping[str, Any]:
        """Every stream by name, those the journal found on disk included."""


class LinksService(Service):
    """Runs every configured cloud link.

    :param settings: the ``links:`` section.
    :param reactor: the reactor (asyncio), also the clock.
    :param bus: the broker's in-process bus: downlinks and statuses are published on it,
        thing requests come from it.
    :param journal: the started :class:`~gateway.journal.service.JournalService` (anything
        with ``stream(name)`` returning a :class:`~gateway.links.stream.LinkStream`); each
        link reads and writes the stream ``link-<name>``.
    :param identity: ``(tenant_id, device_id)`` of this gateway.
    :param thing_id: the gateway's thing id (``namespace:name``), the ``deviceId`` answered on
        ``edge/thing/response`` as Kanto's apps expect it; default ``<tenant_id>:<device_id>``.
    :param retry_policy: reconnect delays for every link (default: from each link's settings).
    :param http_links: the ``http_links:`` section (HTTP links, which share the router).
    :param http_client: ``settings -> treq HTTPClient`` for each HTTP link.
    :param proxy: ``gateway.proxy``: the MQTT links connect through its proxy when it has one
        (the HTTP links' ``http_client`` is given it by the caller).
    :param state_dir: where HTTP links keep their CIK (``links/<name>.cik``).
    :param durable_gate: the broker's durable-acknowledgement gate (``tree.py`` passes the
        broker service's): client publishes the links route are acknowledged only once
        durable in every link's stream, and not at all once the links have stopped (the
        hook stays, refusing: :meth:`persist_many`). ``None``: no such hook.
    :param run_blocking: runs blocking work off the reactor thread (the HTTP links' CIK files,
        the check of where they lie); default: the reactor's thread pool.
    :param report_prefix: where the gateway's reports are published (``telemetry.topic_prefix``):
        an HTTP link knows the aliases its routes send them on (:mod:`gateway.links.reportaliases`).
    :param hold_downlink: hold what the clouds send (commands, values) until
        :meth:`open_downlink`, unacknowledged: the gateway's tree opens it once every service
        has started, so that a command the cloud kept for the gateway while it was offline,
        sent right after the link connects, finds the services that take it subscribed.
    :raises ValueError: for a route or downlink that cannot be compiled (naming its link), or
        an HTTP link named like an MQTT link.
    """

    name = "links"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: LinksSettings, reactor: Any, bus: LinksBus | None, journal: LinkStreams | None,
                 identity: tuple[str, str] = ("default", DEFAULT_DEVICE_ID),
                 retry_policy: Callable[[int], float] | None = None,
                 http_links: HTTPLinksSettings | None = None,
                 http_client: Callable[[HTTPLinkSettings], Any] | None = None, state_dir: str | Path = ".",
                 durable_gate: DurableHookGate | None = None, thing_id: str = "",
                 hold_downlink: bool = False, proxy: ProxySettings = ProxySettings(),
                 run_blocking: RunBlocking | None = None, report_prefix: str = DEFAULT_REPORT_PREFIX) -> None:
        self.settings = settings
        self.report_prefix = report_prefix
        self.run_blocking = run_blocking or in_reactor_threads(reactor)
        self.proxy = proxy
        self.durable_gate = durable_gate
        self.http_settings = http_links or HTTPLinksSettings()
        self.http_client = http_client
        self.state_dir = Path(state_dir)
        clash = set(settings.links) & set(self.http_settings.links)
        if clash:
            raise ValueError(f"links named both in links: and http_links: {', '.join(sorted(clash))}")
        self.reactor = reactor
        self.bus = bus
        self.journal = journal
        self.identity = identity
        self.thing_id = thing_id or f"{identity[0]}:{identity[1]}"
        self.retry_policy = retry_policy
        tenant, device = identity
        routes = [(name, link.routes) for name, link in settings.links.items()]
        routes += [(name, link.routes) for name, link in self.http_settings.links.items()]
        self.router = Router([Rule.compile(name, r.filter, r.topic, r.qos) for name, link_routes in routes
                              for r in link_routes], tenant, device)
        self.links: dict[str, Any] = {}  # MQTTLink or HTTPLink
        #: the links :meth:`stopService` stopped: the snapshot shows them then, with their last counters.
        self._stopped_links: list[Any] = []
        #: ``(alias, value, when)`` listeners for values HTTP links receive from the cloud.
        self.cloud_values: list[Callable[[str, str, float], None]] = []
        self.status: dict[str, dict[str, Any]] = {}
        self._unsubscribe: Callable[[], None] | None = None
        #: Cloud messages waiting for :meth:`open_downlink`, in arrival order (``None``: open).
        self._held: list[tuple[tuple[str, bytes, int, bool, str], Deferred[Any]]] | None = [] if hold_downlink else None
        #: when routed QoS 0 messages the journal refused are logged: a full disk, or a cloud down
        #: for hours under reject-new, refuses every one, and devices go on publishing.
        self._qos0_refused_lines = LogThrottle(QOS0_REFUSED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        # (a link that keeps failing to connect changes its status, and publishes it, at each attempt)
        self._status_refused_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        self._thing_refused_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(reactor))

    # -- life -------------------------------------------------------------------------

    def _bus(self) -> LinksBus:
        if self.bus is None:
            raise ValueError("the links have no local bus")
        return self.bus

    def _stream(self, name: str) -> LinkStream:
        if self.journal is None:
            raise ValueError(f"link {name}: no journal to keep its stream in")
        stream: LinkStream = self.journal.stream(f"link-{name}")
        return stream

    def startService(self) -> Deferred[None]:
        """Build the links, install the durable-ack hook, start connecting.

        Fires once every link's cursor exists (connections come up in the background).
        """
        super().startService()
        now = self._timestamp()
        if self.settings.links:
            from gateway.links.mqtt import MQTTLink
        shared = self._tell_shared_sessions()
        for name, link_settings in self.settings.links.items():
            self.links[name] = MQTTLink(name, link_settings, self._stream(name), self.reactor, self.identity,
                                        partial(self._publish_local, link=name), self._link_status,
                                        self.retry_policy, self.proxy, shared.get(name, ()))
            self.status[name] = {"connected": False, "timestamp": now, "cause": "not connected yet"}
        for name, http_settings in self.http_settings.links.items():
            self.links[name] = self._http_link(name, http_settings)
            self.status[name] = {"connected": False, "timestamp": now, "cause": "not connected yet"}
        self._tell_leftover_streams()
        self._tell_default_device_id()
        if self.http_settings.links:  # (it stats up from each CIK file and reads the mount table)
            self.run_blocking(volatile_cik_warnings, self.http_settings.links, self.state_dir).addCallbacks(
                self._tell_volatile_ciks,
                lambda failure: self.log.failure("where the CIK files lie could not be checked", failure))
        if self.links and self.durable_gate is not None:
            self.durable_gate.install(self.persist_many, self.router.routes)
        self._unsubscribe = self._bus().subscribe(self.settings.thing_request_topic, request_handler(self._thing_request))
        self._publish_status()
        d = gatherResults([link.start() for link in self.links.values()], consumeErrors=True)
        # (a link that cannot start says why itself: a CIK file its user may not read)
        d.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)
        return d.addCallback(lambda _: None)

    def _tell_volatile_ciks(self, warnings: list[str]) -> None:
        """Warn, once at start, of each Exosite link whose CIK a reboot would lose
        (:func:`~gateway.links.cikplace.volatile_cik_warnings`). Nothing changes: a box may be
        meant to start afresh."""
        for warning in warnings:
            self.log.warn("{problem}", problem=warning)

    def _tell_default_device_id(self) -> None:
        """Warn, once at start, of cloud links that run on the default ``gateway.device_id``:
        every box left on it is the same device to the cloud (an MQTT link's client id, an
        Exosite link's serial, when they take ``{device}``, as by default), so two of them
        take each other's cloud session over at every reconnect. Nothing changes: it may be
        the only box."""
        if self.identity[1] != DEFAULT_DEVICE_ID:
            return
        # (a link with a client id or serial of its own is its own device to the cloud)
        named = sorted([name for name, mqtt in self.settings.links.items() if "{device}" in mqtt.client_id]
                       + [name for name, http in self.http_settings.links.items()
                          if http.mode == "exosite" and "{device}" in http.serial])
        if named:
            self.log.warn("cloud links ({names}) run on the default gateway.device_id {device!r}: two gateways left"
                          " on it are one device to the cloud and take each other's cloud session over at every"
                          " reconnect; set gateway.device_id to this gateway's own id (configuration.md)",
                          names=", ".join(named), device=DEFAULT_DEVICE_ID)

    def _tell_shared_sessions(self) -> dict[str, tuple[str, ...]]:
        """Warn, once at start, of MQTT links that connect to one broker with one client id: each
        one's connection closes the other's, for ever (:mod:`gateway.links.sharedsessions`).
        Nothing changes: a second route to one cloud may be meant.

        :return: for each link that shares its session, the other links it shares it with.
        """
        if len(self.settings.links) < 2:
            return {}
        others: dict[str, tuple[str, ...]] = {}
        for shared in shared_sessions(self.settings.links, *self.identity):
            self.log.warn("{problem}", problem=shared.text, links=shared.links, broker=shared.broker,
                          client_id=shared.client_id)
            for name in shared.links:
                others[name] = tuple(other for other in shared.links if other != name)
        return others

    def _tell_leftover_streams(self) -> None:
        """Warn of each stream ``link-<name>`` of a link no longer configured (removed, or
        renamed) that holds records its link had not sent: they stay in the journal, which
        never drops what is not acknowledged but by its limits, and go up once a link of that
        name is configured again."""
        leftovers = {} if self.journal is None else self.journal.streams()
        for stream_name, stream in sorted(leftovers.items()):
            name = stream_name.removeprefix("link-")
            waiting = stream.unacked(CURSOR) if name != stream_name and name not in self.links else 0
            if waiting:
                self.log.warn("journal {stream}: no link {name!r} is configured: its {waiting} records not sent yet "
                              "stay in the journal and go up once a link of that name is configured again (or drop them:"
                              " gatewayctl journal drop {stream} --force)",
                              stream=stream_name, name=name, waiting=waiting)

    def _http_link(self, name: str, settings: HTTPLinkSettings) -> HTTPLink:
        if self.http_client is None:
            raise ValueError(f"link {name}: no HTTP client given for HTTP links")

        from gateway.links.httplink import HTTPLink

        return HTTPLink(name, settings, self._stream(name), self.reactor, self.identity, self.http_client(settings),
                        self._publish_local, self._link_status, cik_path(name, settings, self.state_dir),
                        self.run_blocking, self.retry_policy,
                        self._cloud_value, report_aliases(self.router, name, self.report_prefix))

    def _cloud_value(self, alias: str, value: str, when: float) -> None:
        for listener in self.cloud_values:
            listener(alias, value, when)

    def stopService(self) -> Deferred[None]:
        """Close every connection cleanly; fires when they are closed. The durable-ack hook
        stays in the broker's gate and refuses from now on (:meth:`persist_many`): the broker
        runs on a little longer (it stops after the links), and a PUBLISH it acknowledged at
        once without the hook would not be in the journal."""
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        links, self.links = list(self.links.values()), {}
        self._stopped_links = links
        return DeferredList([link.stop() for link in links]).addCallback(lambda _: None)

    # -- uplink ---------------------------------------------------------------------------

    def persist(self, topic: str, payload: bytes, qos: int, retain: bool,
                timestamp: float | None = None) -> Deferred[Any] | None:
        """Append a local publish to every stream it routes to.

        :param timestamp: the value's own time when it is not the moment it arrives (the
            local HTTP ingest passes a timestamped record's): kept in the record's
            ``timestamp`` header (:mod:`gateway.links.valuetime`), which an HTTP link sends;
            the record's ``received`` is now either way.

        :return: for QoS 1/2, a Deferred firing when every append is durable; ``None`` for
            QoS 0 (appended without waiting) and for unrouted topics.
        """
        d: Deferred[Any] = Deferred()
        return d if self.persist_many([(topic, payload, qos, retain)], d.callback, d.errback, timestamp) and qos \
            else None

    def persist_many(self, messages: Sequence[LocalMessage], on_durable: Callable[[object], object],
                     on_failed: Callable[[Failure], object], timestamp: float | None = None,
                     reserved: bool = False) -> bool:
        """Append local publishes, in order, to every stream each routes to; call back once
        for all of them.

        The broker's durable acknowledgement hands it the PUBLISHes of one socket read
        (:class:`~gateway.broker.durablegate.DurableGate`): each link's records go to its
        stream in one :meth:`~gateway.journal.stream.Stream.append_many`, whose batch
        completion is one call, not one per message.

        :param messages: ``(topic, payload, qos, retain)`` each, in arrival order.
        :param on_durable: called once every append is durable. For QoS 0 messages only,
            also once the journal refused them (a refusal is logged here, as
            :meth:`_qos0_not_journaled` says; nobody waits for a QoS 0 message, but the broker
            counts those of a client still in memory: docs/broker.md, A publisher that does not wait).
        :param on_failed: called with the first failure instead, when one of the messages is
            QoS 1/2.
        :param timestamp: as for :meth:`persist`.
        :param reserved: the appends may use each stream's reserve
            (:data:`~gateway.journal.retention.RESERVED_BYTES` beyond ``max_bytes``): the
            gateway's command replies, which the cloud waits for, get in while a stream is full
            under ``reject-new`` (the bus's :meth:`~gateway.broker.bus.LocalBus.publish`).
        :return: ``True`` when one of the two will be called; ``False`` when the messages are
            routed to no link (or, after the stop, are QoS 0 only: logged).

        Once the service has stopped (a shutdown, or a configuration change restarting the
        services: the broker's connections and the ingest's requests still in progress may
        call it), nothing is appended: ``on_failed`` is called with
        :class:`~gateway.journal.errors.JournalClosedError` (:data:`STOPPED`), so the broker
        closes the connection unacknowledged and the ingest answers 503: the client sends
        again, to the services that come next.
        """
        if not self.running:
            return self._refuse(messages, on_failed)
        route, links, new = self.router.route, self.links, tuple.__new__
        now = self.reactor.seconds()
        headers = timestamp_headers(timestamp)
        per_link: dict[str, list[Record]] = {}
        waits = False
        for topic, payload, qos, retain in messages:
            for destination in route(topic):
                records = per_link.get(destination.link)
                if records is None:
                    if destination.link not in links:
                        continue
                    records = per_link[destination.link] = []
                # tuple.__new__, not Record(): the NamedTuple's __new__ is a Python call per message
                records.append(new(Record, (destination.topic, payload, destination.qos, retain, now, headers, 0)))
                waits = waits or qos > 0
        if not per_link:
            return False
        if len(per_link) == 1:
            name, records = next(iter(per_link.items()))
            durable = self._offer_if_behind(links[name], records, on_durable)
            if waits:
                links[name].stream.append_many(records, durable, on_failed, reserved)
            else:
                self._append_qos0(links[name].stream, messages[0][0], records, durable, on_durable, reserved)
            return True
        waiting = [len(per_link)]

        def one_durable(_: object) -> None:
            waiting[0] -= 1
            if waiting[0] == 0:
                on_durable(None)

        def one_failed(failure: Failure) -> None:
            if waiting[0] > 0:
                waiting[0] = -1  # the first failure is the result; later ones are dropped
                on_failed(failure)

        for name, records in per_link.items():
            durable = self._offer_if_behind(links[name], records, one_durable)
            if waits:
                links[name].stream.append_many(records, durable, one_failed, reserved)
            else:
                self._append_qos0(links[name].stream, messages[0][0], records, durable, one_durable, reserved)
        return True

    def _append_qos0(self, stream: Any, topic: str, records: list[Record], on_durable: Callable[[int], object],
                     then: Callable[[object], object], reserved: bool) -> None:
        """Append a batch of QoS 0 ``records`` (the first on ``topic``); the stream's refusal
        does :meth:`_qos0_not_journaled`, then ``then(None)``: they no longer wait.

        A refusal by a limit comes while ``append_many`` runs, at the first record refused; the
        records after it are tried too, some stored: the line counts those refused (the stream's
        refusals meanwhile), not the whole batch (a flood of 100 past a full stream was logged
        "100 refused" where 47 were). A failed write, later, refused them all."""
        refusing = getattr(stream, "refusing", None)
        before = refusing.total if refusing is not None else 0
        early: list[Failure] = []
        running = [True]

        def refused(failure: Failure) -> None:
            if running[0]:
                early.append(failure)
                return
            self._qos0_not_journaled(topic, failure.getErrorMessage(), len(records))
            then(None)

        stream.append_many(records, on_durable, refused, reserved)
        running[0] = False
        if early:
            count = (refusing.total - before if refusing is not None else 0) or len(records)
            self._qos0_not_journaled(topic, early[0].getErrorMessage(), min(count, len(records)))
            then(None)

    def _qos0_not_journaled(self, topic: str, error: str, messages: int) -> None:
        """Warn that ``messages`` routed QoS 0 messages (the first on ``topic``) were not
        journaled: at the first, then at most once per :data:`QOS0_REFUSED_LOG_INTERVAL`, the
        line counting the messages refused since the last one."""
        count = self._qos0_refused_lines.note(messages)
        if count is not None:
            self.log.warn("QoS 0 messages on {topic} not journaled: {error} ({since})", topic=topic_for_log(topic),
                          error=error, since=since_last_line(
                              count, "refused", f"logged at most once every {QOS0_REFUSED_LOG_INTERVAL:g} s while they"
                              " go on", self._qos0_refused_lines.first))

    def _refuse(self, messages: Sequence[LocalMessage], on_failed: Callable[[Failure], object]) -> bool:
        """Refuse what comes after the stop: a failure for QoS 1/2, a warning for routed QoS 0."""
        if any(qos > 0 for _, _, qos, _ in messages):
            on_failed(Failure(JournalClosedError(STOPPED)))
            return True
        routed = [topic for topic, _, _, _ in messages if self.router.route(topic)]
        if routed:
            self._qos0_not_journaled(routed[0], STOPPED, len(routed))
        return False

    @staticmethod
    def _offer_if_behind(link: MQTTLink | HTTPLink, records: list[Record],
                         then: Callable[[int], object]) -> Callable[[int], object]:
        """``then``, preceded by handing the records to the link's forwarder if it is behind
        (else its cursor reads them from the journal's tail)."""
        def durable(last: int) -> None:
            forwarder = link.forwarder
            if forwarder.behind:
                for seq, record in enumerate(records, last - len(records) + 1):
                    forwarder.offer(with_seq(record, seq))
            then(last)

        return durable

    # -- local side -----------------------------------------------------------------------

    def open_downlink(self) -> None:
        """Publish the cloud messages held so far on the bus, in arrival order (each link
        acknowledges them to the cloud once the broker took them), and every later one at once."""
        held, self._held = self._held, None
        for message, done in held or ():
            maybeDeferred(self._from_cloud, *message).chainDeferred(done)

    def hold_downlink(self) -> None:
        """Hold what the clouds send from now on, unacknowledged, as before :meth:`open_downlink`:
        the gateway's tree calls it when its services begin to stop (the gateway's stop, a
        configuration change), since the command dispatcher and the other services that take
        cloud messages stop before the links. A held QoS 1/2 message is never acknowledged, so
        the cloud broker sends it again once a link is back (the persistent session), where it
        was acknowledged with nobody left to run it."""
        if self._held is None:
            self._held = []

    def _publish_local(self, topic: str, payload: bytes, qos: int, retain: bool, link: str = "") -> Deferred[Any]:
        if self._held is not None:
            done: Deferred[Any] = Deferred()
            self._held.append(((topic, payload, qos, retain, link), done))
            return done
        return self._from_cloud(topic, payload, qos, retain, link)

    def _from_cloud(self, topic: str, payload: bytes, qos: int, retain: bool, link: str) -> Deferred[Any]:
        """Publish what ``link``'s cloud sent on the local ``topic``. An empty message without
        the retain flag on a topic whose retained message that link brought is its cloud
        removing its copy (MQTT 3.1.1 delivers the removal live, without the flag): it is
        published as an empty retained message, which removes the local copy too (durably:
        the link acknowledges the cloud once the broker's state holds it) and is no request
        to the gateway's services. A local client's retained message is never removed so."""
        bus = self._bus()
        if link and not payload and not retain and bus.retained_link(topic) == link:
            self.log.info("link {link}: the cloud removed its retained message on {topic}; so does the local broker",
                          link=link, topic=topic_for_log(topic))
            retain = True
        return bus.publish(topic, payload, qos, retain, link=link)

    def _link_status(self, name: str, connected: bool, cause: str) -> None:
        previous = self.status.get(name, {})
        if previous.get("connected") == connected and previous.get("cause") == cause:
            return
        self.status[name] = {"connected": connected, "timestamp": self._timestamp(), "cause": cause}
        self._publish_status()

    def _timestamp(self) -> int:
        """Now, for a status: whole Unix seconds, as Kanto's ``ConnectionStatus`` has them (an int64)."""
        return int(self.reactor.seconds())

    def _publish_status(self) -> None:
        """One retained message: Kanto's fields for the first link, and every link by name."""
        first = next(iter(self.status.values()), {"connected": False, "timestamp": self._timestamp(),
                                                  "cause": "no cloud link configured"})
        payload = json.dumps(dict(first, links=self.status)).encode()
        try:
            d = self._bus().publish(self.settings.status_topic, payload, 1, True)
        except ValueError as exc:
            self.log.error("cannot publish the link status: {error}", error=str(exc))
            return
        d.addCallbacks(lambda _: self._status_refused_lines.reset(), self._status_not_published)

    def _status_not_published(self, failure: Failure) -> None:
        """Log a link status the broker or the journal refused: the first, then at most one per
        :data:`~gateway.logthrottle.NOT_PUBLISHED_LOG_INTERVAL` until one is published."""
        count = self._status_refused_lines.note()
        if count is not None:
            self.log.debug("link status not published: {error} ({since})", error=failure.getErrorMessage(),
                           since=not_published_since(count))

    def _thing_request(self, message: BusMessage) -> None:
        """Answer an identity request on ``thing_response_topic``; an answer the broker or a
        route's journal stream refuses is a throttled warning (it was a bus subscriber's
        failure, a traceback per request)."""
        payload = json.dumps({"deviceId": self.thing_id, "tenantId": self.identity[0],
                              "policyId": self.settings.policy_id})
        d = maybeDeferred(self._bus().publish, self.settings.thing_response_topic, payload.encode(), 1, False)
        d.addCallbacks(lambda _: self._thing_refused_lines.reset(), self._thing_not_published)

    def _thing_not_published(self, failure: Failure) -> None:
        """Warn of an identity answer not published: the first, then at most one per
        :data:`~gateway.logthrottle.NOT_PUBLISHED_LOG_INTERVAL` until one is."""
        count = self._thing_refused_lines.note()
        if count is not None:
            self.log.warn("answer on {topic} not published: {error} ({since})", topic=self.settings.thing_response_topic,
                          error=failure.getErrorMessage(), since=not_published_since(count))

    def snapshot(self) -> LinksSnapshot:
        """Every link's :class:`~gateway.links.snapshot.LinkSnapshot`, in config order (no I/O);
        once the service has stopped, the links it stopped (``stopped``, with their counters
        at the end: a configuration change carries them into the next ``usage_report``)."""
        links = tuple(link.snapshot() for link in self.links.values() or self._stopped_links)
        return LinksSnapshot(links, links_cursor_failing(links), self.router.cached)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per link: connected, sent, acknowledged, pending in memory."""
        return {name: {"connected": link.is_connected, "sent": link.forwarder.sent, "acked": link.forwarder.acked,
                       "pending": link.forwarder.pending} for name, link in self.links.items()}
