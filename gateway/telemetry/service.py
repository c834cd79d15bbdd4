"""The telemetry service: builds the reports on their intervals and on request, publishes
them on the local broker (retained, routed upstream like telemetry), and builds the
``/metrics`` page that :mod:`gateway.telemetry.metricsservice` serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import __version__, jsontext
from gateway.broker.bus import BusMessage, LocalBus, request_handler
from gateway.clockstep import steady_seconds
from gateway.journal.errors import RecordTooLargeError
from gateway.logthrottle import (NOT_PUBLISHED_LOG_INTERVAL, REFUSED_LOG_INTERVAL, LogThrottle, refused_since,
                                 since_last_line)
from gateway.payloadlimits import too_large
from gateway.readside import ReadSide
from gateway.shown import SHOWN_CHARS, shown
from gateway.telemetry.engine import engine_report
from gateway.telemetry.errors import ReportNotPublished, ReportTooLarge, TelemetryError, UnknownReport
from gateway.telemetry.facts import Sections
from gateway.telemetry.settings import REPORTS, TelemetrySettings
from gateway.telemetry.usage import UsageTracker, interface_counters, link_counters
from gateway.blocking import RunBlocking, in_reactor_threads


class TelemetryService(Service):
    """Reports (``device_info``, ``usage_report``, ``engine_report``) and the metrics page
    (served by the ``metrics`` service: :mod:`gateway.telemetry.metricsservice`).

    :param settings: the ``telemetry:`` section.
    :param readside: the services' snapshots (reports and metrics read nothing else).
    :param bus: the local bus: reports are published through it, requests arrive on it.
    :param reactor: the reactor (clock, threads).
    :param state_dir: the gateway's state directory (its free space is in ``device_info``).
    :param identity: ``(tenant_id, device_id)``, carried in every report.
    :param app_observers: the apps supervisor's observer list; an app state change
        schedules an ``engine_report``.
    :param accounting: bytes per hosted app (see :mod:`gateway.telemetry.appbytes`), or ``None``.
    :param run_blocking: runs blocking fact gathering; by default the reactor's thread pool.
    :param usage: what the last ``usage_report`` counted (a configuration change carries it
        over: :meth:`UsageTracker.carried`); by default a period starting now.
    """

    name = "telemetry"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: TelemetrySettings, readside: ReadSide, bus: LocalBus, reactor: Any,
                 state_dir: Path, identity: tuple[str, str] = ("default", "gateway"),
                 app_observers: list[Callable[[Any], None]] | None = None, accounting: Any = None,
                 run_blocking: RunBlocking | None = None, usage: UsageTracker | None = None) -> None:
        self.settings = settings
        self.readside = readside
        self.bus = bus
        self.reactor = reactor
        self.state_dir = state_dir
        self.identity = identity
        self.accounting = accounting
        self._app_observers = app_observers
        self.run_blocking = run_blocking if run_blocking is not None else in_reactor_threads(reactor)
        self.usage = usage if usage is not None else UsageTracker(reactor.seconds(), steady_seconds(reactor))
        #: the last body of each report, by name.
        self.reports: dict[str, dict[str, Any]] = {}
        #: reports published, and those published with errors, by name (for /metrics).
        self.published = {name: 0 for name in REPORTS}
        self.incomplete = {name: 0 for name in REPORTS}
        # (a stream full for hours refuses every report: the usage report every 5 minutes, the
        # engine report at each change of an app's state)
        self._not_published_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        # (a local client may send bad report requests in a loop: one line per interval)
        self._refused_lines = LogThrottle(REFUSED_LOG_INTERVAL, lambda: steady_seconds(reactor))
        # Each build under way: (fires with None once it is over, the callers waiting for it).
        self._building: dict[str, tuple[Deferred[None], list[Deferred[Mapping[str, Any]]]]] = {}
        self._loops: list[LoopingCall] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._engine_call: Any = None
        self._engine_last = float("-inf")
        self._registry: Any = None

    # -- the interface the admin API and remote commands use ------------------------------

    def report_names(self) -> tuple[str, ...]:
        """The reports this service builds."""
        return REPORTS

    def last_reports(self) -> Mapping[str, Mapping[str, Any]]:
        """The last body of each report built so far, by name."""
        return dict(self.reports)

    def request_report(self, name: str) -> Deferred[Mapping[str, Any]]:
        """Build report ``name`` now and publish it; fires with its body once published.

        :raises UnknownReport: for a name not in :meth:`report_names`.
        :raises ReportNotPublished: (in the Deferred) when the broker or the journal refused it;
            :class:`ReportTooLarge` when a journal stream can never hold it.
        """
        if name not in REPORTS:
            raise UnknownReport(name, REPORTS)
        return self._send(name)

    def render_metrics(self, accept: str) -> tuple[bytes, str]:
        """The metrics page for an ``Accept`` header: ``(body, content type)``; OpenMetrics
        when the client asks for it, else Prometheus' text format."""
        from gateway.telemetry.metrics import render_metrics

        return render_metrics(accept, self.registry)

    @property
    def registry(self) -> Any:
        """The prometheus-client registry holding the gateway's collector (made on first use)."""
        if self._registry is None:
            from gateway.telemetry.metrics import make_registry

            self._registry = make_registry(self.readside, self)
        return self._registry

    # -- life -----------------------------------------------------------------------------

    def startService(self) -> Deferred[None]:
        """Subscribe to requests, start the report timers (device_info and engine_report go
        out at once)."""
        super().startService()
        d = self._baseline()
        d.addCallback(lambda _: self._start_reports())
        return d

    def _baseline(self) -> Deferred[None]:
        """Interface counters at start: the first usage_report covers the time since. (The
        links' counters start at zero with the gateway, so they need none: what a link sent
        before this service started belongs to the first report too.)"""
        d = self.run_blocking(interface_counters)
        d.addCallback(lambda counters: self.usage.set_baseline("interfaces", counters))
        d.addErrback(lambda f: self.log.warn("usage baseline not taken: {error}", error=f.getErrorMessage()))
        return d

    def _start_reports(self) -> None:
        self._unsubscribe = self.bus.subscribe(self.settings.request_topic, request_handler(self._requested))
        settings = self.settings
        for name, interval, now in (("device_info", settings.device_info_interval, True),
                                    ("usage_report", settings.usage_report_interval, False),
                                    ("engine_report", settings.engine_report_interval, True)):
            if interval > 0:
                loop = LoopingCall(self._periodic, name)
                loop.clock = self.reactor
                loop.start(interval, now=now)
                self._loops.append(loop)
            elif now:
                self.reactor.callLater(0, self._periodic, name)
        if self._app_observers is not None:
            self._app_observers.append(self._app_changed)

    def stopService(self) -> Deferred[None]:
        """Stop the timers and the request subscription; wait for reports being built."""
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._engine_call is not None and self._engine_call.active():
            self._engine_call.cancel()
        self._engine_call = None
        if self._app_observers is not None and self._app_changed in self._app_observers:
            self._app_observers.remove(self._app_changed)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        from twisted.internet.defer import DeferredList

        waits: list[Deferred[Any]] = [build for build, _ in self._building.values()]
        return DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- triggers ---------------------------------------------------------------------------

    def _periodic(self, name: str) -> None:
        d = maybeDeferred(self._send, name).addErrback(_warned)
        d.addErrback(lambda f: self.log.failure("report {name} failed", f, name=name))

    def _app_changed(self, _: Any = None) -> None:
        """An app changed state: an engine_report now, or once ``engine_report_min_interval``
        has passed since the last one (changes in between share it)."""
        if self._engine_call is not None or not self.running:
            return
        wait = self._engine_last + self.settings.engine_report_min_interval - steady_seconds(self.reactor)
        self._engine_call = self.reactor.callLater(max(wait, 0.0), self._engine_due)

    def _engine_due(self) -> None:
        self._engine_call = None
        self._periodic("engine_report")

    @staticmethod
    def _not_rfc_json(text: str, exc: ValueError) -> str | None:
        """Why a request that Python's parser takes is refused as not RFC 8259 JSON (``exc``:
        ``{"report": "a", "report": "b"}`` asked for the last report named, silently); ``None``
        for one that is no JSON at all: a report's name, refused as unknown when it is none."""
        try:
            jsontext.loads(text)
        except ValueError:
            return None
        return f"the request is not valid JSON: {exc}"

    def _requested(self, message: BusMessage) -> Deferred[Any] | None:
        """A request on the request topic: its payload is a report's name (or JSON
        ``{"report": name}``); an unknown one, or one larger than
        :data:`~gateway.payloadlimits.REQUEST_BYTES` (not read), is answered on the error topic."""
        oversized = too_large(message.payload)
        # (a refused one is shown by its first characters only: at most 4 bytes each)
        read = message.payload if oversized is None else message.payload[:4 * SHOWN_CHARS]
        text = read.decode("utf-8", "replace").strip()
        name: object = text
        error: str | None = oversized
        if oversized is None and text.startswith(("{", '"')):
            try:
                value = jsontext.loads(text, strict=True)
            except ValueError as exc:
                error = self._not_rfc_json(text, exc)
            else:
                if isinstance(value, dict) and "report" not in value:
                    # (the remote command's {"name": ...} asked here: say what was sent and what is asked)
                    error = (f"no report named: {shown(text)} has no \"report\" (a JSON request is"
                             f" {{\"report\": \"<name>\"}}; known: {', '.join(REPORTS)})")
                name = value.get("report") if isinstance(value, dict) else str(value)
        if error is not None or name not in REPORTS:
            error = error or str(UnknownReport(name, REPORTS))
            count = self._refused_lines.note()
            if count is not None:
                self.log.warn("report request refused: {error} ({since})", error=error, since=refused_since(count))
            request = shown(text) if oversized is None else f"{text[:SHOWN_CHARS]}... ({len(message.payload)} bytes)"
            payload = json.dumps({"error": error, "request": request, "known": list(REPORTS),
                                  "timestamp": self.reactor.seconds()}).encode()
            topic = self.settings.error_topic

            def not_published(failure: Failure) -> None:
                # (a journal stream a route takes it to may refuse it: a line with the
                # refusal's, not a subscriber's traceback)
                if count is not None:
                    self.log.warn("report request refused: {error}; its answer on {topic} not published: {reason}",
                                  error=error, topic=topic, reason=failure.getErrorMessage())

            return maybeDeferred(self.bus.publish, topic, payload, 1, False).addErrback(not_published)
        return self._send(str(name)).addErrback(_warned)

    # -- building and publishing ----------------------------------------------------------

    def _send(self, name: str) -> Deferred[Mapping[str, Any]]:
        """Build ``name`` (joining a build already under way), publish it, return its body.

        Every caller gets a Deferred of its own, fired with the body (or the failure): what one
        caller chains on its result (a command's reply, an errback that logs and swallows)
        never reaches another.
        """
        mine: Deferred[Mapping[str, Any]] = Deferred()
        building = self._building.get(name)
        if building is not None:
            building[1].append(mine)
            return mine
        waiters = [mine]

        def done(result: Any) -> None:
            self._building.pop(name, None)
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        build: Deferred[Any] = Deferred()
        self._building[name] = (build, waiters)
        self._build(name).addCallback(self._publish, name).addBoth(done).chainDeferred(build)
        return mine

    def _build(self, name: str) -> Deferred[tuple[dict[str, Any], list[str]]]:
        """The body of report ``name`` and what could not be gathered; a snapshot that raises
        leaves its section empty and is named in the errors."""
        sections = Sections()
        if name == "engine_report":
            self._engine_last = steady_seconds(self.reactor)
            body = sections.take("apps", lambda: engine_report(self.readside.apps()),
                                 {"version": __version__, "apps": []})
            return succeed((body, sections.errors))
        if name == "device_info":
            from gateway.telemetry.device_info import device_info, system_facts

            status = self.readside.status()
            certificates = sections.take("certificates", lambda: self.readside.broker().certificates + tuple(
                c for link in self.readside.links().links for c in link.certificates), ())
            d = self.run_blocking(system_facts, self.state_dir)
            return d.addCallback(lambda r: (device_info(r[0], status, certificates, self.reactor.seconds()),
                                            r[1] + sections.errors))
        return self._build_usage(sections)

    def _build_usage(self, sections: Sections) -> Deferred[tuple[dict[str, Any], list[str]]]:
        links = sections.take("links", lambda: link_counters(self.readside.links()))
        errors = sections.errors
        body: dict[str, Any] = {}

        def interfaces(counters: Any) -> None:
            body["interfaces"] = self.usage.section("interfaces", counters, "since_boot")

        def no_interfaces(failure: Failure) -> None:
            errors.append(f"interfaces: {failure.getErrorMessage()}")
            body["interfaces"] = {}

        d = self.run_blocking(interface_counters).addCallbacks(interfaces, no_interfaces)

        def rest(_: Any) -> Any:
            # (without the links' snapshot the last counters stay: the next since_last spans both)
            body["links"] = self.usage.section("links", links, "since_start") if links is not None else {}
            if self.accounting is None:
                body["apps"] = {"supported": False, "reason": "per-app accounting is off (telemetry.app_accounting)",
                                "apps": {}}
                return None
            apps = sections.take("apps", lambda: tuple(sorted({a.app for a in self.readside.apps().apps})), ())
            return self.accounting.counters(apps).addCallbacks(app_bytes, no_app_bytes)

        def app_bytes(result: Mapping[str, Any]) -> None:
            counters = result.get("apps", {})
            section = self.usage.section("apps", counters, "since_start") if result.get("supported") else {}
            body["apps"] = dict(result, apps=section)

        def no_app_bytes(failure: Failure) -> None:
            errors.append(f"apps: {failure.getErrorMessage()}")
            body["apps"] = {"supported": False, "reason": failure.getErrorMessage(), "apps": {}}

        d.addCallback(rest)
        d.addCallback(lambda _: body.__setitem__("period", self.usage.period(self.reactor.seconds(),
                                                                             steady_seconds(self.reactor))))
        return d.addCallback(lambda _: (body, errors))

    def _publish(self, built: tuple[dict[str, Any], list[str]], name: str) -> Deferred[dict[str, Any]]:
        body, errors = built
        tenant, device = self.identity
        report = {"report": name, "timestamp": self.reactor.seconds(), "device_id": device, "tenant_id": tenant,
                  **body, "errors": list(errors)}
        self.reports[name] = report
        if errors:
            self.log.warn("report {name} built with errors: {errors}", name=name, errors="; ".join(errors))
        topic = f"{self.settings.topic_prefix}/{name}"
        try:
            payload = json.dumps(report, allow_nan=False, default=str).encode()
            d = self.bus.publish(topic, payload, 1, True)
        except (TypeError, ValueError) as exc:
            return fail(TelemetryError(f"report {name} cannot be published: {exc}"))

        def published(_: Any) -> dict[str, Any]:
            self.published[name] += 1
            self._not_published_lines.reset()
            if errors:
                self.incomplete[name] += 1
            return report

        def refused(failure: Failure) -> Failure:
            count = self._not_published_lines.note()
            if count is not None:
                self.log.warn("report {name} not published: {error} ({since})", name=name,
                              error=failure.getErrorMessage(), since=since_last_line(
                                  count, "reports not published", f"logged at most once every"
                                  f" {NOT_PUBLISHED_LOG_INTERVAL / 60:g} minutes until one is"))
            error = ReportTooLarge if failure.check(RecordTooLargeError) else ReportNotPublished
            return Failure(error(f"report {name} was built but not published: {failure.getErrorMessage()}"))

        return d.addCallbacks(published, refused)


def _warned(failure: Failure) -> None | Failure:
    """A report's build that ended in :class:`ReportNotPublished` (logged where the broker or
    the journal refused it): nothing more to say; another failure goes on."""
    return None if failure.check(ReportNotPublished) else failure

