"""An Exosite link and the gateway's own reports on a product without Gateway Engine's aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.links.http_settings import EXOSITE_ROUTES, HTTPLinkSettings, HTTPLinksSettings
from gateway.links.reportaliases import report_aliases
from gateway.links.router import Router, Rule
from gateway.links.settings import RouteSettings
from tests.links.memory import MemoryJournal
from tests.links.test_httplink import HTTPLinkCase
from tests.links.test_service import RecordingBus

REPORTS = ("device_info", "usage_report", "engine_report")


def aliases(routes: Iterable[RouteSettings], *prefix: str) -> dict[str, tuple[str, ...]]:
    """:func:`report_aliases` of a link ``murano`` with ``routes``, alone in its router."""
    router = Router([Rule.compile("murano", r.filter, r.topic, r.qos) for r in routes], "t", "gw1")
    return report_aliases(router, "murano", *prefix)


class ReportAliasesTests(SynchronousTestCase):
    """Which aliases a link's routes send the gateway's reports on."""

    def test_the_default_routes_send_them_on_gateway_engine_s_aliases(self) -> None:
        """The default routes: each report on the alias of its name."""
        self.assertEqual(aliases(EXOSITE_ROUTES), {name: (name,) for name in REPORTS})

    def test_routes_of_telemetry_alone_send_none(self) -> None:
        """``telemetry/#`` alone: no alias carries reports; another ``topic_prefix`` than the
        routes name: none either."""
        self.assertEqual(aliases((RouteSettings("telemetry/#", "{#}"),)), {})
        self.assertEqual(aliases(EXOSITE_ROUTES, "site/reports"), {})

    def test_reports_routed_to_one_alias(self) -> None:
        """A route of every report to one alias of the operator's: that alias, with every report's name."""
        routes = (RouteSettings("site/reports/+", "gw_{device}"),)
        self.assertEqual(aliases(routes, "site/reports"), {"gw_gw1": REPORTS})

    def test_the_links_router_gives_each_link_its_own_routes_aliases(self) -> None:
        """The links' service computes each HTTP link's report aliases from its router, which
        holds every link's routes: each link gets what its routes alone give (its first
        matching route, placeholders filled in), whatever the other links route there."""
        from gateway.links.httplink import HTTPLink
        from gateway.links.service import LinksService
        from gateway.links.settings import LinksSettings, LinkSettings

        self.patch(HTTPLink, "start", lambda link: succeed(None))
        self.patch(HTTPLink, "stop", lambda link: succeed(None))
        own = (RouteSettings("telemetry/#", "{#}"), RouteSettings("edge/gateway/reports/+", "{tenant}_{device}"),
               RouteSettings("edge/gateway/reports/device_info", "shadowed"))
        several = (RouteSettings("edge/gateway/reports/usage_report", "usage"), *EXOSITE_ROUTES)
        http = HTTPLinksSettings(links={
            "a": HTTPLinkSettings(url="https://h"), "b": HTTPLinkSettings(url="https://h", routes=own),
            "c": HTTPLinkSettings(url="https://h", routes=several),
            "d": HTTPLinkSettings(url="https://h", routes=(RouteSettings("telemetry/#", "{#}"),))})
        mqtt = LinksSettings(links={"cloud": LinkSettings(loss_topic=None)})
        work = Path(self.mktemp())
        service = LinksService(mqtt, MemoryReactorClock(), RecordingBus(), MemoryJournal(), identity=("t", "gw1"),
                               http_links=http, http_client=lambda s: object(), state_dir=work,
                               run_blocking=lambda f, *a: succeed(f(*a)))
        self.successResultOf(service.startService())
        self.addCleanup(service.stopService)
        found = {name: service.links[name].reports.aliases for name in "abcd"}
        self.assertEqual(found, {name: aliases(http.links[name].routes) for name in "abcd"})
        self.assertEqual(found, {"a": {name: (name,) for name in REPORTS}, "b": {"t_gw1": REPORTS},
                                 "c": {"device_info": ("device_info",), "usage": ("usage_report",),
                                       "engine_report": ("engine_report",)}, "d": {}})


class ReportsOnAProductWithoutTheirAliasesTests(HTTPLinkCase):
    """The link's default routes send the gateway's reports on Gateway Engine's aliases; a
    product without them answers 404. That must not hold the link down nor hold back values."""

    def requests_to(self, alias: str) -> int:
        return [path for _, _, path in self.server.requests].count(f"/onep:v1/stack/alias/{alias}")

    def lines(self, events: list[dict[str, Any]], words: str) -> list[str]:
        return [formatEvent(e) for e in events if words in formatEvent(e)]

    def test_a_batch_of_reports_alone_refused_404_leaves_the_link_up(self) -> None:
        """On a fresh gateway whose apps send nothing yet, a batch of reports alone answered 404
        was held (nothing counted lost before the platform took another value of the batch),
        the link shown down (HTTP 404) and backing off, for as long as no telemetry came. The
        reports are now counted as lost at once (refused-by-cloud), the cursor passes them, the
        link is up; one warning per alias, not per report; a later report on such an alias is
        not sent again (counted as lost, no new warning), and telemetry goes on."""
        self.server.aliases = {"temp"}
        for name in REPORTS:
            self.write(name, "{}")
        with capturedLogs() as events:
            link = self.start()
            self.pass_time(10)
            self.assertEqual(self.stream.acked.get("cloud"), 3)
            self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("refused-by-cloud", 3, 1, 3)])
            self.assertEqual(self.statuses[-1], (True, ""))
            self.assertEqual(link.snapshot().state, "connected")
            self.write("usage_report", "{}")
            self.write("temp", "1")
            self.pass_time(10)
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.assertEqual(self.stream.acked["cloud"], 5)
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted],
                         [("refused-by-cloud", 3, 1, 3), ("refused-by-cloud", 1, 4, 4)])
        self.assertEqual([self.requests_to(name) for name in REPORTS], [1, 1, 1])
        self.assertEqual(self.lines(events, "counted as lost"), [
            f"link cloud: the product has no alias {name} (HTTP 404: unknown alias): the gateway's {name} reports"
            " are not sent on it, each counted as lost (refused-by-cloud), until the link restarts (a"
            " configuration change, or the gateway's restart) (routes: give the link its own, without the"
            " reports, or add the alias to the product)" for name in REPORTS])
        self.assertTrue(all(up for up, _ in self.statuses), self.statuses)

    def test_values_of_the_apps_refused_whole_still_wait_for_one_taken(self) -> None:
        """The rule for the apps' values stands: a batch whose every value is refused (404)
        drops none of them; the link is down with the refusal, and the reports' alias is not
        written to again meanwhile. Once a value is taken, the refused one and the report are
        counted as lost and the cursor passes them."""
        self.server.aliases = {"temp"}
        self.write("bogus", "x")
        self.write("device_info", "{}")
        link = self.start()
        self.pass_time(20)
        self.assertEqual((self.stream.noted, self.stream.acked.get("cloud", 0)), ([], 0))
        self.assertEqual(self.statuses[-1], (False, "HTTP 404: unknown alias"))
        self.assertGreater(self.requests_to("bogus"), 1)
        self.assertEqual(self.requests_to("device_info"), 1)
        self.write("temp", "1")
        self.pass_time(20)
        self.assertEqual(self.server.sequence("temp"), ["1"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("refused-by-cloud", 2, 1, 2)])
        self.assertEqual((self.stream.acked["cloud"], link.snapshot().state), (3, "connected"))

    def test_a_gateway_engine_product_takes_them(self) -> None:
        """A product with the aliases takes the reports: nothing lost."""
        self.server.aliases = set(REPORTS)
        for name in REPORTS:
            self.write(name, "{}")
        self.start()
        self.pass_time(10)
        self.assertEqual([self.server.sequence(name) for name in REPORTS], [["{}"]] * 3)
        self.assertEqual((self.stream.noted, self.stream.acked["cloud"]), ([], 3))

    def test_a_report_after_a_refused_value_is_no_probe(self) -> None:
        """batch_records 1: the value after a refused one is its probe; a report there, refused
        for its alias, shows nothing about the refused value. The link reads on past it, and
        the next value taken decides: nothing waits for ever behind the two."""
        self.server.aliases = {"temp"}
        self.server.refuse("bad", 400)
        for alias, value in (("temp", "1"), ("temp", "bad"), ("device_info", "{}"), ("temp", "2")):
            self.write(alias, value)
        self.start(batch_records=1)
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("refused-by-cloud", 2, 2, 3)])
        self.assertEqual(self.stream.acked["cloud"], 4)
        self.assertEqual(self.requests_to("device_info"), 1)
