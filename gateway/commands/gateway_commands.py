"""The commands the gateway answers itself: ping, report, apps, app.*, config.*, restart.

Each reads the read side or calls a service's public operations (the same ones the admin
API uses), through the small interfaces below.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Mapping, NoReturn, Protocol, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import __version__
from gateway.apps.errors import AmbiguousProgramError, DesiredStateError, UnknownAppError
from gateway.commands.dispatcher import CommandError, CommandRequest, Handler, Reply
from gateway.commands.dropin import CheckOutcome
from gateway.commands.reconfigure import ApplyResult
from gateway.commands.settings import CommandsSettings
from gateway.errors import AppError, ConfigCheckError, ConfigKeyError
from gateway.redaction import redact_at, redact_error
from gateway.shown import shown_repr
from gateway.telemetry.errors import ReportNotPublished, ReportTooLarge

#: ``app.logs``: lines asked for by default, and at most.
DEFAULT_LINES, MAX_LINES = 100, 10000


class AppControl(Protocol):
    """The apps' operations (``gateway.apps.operations.AppOperations``)."""

    def start(self, name: str) -> Deferred[None]:
        """Start an app."""

    def stop(self, name: str) -> Deferred[None]:
        """Stop an app."""

    def restart(self, name: str) -> Deferred[None]:
        """Restart an app."""

    def tail(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[list[str]]:
        """The last lines of its log."""


class AppsView(Protocol):
    """The read side's apps (``gateway.readside.ReadSide``)."""

    def apps(self) -> Any:
        """The apps' snapshot."""


class Reports(Protocol):
    """The telemetry service's reports (``gateway.telemetry.service.TelemetryService``)."""

    def report_names(self) -> tuple[str, ...]:
        """The reports it builds."""

    def request_report(self, name: str) -> Deferred[Mapping[str, Any]]:
        """Build and publish one report now."""


class Changer(Protocol):
    """Configuration changes (``gateway.commands.reconfigure.ConfigChanger``)."""

    def refusal(self) -> str | None:
        """Why a change cannot begin now (another is applied or waits for confirmation, the
        gateway stops), or None."""

    def get(self, path: str) -> Any:
        """The value at a dotted key path."""

    def check(self, changes: Mapping[str, Any]) -> "Deferred[CheckOutcome]":
        """Every error of the resulting configuration (and its warnings when it has none)."""

    def apply(self, changes: Mapping[str, Any], confirm_within: float | None,
              origin: str, next_turn: bool = False) -> Deferred[ApplyResult]:
        """Apply the changes (from the reactor's next turn on, with ``next_turn``)."""

    def report_refused(self, keys: Iterable[str], errors: Sequence[str], origin: str) -> None:
        """Report a change refused by its check on the report topic."""


class Restarter(Protocol):
    """Restarts the gateway process (``gateway.commands.restart.ProcessRestart``)."""

    def restart(self) -> str:
        """Stop so as to start again; how it comes back."""


def _name(args: Mapping[str, Any]) -> str:
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise CommandError(400, "name: a non-empty string is required")
    return name


def _app_error(failure: Failure) -> NoReturn:
    if failure.check(UnknownAppError):
        raise CommandError(404, failure.getErrorMessage())
    if failure.check(AmbiguousProgramError):
        raise CommandError(400, failure.getErrorMessage())
    if failure.check(DesiredStateError):
        raise CommandError(500, failure.getErrorMessage())
    if failure.check(AppError):
        raise CommandError(409, failure.getErrorMessage())
    failure.raiseException()


def _not_published(failure: Failure) -> NoReturn:
    """A report the broker or the journal refused: 500 saying why (not a bug's traceback);
    413 for one no journal stream can ever hold, as for a reply (asking again never helps)."""
    if failure.check(ReportTooLarge):
        raise CommandError(413, failure.getErrorMessage())
    if failure.check(ReportNotPublished):
        raise CommandError(500, failure.getErrorMessage())
    failure.raiseException()


def tail_within(lines: Sequence[str], max_bytes: int, fixed: int = 64) -> tuple[list[str], bool]:
    """The last of ``lines`` whose JSON encoding fits in ``max_bytes``; whether some were left out.

    :param fixed: bytes the reply takes besides the lines (its other fields).
    """
    kept: list[str] = []
    size = fixed
    for line in reversed(lines):
        size += len(json.dumps(line)) + (2 if kept else 0)  # (", " between items)
        if size > max_bytes:
            break
        kept.append(line)
    kept.reverse()
    return kept, len(kept) < len(lines)


class GatewayCommands:
    """Carries out the gateway's own commands.

    :param settings: the ``commands`` section.
    :param clock: for ``ping``'s time and scheduling the apply.
    :param apps: the apps' operations.
    :param apps_view: the read side's apps.
    :param jsonable: snapshot -> JSON-ready data (``gateway.readside.to_jsonable``).
    :param changer: configuration changes.
    :param restarter: restarts the process.
    :param reports: the telemetry service, or None when it does not run.
    """

    log = Logger()

    def __init__(self, settings: CommandsSettings, clock: IReactorTime, apps: AppControl, apps_view: AppsView,
                 jsonable: Callable[[Any], Any], changer: Changer, restarter: Restarter,
                 reports: Reports | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self._apps = apps
        self._apps_view = apps_view
        self._jsonable = jsonable
        self._changer = changer
        self.restarter = restarter
        self._reports = reports

    def handlers(self) -> dict[str, Handler]:
        """Command name -> handler, for the dispatcher."""
        return {"ping": self.ping, "report": self.report, "apps": self.apps,
                "app.start": self.app_start, "app.stop": self.app_stop, "app.restart": self.app_restart,
                "app.logs": self.app_logs, "config.get": self.config_get, "config.set": self.config_set,
                "restart": self.restart}

    def ping(self, request: CommandRequest) -> Reply:
        """``{}`` -> 200 ``{"pong": true, "version", "time"}``."""
        request.args(())
        return Reply(200, {"pong": True, "version": __version__, "time": self.clock.seconds()})

    def report(self, request: CommandRequest) -> Deferred[Reply]:
        """``{"name": "engine_report"}`` -> 200 with the report (also published as usual)."""
        name = _name(request.args(("name",)))
        if self._reports is None:
            raise CommandError(503, "the telemetry service does not run")
        names = self._reports.report_names()
        if name not in names:
            raise CommandError(404, f"unknown report {shown_repr(name)} (known: {', '.join(names)})")
        return self._reports.request_report(name).addCallbacks(lambda body: Reply(200, dict(body)), _not_published)

    def apps(self, request: CommandRequest) -> Reply:
        """``{}`` -> 200 ``{"apps": [...]}`` from the read side."""
        request.args(())
        return Reply(200, {"apps": self._jsonable(self._apps_view.apps())})

    def _app(self, request: CommandRequest, action: Callable[[str], Deferred[None]], done: str) -> Deferred[Reply]:
        name = _name(request.args(("name",)))
        return action(name).addCallbacks(lambda _: Reply(200, {"name": name, "result": done}), _app_error)

    def app_start(self, request: CommandRequest) -> Deferred[Reply]:
        """``{"name"}`` -> 200 once started; 404 for an unknown app."""
        return self._app(request, self._apps.start, "started")

    def app_stop(self, request: CommandRequest) -> Deferred[Reply]:
        """``{"name"}`` -> 200 once every process of it has exited."""
        return self._app(request, self._apps.stop, "stopped")

    def app_restart(self, request: CommandRequest) -> Deferred[Reply]:
        """``{"name"}`` -> 200 once restarted."""
        return self._app(request, self._apps.restart, "restarted")

    def app_logs(self, request: CommandRequest) -> Deferred[Reply]:
        """``{"name", "lines": 100, "stderr": false}`` -> 200 ``{"name", "lines": [...],
        "truncated"}``: the tail, cut to ``logs_max_bytes``."""
        args = request.args(("name", "lines", "stderr"))
        name = _name(args)
        lines = args.get("lines", DEFAULT_LINES)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 1 <= lines <= MAX_LINES:
            raise CommandError(400, f"lines: an integer from 1 to {MAX_LINES} is required")
        stderr = args.get("stderr", False)
        if not isinstance(stderr, bool):
            raise CommandError(400, "stderr: true or false")

        def reply(tail: list[str]) -> Reply:
            fixed = len(json.dumps({"name": name, "lines": [], "truncated": False}))
            kept, truncated = tail_within(tail, self.settings.logs_max_bytes, fixed)
            return Reply(200, {"name": name, "lines": kept, "truncated": truncated})

        return self._apps.tail(name, lines, stderr).addCallbacks(reply, _app_error)

    def config_get(self, request: CommandRequest) -> Reply:
        """``{"key": "links.links.cloud.endpoint"}`` -> 200 ``{"key", "value"}`` (secrets redacted)."""
        key = request.args(("key",)).get("key")
        if not isinstance(key, str) or not key:
            raise CommandError(400, "key: a dotted key path is required (e.g. gateway.device_id)")
        try:
            value = self._changer.get(key)
        except ConfigKeyError as exc:
            raise CommandError(404, str(exc)) from None
        return Reply(200, {"key": key, "value": redact_at(key.split("."), value)})

    def config_set(self, request: CommandRequest) -> "Deferred[Reply]":
        """``{"key", "value"}`` or ``{"changes": {key: value, ...}}`` -> 202 once checked; the
        change is applied next and confirmed or reverted within ``confirm_window`` (reported
        on ``report_topic``); the reply carries the new configuration's ``warnings``. 400 lists
        every configuration error (the change is reported refused); 409 while another change
        is under way, or once the gateway's stop has begun; 500 saying why when the check
        cannot be run (reported refused too)."""
        args = request.args(("key", "value", "changes"))
        if "changes" in args:
            changes = args["changes"]
            if not isinstance(changes, dict) or not changes or not all(isinstance(k, str) for k in changes):
                raise CommandError(400, "changes: a non-empty object of key path -> value is required")
        elif isinstance(args.get("key"), str) and args["key"] and "value" in args:
            changes = {args["key"]: args["value"]}
        else:
            raise CommandError(400, 'give "key" and "value", or "changes": {key path: value}')
        refused = self._changer.refusal()
        if refused is not None:
            raise CommandError(409, refused)
        window = self.settings.confirm_window
        origin = f"remote:{request.request_id or 'one-way'}"

        def checked(outcome: CheckOutcome) -> Reply:
            errors = outcome.errors
            if errors:
                self._changer.report_refused(changes, errors, origin)
                raise CommandError(400, "the configuration would be invalid",
                                   {"errors": [redact_error(error) for error in errors]})
            # (Another change began, or the gateway's stop did, while this one was checked.)
            refused = self._changer.refusal()
            if refused is not None:
                raise CommandError(409, refused)
            # Under way from now (no other change begins), after the reply is on its way: the
            # apply restarts the services this reply goes through.
            applied = self._changer.apply(changes, window, origin, next_turn=True)
            applied.addErrback(lambda f: self.log.failure("config change by {origin} not applied", f,
                                                          origin=origin))
            return Reply(202, {"keys": sorted(changes), "confirmWithin": window,
                               "reportTopic": self.settings.report_topic, "warnings": list(outcome.warnings)})

        def not_checked(failure: Failure) -> NoReturn:
            failure.trap(ConfigCheckError)
            reason = str(failure.value)
            self._changer.report_refused(changes, [reason], origin)
            raise CommandError(500, f"{reason}; nothing changed")

        return self._changer.check(changes).addCallbacks(checked, not_checked)

    def restart(self, request: CommandRequest) -> Reply:
        """``{}`` -> 202 ``{"restarting": true, "how": "systemd"|"re-exec"}``; the gateway stops
        cleanly a second later and starts again."""
        request.args(())
        return Reply(202, {"restarting": True, "how": self.restarter.restart()})
