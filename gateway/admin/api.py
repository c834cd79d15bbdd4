"""The admin API's routes: every read from the read side, every action through the one
implementation behind it (apps' operations, the update service, reports, config changes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Collection

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway.admin.errors import ApiError, bad_request, conflict, not_found, too_large, unavailable
from gateway.admin.history import DepthHistory
from gateway.admin.interfaces import (AppOperationsLike, Backends, ConfigChangerLike, ReadSideLike, ReportsLike,
                                      UpdatesLike, UploadsLike)
from gateway.asciidigits import ascii_digits
from gateway.clockstep import steady_seconds
from gateway.commands.settings import CONFIRM_WINDOW_RANGE
from gateway.filelayer import makedirs
from gateway.readside import to_jsonable
from gateway.shown import shown_repr
from gateway.admin.logstream import Blocking, LogFollower, seen_before
from gateway.admin.router import STREAMING, Handler, Raw, RouteSpec, query, read_object
from gateway.admin.settings import AdminSettings
from gateway.admin.statuspage import PAGE_POLICY, render_page
from gateway.apps.errors import UnknownAppError
from gateway.apps.logs import tail_to_end
from gateway.apps.snapshot import AppSnapshot
from gateway.updates.errors import InvalidOperation
from gateway.updates.operation import kanto_message

log = Logger()

#: What an uploaded package may be called: a GWE tarball name, no directories.
PACKAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}\.(?:tar\.gz|tgz)\Z")


def programs(statuses: list[Any]) -> list[AppSnapshot]:
    """Program statuses in the read side's shape (as ``GET /apps`` shows them)."""
    return [AppSnapshot(s.name, s.app, s.version, s.state.value, s.pid, s.uptime, s.exitstatus, s.restarts,
                        "container" if hasattr(s, "image_digest") else "process", getattr(s, "image", None),
                        getattr(s, "image_digest", None), s.error)
            for s in statuses]


#: A boolean query parameter's spellings (``?follow=1``, ``?stderr=false``).
FLAGS = {"1": True, "true": True, "0": False, "false": False}
#: The options of ``POST /apps/NAME/logs`` (as the query parameters of its GET).
LOG_OPTIONS = ("lines", "follow", "stderr")

#: A configuration change not applied, by its ``ApplyResult.outcome``: the status and message
#: of the answer (the request was wrong only when the configuration is invalid).
APPLY_FAILURES = {
    "invalid": (400, "invalid configuration"),
    "not_written": (500, "the configuration could not be written; nothing changed"),
    "not_checked": (500, "the configuration could not be checked; nothing changed"),
    "not_started": (500, "the new configuration did not start; the previous one was restored"),
}


def query_flag(request: Any, name: str) -> bool:
    """Boolean query parameter ``name`` (absent: false).

    :raises ApiError: 400 for a value other than ``1``, ``true``, ``0`` or ``false``.
    """
    value = (query(request, name, "0") or "0").lower()
    if value not in FLAGS:
        raise bad_request(f"{name} must be 1, true, 0 or false")
    return FLAGS[value]


def json_flag(options: dict[str, Any], name: str) -> bool:
    """Boolean option ``name`` of a JSON body (absent: false).

    :raises ApiError: 400 for anything but ``true`` or ``false`` (the string ``"false"`` is no false).
    """
    value = options.get(name, False)
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false")
    return value


class AdminApi:
    """The handlers of every route; :meth:`routes` lists them for the router.

    :param backends: what it reads and acts through.
    :param settings: the ``admin`` section.
    :param clock: an IReactorTime, for log following and the status page's times.
    :param blocking: runs blocking file work off the reactor thread.
    :param spool_dir: where uploads are written.
    :param history: the journal depth samples for the status page.
    """

    def __init__(self, backends: Backends, settings: AdminSettings, clock: Any,
                 blocking: Blocking, spool_dir: Path, history: DepthHistory) -> None:
        self.backends = backends
        self.settings = settings
        self.clock = clock
        self.blocking = blocking
        self.spool_dir = spool_dir
        self.history = history
        self.followers: set[LogFollower] = set()

    def routes(self) -> list[RouteSpec]:
        """``(method, pattern, handler, query keys)`` for every route of the API: a query
        key a route does not take is refused (400), as an unknown key of a body is."""
        return [
            ("GET", "/", self.page, ("token",)),
            ("GET", "/status", self.status, ()),
            ("GET", "/broker", self.snapshot("broker", "broker"), ()),
            ("GET", "/links", self.snapshot("links", "links"), ()),
            ("GET", "/journal", self.snapshot("journal", "journal"), ()),
            ("DELETE", "/journal/{name}", self.journal_drop, ("force",)),
            ("GET", "/apps", self.snapshot("apps", "apps"), ()),
            ("GET", "/operations", self.snapshot("updates", "updates"), ()),
            ("GET", "/ingest", self.snapshot("ingest", "ingest"), ()),
            ("GET", "/twin", self.snapshot("twin", "twin"), ()),
            ("GET", "/fleet", self.snapshot("fleet", "fleet"), ()),
            ("GET", "/reports", self.reports, ()),
            ("GET", "/metrics", self.metrics, ()),
            ("GET", "/config", self.config_get, ("key",)),
            ("GET", "/apps/{name}", self.app_status, ()),
            ("GET", "/apps/{name}/logs", self.app_logs, LOG_OPTIONS),
            ("POST", "/apps/{name}/logs", self.app_logs, ()),
            ("POST", "/apps/install", self.app_install, ("filename",)),
            ("POST", "/apps/{name}/start", self.app_action("start"), ()),
            ("POST", "/apps/{name}/stop", self.app_action("stop"), ()),
            ("POST", "/apps/{name}/restart", self.app_action("restart"), ()),
            ("POST", "/apps/{name}/uninstall", self.app_action("uninstall"), ()),
            ("POST", "/updates/install", self.update_submit("install"), ()),
            ("POST", "/updates/download", self.update_submit("download"), ()),
            ("POST", "/updates/cancel", self.update_cancel, ()),
            ("GET", "/uploads", self.uploads_list, ()),
            ("POST", "/uploads/trigger", self.upload_operation("trigger"), ()),
            ("POST", "/uploads/cancel", self.upload_operation("cancel"), ()),
            ("POST", "/uploads/activate", self.upload_operation("activate"), ()),
            ("POST", "/uploads/deactivate", self.upload_operation("deactivate"), ()),
            ("POST", "/reports/{name}", self.report_now, ()),
            ("POST", "/config/check", self.config_check, ()),
            ("POST", "/config/apply", self.config_apply, ()),
        ]

    # -- helpers ----------------------------------------------------------------------

    def _readside(self) -> ReadSideLike:
        if self.backends.readside is None:
            raise unavailable("the read side is not part of this gateway")
        return self.backends.readside

    def _off(self, service: str) -> str:
        """Why the named service is off for an ordinary reason (``twin.enabled: false``), as
        the read side's status says; ``""`` when it is not."""
        readside = self.backends.readside
        for state in getattr(readside.status(), "services", ()) if readside is not None else ():
            if getattr(state, "name", None) == service:
                return str(getattr(state, "off", "") or "")
        return ""

    def _require(self, service: str) -> None:
        """503 unless the named service is running (per the read side's status)."""
        readside = self.backends.readside
        if readside is None:
            return
        for state in getattr(readside.status(), "services", ()):
            if getattr(state, "name", None) == service and not getattr(state, "running", True):
                raise unavailable(f"the {service} service is not running")

    def _apps(self) -> AppOperationsLike:
        if self.backends.apps is None:
            raise unavailable("hosted apps are not part of this gateway")
        self._require("apps")
        return self.backends.apps

    def _body(self, request: Any, keys: Collection[str] | None) -> dict[str, Any]:
        """The request's JSON object (see :func:`read_object`): ``keys`` are the ones it may
        hold, ``None`` for a peer's format that takes any."""
        return read_object(request, self.settings.max_json_bytes, keys)

    # -- reads ------------------------------------------------------------------------

    def status(self, request: Any) -> Any:
        """``GET /status``: version, uptime, pid, services and their state."""
        value = to_jsonable(self._readside().status())
        config = self.backends.config
        if config is not None:
            value["config_pending"] = to_jsonable(config.pending())  # (without the drop-in it would restore)
        return value

    def snapshot(self, method: str, service: str) -> Handler:
        """``GET /<thing>``: one service's snapshot from the read side."""
        def handler(request: Any) -> Any:
            readside = self._readside()
            self._require(service)
            snapshot = getattr(readside, method)()
            if snapshot is None:  # an optional service (the twin, the fleet, the ingest) this tree has not
                off = self._off(service)
                raise unavailable(f"the {service} service is off ({off})" if off else
                                  f"the {service} service is not part of this gateway")
            return snapshot
        return handler

    def reports(self, request: Any) -> Any:
        """``GET /reports``: the last body of each report."""
        reports = self._reports()
        return {"names": list(reports.report_names()), "last": dict(reports.last_reports())}

    def _reports(self) -> ReportsLike:
        if self.backends.reports is None:
            raise unavailable("telemetry is not part of this gateway")
        self._require("telemetry")
        return self.backends.reports

    def metrics(self, request: Any) -> Raw:
        """``GET /metrics``: the same page as the metrics endpoint."""
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        body, content_type = self._reports().render_metrics(accept)
        return Raw(body, content_type)

    def page(self, request: Any) -> Raw:
        """``GET /``: the self-contained HTML status page."""
        readside = self._readside()
        pending = self.backends.config.pending() if self.backends.config is not None else None
        html = render_page(readside, self.history, steady_seconds(self.clock), self.settings.page_refresh,
                           pending)
        return Raw(html, "text/html; charset=utf-8", policy=PAGE_POLICY)

    def app_status(self, request: Any, name: str) -> Any:
        """``GET /apps/NAME``: the status of an app's programs (404 when unknown). ``GET
        /apps/install`` is so too (an app may be named ``install``): its 404 says where the
        install route is, which takes ``POST`` only."""
        try:
            return {"name": name, "programs": programs(self._apps().status(name))}
        except UnknownAppError as error:
            if name != "install":
                raise
            raise not_found(f"{error} (GET /apps/NAME is an app's status; a package is installed with "
                            "POST /apps/install?filename=F)") from None

    def config_get(self, request: Any) -> Any:
        """``GET /config?key=a.b.c``: one value of the running configuration."""
        key = query(request, "key")
        if not key:
            raise bad_request("give the key path: /config?key=section.key")
        # An unknown key raises ConfigKeyError, answered 404 with its reason, bounded, in the
        # words of the config.get command (gateway.admin.mapping).
        return {"key": key, "value": self._config().get(key)}

    @inlineCallbacks
    def journal_drop(self, request: Any, name: str) -> Any:
        """``DELETE /journal/NAME[?force=true]``: delete a stream the configuration no longer
        uses (404 unknown, 409 in use, or holding records not acknowledged without ``force``)."""
        journal = self.backends.journal
        if journal is None:
            raise unavailable("the journal is not part of this gateway")
        self._require("journal")
        force = query_flag(request, "force")
        self._body(request, ())  # a body, if any, must be an empty JSON object
        dropped = yield journal.drop(name, force)
        return {"name": name, "action": "drop", "ok": True, "lost": dropped.lost, "lost_bytes": dropped.lost_bytes}

    def _config(self) -> ConfigChangerLike:
        if self.backends.config is None:
            raise unavailable("configuration changes are not part of this gateway")
        return self.backends.config

    # -- apps -------------------------------------------------------------------------

    def app_action(self, action: str) -> Handler:
        """``POST /apps/NAME/<action>``: start, stop, restart or uninstall."""
        @inlineCallbacks
        def handler(request: Any, name: str) -> Any:
            apps = self._apps()
            self._body(request, ())  # a body, if any, must be an empty JSON object
            yield getattr(apps, action)(name)
            after = [] if action == "uninstall" else programs(apps.status(name))
            return {"name": name, "action": action, "ok": True, "programs": after}
        return handler

    @inlineCallbacks
    def app_install(self, request: Any) -> Any:
        """``POST /apps/install?filename=NAME.vVERSION.tar.gz``: body is the package, streamed
        to disk; answers the install's result (400 refused, 409 failed or rolled back)."""
        apps = self._apps()
        filename = query(request, "filename") or (request.getHeader(b"x-filename") or b"").decode("utf-8", "replace")
        if not filename:
            raise bad_request("give the package's file name: ?filename=<name>.v<version>.tar.gz")
        if not PACKAGE_NAME.match(filename) or ".." in filename:
            raise bad_request(f"the file name {shown_repr(filename)} is no package's: give <name>.v<version>.tar.gz"
                              " (or .tgz), without a directory")
        if getattr(request, "body_error", None):
            raise ApiError(500, f"could not store the package: {request.body_error}")
        if getattr(request, "body_too_large", False):
            raise too_large(f"package over admin.max_upload_bytes ({self.settings.max_upload_bytes} bytes)")
        if not getattr(request, "body_size", 0):
            raise bad_request("the request body (the package) is empty")
        source = request.body_path() if hasattr(request, "body_path") else None
        content = request.content

        def place() -> Path:
            makedirs(str(self.spool_dir), 0o700)
            directory = Path(tempfile.mkdtemp(dir=self.spool_dir, prefix=".install-"))
            target = directory / filename
            try:
                if source is not None:
                    os.link(source, target)  # the spooled body itself: no copy
                else:
                    content.seek(0)
                    target.write_bytes(content.read())
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            return target

        try:
            target = yield self.blocking(place)
        except OSError as error:  # (a full disk, or one out of inodes: the gateway's, not the client's)
            log.error("admin API: could not store the package {filename} to install it: {error}",
                      filename=filename, error=error)
            raise ApiError(500, f"could not store the package: {error}") from None
        try:
            result = yield apps.install(target)
        finally:
            yield self.blocking(lambda: shutil.rmtree(target.parent, ignore_errors=True))
        value = to_jsonable(result)
        if not result.ok:
            status = 400 if result.outcome == "refused" else 409
            raise ApiError(status, result.message, result=value)
        return value

    @inlineCallbacks
    def app_logs(self, request: Any, name: str) -> Any:
        """``GET|POST /apps/NAME/logs``: the last ``lines`` lines (``stderr`` for its error
        log); with ``follow``, the response goes on as the log grows (chunked)."""
        apps = self._apps()
        options: dict[str, Any]
        if request.method == b"POST":
            options = self._body(request, LOG_OPTIONS)
        else:
            options = {"lines": query(request, "lines", "100"), "follow": query_flag(request, "follow"),
                       "stderr": query_flag(request, "stderr")}
        lines = options.get("lines", 100)
        if isinstance(lines, bool) or (isinstance(lines, float) and not lines.is_integer()) \
                or (isinstance(lines, str) and not ascii_digits(lines.strip().removeprefix("-"))):  # (int() read ١٠)
            raise bad_request("lines must be an integer")
        try:
            lines = int(lines)
        except (TypeError, ValueError, OverflowError):
            raise bad_request("lines must be an integer") from None
        if not 0 <= lines <= self.settings.max_log_lines:
            raise bad_request(f"lines must be between 0 and {self.settings.max_log_lines}")
        follow, stderr = json_flag(options, "follow"), json_flag(options, "stderr")
        # A HEAD has no body to go on with: its answer ends after the headers, as a tail's does.
        if not follow or request.method == b"HEAD":
            tail = yield apps.tail_bytes(name, lines, stderr) if lines else b""
            return Raw(tail, "text/plain; charset=utf-8")  # (the log's bytes as they are)
        path = apps.log_path(name, stderr)
        # Asked before the tail is read: a client that hangs up meanwhile is seen (twisted.web
        # never fires a notifyFinish asked for once the connection is lost).
        finished = request.notifyFinish()
        text, offset, identity = yield self.blocking(lambda: tail_to_end(path, lines))
        follower = LogFollower(request, finished, path, offset, self.clock, self.blocking,
                               self.settings.follow_interval, self.followers.discard, identity,
                               seen_before(text, offset))
        if follower.stopped:  # the client is gone: nothing to send, nothing to follow
            return STREAMING
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.write(text)  # no Content-Length: the response is chunked, and goes on
        self.followers.add(follower)
        follower.start()
        return STREAMING

    def stop_followers(self) -> None:
        """End every followed log (the gateway is stopping)."""
        for follower in list(self.followers):
            follower.stop()

    # -- updates, reports, config ----------------------------------------------------

    def update_submit(self, action: str) -> Handler:
        """``POST /updates/install|download``: a Kanto SoftwareUpdatable request, as on MQTT."""
        def handler(request: Any) -> Any:
            updates = self._updates()
            body = self._body(request, None)  # (Kanto's SoftwareUpdatable request)
            try:
                operation = updates.handle_request(action, body)
            except InvalidOperation as exc:
                if " is already " in str(exc):
                    raise conflict(str(exc)) from None
                raise
            return {"correlationId": operation.correlation_id, "action": action,
                    "status": to_jsonable(operation.status)}
        return handler

    def update_cancel(self, request: Any) -> Any:
        """``POST /updates/cancel``: ``{"correlationId": ...}``, while it downloads."""
        updates = self._updates()
        body = kanto_message(self._body(request, None))  # (Kanto's cancel request, bare or in its envelope)
        if not isinstance(body, dict) or not isinstance(body.get("correlationId"), str) or not body["correlationId"]:
            raise bad_request("give the operation's correlationId")
        try:
            updates.handle_request("cancel", body)
        except InvalidOperation as exc:
            if "no longer" in str(exc):
                raise conflict(str(exc)) from None
            raise not_found(str(exc)) from None
        return {"correlationId": body["correlationId"], "canceling": True}

    def _updates(self) -> UpdatesLike:
        if self.backends.updates is None:
            raise unavailable("updates are not part of this gateway")
        self._require("updates")
        return self.backends.updates

    def _uploads(self) -> UploadsLike:
        if self.backends.uploads is None:
            raise unavailable("uploads are not part of this gateway")
        self._require("uploads")
        return self.backends.uploads

    def uploads_list(self, request: Any) -> Any:
        """``GET /uploads``: every upload kept (newest first, Kanto's lastUpload form) and
        whether periodic triggers are on."""
        return self._uploads().snapshot()

    def upload_operation(self, operation: str) -> Handler:
        """``POST /uploads/trigger|cancel|activate|deactivate``: the Kanto AutoUploadable
        operation's value as the body, as on MQTT. Kanto's answers map to 200, 400, 404, and
        409 for "cannot be done now" (no file matches, an upload busy, already finished)."""
        @inlineCallbacks
        def handler(request: Any) -> Any:
            uploads = self._uploads()
            body = self._body(request, None)  # (Kanto's AutoUploadable operation)
            if operation == "trigger" and body.get("correlationId") in (None, ""):
                body = {**body, "correlationId": uploads.new_correlation_id()}
            status, answer = yield uploads.handle(operation, json.dumps(body).encode())
            if status != 204:
                message = answer.get("message") if isinstance(answer, dict) else None
                raise ApiError(status if status in (400, 404) else 409, str(message or answer))
            value: dict[str, Any] = {"operation": operation, "ok": True}
            cid = body.get("correlationId")
            if isinstance(cid, str):
                value["correlationId"] = cid
                parent = cid.rsplit("#", 1)[0]
                value["upload"] = next((u for u in uploads.snapshot()["uploads"] if u["correlationId"] == parent),
                                       None)
            if operation in ("activate", "deactivate"):
                value["autoUpload"] = uploads.snapshot()["autoUpload"]
            return value
        return handler

    def report_now(self, request: Any, name: str) -> Deferred[Any]:
        """``POST /reports/NAME``: build and publish that report now; answers its body."""
        reports = self._reports()
        self._body(request, ())  # a body, if any, must be an empty JSON object
        if name not in reports.report_names():
            raise not_found(f"unknown report {shown_repr(name)} (known: {', '.join(reports.report_names())})")
        return reports.request_report(name).addCallback(lambda body: {"name": name, "report": body})

    @staticmethod
    def _changes(body: dict[str, Any]) -> dict[str, Any]:
        changes = body.get("changes")
        if not isinstance(changes, dict) or not changes or not all(isinstance(k, str) and k for k in changes):
            raise bad_request('give {"changes": {"section.key": value, ...}}')
        return changes

    def config_check(self, request: Any) -> Any:
        """``POST /config/check``: every error the changes would give (none: valid), and the
        warnings of a valid result (``--check-config``'s)."""
        d = self._config().check(self._changes(self._body(request, ("changes",))))
        return d.addCallback(lambda outcome: {"valid": not outcome.errors, "errors": list(outcome.errors),
                                              "warnings": list(outcome.warnings)})

    @inlineCallbacks
    def config_apply(self, request: Any) -> Any:
        """``POST /config/apply``: validate, write the drop-in and apply; with
        ``confirm_within`` seconds, reverted unless the cloud link comes back up."""
        config = self._config()
        body = self._body(request, ("changes", "confirm_within"))
        changes = self._changes(body)
        within = body.get("confirm_within")
        least, most = CONFIRM_WINDOW_RANGE
        if within is not None and (isinstance(within, bool) or not isinstance(within, (int, float))
                                   or not least <= within <= most):
            raise bad_request(f"confirm_within must be a number of seconds from {least:g} to {most:g}"
                              " (as commands.confirm_window), or null")
        result = yield config.apply(changes, float(within) if within is not None else None, "admin")
        value = to_jsonable(result)
        if not getattr(result, "applied", False):
            outcome = getattr(result, "outcome", "invalid")
            status, message = APPLY_FAILURES.get(outcome, APPLY_FAILURES["invalid"])
            raise ApiError(status, message, errors=list(getattr(result, "errors", ())), result=value)
        return value
