"""One cloud MQTT link: a ClientService that keeps a connection, forwards the stream, takes commands."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.certinfo import CertificateInfo, at, certificate_from_x509, read_certificate
from gateway.clockstep import steady_seconds
from gateway.links.causes import describe, peer_of
from gateway.links.endpoint import ReportingEndpoint, link_endpoint
from gateway.links.forwarder import Forwarder, TokenBucket
from gateway.links.listeners import ListenerCalls
from gateway.links.losses import LOSS_CHECK_INTERVAL, LossReporter
from gateway.links.protocol import MQTTClientProtocol, SessionOptions
from gateway.links.rate import RateMeter
from gateway.links.reconnect import ReconnectPolicy
from gateway.links.router import Router, Rule
from gateway.links.settings import LinkSettings, fill_identity
from gateway.links.snapshot import LinkSnapshot
from gateway.links.stream import CURSOR, LinkStream
from gateway.links.takeover import TakeoverWatch
from gateway.logthrottle import LogThrottle, more_of_a_batch
from gateway.mqtt.packets import Publish
from gateway.mqtt.topics import topic_for_log
from gateway.proxysettings import ProxySettings

#: ``(topic, payload, qos, retain) -> Deferred`` publishing on the local broker.
LocalPublish = Callable[[str, bytes, int, bool], "Deferred[Any]"]
#: ``(link_name, connected, cause)`` on every change of a link's state.
StatusListener = Callable[[str, bool, str], None]
#: Seconds between two log lines about cloud messages no downlink mapping takes, at least.
UNMAPPED_LOG_INTERVAL = 10.0
#: Seconds between two log lines saying that a link still cannot connect, for the same cause, at least.
FAILING_LOG_INTERVAL = 600.0


class MQTTLink(Factory):
    """A cloud link: owns the connection's ClientService, the forwarder and the downlink.

    :param name: the link's name in the config.
    :param settings: its ``links.<name>`` section.
    :param stream: the journal stream its routes append to.
    :param reactor: the reactor (endpoint, clock).
    :param identity: ``(tenant, device)`` for placeholders.
    :param local_publish: republishes downlink messages on the local broker.
    :param on_status: told of every connect and disconnect.
    :param retry_policy: reconnect delays (default: the fleet-safe ReconnectPolicy from the settings).
    :param proxy: ``gateway.proxy``: the link connects through its proxy when it has one
        (:func:`~gateway.links.endpoint.link_endpoint`).
    :param shares_with: this gateway's other links that connect to the same broker with the same
        client id, named by the warning of a session taken over.
    """

    log = Logger()
    #: ClientService starts and stops the factory at every connection attempt: Factory's
    #: "Starting factory"/"Stopping factory" lines were two of the three a down cloud logged
    #: at each retry (the link's own lines say what happens to it).
    noisy = False

    def __init__(self, name: str, settings: LinkSettings, stream: LinkStream, reactor: Any,
                 identity: tuple[str, str], local_publish: LocalPublish, on_status: StatusListener,
                 retry_policy: Callable[[int], float] | None = None, proxy: ProxySettings = ProxySettings(),
                 shares_with: tuple[str, ...] = ()) -> None:
        self.name = name
        self.settings = settings
        self.stream = stream
        self.reactor = reactor
        self.identity = identity
        self.local_publish = local_publish
        self.on_status = on_status
        tenant, device = identity
        self.downlink = Router([Rule.compile(name, d.filter, d.topic, d.qos) for d in settings.downlink],
                               tenant, device, every_rule=True)
        #: when a cloud message no downlink mapping takes is logged (a server sending what the link
        #: did not subscribe to may send a flood of it).
        self._unmapped_lines = LogThrottle(UNMAPPED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        #: when a connection attempt that failed for the same cause as the one before is logged
        #: (a cloud down for hours: a retry every ``backoff_max`` seconds).
        self._failing_lines = LogThrottle(FAILING_LOG_INTERVAL, lambda: steady_seconds(reactor))
        #: calls what the link was handed from outside (a bug in one is logged, throttled, and the link goes on)
        self._listeners = ListenerCalls(self.log, name, lambda: steady_seconds(reactor))
        bucket = None
        if settings.rate_messages or settings.rate_bytes:
            bucket = TokenBucket(settings.rate_messages, settings.rate_bytes, reactor)
        limits = settings.cloud_limits()
        self.forwarder = Forwarder(stream, CURSOR, settings.window, reactor, bucket,
                                   settings.drain_order == "interleave", linger=settings.linger_ms / 1000,
                                   resend_limit=settings.resend_limit, limits=limits, link=name)
        will = None
        if settings.will_topic:
            will = (fill_identity(settings.will_topic, tenant, device), settings.will_payload.encode(),
                    settings.will_qos, settings.will_retain)
        self.options = SessionOptions(
            settings.client_id_for(tenant, device), settings.keepalive,
            settings.clean_session, settings.username, settings.password, will, settings.connect_timeout,
            settings.ping_timeout, settings.max_packet_size)
        #: tells a session taken over by another client with the same id (a cloned gateway).
        self.takeovers = TakeoverWatch(name, self.options.client_id, settings.stable_after,
                                       lambda: steady_seconds(reactor), reactor, shares_with)
        #: the fleet-safe schedule (None when the caller gave its own policy, as tests do).
        self.reconnect = None if retry_policy is not None else ReconnectPolicy(
            reactor, settings.backoff_initial, settings.backoff_factor, settings.backoff_max,
            settings.stable_after, settings.min_connect_interval)
        policy = retry_policy or self.reconnect
        self.peer = peer_of(settings.endpoint, settings.hostname, settings.ca_file)
        self.endpoint = link_endpoint(reactor, settings, proxy)
        self.service = ClientService(ReportingEndpoint(self.endpoint, self._connect_failed), self,
                                     retryPolicy=policy, clock=reactor)
        # The live connection, not Factory's protocol class (buildProtocol is this class's own).
        self.protocol: MQTTClientProtocol | None = None  # type: ignore[assignment]
        self.is_connected = False
        self.cause = "not connected yet"
        #: the cause of the last "cannot connect" line since the link was last connected (None: none yet)
        self._failing_cause: str | None = None
        self.stopped = False
        # The read side's counters (see snapshot()).
        self.connects = 0
        self.connected_since: float | None = None
        self.last_error = ""
        self.bytes_up = 0  # of connections that have ended
        self.bytes_down = 0
        self.drain = RateMeter(steady_seconds(reactor))
        self.certificates: tuple[CertificateInfo, ...] = tuple(
            read_certificate(f"link {name} {kind}", path)
            for kind, path in (("client", settings.cert_file), ("ca", settings.ca_file))
            if path and settings.endpoint.startswith(("tls:", "ssl:")))
        self.server_certificate: CertificateInfo | None = None
        self.losses = LossReporter(name, settings.loss_topic, stream, identity, reactor,
                                   lambda record: self.forwarder.offer(record), limits)
        self._loss_check = LoopingCall(self.check_losses)
        self._loss_check.clock = reactor
        #: Told of each connect and disconnect, and offered every cloud message before the
        #: downlink (the twin's shadow sync): ``link_connected(protocol)``,
        #: ``link_disconnected()``, ``cloud_message(publish) -> bool`` (True: taken).
        self.extensions: list[Any] = []

    # -- life -------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Create the cursor, then start connecting (fires once the cursor exists)."""
        d = self.stream.cursor(self.forwarder.cursor)

        def go(_: Any) -> None:
            self.service.startService()
            if self.settings.loss_topic:
                self._loss_check.start(LOSS_CHECK_INTERVAL, now=False)

        return d.addCallback(go)

    def stop(self) -> Deferred[None]:
        """Disconnect cleanly and stop reconnecting; fires when the connection is closed."""
        self.forwarder.stop()
        self.stopped = True
        if self._loss_check.running:
            self._loss_check.stop()
        self.cause = "gateway stopping"
        if self.protocol is not None:
            self.protocol.close("gateway stopping")
        return self.service.stopService()

    def buildProtocol(self, addr: Any) -> MQTTClientProtocol:
        """A protocol for a new connection to the cloud."""
        if self.reconnect is not None:  # (it sends CONNECT as soon as it is connected)
            self.reconnect.connect_sent()
        return MQTTClientProtocol(self, self.options, self.reactor, self.peer, self.name)

    def _connect_failed(self, failure: Failure) -> None:
        """A connection attempt failed (refused, DNS, timeout): say why in the status."""
        cause = describe(failure, self.peer)
        self.takeovers.failed()
        self._attempt_failed(cause)
        self.last_error = cause
        self._tell_status(False, cause)

    def _attempt_failed(self, cause: str) -> None:
        """A connection attempt failed, or its connection ended before the cloud accepted it,
        for ``cause``: logged at once when the cause is new, else at most once per
        :data:`FAILING_LOG_INTERVAL` with the number of attempts it stands for. (Compared with the
        last such line's cause, not the link's: a lost connection's cause is no such line.)"""
        if cause != self._failing_cause:
            self._failing_lines.reset()
            self._failing_lines.note()
            self.log.warn("link {link} cannot connect: {cause}", link=self.name, cause=cause)
            self._failing_cause = cause
        else:
            count = self._failing_lines.note()
            if count is not None:
                self.log.warn("link {link} still cannot connect ({count} failed attempts since the last such line): "
                              "{cause}", link=self.name, count=count, cause=cause)
        self.cause = cause

    # -- what the protocol reports ---------------------------------------------------------

    def connected(self, protocol: MQTTClientProtocol, session_present: bool) -> None:
        """Subscribe to the downlink, resend and forward, publish the state."""
        self.protocol = protocol
        if self.reconnect is not None:
            self.reconnect.accepted()
        self.takeovers.accepted()
        self.is_connected = True
        self.cause = ""
        self._failing_cause = None  # (the next failed attempt is logged at once, whatever its cause)
        self._failing_lines.reset()
        self.connects += 1
        self.connected_since = self.reactor.seconds()
        peer = getattr(protocol.transport, "getPeerCertificate", None)
        certificate = peer() if peer is not None else None
        if certificate is not None:
            self.server_certificate = certificate_from_x509(f"link {self.name} server", certificate)
        if self.takeovers.taken_over is None:  # (else the takeover warning stands for these lines)
            self.log.info("link {link} connected (session present: {present})", link=self.name,
                          present=session_present)
        filters: dict[str, int] = {}  # (a filter several mappings share: subscribed once, at their highest QoS)
        for d in self.settings.downlink:
            filters[d.filter] = max(d.qos, filters.get(d.filter, 0))
        if filters:
            protocol.subscribe(list(filters.items()))
        self.forwarder.attach(protocol)
        for extension in self.extensions:
            self._listeners.tell("an extension that it connected", extension.link_connected, protocol)
        self._tell_status(True, "")
        self.check_losses()

    def disconnected(self, protocol: MQTTClientProtocol, cause: str) -> None:
        """Keep unacknowledged records for the next connection; publish the state."""
        self.bytes_up += protocol.bytes_sent
        self.bytes_down += protocol.bytes_received
        if self.stopped and protocol is not self.protocol:
            return  # an attempt the gateway's stop ended: no failure of the cloud's
        self.last_error = cause
        if self.reconnect is not None:
            code = getattr(protocol, "refused_code", None) if protocol is not self.protocol else None
            if code is not None:
                self.reconnect.refused(code)
            elif protocol is self.protocol:
                self.reconnect.lost()
            else:  # made, never accepted: no CONNACK in time, closed before it, or a malformed one
                self.reconnect.not_accepted()
        if protocol is not self.protocol:  # never accepted: refused, timed out, malformed CONNACK
            self.takeovers.failed()
            self._attempt_failed(cause)
            self._tell_status(False, cause)
            return
        self.takeovers.ended(protocol.closed_by_server)
        self.protocol = None
        self.is_connected = False
        self.connected_since = None
        self.cause = cause
        self.forwarder.detach()
        for extension in self.extensions:
            self._listeners.tell("an extension that it disconnected", extension.link_disconnected)
        if protocol.peer_dead:
            self.log.warn("link {link} disconnected: {cause}", link=self.name, cause=cause)
        elif self.takeovers.taken_over is None:
            self.log.info("link {link} disconnected: {cause}", link=self.name, cause=cause)
        self._tell_status(False, cause)

    def _tell_status(self, connected: bool, cause: str) -> None:
        """Tell ``on_status`` (:meth:`~gateway.links.listeners.ListenerCalls.tell`: a listener's bug is logged;
        the connection, or the reconnects, go on)."""
        self._listeners.tell("its status", self.on_status, self.name, connected, cause)

    def pubacks(self, packet_ids: list[int]) -> None:
        """Pass the cloud's acknowledgements to the forwarder."""
        before = self.forwarder.acked
        self.forwarder.pubacks(packet_ids)
        self.drain.add(self.forwarder.acked - before, steady_seconds(self.reactor))

    def message(self, publish: Publish) -> Deferred[Any]:
        """Republish a cloud message locally under the topic of each downlink mapping it matches
        (unless an extension takes it); fires once the broker took them all."""
        if any(extension.cloud_message(publish) for extension in self.extensions):
            return succeed(None)
        destinations = self.downlink.route(publish.topic)
        if not destinations:
            count = self._unmapped_lines.note()
            if count is not None:
                self.log.warn("link {link}: no downlink mapping for {topic}, dropped{more}", link=self.name,
                              topic=topic_for_log(publish.topic), more=more_of_a_batch(count, 1))
            return succeed(None)
        published = [self.local_publish(target.topic, publish.payload, min(publish.qos, target.qos), publish.retain)
                     for target in destinations]
        return published[0] if len(published) == 1 else gatherResults(published, consumeErrors=True)

    # -- the read side ---------------------------------------------------------------------

    def snapshot(self) -> LinkSnapshot:
        """This link's state and counters now (no I/O)."""
        now = self.reactor.seconds()
        protocol = self.protocol
        forwarder = self.forwarder
        certificates = self.certificates + ((self.server_certificate,) if self.server_certificate else ())
        return LinkSnapshot(
            self.name, self.settings.endpoint,
            "stopped" if self.stopped else "connected" if self.is_connected else "disconnected",
            self.connected_since, self.last_error, self.connects, max(self.connects - 1, 0),
            len(forwarder.inflight), forwarder.sent, forwarder.acked, forwarder.resent,
            self.bytes_up + (protocol.bytes_sent if protocol is not None else 0),
            self.bytes_down + (protocol.bytes_received if protocol is not None else 0),
            self.stream.unacked(forwarder.cursor), forwarder.pending,
            self.drain.rate(steady_seconds(self.reactor)), tuple(at(info, now) for info in certificates),
            forwarder.save_failing.now, self.takeovers.taken_over, forwarder.topics_cached)

    # -- loss reports ---------------------------------------------------------------------

    def check_losses(self) -> None:
        """Send the journal's loss report upstream (through the stream) when it has changed,
        only while connected (see :class:`gateway.links.losses.LossReporter`)."""
        if self.is_connected:
            self.losses.check()
