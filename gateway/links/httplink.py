"""One HTTP cloud link: forwards its journal stream in batches (Exosite device API or JSON).

At least once: the stream's cursor moves only after the cloud answered 2xx for the whole
batch, but for the records it refused for good, which are counted as lost
(:mod:`gateway.links.httprefusals`). One request at a time, at most one per
``min_interval`` (Exosite: one a second per device). 429 and 503 wait as ``Retry-After``
says; other failures back off with full jitter. In ``exosite`` mode the link activates
itself when it has no CIK, keeps the CIK durably (mode 0600), re-activates once on 401,
and long-polls its downlink aliases.

Retries are per request, not per connection (HTTP keeps no session to re-establish, and a
429's ``Retry-After`` is an answer to one request), so ``ClientService`` does not fit; the
delays come from an injected retry policy, full-jitter backoff by default, as for the
MQTT links.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.certinfo import CertificateInfo, at, certificate_from_x509, read_certificate
from gateway.clockstep import steady_seconds
from gateway.degraded import Failing
from gateway.links.endpoint import full_jitter_backoff
from gateway.links.exosite import CIKFile, CIKRejected, CloudAPI, RequestFailed, text_value
from gateway.links.forwarder import (CURSOR_FAILURE_LOG_INTERVAL, CURSOR_RETRY_INTERVAL, log_cursor_save_failed,
                                     log_cursor_saved_again)
from gateway.links.httprefusals import CLOSES_TO_REFUSE, URL_REFUSALS, RefusedRecords, refusal
from gateway.links.httpclient import close_connections, on_server_certificate
from gateway.links.http_settings import AliasDownlinkSettings, HTTPLinkSettings
from gateway.links.listeners import ListenerCalls
from gateway.links.losses import LOSS_CHECK_INTERVAL, LossReporter
from gateway.links.mqtt import LocalPublish, StatusListener
from gateway.links.pollmarks import PollMarks
from gateway.links.rate import RateMeter
from gateway.links.readretry import READ_FAILURE_LOG_INTERVAL, READ_RETRY_INTERVAL, ReadRetry, log_read_again, \
    log_read_failed
from gateway.links.reportaliases import ReportAliases
from gateway.links.settings import fill_identity
from gateway.links.snapshot import CURSOR_NOT_SAVED, LinkSnapshot
from gateway.links.stream import CURSOR, LinkStream
from gateway.links.valuetime import value_time
from gateway.logthrottle import LogThrottle
from gateway.shown import shown_url


def detached(d: Deferred[Any]) -> Deferred[Any]:
    """A Deferred with ``d``'s result that can be cancelled without cancelling ``d``.

    The journal's Deferreds have no canceller: cancelling one would make the journal's
    own later callback fail. Stopping the link cancels only the copy.
    """
    copy: Deferred[Any] = Deferred()

    def forward(result: Any) -> None:
        if copy.called:
            return
        if isinstance(result, Failure):
            copy.errback(result)
        else:
            copy.callback(result)

    d.addBoth(forward)
    return copy


#: The cause a stopped link gives.
STOPPING = "gateway stopping"


class HTTPLink:
    """An HTTP link, with the shape the links service expects of a link.

    It is its own ``forwarder`` (``sent``, ``acked``, ``pending``; it never takes live
    records: it reads everything from its cursor).

    :param name: the link's name in the config.
    :param settings: its ``http_links.links.<name>`` section.
    :param stream: its journal stream.
    :param reactor: the clock (and nothing else: requests go through ``client``).
    :param identity: ``(tenant, device)``.
    :param client: a treq ``HTTPClient`` (``StubTreq`` in unit tests).
    :param local_publish: publishes downlink values on the local broker.
    :param on_status: told of every change of the link's state.
    :param cik_path: the CIK file (exosite mode).
    :param run_blocking: ``(function, *args) -> Deferred`` for file work off the reactor thread.
    :param retry_policy: delays after failures (default: full jitter from the settings).
    :param on_cloud_value: ``(alias, value, when)`` for each downlink value (the ingest's
        last values, so local reads see what the cloud wrote).
    :param report_aliases: the aliases its routes send the gateway's reports on, each with
        the reports' names (:func:`gateway.links.reportaliases.report_aliases`; none given:
        none); an exosite link's own, answered 404, are not written to again
        (:mod:`gateway.links.reportaliases`).
    """

    log = Logger()
    behind = False

    def __init__(self, name: str, settings: HTTPLinkSettings, stream: LinkStream, reactor: Any,
                 identity: tuple[str, str], client: Any, local_publish: LocalPublish, on_status: StatusListener,
                 cik_path: Path, run_blocking: Callable[..., Deferred[Any]],
                 retry_policy: Callable[[int], float] | None = None,
                 on_cloud_value: Callable[[str, str, float], None] | None = None,
                 report_aliases: dict[str, tuple[str, ...]] | None = None) -> None:
        self.name = name
        self.on_cloud_value = on_cloud_value
        self.settings = settings
        self.stream = stream
        self.reactor = reactor
        self.identity = identity
        self.local_publish = local_publish
        self.on_status = on_status
        self.client = client
        self.api = CloudAPI(client, settings.url, reactor, settings.request_timeout)
        #: The CA file an https link trusts, read once (the read side watches its expiry).
        self.certificates: tuple[CertificateInfo, ...] = tuple(
            read_certificate(f"link {name} ca", path) for path in (settings.ca_file,)
            if path and settings.url.lower().startswith("https:"))
        #: The server's certificate as seen on the last TLS connection's handshake.
        self.server_certificate: CertificateInfo | None = None
        on_server_certificate(client, self._server_certificate_seen)
        self.policy = retry_policy or full_jitter_backoff(settings.backoff_initial, settings.backoff_factor,
                                                          settings.backoff_max)
        tenant, device = identity
        self.serial = settings.serial.replace("{device}", device).replace("{tenant}", tenant)
        self.cik_file = CIKFile(name, cik_path, run_blocking, (settings.vendor, settings.model, self.serial))
        #: the Last-Modified of each long-polled alias's last value published, kept across restarts
        self.poll_marks = PollMarks(name, cik_path.with_name(cik_path.name + ".polls"), self.cik_file.device,
                                    run_blocking)
        self.forwarder = self
        self.cik: str | None = None
        #: the CIK in use could not be written to its file yet (a full disk): tried again
        #: after every batch sent
        self._cik_unsaved = False
        self.is_connected = False
        self.cause = "not connected yet"
        #: the cause each loop (``uplink``, ``long-poll of <alias>``) logged last since the link was up
        self._told: dict[str, str] = {}
        self.last_error = ""  # why the last request failed, kept once it works again (as MQTT links keep it)
        self.sent = 0
        self.acked = 0
        self.connects = 0
        self.connected_since: float | None = None
        self.drain = RateMeter(steady_seconds(reactor))
        self.requests = 0
        self.activations = 0
        self.batch: list[Any] = []
        #: what of the batch is left to send, in order: one request each (exosite: one alias's records)
        self.pieces: list[list[Any]] = []
        self.refused = RefusedRecords(name, stream, fill_identity(settings.loss_topic, tenant, device)
                                      if settings.loss_topic else None, reactor)
        #: the aliases the gateway's reports go up on, and those the product does not have
        self.reports = ReportAliases(name, (report_aliases or {}) if settings.mode == "exosite" else {})
        #: seq -> times the cloud closed the connection on that record's request alone, unanswered
        self._closes: dict[int, int] = {}
        #: the CIK in use came from an activation of this link (not from its file)
        self._reactivated = False
        #: :attr:`activations` when the uplink's requests were last answered (not 401): a 401 to a
        #: CIK the uplink has not seen work since its activation backs off instead of activating
        #: again (a long-poll answered with it proves nothing of writes: each loop keeps its own;
        #: counted by activation, not by the CIK's text: a platform may issue the same CIK again)
        self._uplink_proven = -1
        #: the cloud took a request of the batch since the uplink's last failure: its backoff starts over
        self._progressed = False
        #: a CIK the platform refused whose file could not be removed: never taken from the file again
        self._unremoved_cik: str | None = None
        self._last_request = float("-inf")
        self._running = False
        self._loops: list[Deferred[Any]] = []
        self._activation: Deferred[None] | None = None  # the one activation under way
        self._activation_out = False  # its request is sent: stop() waits for its answer
        self._activation_waiters: list[Deferred[None]] = []
        self.losses = LossReporter(name, settings.loss_topic, stream, identity, reactor, self.offer)
        #: while the cursor's saves fail (a full disk), as an MQTT link's forwarder has it
        self.save_failing = Failing()
        #: a failed read of the stream is tried again and logged as an MQTT link's forwarder does it
        self._read_retry = ReadRetry(reactor, self._read_due, READ_RETRY_INTERVAL, READ_FAILURE_LOG_INTERVAL)
        self._read_again: Deferred[None] | None = None  # what the uplink waits on until then
        #: when a cursor save that keeps failing (a full disk) is logged
        self._save_lines = LogThrottle(CURSOR_FAILURE_LOG_INTERVAL, lambda: steady_seconds(reactor))
        #: calls what the link was handed from outside (a bug in one is logged, throttled, and the link goes on)
        self._listeners = ListenerCalls(self.log, name, lambda: steady_seconds(reactor))
        self._loss_check = LoopingCall(self.check_losses)
        self._loss_check.clock = reactor

    def check_losses(self) -> None:
        """Send the journal's loss report upstream when it has changed, only while connected
        (see :class:`gateway.links.losses.LossReporter`)."""
        if self.is_connected:
            self.losses.check()

    # -- life -------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records read from the stream, not yet acknowledged by the cloud."""
        return len(self.batch)

    def offer(self, record: Any) -> None:
        """Live records are read from the cursor like the rest (``behind`` is never true)."""

    def start(self) -> Deferred[None]:
        """Create the cursor, load the CIK, then run (fires once the cursor exists)."""
        d = self.stream.cursor(CURSOR)
        if self.settings.mode == "exosite":
            d.addCallback(lambda _: self.cik_file.load())
            d.addCallback(self._loaded)
            d.addCallback(lambda _: self.poll_marks.load())
        return d.addCallback(lambda _: self._go())

    def _server_certificate_seen(self, certificate: Any) -> None:
        self.server_certificate = certificate_from_x509(f"link {self.name} server", certificate)

    def _loaded(self, cik: str | None) -> None:
        self.cik = cik

    def _go(self) -> None:
        self._running = True
        loops = [self._uplink()]
        if self.settings.mode == "exosite":
            loops.extend(self._downlink(downlink) for downlink in self.settings.downlink)
        for loop in loops:
            loop.addErrback(lambda f: f.trap(CancelledError))  # (stopped while backing off)
        self._loops = loops
        if self.settings.loss_topic:
            self._loss_check.start(LOSS_CHECK_INTERVAL, now=False)

    def stop(self) -> Deferred[None]:
        """Stop sending and polling (the unacknowledged batch stays in the stream); an
        activation whose request is out is not cancelled: the stop fires once its answer is
        in and its CIK saved (or once it failed), and the long-polls' marks being written are
        (a link started next reads them)."""
        self._running = False
        self.cause = STOPPING
        if self._loss_check.running:
            self._loss_check.stop()
        self._read_retry.stop()
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.cancel()
        activation = self._activation
        if activation is not None and self._activation_out:
            # The platform may have issued the CIK already, and issues one only once: the answer
            # is waited for (request_timeout at most) and saved, not thrown away.
            closed = activation.addBoth(lambda _: close_connections(self.client))
        else:
            if activation is not None:
                activation.cancel()
            closed = close_connections(self.client)
        return closed.addCallback(lambda _: self.poll_marks.written())

    # -- state ----------------------------------------------------------------------------

    def snapshot(self) -> LinkSnapshot:
        """This link's state and counters now (no I/O), in the MQTT links' shape: a link is
        ``connected`` while the cloud answers; ``in_flight`` is what the cloud has not taken
        yet of the batch being sent (``pending``: the whole batch, until its cursor is saved);
        ``sent`` and ``acked`` count the records the cloud took, as it takes them; and
        ``bytes_up``/``bytes_down`` count request and answer bodies; ``certificates`` holds an
        https link's CA file and the server's certificate seen on the last connection."""
        now = self.reactor.seconds()
        certificates = self.certificates + ((self.server_certificate,) if self.server_certificate else ())
        state = "stopped" if self.cause == STOPPING else "connected" if self.is_connected else "disconnected"
        return LinkSnapshot(
            self.name, shown_url(self.settings.url), state, self.connected_since, self.last_error,
            self.connects, max(self.connects - 1, 0), sum(map(len, self.pieces)), self.sent, self.acked, 0,
            self.api.bytes_up, self.api.bytes_down, self.stream.unacked(CURSOR), len(self.batch),
            self.drain.rate(steady_seconds(self.reactor)), tuple(at(info, now) for info in certificates),
            self.save_failing.now)

    def _up(self) -> None:
        if not self.is_connected:
            self.is_connected, self.cause = True, ""
            self.connects += 1
            self.connected_since = self.reactor.seconds()
            self.log.info("link {link} reaches {url}", link=self.name, url=shown_url(self.settings.url))
            self._tell_status(True, "")
            self.check_losses()

    def _down(self, cause: str, loop: str = "uplink") -> None:
        """Say the link does not reach the cloud, logging ``cause`` unless ``loop`` (the uplink,
        or a downlink's long-poll) logged it last since the link was up: the uplink and the
        long-polls fail in turn while the cloud is down, each with its own cause, and comparing
        with the last cause of either would log every failure of both."""
        if self.is_connected:
            self._told.clear()
        if self._told.get(loop) != cause:
            self._told[loop] = cause
            self.log.warn("link {link}: {cause}", link=self.name, cause=cause)
        self.is_connected, self.cause, self.connected_since = False, cause, None
        self.last_error = cause
        self._tell_status(False, cause)

    def _tell_status(self, connected: bool, cause: str) -> None:
        """Tell ``on_status`` (:meth:`~gateway.links.listeners.ListenerCalls.tell`: a listener's bug is logged,
        and the loops go on)."""
        self._listeners.tell("its status", self.on_status, self.name, connected, cause)

    def _sleep(self, seconds: float) -> Deferred[None]:
        return deferLater(self.reactor, max(0.0, seconds), lambda: None)

    @inlineCallbacks
    def _pace(self, with_cik: bool = False) -> Any:
        """Wait until ``min_interval`` has passed since the last request, then count this one.

        :param with_cik: wait until the link has a CIK too, activating (or waiting for the
            activation under way) first, and again if a long-poll's 401 made the link forget
            it during the wait.
        :return: a Deferred firing with the CIK (``None`` when ``with_cik`` is false and the
            link has none).
        """
        while True:
            if with_cik and self.cik is None:
                yield self._activate()
            wait = self._last_request + self.settings.min_interval - steady_seconds(self.reactor)
            if wait > 0:
                yield self._sleep(wait)
            if not with_cik or self.cik is not None:
                break
        self._last_request = steady_seconds(self.reactor)
        self.requests += 1
        return self.cik

    # -- uplink ---------------------------------------------------------------------------

    @inlineCallbacks
    def _uplink(self) -> Any:
        attempt = 0
        used: str | None = None
        while self._running:
            try:
                if self.settings.mode == "exosite" and self.cik is None:
                    yield self._activate()
                if not self.batch and not self.is_connected and self.settings.mode == "exosite":
                    yield self._pace()  # idle: find out whether the platform answers, for the status topic
                    yield self.api.timestamp()
                    self._up()
                if not self.batch:
                    yield self._next_batch()
                    continue  # (from the top: a CIK a long-poll's 401 made it forget meanwhile is activated first)
                used = self.cik
                yield self._send_batch()
                attempt = 0
                if self._cik_unsaved:
                    yield self._save_unsaved_cik()
            except CancelledError:
                return
            except CIKRejected as exc:
                if self.cik != used:
                    continue  # the downlink saw it first and activated again: resend with the new CIK
                if self._reactivated and self._uplink_proven != self.activations:  # refused right after a fresh activation:
                    self._down(f"CIK refused right after activation ({exc})")  # no loop of activations
                    attempt = yield self._back_off(attempt, None)
                    continue
                self._down(f"CIK refused ({exc}); activating again")
                yield self._forget_cik()
            except RequestFailed as exc:
                if not self._running:
                    return
                self._down(str(exc))
                if self._progressed:  # (a lossy network fails a request now and then: the cloud answers)
                    attempt, self._progressed = 0, False
                attempt = yield self._back_off(attempt, exc.retry_after)
            except Exception as exc:  # a bug: say so, and try again later (a journal failure is retried where it is)
                self.log.failure("link {link}: forwarding failed", link=self.name)
                self._down(f"internal error: {exc}")
                attempt = yield self._back_off(attempt, None)

    @inlineCallbacks
    def _back_off(self, attempt: int, retry_after: float | None) -> Any:
        delay = retry_after if retry_after is not None else self.policy(attempt)
        yield self._sleep(delay)
        return attempt + 1

    def _activate(self) -> Deferred[None]:
        """Activate, or wait for the activation under way (the uplink and the long-polls share one)."""
        waiter: Deferred[None] = Deferred()
        self._activation_waiters.append(waiter)
        if self._activation is None:
            self._activation = self._activate_now()
            self._activation.addBoth(self._activated)
        return waiter

    def _activated(self, result: Any) -> None:
        self._activation = None
        waiters, self._activation_waiters = self._activation_waiters, []
        for waiter in waiters:
            if waiter.called:
                continue  # (cancelled: its loop stopped)
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(None)

    @inlineCallbacks
    def _activate_now(self) -> Any:
        stored = yield detached(self.cik_file.load())
        if stored is not None and stored != self._unremoved_cik:
            # Written since the link read it: by hand while activations were refused (GWE's
            # CIK, as the migration says), or by the link a configuration change replaced,
            # whose activation was answered after this one had started. The platform issues a
            # CIK once: activating again would be refused (409).
            self.log.info("link {link}: using the CIK written to {path} meanwhile", link=self.name,
                          path=str(self.cik_file.path))
            self.cik = stored
            self._reactivated = False
            return
        yield self._pace()
        self._activation_out = True
        try:
            cik = yield self.api.activate(self.settings.vendor, self.settings.model, self.serial)
            try:
                yield self.cik_file.save(cik, claim=self._running)  # persist, then use
            except OSError as exc:
                # The platform issues a CIK once (activating again is 409): dropping it would lose
                # the device, so it is used from memory and written as soon as the disk takes it.
                self.log.error("link {link}: the CIK activated for {serial} cannot be written to {path} ({error});"
                               " it is used from memory and written once it can be (a restart before then"
                               " loses it)", link=self.name, serial=self.serial, path=str(self.cik_file.path),
                               error=exc.strerror or str(exc))
                self._cik_unsaved = True
        finally:
            self._activation_out = False
        self.cik = cik
        self.activations += 1
        self._reactivated = True
        if self._running:  # (stopped while its answer was waited for: the CIK is saved, nothing more)
            self._up()
        self.log.info("link {link}: activated {serial}", link=self.name, serial=self.serial)

    @inlineCallbacks
    def _save_unsaved_cik(self) -> Any:
        """Write the CIK in use that could not be written at its activation, if the disk takes
        it now (a failure was logged then: nothing more is said until it succeeds)."""
        cik = self.cik
        if cik is None:
            return
        try:
            yield detached(self.cik_file.save(cik))
        except OSError:
            return
        if self.cik == cik:
            self._cik_unsaved = False
            self.log.info("link {link}: the CIK is written to {path} now", link=self.name,
                          path=str(self.cik_file.path))

    @inlineCallbacks
    def _forget_cik(self) -> Any:
        """Drop the CIK the platform refused, in memory and in its file. A file that cannot be
        removed (immutable, in a read-only directory) is said once per refused CIK; its CIK is
        not taken back from it as written meanwhile (:meth:`_activate_now`): the link activates."""
        refused, self.cik = self.cik, None
        self._cik_unsaved = False
        try:
            yield detached(self.cik_file.forget())
        except OSError as exc:
            if refused != self._unremoved_cik:
                self._unremoved_cik = refused
                self.log.error("link {link}: the CIK the platform refused cannot be removed from {path} ({error}):"
                               " it is not used again; the link activates", link=self.name,
                               path=str(self.cik_file.path), error=exc.strerror or str(exc))

    @inlineCallbacks
    def _read(self, max_records: int) -> Any:
        """Up to ``max_records`` records (``batch_bytes`` at most) from where the link reads. A
        read that fails (out of file descriptors, an I/O error) is tried again every
        :data:`~gateway.links.readretry.READ_RETRY_INTERVAL`, logged as an MQTT link's forwarder
        logs it (:mod:`gateway.links.readretry`); the link's status stays the cloud's."""
        while True:
            try:
                records = yield detached(self.stream.read(CURSOR, max_records, self.settings.batch_bytes))
            except CancelledError:
                raise
            except Exception:
                failure = Failure()
                again: Deferred[None] = Deferred()
                self._read_again = again
                if self._read_retry.failed() is not None:
                    log_read_failed(self.log, self.name, self._read_retry.failures, failure)
                yield again
                continue
            log_read_again(self.log, self.name, self._read_retry.succeeded())
            return [self._on_clock_now(record) for record in records]

    def _on_clock_now(self, record: Any) -> Any:
        """``record`` with its ``received`` time moved by the wall clock's steps the stream saw
        since (:meth:`~gateway.links.stream.LinkStream.received_now`): a value received at 1970,
        before NTP set the clock, is sent with the time it really came, not 1970."""
        received = self.stream.received_now(record.seq, record.received)
        return record if received == record.received else record._replace(received=received)

    def _read_due(self) -> None:
        """The read that failed is tried again now (the :class:`ReadRetry`'s timer)."""
        again, self._read_again = self._read_again, None
        if again is not None and not again.called:  # (called: cancelled, the link stopped)
            again.callback(None)

    @inlineCallbacks
    def _save_cursor(self, seq: int) -> Any:
        """Move the cursor past ``seq``, durably. A save that fails (a full disk) is tried again
        every :data:`~gateway.links.forwarder.CURSOR_RETRY_INTERVAL`, shown in
        :attr:`save_failing` and logged as an MQTT link's forwarder does it: at the first
        failure, then once a minute, and once a save works again; the link's connection state
        stays the cloud's."""
        while True:
            try:
                yield detached(self.stream.ack(CURSOR, seq))
            except CancelledError:
                raise
            except Exception as exc:
                failing = self.save_failing.failed(CURSOR_NOT_SAVED, str(exc), self.reactor.seconds())
                if self._save_lines.note() is not None:
                    log_cursor_save_failed(self.log, self.name, CURSOR, failing)
                yield self._sleep(CURSOR_RETRY_INTERVAL)
                continue
            failed = self.save_failing.now
            if failed is not None:
                self._save_lines.reset()
                log_cursor_saved_again(self.log, self.name, CURSOR, failed)
                self.save_failing.recovered()
            return

    @inlineCallbacks
    def _next_batch(self) -> Any:
        settings = self.settings
        records = yield self._read(settings.batch_records)
        while not records:
            yield detached(self.stream.wait(CURSOR))
            if settings.batch_wait:
                yield self._sleep(settings.batch_wait)  # gather what comes meanwhile into this batch
            records = yield self._read(settings.batch_records)
        self.batch = list(records)
        self._split_batch()
        self._closes = {}

    def _split_batch(self) -> None:
        """The whole batch in :attr:`pieces`, none of it refused yet."""
        self.pieces = self._pieces(self.batch)
        self.refused.forget()

    def _pieces(self, records: list[Any]) -> list[list[Any]]:
        """``records`` as requests, one each (``exosite``: one alias's records)."""
        if self.settings.mode == "json":
            return [records]
        groups: OrderedDict[str, list[Any]] = OrderedDict()
        for record in records:
            groups.setdefault(record.topic, []).append(record)
        return list(groups.values())

    @inlineCallbacks
    def _send_batch(self) -> Any:
        """Send what is left of the batch, piece by piece; then count what the cloud refused
        for good as lost and move the cursor past the whole batch."""
        settings = self.settings
        if self.refused.whole:
            if len(self.batch) < settings.batch_records:
                # Records that came since may show which refused ones are at fault (below).
                more = yield self._read(settings.batch_records - len(self.batch))
                self.batch.extend(more)
            self._split_batch()
        yield self._send_pieces()
        while (refusal := self.refused.unconfirmed()) is not None:
            # Every request of the batch refused: a wrong format or a cloud refusing all (not one
            # record's fault); dropping would lose everything it sends. A batch that cannot grow
            # is probed at once with the records after it; else (or a probe refused too) back
            # off, then send the whole batch again, with the records that came meanwhile (up to
            # batch_records): those the cloud takes show which of the refused ones are at fault.
            probe = yield self._probe()
            if not probe:
                self.refused.forget(whole=True)
                self._closes = {}
                raise refusal
            self.batch.extend(probe)
            self.pieces = self._pieces(probe)
            yield self._send_pieces()
        self.refused.note()  # (in the ledger before the cursor passes them)
        yield self._save_cursor(self.batch[-1].seq)
        self.batch = []

    def _probe(self) -> Deferred[list[Any]]:
        """The records after a batch the cloud refused whole and that cannot grow (it holds
        ``batch_records`` records, none of them a probe's), up to ``batch_records`` more, to
        send at once: the cloud taking one shows the refused ones at fault. Read on from the
        reader's position, just after the batch: the cursor stays before the batch. Empty
        when the batch can grow or was probed already (at most twice ``batch_records`` records
        wait so, whatever the cloud refuses), or nothing came after it yet. The gateway's
        reports on aliases the product does not have count for neither: they are not sent, so
        they show nothing, and the link reads on past them."""
        records = self.settings.batch_records
        if sum(record.topic not in self.reports.missing for record in self.batch) != records:
            return succeed([])
        return self._read(records)

    @inlineCallbacks
    def _send_pieces(self) -> Any:
        """Send the :attr:`pieces` left, in order, handling what the cloud refuses (:meth:`_refused`)."""
        while self.pieces:
            piece = self.pieces[0]
            exosite = self.settings.mode == "exosite"
            if exosite and piece[0].topic in self.reports.missing:  # (said once: not sent again)
                for record in piece:
                    self.refused.drop(record)
                del self.pieces[0]
                continue
            cik = yield self._pace(with_cik=exosite)  # (a long-poll's 401 may forget the CIK while this waits)
            at = self.activations  # (the CIK's: an activation while the request is out makes another)
            try:
                if not exosite:
                    yield self.api.post_json(self.settings.headers, piece)
                else:
                    yield self.api.record(cik, piece[0].topic,
                                          [(int(value_time(r)), text_value(r.payload)) for r in piece])
            except RequestFailed as exc:
                handled = yield self._refused(piece, exc)
                if not handled:
                    raise exc
            else:
                # Counted as the cloud takes them, as an MQTT link counts a PUBACK: not at the
                # cursor's save after the whole batch (which a full disk can hold for long).
                del self.pieces[0]
                self.sent += len(piece)
                self.acked += len(piece)
                self.drain.add(len(piece), steady_seconds(self.reactor))
                self.refused.confirm()
                self._progressed = True
                self._up()  # (a refusal alone does not say the link works: see _send_batch)
            self._uplink_proven = at

    @inlineCallbacks
    def _refused(self, piece: list[Any], exc: RequestFailed) -> Any:
        """Whether the cloud refused ``piece`` (the first of :attr:`pieces`) for what it carries,
        handled so: split in two, or, one record (or its alias's URL refused), counted as
        refused and passed (see :mod:`gateway.links.httprefusals`); ``False``: back off and
        send it again.

        A request unanswered within ``request_timeout`` whose body is larger than every one the
        cloud has taken is split in two as well, and backed off (``False``): a slow link.

        A connection closed without an answer is the request's only if its body is larger than
        every one the cloud has taken (a network that resets connections closes small ones too)
        and the cloud answers a small request sent just after (``GET /timestamp``; an empty
        batch in ``json`` mode).
        """
        reason = refusal(self.settings.mode, exc.status) if exc.status else None
        why = str(exc)
        alias = piece[0].topic
        if exc.status == 404 and self.reports.carries_reports(alias):  # (none but exosite links')
            # The gateway's reports on an alias the product does not have (not Gateway Engine's):
            # a definite answer about the alias, so they are lost at once (by the loop of
            # _send_pieces, as missing), not held until the platform takes another value (which
            # holds the link down while the apps send none).
            self.reports.not_found(alias, why)
            self._up()  # (the platform answers)
            return True
        if exc.timed_out and len(piece) > 1 and exc.sent > self.api.largest_taken:
            # Over a slow link a large body takes longer than request_timeout to go (256 KiB:
            # 105 s at 20 kbit/s): sent again whole it timed out for ever. Its halves go after
            # the backoff; a body no larger than one the cloud took is the cloud's slowness.
            half = len(piece) // 2
            self.pieces[0:1] = [piece[:half], piece[half:]]
            return False
        if reason is None:
            if not exc.closed or not self._running or exc.sent <= self.api.largest_taken:
                return False
            yield self._pace()
            try:
                yield (self.api.timestamp() if self.settings.mode == "exosite"
                       else self.api.post_json(self.settings.headers, []))
            except RequestFailed:
                return False  # (the cloud does not answer anything: the network)
            if len(piece) == 1:
                seq = piece[0].seq
                closes = self._closes[seq] = self._closes.get(seq, 0) + 1
                if closes < CLOSES_TO_REFUSE:
                    return True
                reason, why = "over-cloud-limit", (f"it closed the connection on its request without an answer, "
                                                   f"{closes} times, and answered the request sent just after each time")
        if len(piece) > 1 and exc.status not in URL_REFUSALS:
            half = len(piece) // 2
            self.pieces[0:1] = [piece[:half], piece[half:]]
        else:
            assert reason is not None
            for record in piece:
                if exc.status:
                    self.refused.hold(record, reason, why, exc)  # (counted once the cloud took another request)
                else:
                    self.refused.add(record, reason, why)
            del self.pieces[0]
        return True

    # -- downlink -------------------------------------------------------------------------

    @inlineCallbacks
    def _downlink(self, downlink: AliasDownlinkSettings) -> Any:
        tenant, device = self.identity
        topic = downlink.topic.replace("{alias}", downlink.alias).replace("{device}", device).replace(
            "{tenant}", tenant)
        since = self.poll_marks.since(downlink.alias)  # (a value published before a restart is not run again)
        attempt = 0
        used: str | None = None
        proven = -1  # activations when this loop's polls were last answered (not 401)
        loop = f"long-poll of {downlink.alias}"
        while self._running:
            try:
                if self.cik is None:
                    yield self._activate()
                used, at = self.cik, self.activations  # (an answer proves this CIK, not one activated meanwhile)
                assert used is not None
                started = steady_seconds(self.reactor)
                status, value, modified = yield self.api.long_poll(
                    used, downlink.alias, self.settings.poll_timeout_ms, since)
                attempt = 0
                proven = at
                if not self.batch:  # (while a batch is being sent, its answers say whether the link works)
                    self._up()
                if value is not None and modified is not None and modified == since:
                    value = None  # the one published before, again (a server that ignores If-Modified-Since)
                if value is not None:
                    if self.on_cloud_value is not None:
                        self._listeners.tell("a value from the cloud", self.on_cloud_value, downlink.alias, value,
                                             self.reactor.seconds())
                    yield detached(self.local_publish(topic, value.encode(), downlink.qos, False))
                pause = max(self.settings.min_interval, 1.0)
                if modified is not None:
                    since = modified
                    if value is not None:
                        yield detached(self.poll_marks.mark(downlink.alias, modified))
                if modified is None and status != 304:  # no Last-Modified (or 204: no value yet): poll again later
                    yield self._sleep(pause)
                else:  # a server that answers at once (holds no long-poll) is not polled in a loop
                    yield self._sleep(started + pause - steady_seconds(self.reactor))
            except CancelledError:
                return
            except CIKRejected as exc:
                if self.cik != used:
                    continue  # activated again meanwhile: poll with the new CIK
                if self._reactivated and proven != self.activations:  # (the uplink's answers prove nothing of polls)
                    self._down(f"CIK refused right after activation ({exc})", loop)
                    attempt = yield self._back_off(attempt, None)
                    continue
                yield self._forget_cik()  # activated again at the top of the loop, once for every loop
            except RequestFailed as exc:
                if not self._running:
                    return  # (a request cancelled by stop() fails as "no answer")
                self._down(f"long-poll of {downlink.alias}: {exc}", loop)
                attempt = yield self._back_off(attempt, exc.retry_after)
            except Exception as exc:
                self.log.failure("link {link}: long-poll failed", link=self.name)
                self._down(f"internal error: {exc}", loop)
                attempt = yield self._back_off(attempt, None)
