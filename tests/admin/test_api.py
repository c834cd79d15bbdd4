"""Every admin API route, over the API's own twisted.web Site and request class, with fakes
for what it reads and acts through."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway import config as gateway_config
from gateway.admin import request as request_module
from gateway.admin.api import Backends, programs
from gateway.admin.interfaces import (AppOperationsLike, ConfigChangerLike, ReadSideLike, ReportsLike,
                                      UpdatesLike)
from gateway.admin.service import AdminService
from gateway.admin.settings import AdminSettings
from gateway.apps.snapshot import AppSnapshot
from gateway.apps.operations import AppOperations
from gateway.apps.errors import DesiredStateError
from gateway.commands import dropin
from gateway.commands.reconfigure import PendingChange
from gateway.degraded import Degraded
from gateway.apps.process import ProgramState, ProgramStatus
from gateway.errors import ConfigCheckError
from gateway.links.snapshot import LinkSnapshot, LinksSnapshot
from gateway.lastrun import PreviousStop
from gateway.readside import ReadSide, to_jsonable
from gateway.telemetry.errors import ReportNotPublished, ReportTooLarge
from gateway.updates.service import UpdateService
from gateway.updates.settings import UpdatesSettings
from tests.admin.fakes import (ApplyResult, Exchange, FakeApps, FakeConfigChanger, FakeReadSide, FakeReports,
                               FakeUpdates, ServiceState, assert_implements, gateway_status, request)
from tests.fleet.samples import FAILING_FLEET
from tests.journal.helpers import refusing_journal
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock
from tests.updates.test_downloader import run_inline
from tests.updates.test_service import FakeInstaller
from tests.updates.test_service import request as update_request

TOKEN = b"t0ken-t0ken-t0ken-t0ken"


def run_now(work: Any) -> Deferred[Any]:
    """Blocking work, done inline (the tests' files are tiny)."""
    try:
        return succeed(work())
    except Exception as exc:  # noqa: BLE001 - handed on as the Deferred's failure
        from twisted.internet.defer import fail
        return fail(exc)


class ManualBlocking:
    """A ``blocking`` runner whose work runs only when the test says so."""

    def __init__(self) -> None:
        self.pending: list[tuple[Any, Deferred[Any]]] = []

    def __call__(self, work: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((work, d))
        return d

    def run_all(self) -> None:
        """Run what waits, and what that queued, until nothing waits."""
        while self.pending:
            work, d = self.pending.pop(0)
            d.callback(work())

    def fail_all(self, error: Exception) -> None:
        """Fail what waits (without running it), and what that queued."""
        while self.pending:
            _, d = self.pending.pop(0)
            d.errback(error)


class Harness:
    """An AdminService's site over fakes, with a SteppingClock."""

    def __init__(self, test: SynchronousTestCase, **settings: Any) -> None:
        self.work = Path(test.mktemp()).resolve()
        (self.work / "logs").mkdir(parents=True)
        self.clock = SteppingClock()
        self.readside = FakeReadSide()
        self.apps = FakeApps(self.work / "logs")
        self.updates = FakeUpdates()
        self.reports = FakeReports()
        self.config = FakeConfigChanger()
        self.backends = Backends(self.readside, self.apps, self.updates, self.reports, self.config)
        self.settings = AdminSettings(**settings)
        self.service = AdminService(self.settings, self.work, self.clock, self.backends, blocking=run_now)

    def site(self, token: bytes | None = None) -> Any:
        return self.service.site(token)

    def call(self, method: str, path: str, body: Any = b"", token: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        return request(self.site(token), method, path, data, headers)


class FakesTests(SynchronousTestCase):
    """The fakes offer exactly the methods of the Protocols the admin API is written against."""

    def test_fakes_implement_the_protocols(self) -> None:
        """Each fake has each Protocol method with the same parameter names."""
        h = Harness(self)
        assert_implements(self, h.readside, ReadSideLike)
        assert_implements(self, h.apps, AppOperationsLike)
        assert_implements(self, h.updates, UpdatesLike)
        assert_implements(self, h.reports, ReportsLike)
        assert_implements(self, h.config, ConfigChangerLike)

    def test_real_classes_fit_the_protocols(self) -> None:
        """AppOperations and UpdateService have the methods (and parameter names) the API calls."""
        import inspect
        for cls, protocol, names in ((AppOperations, AppOperationsLike,
                                      ("install", "uninstall", "start", "stop", "restart", "status", "tail_bytes",
                                       "log_path")),
                                     (UpdateService, UpdatesLike, ("handle_request",))):
            for name in names:
                want = list(inspect.signature(getattr(protocol, name)).parameters)
                have = list(inspect.signature(getattr(cls, name)).parameters)
                self.assertEqual(have, want, f"{cls.__name__}.{name}")


class ReadRouteTests(SynchronousTestCase):
    """GET routes answer the read side's snapshots as JSON."""

    def test_status(self) -> None:
        """GET /status: version, uptime, pid and every service with its state."""
        r = Harness(self).call("GET", "/status")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "application/json")
        body = r.json()
        self.assertEqual((body["version"], body["pid"], body["uptime_s"]), ("0.1.0", 4242, 75))
        self.assertIn({"name": "apps", "running": True, "error": ""}, body["services"])
        self.assertIsNone(body["config_pending"])

    def test_an_unclean_previous_stop_shows_in_status_and_the_page(self) -> None:
        """GET /status gives how the previous run ended (docs/readside.md, the previous run),
        and the status page says it in red when it did not stop cleanly."""
        h = Harness(self)
        h.readside.gateway = dataclasses.replace(h.readside.gateway, previous_stop=PreviousStop(
            "unclean", 1796211823.0, 4107, 1796200000.0, "reboot", 3, 1796211823.0))
        self.assertEqual(h.call("GET", "/status").json()["previous_stop"], {
            "kind": "unclean", "at": 1796211823.0, "pid": 4107, "started_at": 1796200000.0, "cause": "reboot",
            "unclean_stops": 3, "last_unclean_at": 1796211823.0})
        self.assertIn('<p id="previous-stop" class="down">Previous run: did not stop cleanly (reboot): pid 4107,'
                      ' last known alive 2026-12-02T11:43:43Z; unclean stops on this state directory: 3</p>',
                      h.call("GET", "/").body.decode())

    def test_a_journal_refusing_appends_shows_in_status_and_journal(self) -> None:
        """A journal stream that a full disk makes refuse appends: GET /status gives the
        journal's error (the streams, why, since when, how many), GET /journal the stream's
        ``refusing`` and ``refused_appends``, the journal's own ``refusing``; and the loss
        ledger the full disk refuses too (``ledger_failing``). Both said only that every
        service was running."""
        clock = Clock()
        clock.advance(1796211823)
        journal = refusing_journal(clock)
        others = [ServiceState(name, True) for name in ("broker", "links", "apps", "updates")]
        h = Harness(self)
        h.backends.readside = ReadSide(clock, others[0], journal, *others[1:],  # type: ignore[arg-type]
                                       services=[journal])
        self.assertEqual(h.call("GET", "/status").json()["services"], [{
            "name": "journal", "running": True,
            "error": "min-free-disk: link-cloud refuses appends: 0 bytes free on the disk, min_free_bytes is 0"
                     " (since 2026-12-02T11:43:43Z, 2 failed); ledger-not-saved: link-cloud's loss ledger:"
                     " [Errno 28] No space left on device: '/state/journal/link-cloud/losses.json.tmp'"
                     " (since 2026-12-02T11:43:43Z, 1 failed)"}])
        body = h.call("GET", "/journal").json()
        refusing = {"reason": "min-free-disk", "error": "0 bytes free on the disk, min_free_bytes is 0",
                    "since": 1796211823.0, "failures": 2}
        ledger = {"reason": "ledger-not-saved", "since": 1796211823.0, "failures": 1,
                  "error": "[Errno 28] No space left on device: '/state/journal/link-cloud/losses.json.tmp'"}
        self.assertEqual([(s["name"], s["refusing"], s["refused_appends"], s["ledger_failing"])
                          for s in body["streams"]],
                         [("broker-state", None, 0, None), ("link-cloud", refusing, 2, ledger)])
        self.assertEqual(body["refusing"], {**refusing, "error": "link-cloud refuses appends: " + refusing["error"]})
        self.assertEqual(body["ledger_failing"], {**ledger, "error": "link-cloud's loss ledger: " + ledger["error"]})
        html = h.call("GET", "/").body.decode()  # (the status page: the stream's row says it, in red)
        self.assertIn('<td><span class="down">min-free-disk: 0 bytes free on the disk, min_free_bytes is 0 (since'
                      ' 2026-12-02T11:43:43Z, 2 failed); ledger-not-saved: [Errno 28] No space left on device:'
                      ' &#x27;/state/journal/link-cloud/losses.json.tmp&#x27; (since 2026-12-02T11:43:43Z, 1 failed)'
                      '</span></td></tr>', html)

    def test_a_link_whose_cursor_is_not_saved_shows_in_status_and_links(self) -> None:
        """A link whose cursor saves fail (a full disk): GET /status gives the links service's
        error (the link, why, since when, how many), GET /links the link's ``cursor_failing``
        and the links' own. Both said only that every service and link was fine."""
        failing = Degraded("cursor-not-saved", "[Errno 28] No space left on device", 1796211823.0, 2)
        cloud = LinkSnapshot("cloud", "tcp:host=x:port=1883", "connected", 1.0, "", 1, 0, 0, 1, 1, 0, 10, 10, 1, 0,
                             0.1, (), cursor_failing=failing)
        links = LinksSnapshot((cloud, dataclasses.replace(cloud, name="backup", cursor_failing=None)),
                              dataclasses.replace(failing, error="link cloud: " + failing.error))

        class Links:
            name, running = "links", True

            def snapshot(self) -> LinksSnapshot:
                return links

        others = [ServiceState(name, True) for name in ("broker", "journal", "apps", "updates")]
        service = Links()
        h = Harness(self)
        h.backends.readside = ReadSide(Clock(), others[0], others[1], service, *others[2:],  # type: ignore[arg-type]
                                       services=[service])
        self.assertEqual(h.call("GET", "/status").json()["services"], [{
            "name": "links", "running": True,
            "error": "cursor-not-saved: link cloud: [Errno 28] No space left on device"
                     " (since 2026-12-02T11:43:43Z, 2 failed)"}])
        body = h.call("GET", "/links").json()
        as_json = {"reason": "cursor-not-saved", "error": "[Errno 28] No space left on device",
                   "since": 1796211823.0, "failures": 2}
        self.assertEqual([(link["name"], link["cursor_failing"], link["taken_over"]) for link in body["links"]],
                         [("cloud", as_json, None), ("backup", None, None)])
        self.assertEqual(body["cursor_failing"], {**as_json, "error": "link cloud: [Errno 28] No space left on device"})

    def test_snapshots(self) -> None:
        """GET /broker, /links, /journal, /apps, /operations answer each snapshot."""
        h = Harness(self)
        self.assertEqual(h.call("GET", "/broker").json()["clients"], 2)
        self.assertEqual(h.call("GET", "/links").json()["links"][1],
                         {"name": "backup", "state": "disconnected", "backlog": 1500, "last_error": "refused"})
        self.assertEqual(h.call("GET", "/journal").json()["streams"][0]["records"], 10)
        self.assertEqual(h.call("GET", "/apps").json()["apps"][0]["status"], "RUNNING")
        self.assertEqual(h.call("GET", "/operations").json()["operations"][0]["progress_percent"], 42)

    def test_ingest_and_twin_snapshots(self) -> None:
        """GET /ingest and /twin answer those snapshots as JSON; an optional service the gateway
        does not run (the twin off) is 503 with a JSON error."""
        h = Harness(self)
        self.assertEqual(h.call("GET", "/ingest").json(), {
            "listening": True, "error": "", "writes": 7, "values": 9, "unrouted": 2, "refused": 1, "bad": 3,
            "aliases": 4, "waiting": 0, "off": "", "devices": 0})
        self.assertEqual(h.call("GET", "/twin").json(), {"root": "acme:gw1", "things": 2, "revision": 5,
                                                         "sync": None, "save_failing": None, "save_s": None,
                                                         "save_bytes": None, "max_things": 1000,
                                                         "things_refused": 0})
        h.readside.twin_snapshot = None
        r = h.call("GET", "/twin")
        self.assertEqual((r.status, r.json()), (503, {"error": "the twin service is not part of this gateway"}))
        # Off by the configuration: said so, as GET /status says it (it said "not part of this gateway").
        h.readside.gateway = gateway_status((ServiceState("twin", True, off="twin.enabled: false"),))
        r = h.call("GET", "/twin")
        self.assertEqual((r.status, r.json()), (503, {"error": "the twin service is off (twin.enabled: false)"}))

    def test_fleet_snapshot(self) -> None:
        """GET /fleet answers the fleet channel's snapshot as JSON (an operator learned only from
        the logs whether the gateway reaches its server); off by the configuration, 503 saying so."""
        h = Harness(self)
        body = h.call("GET", "/fleet").json()
        self.assertEqual(body, to_jsonable(FAILING_FLEET))
        self.assertEqual((body["state"], body["held_until"], body["feedback_waiting"], body["action_status"]),
                         ("held", 1796627400.0, 2, "DOWNLOADING"))
        h.readside.fleet_snapshot = None
        h.readside.gateway = gateway_status((ServiceState("fleet", True, off="fleet.enabled: false"),))
        r = h.call("GET", "/fleet")
        self.assertEqual((r.status, r.json()), (503, {"error": "the fleet service is off (fleet.enabled: false)"}))

    def test_one_app(self) -> None:
        """GET /apps/NAME: its programs; an unknown app is 404 with a JSON error."""
        h = Harness(self)
        self.assertEqual(h.call("GET", "/apps/hello").json()["programs"][0]["name"], "hello")
        r = h.call("GET", "/apps/nope")
        self.assertEqual((r.status, r.json()), (404, {"error": "no app or program 'nope'"}))

    def test_get_apps_install_is_the_status_of_an_app_so_named(self) -> None:
        """``GET /apps/install`` was 404 "no app or program 'install'" while a ``DELETE`` there
        was 405 with ``Allow: GET, HEAD, POST``: it is the status of an app named ``install``
        (a name an app may have), whose 404 now says where the install route is (admin.md)."""
        h = Harness(self)
        r = h.call("GET", "/apps/install")
        self.assertEqual((r.status, r.json()), (404, {"error": (
            "no app or program 'install' (GET /apps/NAME is an app's status; a package is installed with"
            " POST /apps/install?filename=F)")}))
        r = h.call("DELETE", "/apps/install")
        self.assertEqual((r.status, r.headers["allow"]), (405, "GET, HEAD, POST"))

    def test_a_file_name_that_is_no_packages_is_named_in_its_400(self) -> None:
        """A package's name that is not ``<name>.v<version>.tar.gz`` (a ``.zip``, a path) is 400
        quoting it and saying what is taken; it said "give the package's file name", as if none
        had been given. With none, it says to give one."""
        h = Harness(self)
        for name, shown in (("hello.zip", "'hello.zip'"), ("../x.v1.tar.gz", "'../x.v1.tar.gz'")):
            r = h.call("POST", "/apps/install?filename=" + name, b"x" * 100)
            self.assertEqual((r.status, r.json()), (400, {"error": (
                f"the file name {shown} is no package's: give <name>.v<version>.tar.gz (or .tgz), without a"
                " directory")}), name)
            self.assertIsNone(h.apps.installed_bytes)
        r = h.call("POST", "/apps/install", b"x" * 100)
        self.assertEqual((r.status, r.json()), (400, {"error": (
            "give the package's file name: ?filename=<name>.v<version>.tar.gz")}))

    def test_reports_and_metrics(self) -> None:
        """GET /reports: names and last bodies; GET /metrics: the Prometheus page as is."""
        h = Harness(self)
        self.assertEqual(h.call("GET", "/reports").json()["last"], {"device_info": {"model": "test"}})
        r = h.call("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertIn(b"gateway_up 1", r.body)
        self.assertTrue(r.headers["content-type"].startswith("text/plain; version=0.0.4"))

    def test_unknown_route_and_method(self) -> None:
        """An unknown path is 404, a known path with another method 405 whose ``Allow`` names
        every method served there (HEAD beside GET, as a GET route answers it); both JSON."""
        h = Harness(self)
        r = h.call("GET", "/nothing/here")
        self.assertEqual(r.status, 404)
        self.assertIn("no such route", r.json()["error"])
        r = h.call("DELETE", "/status")
        self.assertEqual((r.status, r.headers["allow"]), (405, "GET, HEAD"))
        self.assertIn("error", r.json())
        self.assertEqual(h.call("HEAD", "/status").status, 200)

    def test_service_not_running_is_503(self) -> None:
        """A route whose service is not running answers 503."""
        h = Harness(self)
        h.readside.gateway = gateway_status((ServiceState("apps", False),))
        r = h.call("GET", "/apps")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.json(), {"error": "the apps service is not running"})
        self.assertEqual(h.call("POST", "/apps/hello/start").status, 503)

    def test_missing_backend_is_503(self) -> None:
        """A gateway without telemetry or config changes answers those routes 503."""
        h = Harness(self)
        h.backends.reports = None
        h.backends.config = None
        for method, path in (("GET", "/metrics"), ("GET", "/reports"), ("POST", "/reports/device_info"),
                             ("GET", "/config?key=a"), ("POST", "/config/check")):
            self.assertEqual(h.call(method, path).status, 503, path)

    def test_config_get(self) -> None:
        """GET /config?key=: the value; an unknown key 404; no key 400."""
        h = Harness(self)
        self.assertEqual(h.call("GET", "/config?key=gateway.device_id").json(),
                         {"key": "gateway.device_id", "value": "gw1"})
        self.assertEqual(h.call("GET", "/config?key=gateway.nope").status, 404)
        self.assertEqual(h.call("GET", "/config").status, 400)

    def test_an_unknown_config_key_is_404_saying_what_is_missing(self) -> None:
        """GET /config of a key the configuration does not have is 404 with the reason the
        config.get command gives (which section, key or item is missing), and a long key is
        repeated as its first 100 characters and its length, as the API's other errors repeat
        what was sent (before: ``no configuration key`` and the whole key, 16 KiB of it)."""
        h = Harness(self)
        config = gateway_config.load()
        h.config.get = lambda path: dropin.get_value(config, path)  # type: ignore[method-assign]
        r = h.call("GET", "/config?key=broker.listeners.5.endpoint")
        self.assertEqual((r.status, r.json()), (404, {"error": (
            "broker.listeners.5.endpoint: broker.listeners has 1 items, no item '5'"
            " (by name: 'default'; or by number from 0)")}))
        r = h.call("GET", "/config?key=gateway." + "z" * 5000)
        self.assertEqual(r.status, 404)
        self.assertEqual(r.json()["error"], f"'gateway.{'z' * 92}... (5008 characters)': a key path is at most 256"
                                            " characters")

    def test_a_key_path_with_a_control_character_is_escaped_before_the_colon(self) -> None:
        """A key path holding a newline or an escape is repeated escaped in the error of a
        ``config get`` (404) and of a ``config set``, before the colon as in the quoted part
        (before: raw there, so it broke the answer's line and could forge another)."""
        h = Harness(self)
        config = gateway_config.load()
        h.config.get = lambda path: dropin.get_value(config, path)  # type: ignore[method-assign]
        r = h.call("GET", "/config?key=gateway.no%0Ape%1B")
        self.assertEqual((r.status, r.json()), (404, {"error": "gateway.no\\npe\\x1b: gateway has no key 'no\\npe\\x1b'"}))
        r = h.call("GET", "/config?key=broker.listeners.default%0D.endpoint")
        self.assertEqual(r.json()["error"].split(":")[0], "broker.listeners.default\\r.endpoint")
        self.assertEqual(dropin.numbered_keys(config, {"broker.listeners.1.end\npoint": "tcp:1"}),
                         ["broker.listeners.1.end\\npoint: broker.listeners numbers its items from 0 only to read"
                          " them (config.get): set an item of it by its name (default)"])
        problems = dropin.CheckOutcome([])  # (the set's other errors: one path inside another)
        try:
            dropin.changes_to_tree({"gateway.a\x07": {}, "gateway.a\x07.b": 1})
        except gateway_config.ConfigError as exc:
            problems = dropin.CheckOutcome(list(exc.errors))
        self.assertEqual(problems.errors, ["gateway.a\\x07.b: another change sets a\\x07 as a whole"])

    def test_config_get_does_not_redact(self) -> None:
        """GET /config answers a secret-looking key's value as it is (docs/admin.md): the admin
        API serves the gateway's own user and group; only the remote config.get, whose answer
        leaves the gateway, redacts it."""
        h = Harness(self)
        h.config.values["links.links.cloud.password"] = "s3cret"
        self.assertEqual(h.call("GET", "/config?key=links.links.cloud.password").json(),
                         {"key": "links.links.cloud.password", "value": "s3cret"})


class AppRouteTests(SynchronousTestCase):
    """POST routes on apps go through the apps' operations."""

    def test_programs_say_why_they_failed(self) -> None:
        """The programs an action answers carry a process's error as GET /apps does."""
        [program] = programs([ProgramStatus("web", "web", "1", ProgramState.FATAL, None, 0, 1, 0,
                                            "exited with 1 before 1s")])
        self.assertEqual((program.kind, program.status, program.error), ("process", "FATAL", "exited with 1 before 1s"))

    def test_start_stop_restart_uninstall(self) -> None:
        """Each action calls the operation and answers the programs' states after it."""
        h = Harness(self)
        r = h.call("POST", "/apps/hello/stop")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["programs"][0]["status"], "STOPPED")
        self.assertEqual(h.call("POST", "/apps/hello/start").json()["programs"][0]["status"], "RUNNING")
        self.assertEqual(h.call("POST", "/apps/hello/restart").json()["action"], "restart")
        self.assertEqual(h.call("POST", "/apps/hello/uninstall").json(),
                         {"name": "hello", "action": "uninstall", "ok": True, "programs": []})
        self.assertEqual([c[0] for c in h.apps.calls], ["stop", "start", "restart", "uninstall"])

    def test_unknown_app_is_404(self) -> None:
        """Acting on an unknown app answers 404 and says which."""
        r = Harness(self).call("POST", "/apps/ghost/restart")
        self.assertEqual((r.status, r.json()), (404, {"error": "no app or program 'ghost'"}))

    def test_a_wish_the_disk_refuses_is_500_saying_why(self) -> None:
        """A stop whose desired.json the disk refuses is a 500 with the reason (nothing
        changed), not a 409 for the app's state nor an ``internal error``."""
        h = Harness(self)
        reason = "cannot keep the wish to stop hello (/s/apps/desired.json: No space left on device): nothing changed"
        self.patch(h.apps, "stop", lambda name: fail(DesiredStateError(reason)))
        r = h.call("POST", "/apps/hello/stop")
        self.assertEqual((r.status, r.json()), (500, {"error": reason}))

    def test_bad_json_is_400(self) -> None:
        """A body that is not JSON, or not an object, is 400."""
        h = Harness(self)
        r = h.call("POST", "/apps/hello/start", b"{nope")
        self.assertEqual(r.status, 400)
        self.assertIn("not valid JSON", r.json()["error"])
        self.assertEqual(h.call("POST", "/apps/hello/logs", b"[1]").status, 400)
        self.assertEqual(h.apps.calls, [])

    def test_a_body_that_is_no_object_is_named_in_jsons_words(self) -> None:
        """A JSON body that is no object is 400 naming what it is as JSON does (``not an
        array``, ``not null``): before, Python's type name (``not list``, ``not NoneType``)."""
        h = Harness(self)
        for body, what in ((b"[1]", "an array"), (b"null", "null"), (b'"x"', "a string"), (b"1", "a number")):
            r = h.call("POST", "/updates/cancel", body)
            self.assertEqual((r.status, r.json()), (400, {"error": f"body must be a JSON object, not {what}"}))

    def test_an_unknown_key_in_a_body_is_400_naming_it_and_the_known_ones(self) -> None:
        """A key a route does not take is refused (400, nothing done), naming it and the keys
        the route takes: before, a typo (``confirm_whithin``) was dropped silently and the
        change applied with no confirmation window. Routes that take no keys say so."""
        h = Harness(self)
        for path, body, error in (
                ("/config/apply", {"changes": {"gateway.device_id": "a"}, "confirm_whithin": 60},
                 "unknown key 'confirm_whithin' (known: changes, confirm_within)"),
                ("/config/check", {"changes": {"gateway.device_id": "a"}, "confirm_within": 60, "x": 1},
                 "unknown keys 'confirm_within', 'x' (known: changes)"),
                ("/apps/hello/logs", {"line": 5}, "unknown key 'line' (known: follow, lines, stderr)"),
                ("/apps/hello/stop", {"force": True}, "unknown key 'force' (this request takes none: send {} or no body)"),
                ("/reports/usage_report", {"now": True},
                 "unknown key 'now' (this request takes none: send {} or no body)")):
            r = h.call("POST", path, body)
            self.assertEqual((r.status, r.json()), (400, {"error": error}), path)
        self.assertEqual((h.config.applied, h.apps.calls, h.reports.requested), ([], [], []))
        many = {"x" * 5000: 1, **{f"k{i}": i for i in range(500)}, "lines": 5}
        r = h.call("POST", "/apps/hello/logs", many)
        self.assertEqual(r.status, 400)
        self.assertLess(len(r.json()["error"]), 300)  # (a client's junk is not sent back whole)
        self.assertTrue(r.json()["error"].startswith(f"unknown keys '{'x' * 100}... (5000 characters)', 'k0', 'k1'"
                                                     " and 498 more (known: follow, lines, stderr)"), r.json())

    def test_a_string_that_is_not_unicode_is_400(self) -> None:
        """A lone surrogate (``"\\ud800"``, or its bytes) is no text: 400 saying so, nothing
        applied; a configuration change to one was applied, and the gateway's reports then
        failed to encode. A surrogate pair (an emoji escaped) is text."""
        h = Harness(self)
        for body in (b'{"changes": {"gateway.device_id": "\\ud800"}}', b'{"changes": {"\\udc00": 1}}',
                     b'{"changes": {"gateway.device_id": "\xed\xa0\x80"}}'):
            r = h.call("POST", "/config/apply", body)
            self.assertEqual(r.status, 400, body)
            self.assertIn("body is not valid JSON: ", r.json()["error"])
        self.assertEqual(h.config.applied, [])
        r = h.call("POST", "/config/apply", b'{"changes": {"gateway.device_id": "\\ud83d\\ude00"}}')
        self.assertEqual((r.status, h.config.applied), (200, [({"gateway.device_id": "\U0001f600"}, None, "admin")]))

    def test_json_beyond_rfc_8259_is_400(self) -> None:
        """NaN, a number too large for a float and a key given twice are not taken as JSON: a 400
        saying which, nothing applied (Python took them: the last of two keys silently, and a
        NaN the gateway could not write back as JSON)."""
        h = Harness(self)
        for body, error in ((b'{"changes": {"telemetry.usage_report_interval": NaN}}', "NaN is not JSON"),
                            (b'{"changes": {"telemetry.usage_report_interval": 1e999}}', "the number 1e999 is too"),
                            (b'{"changes": {}, "changes": {"gateway.device_id": "x"}}', "key 'changes' given twice")):
            r = h.call("POST", "/config/apply", body)
            self.assertEqual(r.status, 400, body)
            self.assertTrue(r.json()["error"].startswith("body is not valid JSON: " + error), r.json())
        self.assertEqual(h.config.applied, [])

    def test_json_nested_too_deeply_is_400(self) -> None:
        """A body nested deeper than Python's parser recurses, or deeper than the handlers take
        (jsontext.MAX_NESTING: copying and YAML's emitter recurse), is a 400 saying so; the
        first raised RecursionError (a 500 "internal error")."""
        h = Harness(self)
        r = h.call("POST", "/config/check", b"[" * 5000)
        self.assertEqual((r.status, r.json()), (400, {"error": "body is not valid JSON: JSON nested too deeply to parse"}))
        deep: Any = "x"
        for _ in range(150):
            deep = {"a": deep}
        r = h.call("POST", "/config/check", {"changes": deep})
        self.assertEqual((r.status, r.json()), (400, {"error": "body nests deeper than 100 levels"}))

    def test_too_large_json_is_413(self) -> None:
        """A JSON body over admin.max_json_bytes is 413."""
        h = Harness(self, max_json_bytes=1024)
        r = h.call("POST", "/config/check", {"changes": {"x": "y" * 2000}})
        self.assertEqual(r.status, 413)

    def test_install_upload(self) -> None:
        """POST /apps/install?filename=: the body, spooled to a file under that name, is installed."""
        h = Harness(self)
        package = bytes(range(256)) * 1024  # over the in-memory size: spooled to disk
        exchange = Exchange(h.site())
        exchange.send("POST", "/apps/install?filename=hello.v1.3.tar.gz", package, chunks=7)
        r = exchange.response()
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.json()["outcome"], "installed")
        self.assertEqual(h.apps.calls, [("install", "hello.v1.3.tar.gz")])
        self.assertEqual(h.apps.installed_bytes, package)
        spool = h.work / "admin" / "spool"
        self.assertEqual(list(spool.iterdir()), [], "the upload and its directory are removed")

    def test_upload_goes_to_disk_as_it_arrives(self) -> None:
        """While a package arrives, its bytes are in a file in the admin spool, not in memory."""
        h = Harness(self)
        exchange = Exchange(h.site())
        head = ("POST /apps/install?filename=hello.v1.3.tar.gz HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 300000\r\n\r\n").encode()
        exchange.protocol.dataReceived(head + b"a" * 100_000)
        [spooled] = (h.work / "admin" / "spool").iterdir()
        self.assertTrue(spooled.name.startswith(".body-"))
        self.assertEqual(spooled.stat().st_size, 100_000)
        exchange.protocol.dataReceived(b"b" * 200_000)
        self.assertEqual(exchange.response().status, 200)
        self.assertEqual(h.apps.installed_bytes, b"a" * 100_000 + b"b" * 200_000)
        self.assertEqual(list((h.work / "admin" / "spool").iterdir()), [])

    def test_upload_written_off_the_reactor_thread(self) -> None:
        """With a real writer (a thread), the body's chunks go to the disk in batches while the
        reactor goes on; past 1 MiB waiting the connection is paused, and resumed once the
        disk caught up; the request is processed only when every byte is written."""
        writes = ManualBlocking()
        h = Harness(self)
        h.service = AdminService(h.settings, h.work, h.clock, h.backends, blocking=writes)
        exchange = Exchange(h.site())
        body = bytes(range(256)) * 8192  # 2 MiB
        head = ("POST /apps/install?filename=hello.v1.3.tar.gz HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        exchange.protocol.dataReceived(head + body[:512 * 1024])
        self.assertEqual(len(writes.pending), 1, "the first batch goes to the writer")
        exchange.protocol.dataReceived(body[512 * 1024:1536 * 1024])
        self.assertEqual(exchange.transport.producerState, "paused")
        writes.run_all()
        self.assertEqual(exchange.transport.producerState, "producing")
        exchange.protocol.dataReceived(body[1536 * 1024:])
        self.assertEqual(exchange.transport.value(), b"", "not processed while bytes wait for the disk")
        writes.run_all()
        self.assertEqual(exchange.response().status, 200)
        self.assertEqual(h.apps.installed_bytes, body)

    def test_upload_write_failure_is_500(self) -> None:
        """A body the disk refused (full, say) is answered 500 with the reason; nothing installed."""
        writes = ManualBlocking()
        h = Harness(self)
        h.service = AdminService(h.settings, h.work, h.clock, h.backends, blocking=writes)
        exchange = Exchange(h.site())
        exchange.send("POST", "/apps/install?filename=hello.v1.3.tar.gz", b"x" * 200_000)
        writes.fail_all(OSError(28, "No space left on device"))
        r = exchange.response()
        self.assertEqual(r.status, 500)
        self.assertIn("No space left on device", r.json()["error"])
        self.assertEqual(h.apps.calls, [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1, "logged once")

    def test_a_spool_out_of_inodes_is_500_with_the_reason(self) -> None:
        """The body is stored, but the spool cannot take the package's directory (a
        filesystem out of inodes: ENOSPC, bytes to spare): 500 ``could not store the package:
        ...`` naming the path, one error line in the log and no traceback (it was ``internal
        error: ...`` and a critical traceback); nothing installed. A link that fails after the
        directory was made leaves no directory behind."""
        from gateway.admin import api as api_module

        def no_inode(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.ENOSPC, "No space left on device", "/state/admin/spool/.install-x")
        h = Harness(self)
        self.patch(api_module.tempfile, "mkdtemp", no_inode)
        events = capture_log_events(self)
        r = h.call("POST", "/apps/install?filename=hello.v1.3.tar.gz", b"x" * 1000)
        self.assertEqual((r.status, r.json()), (500, {"error": "could not store the package: [Errno 28] No space"
                                                               " left on device: '/state/admin/spool/.install-x'"}))
        self.assertEqual(h.apps.calls, [])
        self.assertEqual([e for e in events if e.get("log_failure") is not None], [])
        self.assertEqual([formatEvent(e) for e in events if "could not store" in formatEvent(e)],
                         ["admin API: could not store the package hello.v1.3.tar.gz to install it: [Errno 28] No"
                          " space left on device: '/state/admin/spool/.install-x'"])
        self.patch(api_module.tempfile, "mkdtemp", tempfile.mkdtemp)
        self.patch(api_module.os, "link", no_inode)
        self.patch(api_module.Path, "write_bytes", no_inode)
        r = h.call("POST", "/apps/install?filename=hello.v1.3.tar.gz", b"x" * 1000)
        self.assertEqual(r.status, 500)
        self.assertEqual(os.listdir(h.work / "admin" / "spool"), [])

    def test_upload_to_a_spool_that_cannot_be_written_is_500(self) -> None:
        """A spool file the disk refuses to create (read-only, say) is answered 500 with the
        reason, logged once, and the body read and dropped (admin.md: a body the disk refuses
        is answered 500 with the reason); the connection was dropped without an answer."""
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EROFS, "Read-only file system")
        self.patch(request_module.tempfile, "NamedTemporaryFile", refuse)
        writes = ManualBlocking()
        h = Harness(self)
        h.service = AdminService(h.settings, h.work, h.clock, h.backends, blocking=writes)
        exchange = Exchange(h.site())
        exchange.send("POST", "/apps/install?filename=hello.v1.3.tar.gz", b"x" * 200_000, chunks=4)
        self.assertEqual(writes.pending, [], "nothing to write")
        r = exchange.response()
        self.assertEqual(r.status, 500)
        self.assertIn("Read-only file system", r.json()["error"])
        self.assertEqual(h.apps.calls, [])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1, "logged once")

    def test_form_content_type_is_not_parsed(self) -> None:
        """A package sent as curl --data-binary sends it (form-encoded) is not parsed as a form:
        it is installed as it is, and a JSON body so labelled is still read as JSON."""
        h = Harness(self)
        package = b"a=1&b=2" * 20_000
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        site = h.site()
        seen: list[Any] = []
        render = site.resource.render
        site.resource.render = lambda request: (seen.append(request), render(request))[1]
        exchange = Exchange(site)
        exchange.send("POST", "/apps/install?filename=hello.v1.3.tar.gz", package, headers=form)
        self.assertEqual(exchange.response().status, 200)
        self.assertEqual(h.apps.installed_bytes, package)
        self.assertEqual(seen[0].args, {b"filename": [b"hello.v1.3.tar.gz"]}, "the body was not read as a form")
        r = h.call("POST", "/config/check", {"changes": {"gateway.device_id": "x"}}, headers=form)
        self.assertEqual(r.json(), {"valid": True, "errors": [], "warnings": []})

    def test_install_refused_and_rolled_back(self) -> None:
        """A refused package is 400, a rolled-back install 409; both carry the result."""
        from gateway.apps.operations import InstallResult
        h = Harness(self)
        h.apps.install_result = InstallResult(False, "refused", None, None, None, "refused: absolute path")
        r = h.call("POST", "/apps/install?filename=x.v1.tgz", b"data")
        self.assertEqual((r.status, r.json()["error"]), (400, "refused: absolute path"))
        h.apps.install_result = InstallResult(False, "rolled-back", "x", "2", "1", "unhealthy", "log")
        r = h.call("POST", "/apps/install?filename=x.v2.tgz", b"data")
        self.assertEqual((r.status, r.json()["result"]["outcome"]), (409, "rolled-back"))

    def test_install_too_large_is_413(self) -> None:
        """A package over admin.max_upload_bytes is 413, whether its length is declared or not,
        and nothing is installed or kept."""
        h = Harness(self, max_upload_bytes=100_000)
        r = h.call("POST", "/apps/install?filename=big.v1.tar.gz", b"x" * 100_001)
        self.assertEqual(r.status, 413)
        self.assertIn("max_upload_bytes", r.json()["error"])
        exchange = Exchange(h.site())
        head = ("POST /apps/install?filename=big.v1.tar.gz HTTP/1.1\r\nHost: x\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        exchange.protocol.dataReceived(head)
        for _ in range(3):
            exchange.protocol.dataReceived(b"%x\r\n" % 60_000 + b"y" * 60_000 + b"\r\n")
        exchange.protocol.dataReceived(b"0\r\n\r\n")
        self.assertEqual(exchange.response().status, 413)
        self.assertEqual(h.apps.calls, [])

    def test_install_needs_a_good_file_name(self) -> None:
        """No file name, a path, or a dot file is 400; an empty body too."""
        h = Harness(self)
        for path in ("/apps/install", "/apps/install?filename=../x.v1.tgz", "/apps/install?filename=.x.v1.tgz",
                     "/apps/install?filename=x.zip", "/apps/install?filename=x.v1.tgz%0A"):
            self.assertEqual(h.call("POST", path, b"data").status, 400, path)
        self.assertEqual(h.call("POST", "/apps/install?filename=x.v1.tgz", b"").status, 400)

    def test_logs_tail(self) -> None:
        """GET and POST /apps/NAME/logs answer the last N lines as text."""
        h = Harness(self)
        (h.work / "logs" / "hello.log").write_text("".join(f"line {i}\n" for i in range(10)))
        r = h.call("GET", "/apps/hello/logs?lines=3")
        self.assertEqual((r.status, r.body), (200, b"line 7\nline 8\nline 9\n"))
        self.assertEqual(h.call("POST", "/apps/hello/logs", {"lines": 1}).body, b"line 9\n")
        self.assertEqual(h.call("POST", "/apps/hello/logs", {"lines": "x"}).status, 400)
        self.assertEqual(h.call("POST", "/apps/hello/logs", {"lines": 10**9}).status, 400)
        self.assertEqual(h.call("GET", "/apps/ghost/logs").status, 404)

    def test_logs_are_the_logs_bytes_as_they_are(self) -> None:
        """A log's lines are answered as the app wrote them, followed or not (admin.md: gatewayctl
        writes them as they are to a pipe): a carriage return, an escape sequence and a byte that
        is no UTF-8 kept, lines counted at newlines alone. A carriage return ended a line and came
        back a newline (a progress bar's output counted as many lines), and a byte that is no
        UTF-8 came back U+FFFD; followed, the last line was cut at its carriage return."""
        h = Harness(self)
        written = b"earlier\nprogress 10%\rprogress 99%\x1b[2K\x07 \xff\tdone\n"
        (h.work / "logs" / "hello.log").write_bytes(written)
        self.assertEqual(h.call("GET", "/apps/hello/logs").body, written)
        self.assertEqual(h.call("GET", "/apps/hello/logs?lines=1").body, written[len(b"earlier\n"):])
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=1&follow=1")
        self.assertEqual(exchange.response().body, written[len(b"earlier\n"):])
        exchange.close()

    def test_logs_options_wrong_type(self) -> None:
        """A logs option of the wrong type is a wrong argument (400, nothing followed): the
        JSON string "false" did follow (and read stderr), 1e400 was a 500, ?follow=yes was
        silently not followed."""
        h = Harness(self)
        (h.work / "logs" / "hello.log").write_text("".join(f"line {i}\n" for i in range(10)))
        for options in ({"lines": 1, "follow": "false"}, {"lines": 1, "stderr": "no"}, {"lines": 1e400},
                        {"lines": 2.5}, {"lines": True}, {"follow": 1}):
            r = h.call("POST", "/apps/hello/logs", json.dumps(options).encode())
            self.assertEqual(r.status, 400, options)
            self.assertTrue(r.complete, options)
        for path in ("/apps/hello/logs?follow=yes", "/apps/hello/logs?stderr=2"):
            self.assertEqual(h.call("GET", path).status, 400, path)
        self.assertEqual(h.service.api.followers, set())
        self.assertEqual(h.call("POST", "/apps/hello/logs", {"lines": 1, "follow": False, "stderr": False}).body,
                         b"line 9\n")
        self.assertEqual(h.call("GET", "/apps/hello/logs?lines=1&follow=FALSE&stderr=0").body, b"line 9\n")

    def test_logs_query_with_an_unknown_key_is_refused(self) -> None:
        """A GET of a log with a query key it does not take (a typo: ?line=3, ?folow=1) is 400
        naming it, as a POST body's unknown key is; it was answered 200 with the default 100
        lines, not followed, the typo dropped silently."""
        h = Harness(self)
        (h.work / "logs" / "hello.log").write_text("".join(f"line {i}\n" for i in range(10)))
        r = h.call("GET", "/apps/hello/logs?line=3")
        self.assertEqual((r.status, json.loads(r.body)),
                         (400, {"error": "unknown key 'line' (known: follow, lines, stderr)"}))
        self.assertEqual(h.call("GET", "/apps/hello/logs?lines=1&folow=1").status, 400)
        r = h.call("GET", "/apps/hello/logs?lines=%D9%A1")  # (int() read the Arabic-Indic 1 as 1)
        self.assertEqual((r.status, json.loads(r.body)), (400, {"error": "lines must be an integer"}))
        self.assertEqual(h.service.api.followers, set())
        self.assertEqual(h.call("GET", "/apps/hello/logs?lines=1&follow=0&stderr=0").body, b"line 9\n")

    def test_logs_follow(self) -> None:
        """follow: the tail, then what the log grows by, chunked, until the client leaves."""
        h = Harness(self)
        log = h.work / "logs" / "hello.log"
        log.write_text("old 1\nold 2\n")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=1&follow=1")
        r = exchange.response()
        self.assertEqual((r.status, r.headers["transfer-encoding"], r.body, r.complete),
                         (200, "chunked", b"old 2\n", False))
        with log.open("a") as f:
            f.write("new 3\n")
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"old 2\nnew 3\n")
        log.write_text("rotated 1\n")  # smaller: read again from the start
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"old 2\nnew 3\nrotated 1\n")
        self.assertEqual(len(h.service.api.followers), 1)
        exchange.close()
        self.assertEqual(len(h.service.api.followers), 0)
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_a_followed_log_that_rotates_is_read_on_in_its_backup_then_anew(self) -> None:
        """The log rotates between two looks (renamed to ``hello.log.1``, a new file in its
        place): what it got after the last look is read from the backup, then the new file
        from its start, nothing missed nor repeated, however long the new file is already.
        What the old file got after the last look was lost, and a new file already longer than
        the old offset was read from that offset on, its first lines lost too."""
        h = Harness(self)
        log = h.work / "logs" / "hello.log"
        log.write_text("old 1\nold 2\n")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=1&follow=1")
        with log.open("a") as f:
            f.write("old 3\n")
        os.replace(log, log.with_name("hello.log.1"))
        log.write_text("new 1, longer than the old file was\n")
        h.clock.advance(1.0)
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"old 2\nold 3\nnew 1, longer than the old file was\n")
        with log.open("a") as f:
            f.write("new 2\n")
        os.replace(log, log.with_name("hello.log.1"))
        log.write_text("")  # (rotated at the size: empty yet)
        h.clock.advance(1.0)
        log.write_text("newer 1\n")
        h.clock.advance(1.0)
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body,
                         b"old 2\nold 3\nnew 1, longer than the old file was\nnew 2\nnewer 1\n")
        exchange.close()

    def test_a_log_that_rotates_once_or_twice_between_two_looks_loses_no_line(self) -> None:
        """A log that rotates between two looks (a program that fills its
        ``stdout_logfile_maxbytes`` in about a ``follow_interval``, or faster, or a client that
        stopped reading a while) is followed whole: the rest of the old file is read from the
        backup it is now, ``.1`` or ``.2``, then, in the same look, each file rotated after it
        and the new one. A look stopped at the old file's end, and its file was looked for in
        ``.1`` only, else the new file was read from its start: a real gateway's follow lost a
        file's worth of lines at every other rotation, and of a program writing 135 KB/s,
        rotating every half second, showed 8,000 of its 42,000 lines."""
        h = Harness(self)
        log = h.work / "logs" / "hello.log"
        log.write_text("a 1\n")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=1&follow=1")

        def rotate(old: str, new: str) -> None:
            with log.open("a") as f:
                f.write(f"{old} 2\n")
            if log.with_name("hello.log.1").exists():
                os.replace(log.with_name("hello.log.1"), log.with_name("hello.log.2"))
            os.replace(log, log.with_name("hello.log.1"))
            log.write_text(f"{new} 1\n")
        for old, new in (("a", "b"), ("b", "c")):
            rotate(old, new)
            h.clock.advance(1.0)
        rotate("c", "d")
        rotate("d", "e")
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"a 1\na 2\nb 1\nb 2\nc 1\nc 2\nd 1\nd 2\ne 1\n")
        exchange.close()

    def test_a_log_truncated_and_written_past_the_offset_is_read_from_its_start(self) -> None:
        """A log with no backups, truncated at its size and written again past where the
        follower was between two looks, is read from its start: the bytes before that offset
        are no longer the ones it read. It was read on from the offset, the new file's first
        lines lost: a real gateway's follow of a program of 1,000 lines a second with 0
        backups lost 4,700 of 11,000."""
        h = Harness(self)
        log = h.work / "logs" / "hello.log"
        log.write_text("a 1\na 2\n")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=2&follow=1")
        log.write_text("b 1\nb 2\nb 3\n")  # (truncated, then longer than before)
        h.clock.advance(1.0)
        with log.open("a") as f:
            f.write("b 4\n")
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"a 1\na 2\nb 1\nb 2\nb 3\nb 4\n")
        exchange.close()

    def test_a_log_that_grows_faster_than_a_read_a_look_is_followed_whole(self) -> None:
        """A look reads on while there is more (a read of 64 KiB came back full) and the client
        reads: a program writing more than 64 KiB a ``follow_interval`` is followed whole. One
        read a look left the follower further behind at every look, and the rotations took
        the lines it had not read: a real gateway's follow of a program writing 135 KB/s showed
        6,000 of its 42,000 lines."""
        from gateway.admin.logstream import CHUNK

        h = Harness(self)
        log = h.work / "logs" / "hello.log"
        log.write_text("")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=1&follow=1")
        grown = b"".join(b"line %06d\n" % i for i in range(CHUNK * 7 // 2 // 12))
        log.write_bytes(grown)
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, grown)
        exchange.close()

    def test_a_client_that_does_not_read_pauses_the_follow(self) -> None:
        """While the connection's send buffer is full (a client that stopped reading: the
        transport pauses the channel), nothing more of the log is read nor written; once it
        drains, following goes on at once from where it stopped, nothing missed. It wrote up
        to 64 KiB a poll into a buffer that grew for as long as the app logged; then it waited
        for the next poll after each drain, 64 KiB a poll, and a real gateway's follow of a
        program writing 135 KB/s showed 8,000 of its 42,000 lines (the rotations took the rest)."""
        h = Harness(self)
        log = h.work / "logs" / "hello.log"
        log.write_text("old 1\n")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=1&follow=1")
        exchange.protocol.pauseProducing()  # (what the TCP transport does when its buffer is full)
        with log.open("a") as f:
            f.write("new 2\n")
        h.clock.advance(1.0)
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"old 1\n")
        exchange.protocol.resumeProducing()
        self.assertEqual(exchange.response().body, b"old 1\nnew 2\n")
        with log.open("a") as f:
            f.write("new 3\n")
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"old 1\nnew 2\nnew 3\n")
        exchange.close()
        self.assertEqual(h.service.api.followers, set())
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_follow_neither_repeats_nor_misses(self) -> None:
        """The tail and the offset following starts from come from one look at the file: a
        partial last line is sent as it is and its rest follows, nothing twice."""
        from gateway.apps.logs import tail_to_end
        h = Harness(self)
        log = h.work / "logs" / "hello.log"
        log.write_bytes(b"a\nb\npart")
        self.assertEqual(tail_to_end(log, 2)[:2], (b"b\npart", 8))
        self.assertEqual(tail_to_end(log, 0)[:2], (b"", 8))
        self.assertEqual(tail_to_end(h.work / "nope.log", 5), (b"", 0, None))
        long_lines = b"".join(b"%04d " % i + b"x" * 994 + b"\n" for i in range(200))  # 1000 bytes each
        log.write_bytes(long_lines)  # the last lines whole, however long (docs/admin.md)
        self.assertEqual(tail_to_end(log, 50)[:2], (long_lines[150 * 1000:], 200 * 1000))
        log.write_bytes(b"a\nb\npart")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=2&follow=1")
        with log.open("ab") as f:
            f.write(b"ial\nc\n")
        h.clock.advance(1.0)
        self.assertEqual(exchange.response().body, b"b\npartial\nc\n")
        exchange.close()

    def test_head_of_a_followed_log_ends(self) -> None:
        """``HEAD`` of a followed log answers its headers and ends, as every ``HEAD`` (docs/
        admin.md: "every GET route also answers HEAD, without the body"): it started a
        follower that sent nothing and never ended, and the client waited for ever."""
        h = Harness(self)
        (h.work / "logs" / "hello.log").write_bytes(b"a\nb\n")
        exchange = Exchange(h.site())
        exchange.send("HEAD", "/apps/hello/logs?lines=1&follow=1", headers={"Connection": "close"})
        response = exchange.response()
        self.assertEqual((response.status, response.headers["content-type"], response.body),
                         (200, "text/plain; charset=utf-8", b""))
        self.assertTrue(exchange.transport.disconnecting, "the answer ended")
        self.assertEqual(h.service.api.followers, set(), "no follower left polling the file")

    def test_client_gone_while_the_tail_is_read_leaves_no_follower(self) -> None:
        """A client that hangs up while its log's tail is still being read (off the reactor
        thread) leaves nothing behind: no follower polling the file every second for ever,
        and a later stop of the service (a configuration change) goes through; it raised
        ``Request.finish called ... after its connection was lost`` and left the socket and
        its lock held, so the next admin API could not listen and the gateway stopped."""
        reads = ManualBlocking()
        h = Harness(self)
        h.service = AdminService(h.settings, h.work, h.clock, h.backends, blocking=reads)
        (h.work / "logs" / "hello.log").write_text("old 1\n")
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?lines=1&follow=1")
        exchange.close()
        reads.run_all()
        self.assertEqual(h.service.api.followers, set())
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.successResultOf(h.service.stopService())

    def test_stopping_ends_followed_logs(self) -> None:
        """Stopping the service finishes every followed log's response."""
        h = Harness(self)
        exchange = Exchange(h.site())
        exchange.send("GET", "/apps/hello/logs?follow=true")
        h.service.stopService()
        self.assertTrue(exchange.response().complete)


class UpdateRouteTests(SynchronousTestCase):
    """POST /updates/* reach the update service's handle_request, as MQTT requests do."""

    def test_install_and_download(self) -> None:
        """install and download submit the Kanto request and answer its id and status."""
        h = Harness(self)
        req = {"correlationId": "op-9", "softwareModules": [{"softwareModule": {"name": "a", "version": "1"}}]}
        r = h.call("POST", "/updates/install", req)
        self.assertEqual((r.status, r.json()), (200, {"correlationId": "op-9", "action": "install",
                                                      "status": "STARTED"}))
        self.assertEqual(h.updates.calls[0], ("install", req))
        self.assertEqual(h.call("POST", "/updates/download", {**req, "correlationId": "op-8"}).status, 200)

    def test_refusals(self) -> None:
        """A malformed request is 400, an id already running 409."""
        h = Harness(self)
        self.assertEqual(h.call("POST", "/updates/install", {"correlationId": "x"}).status, 400)
        r = h.call("POST", "/updates/install", {"correlationId": "op-1", "softwareModules": [{}]})
        self.assertEqual(r.status, 409)
        self.assertIn("already", r.json()["error"])

    def test_cancel(self) -> None:
        """cancel: 200 while downloading, 409 once installing, 404 for no such operation."""
        h = Harness(self)
        self.assertEqual(h.call("POST", "/updates/cancel", {"correlationId": "op-1"}).json(),
                         {"correlationId": "op-1", "canceling": True})
        self.assertEqual(h.call("POST", "/updates/cancel", {"correlationId": "op-2"}).status, 409)
        self.assertEqual(h.call("POST", "/updates/cancel", {"correlationId": "op-7"}).status, 404)
        self.assertEqual(h.call("POST", "/updates/cancel", {}).status, 400)
        self.assertEqual(h.call("POST", "/updates/cancel", {"correlationId": ""}).status, 400)


class NeverAnswers(Resource):
    """A download server that takes requests and never answers: operations stay DOWNLOADING."""

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        return NOT_DONE_YET


class UpdateRoutesOverTheServiceTests(SynchronousTestCase):
    """POST /updates/* over the real update service: a request is taken and reported as the
    MQTT topics take and report it (docs/admin.md, Updates: "the same Kanto SoftwareUpdatable
    requests the MQTT topics take ... their statuses go out on lastOperation as usual")."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.published: list[dict[str, Any]] = []
        self.clock = SteppingClock()
        self.service = UpdateService(
            UpdatesSettings(), Path(self.mktemp()), self.clock, StubTreq(NeverAnswers()),
            lambda topic, payload, qos, retain: self.published.append(json.loads(payload)), FakeInstaller(),
            run_inline, lambda attempt: 1.0)
        self.successResultOf(self.service.startService())
        self.addCleanup(self.service.stopService)
        self.h.backends.updates = self.service

    def test_a_refused_request_is_reported_as_on_mqtt(self) -> None:
        """A refused install (an id reserved for the fleet, a malformed request) ends
        ``FINISHED_ERROR`` under its id, and one whose id runs repeats that operation's status
        with ``install refused: ...``, as on the MQTT topics: through the admin API the
        refusal was answered and published nothing."""
        r = self.h.call("POST", "/updates/install", {"correlationId": "ddi-3", "softwareModules": []})
        said = ("correlationId: 'ddi-3' begins with 'ddi-', which is reserved for the fleet's hawkBit"
                " deployments; use another id")
        self.assertEqual((r.status, r.json()), (400, {"error": said}))
        self.assertEqual([(p["correlationId"], p["status"], p["message"]) for p in self.published],
                         [("ddi-3", "FINISHED_ERROR", said)])
        self.published.clear()
        self.assertEqual(self.h.call("POST", "/updates/download", update_request("op-1")).status, 200)
        self.published.clear()
        r = self.h.call("POST", "/updates/install", update_request("op-1"))
        self.assertEqual(r.status, 409)
        self.assertEqual([(p["correlationId"], p["message"]) for p in self.published],
                         [("op-1", f"install refused: {r.json()['error']}")])

    def test_a_request_in_a_ditto_envelope_is_taken(self) -> None:
        """Install and cancel in the Ditto envelope Kanto's backends send, as the MQTT topics
        take them: it was 400 ``correlationId: a non-empty string is required``."""
        def envelope(command: str, value: dict[str, Any]) -> dict[str, Any]:
            return {"topic": f"acme/gw-1/things/live/messages/{command}",
                    "path": f"/features/SoftwareUpdatable/inbox/messages/{command}", "value": value}

        r = self.h.call("POST", "/updates/install", envelope("install", update_request("op-2")))
        self.assertEqual((r.status, r.json()["correlationId"]), (200, "op-2"))
        self.assertEqual(self.service.operations["op-2"].status.value, "DOWNLOADING")
        r = self.h.call("POST", "/updates/cancel", envelope("cancel", {"correlationId": "op-2"}))
        self.assertEqual((r.status, r.json()), (200, {"correlationId": "op-2", "canceling": True}))


class UploadRouteTests(SynchronousTestCase):
    """The upload routes drive the real upload service (on a Clock, with a fake provider)
    through its Kanto inbox, as the cloud commands and local topics do."""

    def setUp(self) -> None:
        from gateway.uploads.settings import UploadsSettings
        from tests.uploads.fakes import fake_service
        self.dir = Path(self.mktemp()).absolute()
        self.dir.mkdir()
        (self.dir / "a.log").write_bytes(b"a" * 100)
        settings = UploadsSettings(files=(str(self.dir / "*.log"),), concurrency=1)
        self.uploads, self.watcher, self.clock, self.sends = fake_service(Path(self.mktemp()), settings)
        self.successResultOf(self.uploads.startService())
        self.addCleanup(lambda: self.uploads.running and self.uploads.stopService())
        self.h = Harness(self)
        self.h.backends.uploads = self.uploads

    def test_trigger_and_list(self) -> None:
        """A trigger without an id gets one, answers the upload's PENDING status and sends the
        file's request; GET /uploads lists it with the periodic state."""
        r = self.h.call("POST", "/uploads/trigger", {})
        self.assertEqual(r.status, 200, r.body)
        value = r.json()
        cid = value["correlationId"]
        self.assertTrue(cid.startswith("upload-id-"))
        self.assertEqual((value["operation"], value["upload"]["state"]), ("trigger", "PENDING"))
        self.assertEqual([q["correlationId"] for q in self.watcher.requests()], [f"{cid}#1"])
        listed = self.h.call("GET", "/uploads").json()
        self.assertEqual([u["correlationId"] for u in listed["uploads"]], [cid])
        self.assertEqual(listed["autoUpload"], {"active": False, "startTime": None, "endTime": None})

    def test_trigger_with_options_and_cancel(self) -> None:
        """A named trigger with ``upload.files``, then its cancel: CANCELED with the message."""
        r = self.h.call("POST", "/uploads/trigger", {"correlationId": "diag-1",
                                                     "options": {"upload.files": str(self.dir / "*.log")}})
        self.assertEqual((r.status, r.json()["correlationId"]), (200, "diag-1"))
        r = self.h.call("POST", "/uploads/cancel", {"correlationId": "diag-1", "message": "by hand"})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual((r.json()["upload"]["state"], r.json()["upload"]["message"]), ("CANCELED", "by hand"))

    def test_refusals(self) -> None:
        """Kanto's 400 stays 400, 404 stays 404, 500 ("cannot be done") is 409."""
        bad = self.h.call("POST", "/uploads/trigger", {"correlationId": 7})
        self.assertEqual(bad.status, 400, bad.body)
        unknown = self.h.call("POST", "/uploads/cancel", {"correlationId": "nope"})
        self.assertEqual(unknown.status, 404, unknown.body)
        nothing = self.h.call("POST", "/uploads/trigger", {"options": {"upload.files": str(self.dir / "none.*")}})
        self.assertEqual(nothing.status, 409, nothing.body)
        self.assertIn("not permitted", nothing.json()["error"])
        self.assertEqual(self.h.call("GET", "/uploads/trigger").status, 405)

    def test_activate_and_deactivate(self) -> None:
        """Periodic triggers switched on and off; the answer carries the autoUpload state."""
        r = self.h.call("POST", "/uploads/activate", {})
        self.assertEqual((r.status, r.json()["autoUpload"]["active"]), (200, True))
        self.assertTrue(self.h.call("GET", "/uploads").json()["autoUpload"]["active"])
        r = self.h.call("POST", "/uploads/deactivate", {})
        self.assertEqual((r.status, r.json()["autoUpload"]["active"]), (200, False))

    def test_without_the_service(self) -> None:
        """A gateway without an upload service answers 503."""
        self.assertEqual(Harness(self).call("GET", "/uploads").status, 503)

    def test_the_service_fits_the_protocol(self) -> None:
        """UploadService has the methods (and parameter names) the API calls."""
        import inspect

        from gateway.admin.interfaces import UploadsLike
        from gateway.uploads.service import UploadService
        for name in ("handle", "snapshot", "new_correlation_id"):
            self.assertEqual(list(inspect.signature(getattr(UploadService, name)).parameters),
                             list(inspect.signature(getattr(UploadsLike, name)).parameters), name)


class ReportAndConfigRouteTests(SynchronousTestCase):
    """POST /reports/NAME and /config/*."""

    def test_report_now(self) -> None:
        """A known report is built now and answered; an unknown one is 404."""
        h = Harness(self)
        self.assertEqual(h.call("POST", "/reports/usage_report").json(),
                         {"name": "usage_report", "report": {"report": "usage_report"}})
        self.assertEqual(h.reports.requested, ["usage_report"])
        r = h.call("POST", "/reports/nope")
        self.assertEqual(r.status, 404)
        self.assertIn("device_info", r.json()["error"])

    def test_an_unknown_report_is_404_in_the_words_of_the_report_command(self) -> None:
        """POST /reports/NAME of an unknown name answers as the ``report`` command and the
        reports' error topic do (``unknown report '<name>' (known: ...)``), and repeats a long
        name as its first 100 characters and its length (before: ``no report`` and the whole
        name)."""
        h = Harness(self)
        r = h.call("POST", "/reports/nope")
        self.assertEqual((r.status, r.json()), (404, {
            "error": "unknown report 'nope' (known: device_info, usage_report, engine_report)"}))
        r = h.call("POST", "/reports/" + "z" * 5000)
        self.assertEqual((r.status, r.json()), (404, {
            "error": f"unknown report '{'z' * 100}... (5000 characters)' (known: device_info, usage_report,"
                     " engine_report)"}))
        self.assertEqual(h.reports.requested, [])

    def test_a_report_not_published_is_500_saying_why(self) -> None:
        """A report the journal refused (docs/admin.md): 500 with the reason, not 200 as if it
        were on its way (it was answered with the body)."""
        h = Harness(self)
        h.reports.request_report = lambda name: fail(  # type: ignore[method-assign]
            ReportNotPublished("report usage_report was built but not published: full"))
        r = h.call("POST", "/reports/usage_report")
        self.assertEqual((r.status, r.json()),
                         (500, {"error": "report usage_report was built but not published: full"}))

    def test_a_report_too_large_for_its_stream_is_409_saying_what_to_do(self) -> None:
        """A report larger than its journal stream's max_bytes (docs/admin.md) was 500, as for a
        server at fault: the gateway works as configured, and asking again never helps until the
        stream's max_bytes grows, which the answer says."""
        h = Harness(self)
        h.reports.request_report = lambda name: fail(ReportTooLarge(  # type: ignore[method-assign]
            "report usage_report was built but not published: journal stream 'link-cloud' refused the append"
            " (max-bytes): a record of 5000 bytes is larger than max_bytes (4096 bytes)"))
        r = h.call("POST", "/reports/usage_report")
        self.assertEqual((r.status, r.json()), (409, {
            "error": "report usage_report was built but not published: journal stream 'link-cloud' refused the"
                     " append (max-bytes): a record of 5000 bytes is larger than max_bytes (4096 bytes); asking"
                     " again does not help: give that journal stream a larger max_bytes (journal.streams in the"
                     " configuration) first"}))

    def test_report_body_must_be_a_json_object(self) -> None:
        """POST /reports/NAME with a body that is not JSON or not an object is 400, one over
        max_json_bytes 413, and no report is built (it was built and answered 200)."""
        h = Harness(self)
        self.assertEqual(h.call("POST", "/reports/usage_report", b"[1]").status, 400)
        self.assertEqual(h.call("POST", "/reports/usage_report", b"not json").status, 400)
        big = b'{"x": "' + b"a" * h.service.settings.max_json_bytes + b'"}'
        self.assertEqual(h.call("POST", "/reports/usage_report", big).status, 413)
        self.assertEqual(h.reports.requested, [])
        self.assertEqual(h.call("POST", "/reports/usage_report", b"{}").status, 200)

    def test_config_check(self) -> None:
        """check answers every error, or valid, with the warnings of a valid result (as
        ``--check-config`` prints them; the answer had no ``warnings``)."""
        h = Harness(self)
        self.assertEqual(h.call("POST", "/config/check", {"changes": {"gateway.device_id": "x"}}).json(),
                         {"valid": True, "errors": [], "warnings": []})
        self.assertEqual(h.call("POST", "/config/check", {"changes": {"gateway.device_id": "doubtful"}}).json(),
                         {"valid": True, "errors": [], "warnings": ["gateway.device_id: 'doubtful' may not be meant"]})
        r = h.call("POST", "/config/check", {"changes": {"a.b": 1, "c": 2}})
        self.assertEqual(r.json(), {"valid": False, "errors": ["<remote>: a.b: unknown key",
                                                              "<remote>: c: unknown key"], "warnings": []})
        self.assertEqual(h.call("POST", "/config/check", {"changes": []}).status, 400)

    def test_config_check_that_cannot_run(self) -> None:
        """A check whose trial copy cannot be made (a full /tmp) is a 500 saying why; it was
        a 500 "internal error" with a traceback in the log."""
        h = Harness(self)
        reason = "the configuration cannot be checked (its trial copy in a temporary directory): /tmp/x: No space"
        self.patch(h.config, "check", lambda changes: fail(ConfigCheckError(reason)))
        r = h.call("POST", "/config/check", {"changes": {"gateway.device_id": "x"}})
        self.assertEqual((r.status, r.json()), (500, {"error": reason}))

    def test_config_apply(self) -> None:
        """apply passes the changes and confirm window on, marked as from the admin API."""
        h = Harness(self)
        r = h.call("POST", "/config/apply", {"changes": {"gateway.device_id": "gw2"}, "confirm_within": 30})
        self.assertEqual(r.status, 200)
        self.assertEqual((r.json()["restarted"], r.json()["warnings"]), (["links"], []))
        self.assertEqual(h.config.applied, [({"gateway.device_id": "gw2"}, 30.0, "admin")])

    def test_config_apply_says_what_the_change_may_not_mean(self) -> None:
        """An applied change's answer carries the warnings of its check, as ``/config/check``'s
        does (docs/admin.md; it had none)."""
        r = Harness(self).call("POST", "/config/apply", {"changes": {"gateway.device_id": "doubtful"}})
        self.assertEqual((r.status, r.json()["warnings"]), (200, ["gateway.device_id: 'doubtful' may not be meant"]))

    def test_config_apply_refusals(self) -> None:
        """Invalid changes are 400 listing every error; a pending change 409; a bad window 400."""
        h = Harness(self)
        r = h.call("POST", "/config/apply", {"changes": {"x.y": 1}})
        self.assertEqual((r.status, r.json()["errors"]), (400, ["<remote>: x.y: unknown key"]))
        self.assertEqual(h.call("POST", "/config/apply",
                                {"changes": {"gateway.device_id": "a"}, "confirm_within": -1}).status, 400)
        h.config.busy = True
        self.assertEqual(h.call("POST", "/config/apply", {"changes": {"gateway.device_id": "a"}}).status, 409)

    def test_config_apply_failures_that_are_not_the_request(self) -> None:
        """A valid change whose drop-in cannot be written, or whose services did not start,
        is a 500 that says so (with the reason in ``errors``), not a 400 "invalid
        configuration": the request was right, the gateway could not carry it out."""
        h = Harness(self)
        cases = [
            (ApplyResult(False, ("conf.d/90-remote.yaml: cannot be written: Permission denied",), (), None,
                         "not_written"), "the configuration could not be written; nothing changed"),
            (ApplyResult(False, ("the configuration cannot be checked (...): /tmp/x: No space left on device",),
                         (), None, "not_checked"), "the configuration could not be checked; nothing changed"),
            (ApplyResult(False, ("the new configuration did not start: port in use",), (), None, "not_started"),
             "the new configuration did not start; the previous one was restored"),
        ]
        for result, message in cases:
            h.config.fails = result
            r = h.call("POST", "/config/apply", {"changes": {"gateway.device_id": "a"}})
            self.assertEqual((r.status, r.json()["error"], r.json()["errors"]), (500, message, list(result.errors)))
            self.assertEqual(r.json()["result"]["outcome"], result.outcome)


    def test_config_apply_window_must_be_finite(self) -> None:
        """confirm_within Infinity (1e400 in JSON) or NaN is no number of seconds (400, nothing
        applied): NaN passed the "<= 0" check and Infinity made a change no deadline reverts."""
        h = Harness(self)
        for within in (b"1e400", b"-1e400", b"NaN", b"Infinity"):
            body = b'{"changes": {"gateway.device_id": "a"}, "confirm_within": ' + within + b"}"
            self.assertEqual(h.call("POST", "/config/apply", body).status, 400, within)
        self.assertEqual(h.config.applied, [])

    def test_config_apply_window_is_at_most_a_day(self) -> None:
        """confirm_within takes what ``commands.confirm_window`` takes, 1 to 86400 s: a
        longer one (1e300 made a change that waited for ever) would refuse every other change
        (409) that long with a broken link, and a shorter one reverts before a link can come
        back. Out of range is 400 naming the range, and nothing is applied."""
        h = Harness(self)
        for within in (1e300, 86400.5, 0.5):
            r = h.call("POST", "/config/apply", {"changes": {"gateway.device_id": "a"}, "confirm_within": within})
            self.assertEqual(r.status, 400, within)
            self.assertIn("from 1 to 86400", r.json()["error"])
        self.assertEqual(h.config.applied, [])
        for within in (1, 86400):
            r = h.call("POST", "/config/apply", {"changes": {"gateway.device_id": "a"}, "confirm_within": within})
            self.assertEqual(r.status, 200, within)
        self.assertEqual([w for _, w, _ in h.config.applied], [1.0, 86400.0])


class TokenTests(SynchronousTestCase):
    """The TCP site refuses every request without the bearer token."""

    def test_refused_without_token(self) -> None:
        """No token, a wrong one or another scheme: 401 with WWW-Authenticate, nothing done."""
        h = Harness(self)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dXNlcjpwYXNz"}):
            r = h.call("POST", "/apps/hello/stop", token=TOKEN, headers=headers)
            self.assertEqual(r.status, 401)
            self.assertEqual(r.headers["www-authenticate"], 'Bearer realm="gateway"')
        self.assertEqual(h.call("GET", "/?token=wrong", token=TOKEN).status, 401)
        self.assertEqual(h.call("GET", "/status?token=" + TOKEN.decode(), token=TOKEN).status, 401)
        self.assertEqual(h.apps.calls, [])

    def test_body_without_token_is_never_stored(self) -> None:
        """On TCP, the body of a request without the token goes nowhere (answered 401): a
        package POSTed with no token was spooled whole into <state_dir>/admin/spool first."""
        h = Harness(self)
        exchange = Exchange(h.site(TOKEN))
        head = ("POST /apps/install?filename=hello.v1.3.tar.gz HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 300000\r\n\r\n").encode()
        exchange.protocol.dataReceived(head + b"a" * 100_000)
        spool = h.work / "admin" / "spool"
        self.assertEqual(list(spool.iterdir()) if spool.exists() else [], [])
        exchange.protocol.dataReceived(b"b" * 200_000)
        self.assertEqual(exchange.response().status, 401)
        self.assertIsNone(h.apps.installed_bytes)
        bearer = {"Authorization": "Bearer " + TOKEN.decode()}
        r = h.call("POST", "/apps/install?filename=hello.v1.3.tar.gz", b"c" * 100_000, token=TOKEN, headers=bearer)
        self.assertEqual(r.status, 200)
        self.assertEqual(h.apps.installed_bytes, b"c" * 100_000)

    def test_a_body_without_token_is_never_invited(self) -> None:
        """A request without the token that asks ``Expect: 100-continue`` is answered 401 at
        once, as any other, whatever body it declares: it was answered 413 when its body was
        over ``max_upload_bytes``, telling a client without the token that limit, and invited
        (``100 Continue``) to send a body dropped unread when it was not. The connection
        closes: what the client sends after the answer is not read."""
        h = Harness(self, max_upload_bytes=1024)
        for length in (10 ** 12, 100):
            exchange = Exchange(h.site(TOKEN))
            exchange.protocol.dataReceived(("POST /apps/install?filename=hello.v1.3.tar.gz HTTP/1.1\r\nHost: x\r\n"
                                            f"Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n").encode())
            self.assertNotIn(b"100 Continue", exchange.transport.value())
            response = exchange.response()
            self.assertEqual((response.status, response.json()["error"]),
                             (401, "a valid bearer token is needed on this endpoint"), length)
            self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="gateway"')
            self.assertEqual(response.headers["connection"], "close")
            self.assertTrue(exchange.transport.disconnecting)
            exchange.protocol.dataReceived(b"a" * 100)  # sent all the same: not read
            self.assertEqual(exchange.transport.value().count(b"HTTP/1.1"), 1)
        self.assertIsNone(h.apps.installed_bytes)
        spool = h.work / "admin" / "spool"
        self.assertEqual(list(spool.iterdir()) if spool.exists() else [], [])

    def test_a_body_with_token_is_invited_or_refused_by_its_size(self) -> None:
        """With the token, ``Expect: 100-continue`` is answered ``100 Continue``, or 413 at once
        for a body declared over ``max_upload_bytes``."""
        h = Harness(self, max_upload_bytes=1024)
        for length, answer in ((1024, b"HTTP/1.1 100 Continue\r\n"), (1025, b"HTTP/1.1 413 Content Too Large\r\n")):
            exchange = Exchange(h.site(TOKEN))
            exchange.protocol.dataReceived(("POST /apps/install?filename=hello.v1.3.tar.gz HTTP/1.1\r\nHost: x\r\n"
                                            f"Authorization: Bearer {TOKEN.decode()}\r\nExpect: 100-continue\r\n"
                                            f"Content-Length: {length}\r\n\r\n").encode())
            self.assertTrue(exchange.transport.value().startswith(answer), exchange.transport.value())

    def test_accepted_with_token(self) -> None:
        """The bearer token opens every route; the page also takes it as ?token=."""
        h = Harness(self)
        r = h.call("POST", "/apps/hello/stop", token=TOKEN, headers={"Authorization": "Bearer " + TOKEN.decode()})
        self.assertEqual(r.status, 200)
        self.assertEqual(h.call("GET", "/?token=" + TOKEN.decode(), token=TOKEN).status, 200)


    def test_the_tcp_site_keeps_the_descriptor_reserve(self) -> None:
        """On TCP, where devices may reach it, the site closes new connections while the
        gateway keeps its last file descriptors (gateway.fdreserve); on the unix socket, the
        operator's way in, connections may use them."""
        h = Harness(self)
        self.assertIsNotNone(h.site(TOKEN).reserve_refusals)
        self.assertIsNone(h.site(None).reserve_refusals)


class BrowserTests(SynchronousTestCase):
    """A web page the operator opens cannot drive the admin API through the browser, nor frame
    the status page or read its token from a Referer."""

    def test_cross_site_browser_requests_are_403_and_do_nothing(self) -> None:
        """A request whose Origin is not the API's own, or whose Sec-Fetch-Site is cross-site
        or same-site, is 403 saying why (before the token is looked at: with it or without),
        nothing done; one access log line does not come per request, but the guard's warning
        at most once per 10 s."""
        h = Harness(self)
        events = capture_log_events(self)
        bearer = {"Authorization": "Bearer " + TOKEN.decode()}
        tcp, unix = h.site(TOKEN), h.site(None)  # (each listener's site, and its guard, made once)
        for site, headers in ((tcp, {"Origin": "http://evil.example"}), (tcp, dict(bearer, Origin="http://127.0.0.1:3000")),
                              (tcp, {"Sec-Fetch-Site": "cross-site"}), (unix, {"Sec-Fetch-Site": "same-site"})):
            r = request(site, "POST", "/apps/hello/stop", b"", headers)
            self.assertEqual(r.status, 403, headers)
            self.assertTrue(r.json()["error"].startswith("cross-site browser requests are refused: "), r.body)
        r = request(tcp, "GET", "/?token=" + TOKEN.decode(), b"", {"Sec-Fetch-Site": "cross-site"})
        self.assertEqual((r.status, r.json()), (403, {"error": "cross-site browser requests are refused:"
                                                                " Sec-Fetch-Site: cross-site"}))
        self.assertEqual(h.apps.calls, [])
        lines = [formatEvent(e) for e in events]
        self.assertEqual([line for line in lines if "POST /apps/hello/stop" in line and "403" in line], [])
        self.assertEqual([line for line in lines if "cross-site browser request refused" in line],
                         [f"admin API: cross-site browser request refused: POST /apps/hello/stop: {why} (logged at most once every 10 s while they go on)"
                          for why in ("Origin http://evil.example is not this listener's (http://localhost)",
                                      "Sec-Fetch-Site: same-site")])

    def test_the_operators_own_requests_pass(self) -> None:
        """gatewayctl and curl send no Origin; the page the API serves itself, opened by its
        address, sends its own origin (or Sec-Fetch-Site: none): all served as before; so is the
        status page opened by a link on another site's page (a top-level navigation)."""
        h = Harness(self)
        self.assertEqual(h.call("POST", "/apps/hello/stop").status, 200)
        for site in ("none", "cross-site", "same-site"):
            self.assertEqual(h.call("GET", "/?token=" + TOKEN.decode(), token=TOKEN,
                                    headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate"}).status, 200, site)
        self.assertEqual(h.call("POST", "/apps/hello/stop", token=TOKEN,
                                headers={"Authorization": "Bearer " + TOKEN.decode(), "Origin": "http://localhost",
                                         "Sec-Fetch-Site": "same-origin"}).status, 200)

    def test_every_answer_forbids_framing_sniffing_and_referers(self) -> None:
        """The status page, JSON answers and errors carry X-Frame-Options: DENY, nosniff,
        Referrer-Policy: no-referrer (the page's URL holds its token) and a policy loading
        nothing; the page's allows its own <style> alone, by hash."""
        import base64
        import hashlib

        from gateway.admin.statuspage import STYLE

        h = Harness(self)
        for path, token in (("/?token=" + TOKEN.decode(), TOKEN), ("/status", None), ("/nowhere", None),
                            ("/status", TOKEN)):
            r = h.call("GET", path, token=token)
            self.assertEqual((r.headers["x-frame-options"], r.headers["x-content-type-options"],
                              r.headers["referrer-policy"]), ("DENY", "nosniff", "no-referrer"), path)
            policy = r.headers["content-security-policy"]
            self.assertIn("default-src 'none'", policy)
            self.assertIn("frame-ancestors 'none'", policy)
        page = h.call("GET", "/")
        style = "'sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode() + "'"
        self.assertEqual(page.headers["content-security-policy"],
                         f"default-src 'none'; style-src {style}; frame-ancestors 'none'; base-uri 'none';"
                         " form-action 'none'")
        self.assertIn(f"<style>{STYLE}</style>".encode(), page.body)
        self.assertNotIn(b"<script", page.body)
        self.assertNotIn(b"style=", page.body)

    def test_the_listeners_own_refusals_forbid_framing_sniffing_and_referers_too(self) -> None:
        """The plain-text answers the connection writes before the API sees the request (a
        malformed head's 400, an HTTP version's 505, a line over 16 KiB's 414, a body declared
        over max_upload_bytes's 413, a trickled head's 408) carry the same headers as every
        answer, on the unix socket and on TCP."""
        from gateway.admin.router import BROWSER_HEADERS

        h = Harness(self, max_upload_bytes=1024)
        heads = {400: b"GET /status HTTP/1.1\r\nNoColon\r\n\r\n", 505: b"GET /status HTTP/9.9\r\n\r\n",
                 414: b"GET /" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n",
                 413: b"POST /apps/install?filename=a.v1.tgz HTTP/1.1\r\nContent-Length: 2000\r\n"
                      b"Expect: 100-continue\r\n\r\n",
                 408: b"GET /status HTTP/1.1\r\n"}
        for token in (None, TOKEN):
            for status, head in heads.items():
                exchange = Exchange(h.site(token))
                exchange.protocol.dataReceived(head if token is None or status != 413 else
                                               head.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer "
                                                            + TOKEN + b"\r\n\r\n"))
                exchange.clock.advance(31)
                answer = exchange.response()
                self.assertEqual((answer.status, answer.headers["content-type"]), (status, "text/plain; charset=utf-8"))
                self.assertEqual({name: answer.headers.get(name.decode()) for name in BROWSER_HEADERS},
                                 {name: value.decode() for name, value in BROWSER_HEADERS.items()}, (status, token))


class StatusPageTests(SynchronousTestCase):
    """GET / renders the page from the snapshots and the depth history."""

    def test_page(self) -> None:
        """Links up/down, streams with sparklines, apps, running operations, self-refresh."""
        h = Harness(self, page_refresh=7)
        for t, depth in ((0, 1), (30, 5), (60, 3)):
            h.clock.advance(30 if t else 0)
            h.service.history.sample(h.clock.seconds(), [("link-cloud", depth), ("link-backup", depth * 100)])
        r = h.call("GET", "/")
        self.assertEqual((r.status, r.headers["content-type"]), (200, "text/html; charset=utf-8"))
        html = r.body.decode()
        self.assertIn('<meta http-equiv="refresh" content="7">', html)
        self.assertIn('<span class="down" title="disconnected">down</span>', html)
        self.assertIn("1h 1m", html)  # the backup link's oldest message
        self.assertEqual(html.count("<polyline"), 2)
        self.assertIn("op-1", html)
        self.assertIn('<progress max="100" value="42">', html)
        self.assertNotIn("op-0", html, "finished operations are not shown")
        self.assertNotIn("<script", html)
        self.assertNotIn("http://", html.replace("http-equiv", ""))

    def test_a_service_with_an_error_is_down_and_says_why(self) -> None:
        """An ingest that could not listen was shown up, like one that listens."""
        h = Harness(self)
        h.readside.gateway = gateway_status((ServiceState("journal", True), ServiceState(
            "ingest", True, "not listening: Couldn't listen on 127.0.0.1:8090: <in use>"), ServiceState("apps", False)))
        html = h.call("GET", "/").body.decode()
        self.assertIn('<span class="up">journal</span> <span class="down" title="not listening: Couldn&#x27;t listen'
                      ' on 127.0.0.1:8090: &lt;in use&gt;">ingest</span> <span class="down">apps</span>', html)

    def test_a_service_that_is_off_is_muted_and_says_why(self) -> None:
        """A service off for an ordinary reason (the per-app accounting, not root) is neither up
        nor down: muted, with why as its title; GET /status gives the reason as its ``off``."""
        h = Harness(self)
        h.readside.gateway = gateway_status((ServiceState("app-accounting", True, "", "the gateway does not run"
                                                                                    " as root"),))
        html = h.call("GET", "/").body.decode()
        self.assertIn('<span class="muted" title="off (the gateway does not run as root)">app-accounting</span>', html)
        self.assertEqual(h.call("GET", "/status").json()["services"], [
            {"name": "app-accounting", "running": True, "error": "", "off": "the gateway does not run as root"}])

    def test_a_link_kept_from_its_job_says_why(self) -> None:
        """A link whose cursor saves fail, or whose session another client keeps taking over,
        was a row with its state and last error only: its problem column says what, in red."""
        h = Harness(self)
        unsaved = {"reason": "cursor-not-saved", "error": "[Errno 28] No space left on device",
                   "since": 1796211823.0, "failures": 3}
        taken = {"reason": "session-taken-over", "error": "another client is probably connecting with the same"
                 " client id 'gw1'", "since": 1796211823.0, "failures": 3}
        h.readside.link_list = (  # type: ignore[assignment]
            {"name": "cloud", "state": "connected", "backlog": 2, "last_error": "", "cursor_failing": unsaved,
             "taken_over": None},
            {"name": "backup", "state": "disconnected", "backlog": 2, "last_error": "connection closed",
             "cursor_failing": None, "taken_over": taken})
        html = h.call("GET", "/").body.decode()
        self.assertIn('<td></td><td><span class="down">cursor-not-saved: [Errno 28] No space left on device'
                      ' (since 2026-12-02T11:43:43Z, 3 failed)</span></td>', html)
        self.assertIn('<td>connection closed</td><td><span class="down">session-taken-over: another client is'
                      ' probably connecting with the same client id &#x27;gw1&#x27; (since 2026-12-02T11:43:43Z,'
                      ' 3 failed)</span></td>', html)
        self.assertIn("<th>problem</th>", html)

    def test_a_program_whose_start_failed_is_red_and_says_why(self) -> None:
        """docs/admin.md: a program whose last start failed (FATAL, or backing off) shows its
        state in red with the reason as its tooltip; a running one as plain text."""
        h = Harness(self)
        h.readside.programs = (AppSnapshot("hello", "hello", "1.2", "RUNNING", 99, 65.0, None, 0),
                               AppSnapshot("bad", "bad", "1", "FATAL", None, 0.0, 127, 3,
                                           error="exited with 127 before 1s"))
        html = h.call("GET", "/").body.decode()
        self.assertIn('<td>RUNNING</td>', html)
        self.assertIn('<span class="down" title="exited with 127 before 1s">FATAL</span>', html)

    def test_sparklines_across_a_step_of_the_wall_clock(self) -> None:
        """docs/admin.md: a sparkline of each stream's depth over the last hour. NTP steps the
        clock of a gateway booted at 1970 forward by 56 years: the samples taken before are
        still the last minutes of that hour (every one was older than the hour: no sparkline
        until an hour of new ones)."""
        h = Harness(self)
        for _ in range(3):
            h.service._sample()
            h.clock.advance(30)
        h.clock.step(56 * 365 * 86400.0)
        self.assertEqual(h.call("GET", "/").body.decode().count("<polyline"), 2)

    def test_pending_change(self) -> None:
        """A configuration change waiting for confirmation is said on the page and in /status,
        without the drop-in a revert would restore (docs/admin.md): its text, which may hold a
        password set by an earlier change, was in every /status answer."""
        h = Harness(self)
        pending = PendingChange("admin", ("links.links.cloud.endpoint",),
                                "links: {links: {cloud: {password: SECRET-1}}}\n", 10**10, (), 5.0)
        h.config.pending = lambda: pending  # type: ignore[method-assign]
        self.assertEqual(h.call("GET", "/status").json()["config_pending"],
                         {"keys": ["links.links.cloud.endpoint"], "origin": "admin", "deadline": 10**10,
                          "required_links": [], "applied_at": 5.0, "boot": "", "boot_deadline": 0.0})
        html = h.call("GET", "/").body.decode()
        self.assertIn('<p id="pending" class="down">Configuration: links.links.cloud.endpoint (by admin)'
                      ' waits for confirmation: reverted in', html)

    def test_history_is_bounded(self) -> None:
        """An hour of samples is kept per stream; streams that vanish are forgotten."""
        from gateway.admin.history import DepthHistory
        history = DepthHistory(window=3600, interval=30)
        for i in range(1000):
            history.sample(i * 30.0, [("a", i), ("b", i)])
        self.assertEqual(len(history.series("a", 999 * 30.0)), 121)
        history.sample(30_000.0, [("a", 1)])
        self.assertEqual(history.streams(), ["a"])
        self.assertEqual(history.series("b", 30_000.0), [])


class QueryKeyTests(SynchronousTestCase):
    """Every route refuses a query key it does not take (400 naming it), as a body's unknown
    key is: a typo must not be dropped silently. Before, only ``GET /apps/NAME/logs`` did;
    every other route ignored ``?x=1`` and did what it was asked without it."""

    def nothing_done(self, h: Harness) -> None:
        self.assertEqual((h.apps.calls, h.apps.installed_bytes, h.updates.calls, h.reports.requested,
                          h.config.applied), ([], None, [], [], []))

    def test_every_route_refuses_an_unknown_query_key(self) -> None:
        """Each route of the API, with ``?bogus=1``: 400 ``unknown key 'bogus' (...)``, saying
        the keys the route takes (or that it takes none), and nothing is done."""
        h = Harness(self)
        routes = h.service.api.routes()
        self.assertEqual(len(routes), 33)
        for method, pattern, _, keys in routes:
            path = pattern.replace("{name}", "hello") + "?bogus=1"
            known = f"known: {', '.join(sorted(keys))}" if keys else "this route takes no query keys"
            r = h.call(method, path)
            self.assertEqual((r.status, r.json()), (400, {"error": f"unknown key 'bogus' ({known})"}),
                             f"{method} {path}")
        self.nothing_done(h)

    def test_reads(self) -> None:
        """A read that takes no query (GET /status?x=1, HEAD too, a key without ``=`` too,
        which twisted.web drops from its args) is 400; GET /config takes ``key`` and nothing
        else; a key taken but written without ``=`` (``?follow``) is 400 too, not the default."""
        h = Harness(self)
        self.assertEqual(h.call("GET", "/status?verbose=1").json(),
                         {"error": "unknown key 'verbose' (this route takes no query keys)"})
        self.assertEqual(h.call("HEAD", "/apps?x").status, 400)
        self.assertEqual(h.call("GET", "/apps;x").status, 404)  # (no query: a path)
        self.assertEqual(h.call("GET", "/apps?a+b%3D=1").json(),
                         {"error": "unknown key 'a b=' (this route takes no query keys)"})
        self.assertEqual(h.call("GET", "/apps?").status, 200)
        r = h.call("GET", "/apps/hello/logs?lines=1&follow")
        self.assertEqual((r.status, r.json()), (400, {"error": "query key 'follow' has no value (write follow=...)"}))
        r = h.call("GET", "/config?key=gateway.device_id&x=1")
        self.assertEqual((r.status, r.json()), (400, {"error": "unknown key 'x' (known: key)"}))
        self.assertEqual(h.call("GET", "/config?key=gateway.device_id").status, 200)

    def test_install(self) -> None:
        """POST /apps/install takes ``filename`` only: with another key the package is not
        installed."""
        h = Harness(self)
        r = h.call("POST", "/apps/install?filename=hello.v1.3.tar.gz&foo=1", b"package")
        self.assertEqual((r.status, r.json()), (400, {"error": "unknown key 'foo' (known: filename)"}))
        self.nothing_done(h)
        self.assertEqual(h.call("POST", "/apps/install?filename=hello.v1.3.tar.gz", b"package").status, 200)

    def test_actions(self) -> None:
        """An app action, an update, a report or a configuration change with a query key is
        refused before anything is done; POST of a log takes its options in the body only."""
        h = Harness(self)
        for path, body in (("/apps/hello/stop?force=1", b""), ("/reports/device_info?now=1", b""),
                           ("/updates/install?dry=1", json.dumps({"correlationId": "op-9"}).encode()),
                           ("/config/apply?confirm_within=60",
                            json.dumps({"changes": {"gateway.device_id": "gw2"}}).encode()),
                           ("/apps/hello/logs?lines=1", b"")):
            self.assertEqual(h.call("POST", path, body).status, 400, path)
        self.nothing_done(h)

    def test_page_takes_its_token(self) -> None:
        """GET / takes ``?token=`` (a browser's way to send it), and no other key; on TCP, a
        request without the token is 401 before its query is looked at."""
        h = Harness(self)
        self.assertEqual(h.call("GET", "/?token=" + TOKEN.decode(), token=TOKEN).status, 200)
        self.assertEqual(h.call("GET", "/?token=x").status, 200)  # (the unix socket takes no token)
        r = h.call("GET", "/?token=" + TOKEN.decode() + "&refresh=1", token=TOKEN)
        self.assertEqual((r.status, r.json()), (400, {"error": "unknown key 'refresh' (known: token)"}))
        self.assertEqual(h.call("GET", "/status?bogus=1", token=TOKEN).status, 401)


class JournalDropRouteTests(SynchronousTestCase):
    """``DELETE /journal/NAME`` drops a stream through the journal service itself (real files,
    its I/O jobs run at once)."""

    def setUp(self) -> None:
        from gateway.filelayer import OSFiles
        from gateway.journal.service import JournalService
        from gateway.journal.settings import JournalSettings, StreamSettings
        from tests.journal.helpers import appended, record, run_now as run_job

        self.clock = Clock()
        self.journal = JournalService(JournalSettings(defaults=StreamSettings(min_free_bytes=0)),
                                      Path(self.mktemp()).absolute(), self.clock, files=OSFiles(), run=run_job,
                                      in_use={"link-cloud": "the link 'cloud'"})
        self.journal.startService()
        self.addCleanup(lambda: self.journal.running and self.journal.stopService())
        for name in ("link-cloud", "link-old"):
            stream = self.journal.stream(name)
            self.successResultOf(stream.cursor("cloud"))
            for i in (1, 2, 3):
                self.successResultOf(appended(stream, record(i)))
            self.successResultOf(stream.ack("cloud", 1))
        self.h = Harness(self)
        self.h.backends.journal = self.journal

    def test_refusals_say_why_and_change_nothing(self) -> None:
        """404 for an unknown stream; 409 for one in use, with what uses it; 409 for one
        holding records not acknowledged, with how many, unless forced; a bad force is 400."""
        r = self.h.call("DELETE", "/journal/link-nope")
        self.assertEqual((r.status, r.json()), (404, {"error": "no journal stream 'link-nope'"}))
        r = self.h.call("DELETE", "/journal/link-cloud?force=true")
        self.assertEqual(r.status, 409, r.body)
        self.assertIn("in use by the configuration (the link 'cloud')", r.json()["error"])
        r = self.h.call("DELETE", "/journal/link-old")
        self.assertEqual((r.status, r.json()["unacked"], r.json()["stream"]), (409, 2, "link-old"))
        self.assertIn("2 records not acknowledged", r.json()["error"])
        self.assertEqual(self.h.call("DELETE", "/journal/link-old?force=maybe").status, 400)
        self.assertEqual(self.h.call("DELETE", "/journal/link-old", {"x": 1}).status, 400)
        self.assertEqual(sorted(self.journal.streams()), ["link-cloud", "link-old"])

    def test_force_drops_counting_the_loss(self) -> None:
        """With ``?force=true`` the stream goes; the answer counts the records lost."""
        r = self.h.call("DELETE", "/journal/link-old?force=true")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual({k: v for k, v in r.json().items() if k != "lost_bytes"},
                         {"name": "link-old", "action": "drop", "ok": True, "lost": 2})
        self.assertEqual(sorted(self.journal.streams()), ["link-cloud"])
        self.assertEqual(self.h.call("DELETE", "/journal/link-old").status, 404)

    def test_a_directory_not_deleted_is_500_saying_why(self) -> None:
        """A drop whose directory the disk refuses to delete answers 500 with the reason, not
        an internal error with a traceback in the log."""
        def refused(path: str) -> None:
            raise PermissionError(13, "Permission denied", path)

        self.patch(self.journal.files, "remove_tree", refused)
        events = capture_log_events(self)
        r = self.h.call("DELETE", "/journal/link-old?force=1")
        self.assertEqual(r.status, 500, r.body)
        self.assertRegex(r.json()["error"], r"^journal link-old: removing .*link-old failed: .*Permission denied")
        self.assertFalse([e for e in events if e.get("log_failure") is not None])

    def test_without_a_journal_it_is_503(self) -> None:
        """A gateway whose admin API has no journal answers 503."""
        self.h.backends.journal = None
        self.assertEqual(self.h.call("DELETE", "/journal/link-old").status, 503)
