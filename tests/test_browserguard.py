"""The browser guard of the local HTTP listeners: which requests are a cross-site browser's,
and how often their refusal is logged."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http
from twisted.web.test.requesthelper import DummyChannel

from gateway.browserguard import BrowserGuard, cross_site, refused_here
from tests.logevents import assert_one_line_then_summary


def browser_request(host: str | None = "127.0.0.1:8090", secure: bool = False, method: bytes = b"POST",
                    **headers: str) -> http.Request:
    """A ``POST /provision/activate`` (or another ``method``) with ``Host: host`` and ``headers``
    (``sec_fetch_site=`` for ``Sec-Fetch-Site``), on a TLS connection when ``secure``."""
    channel = DummyChannel()
    if secure:
        channel.transport = DummyChannel.SSL()
    request = http.Request(channel)
    request.method, request.path = method, b"/provision/activate"
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host.encode()])
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
    return request


class CrossSiteTests(SynchronousTestCase):
    """What makes a request a cross-site browser request, and what does not."""

    def test_without_browser_headers_nothing_is_refused(self) -> None:
        """curl, gmq clients, apps and containers send no Origin and no Sec-Fetch-Site: they
        pass whatever Host they name (host.containers.internal, a LAN address), or none."""
        for host in ("127.0.0.1:8090", "host.containers.internal:8090", "192.0.2.7", None):
            self.assertIsNone(cross_site(browser_request(host)), host)

    def test_the_listeners_own_origin_passes(self) -> None:
        """A page the listener serves itself (Origin = scheme://Host), however the Host is
        spelled: a default port left out, a name in capitals, an IPv6 address."""
        for host, origin in (("127.0.0.1:8090", "http://127.0.0.1:8090"), ("LocalHost:8780", "http://localhost:8780"),
                             ("[::1]:8780", "http://[::1]:8780"), ("gw", "http://gw:80"), ("gw:80", "http://gw")):
            self.assertIsNone(cross_site(browser_request(host, origin=origin)), (host, origin))
        self.assertIsNone(cross_site(browser_request("gw", secure=True, origin="https://gw:443")))
        for site in ("same-origin", "none"):  # (same page, or an address typed or bookmarked)
            self.assertIsNone(cross_site(browser_request(sec_fetch_site=site)), site)

    def test_another_origin_is_refused(self) -> None:
        """Another page's origin, another port of the same host (a local dev server), another
        scheme, ``null`` (a sandboxed frame, a file), or an Origin with no Host to match, is
        refused, saying which Origin and which listener."""
        for host, origin in (("127.0.0.1:8090", "http://evil.example"), ("127.0.0.1:8090", "http://127.0.0.1:3000"),
                             ("127.0.0.1:8090", "https://127.0.0.1:8090"), ("127.0.0.1:8090", "null"),
                             ("127.0.0.1:8090", "http://127.0.0.1:8090/path"), ("[::1]:8090", "http://[::1]:x")):
            self.assertEqual(cross_site(browser_request(host, origin=origin)),
                             f"Origin {origin} is not this listener's (http://{host})")
        self.assertEqual(cross_site(browser_request(None, origin="http://127.0.0.1:8090")),
                         "Origin http://127.0.0.1:8090 is not this listener's (a request without Host)")

    def test_cross_site_and_same_site_fetches_are_refused(self) -> None:
        """``Sec-Fetch-Site: cross-site`` or ``same-site`` (another port of 127.0.0.1 is the same
        site) is refused, even with no Origin (a GET a page made)."""
        for site in ("cross-site", "same-site", "Cross-Site"):
            self.assertEqual(cross_site(browser_request(sec_fetch_site=site)), f"Sec-Fetch-Site: {site.lower()}")

    def test_a_link_from_another_site_opens_a_page(self) -> None:
        """A link followed from another site's page (a local Grafana on another port of
        127.0.0.1) is a top-level navigation, ``GET`` or ``HEAD`` with ``Sec-Fetch-Mode:
        navigate``: it passes, whatever ``Sec-Fetch-Site`` says (it was refused, so the status page
        could not be linked to). A form posted from there navigates too, and is refused, as is a
        page's fetch."""
        for method in (b"GET", b"HEAD"):
            for site in ("cross-site", "same-site", "none"):
                self.assertIsNone(cross_site(browser_request(method=method, sec_fetch_site=site,
                                                             sec_fetch_mode="Navigate")), (method, site))
        self.assertEqual(cross_site(browser_request(sec_fetch_site="cross-site", sec_fetch_mode="navigate",
                                                    origin="http://127.0.0.1:3000")), "Sec-Fetch-Site: cross-site")
        for mode in ("cors", "no-cors", "same-origin"):
            self.assertEqual(cross_site(browser_request(method=b"GET", sec_fetch_site="same-site", sec_fetch_mode=mode)),
                             "Sec-Fetch-Site: same-site", mode)


class BrowserGuardTests(SynchronousTestCase):
    """The guard's answer, mark and log line."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.guard = BrowserGuard("ingest", self.clock.seconds)

    def test_refusal_says_why_and_marks_the_request(self) -> None:
        """A refused request gets one line saying why, and is marked (its access log line is
        the guard's); one that passes gets None, unmarked."""
        refused = browser_request(origin="http://evil.example")
        self.assertEqual(self.guard.refusal(refused), "cross-site browser requests are refused: "
                                                      "Origin http://evil.example is not this listener's"
                                                      " (http://127.0.0.1:8090)")
        self.assertTrue(refused_here(refused))
        passed = browser_request()
        self.assertIsNone(self.guard.refusal(passed))
        self.assertFalse(refused_here(passed))

    def test_refusals_are_logged_at_most_once_per_interval(self) -> None:
        """A page posting in a loop is one warning line, then one per 10 s counting them."""

        def burst(times: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(times):
                    self.guard.refusal(browser_request(sec_fetch_site="cross-site"))
            return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]

        line = ("ingest: cross-site browser request refused: POST /provision/activate: Sec-Fetch-Site: cross-site"
                " ({count} refused since the last such line; logged at most once every 10 s while they go on)")
        assert_one_line_then_summary(self, burst, line, self.clock)

    def test_the_headers_shown_are_bounded(self) -> None:
        """A megabyte Origin is shown as its start and length, in the answer and the log."""
        why: Any = cross_site(browser_request(origin="http://" + "a" * 1_000_000))
        self.assertLess(len(why), 300)
