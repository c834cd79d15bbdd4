"""The device API resource through StubTreq: every call and every error, durable 204s."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import http

from gateway.ingest.identities import LocalIdentities, TooManyDevices
from gateway.ingest.resource import DeviceAPIResource
from gateway.ingest.settings import IngestSettings
from gateway.ingest.values import LastValues
from gateway.journal.errors import RecordTooLargeError, StreamFullError
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock

CIK = "a" * 40
BASE = "http://localhost:8090"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
#: What a read is answered as: the form type with the charset Exosite's device API names
#: for it (its reads ask ``Accept: application/x-www-form-urlencoded; charset=utf-8``); the
#: ingest sent the type alone.
READ_TYPE = "application/x-www-form-urlencoded; charset=utf-8"


class FakeRouter:
    """The links' persist hook: records what is stored; holds durability until released."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes, float | None]] = []
        self.held: list[Deferred[int]] = []
        self.hold = False
        self.refuse = False
        #: per topic, what its append fails with (a refusal of that one value)
        self.refusals: dict[str, Exception] = {}
        self.routed = lambda topic: True

    def persist(self, topic: str, payload: bytes, qos: int, retain: bool, timestamp: float | None = None) -> Any:
        if not self.routed(topic):
            return None
        if self.refuse:
            return fail(StreamFullError("link-cloud", "max-bytes"))
        if topic in self.refusals:
            return fail(self.refusals[topic])
        self.stored.append((topic, payload, timestamp))
        if self.hold:
            d: Deferred[int] = Deferred()
            self.held.append(d)
            return d
        return succeed(len(self.stored))

    def release(self) -> None:
        held, self.held = self.held, []
        for d in held:
            d.callback(1)


class DeviceAPITests(SynchronousTestCase):
    """Each call of the gmq subset, and each way a request can be wrong."""

    def setUp(self) -> None:
        self.clock = SteppingClock()
        self.clock.advance(1_700_000_000)
        self.router = FakeRouter()
        self.values = LastValues(self.clock)
        self.state = Path(self.mktemp())
        self.identities = LocalIdentities(self.state / "devices.json", lambda f, *a: succeed(f(*a)))
        self.settings = IngestSettings(max_body=200, max_aliases=4)
        self.make()

    def make(self, **changes: Any) -> None:
        settings = IngestSettings(**dict(vars(self.settings), **changes))
        self.resource = DeviceAPIResource(settings, self.router.persist, self.values, self.identities,
                                          self.clock, "gw")
        self.treq = StubTreq(self.resource)

    def call(self, method: str, path: str, body: bytes | None = None, headers: Any = None) -> tuple[int, bytes, Any]:
        d = self.treq.request(method, BASE + path, data=body, headers=headers or {})
        self.treq.flush()
        response = self.successResultOf(d)
        content = self.treq.content(response)
        self.treq.flush()
        return response.code, self.successResultOf(content), response.headers

    def write(self, body: bytes, headers: Any = None) -> tuple[int, bytes, Any]:
        return self.call("POST", "/onep:v1/stack/alias", body, headers or dict(FORM, **{"X-Exosite-CIK": CIK}))

    def test_write_is_stored_and_answered_204(self):
        """A form write becomes one record per alias, topic telemetry/<alias>, with no timestamp of
        its own (the journal stamps it with the time received)."""
        code, body, _ = self.write(b"temp=21.5&hum=40")
        self.assertEqual((code, body), (204, b""))
        self.assertEqual(self.router.stored, [("telemetry/temp", b"21.5", None), ("telemetry/hum", b"40", None)])

    def test_204_only_once_durable(self):
        """While the journal has not made the write durable there is no answer; then 204."""
        self.router.hold = True
        d = self.treq.post(BASE + "/onep:v1/stack/alias", data=b"a=1&b=2",
                           headers=dict(FORM, **{"X-Exosite-CIK": CIK}))
        self.treq.flush()
        self.assertNoResult(d)
        self.router.held.pop(0).callback(1)
        self.treq.flush()
        self.assertNoResult(d)
        self.router.release()
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 204)

    def test_refused_by_the_journal_is_503_with_retry_after(self):
        """A stream at its limit under reject-new: 503, Retry-After, and a body saying why."""
        self.router.refuse = True
        code, body, headers = self.write(b"a=1")
        self.assertEqual(code, 503)
        self.assertEqual(headers.getRawHeaders("retry-after"), ["5"])
        self.assertIn(b"full", body)
        self.assertEqual(self.resource.stats.refused, 1)

    def test_a_value_that_can_never_fit_is_413_once_the_others_are_stored(self) -> None:
        """A value larger than a stream's max_bytes on its own was answered 503 with
        Retry-After: the app sent for ever a write no stream can ever hold. Now 413, final (no
        Retry-After), naming the alias and the limit, and only once the write's other values
        are durable: the app that does not send it again loses none of them (exosite.md)."""
        self.router.refusals["telemetry/big"] = RecordTooLargeError("link-cloud", 9000, 8192)
        self.router.hold = True
        d = self.treq.post(BASE + "/onep:v1/stack/alias", data=b"a=1&big=xyz",
                           headers=dict(FORM, **{"X-Exosite-CIK": CIK}))
        self.treq.flush()
        self.assertNoResult(d)
        self.router.release()
        self.treq.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(self.treq.content(response))
        self.assertEqual(response.code, 413)
        self.assertIsNone(response.headers.getRawHeaders("retry-after"))
        self.assertEqual(body, b"the value of 'big' not stored: journal stream 'link-cloud' refused the append"
                               b" (max-bytes): a record of 9000 bytes is larger than max_bytes (8192 bytes); it never"
                               b" fits: do not send it again (the write's other values are stored)\n")
        self.assertEqual([topic for topic, _, _ in self.router.stored], ["telemetry/a"])
        self.assertEqual((self.resource.stats.refused, self.resource.stats.bad), (0, 1))

    def test_the_values_stored_beside_one_that_never_fits_are_counted_and_read_back(self) -> None:
        """The values of a write answered 413 for another of its values are stored (exosite.md)
        but were neither counted (``values``, ``unrouted``) nor made their aliases' last values:
        ``gateway_ingest_values_total`` missed values the cloud gets, and a read of such an
        alias answered its older value. Now they are both; the write is not one answered 204."""
        self.router.refusals["telemetry/big"] = RecordTooLargeError("link-cloud", 9000, 8192)
        self.router.routed = lambda topic: topic != "telemetry/u"
        self.assertEqual(self.write(b"a=1")[0], 204)
        self.assertEqual(self.write(b"a=2&big=xyz&u=3")[0], 413)
        stats = self.resource.stats
        self.assertEqual((stats.writes, stats.values, stats.unrouted, stats.bad), (1, 3, 1, 1))
        read = {"X-Exosite-CIK": CIK}
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias?a", headers=read)[:2], (200, b"a=2"))
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias?u", headers=read)[:2], (200, b"u=3"))
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias?big", headers=read)[0], 204)

    def test_a_refusal_that_may_pass_later_wins_over_one_for_good(self) -> None:
        """A write with a value that can never fit and one refused by a full stream is 503 with
        Retry-After: sent again, the second may be stored."""
        self.router.refusals["telemetry/big"] = RecordTooLargeError("link-cloud", 9000, 8192)
        self.router.refusals["telemetry/b"] = StreamFullError("link-cloud", "max-bytes")
        code, body, headers = self.write(b"big=xyz&b=2")
        self.assertEqual(code, 503)
        self.assertEqual(headers.getRawHeaders("retry-after"), ["5"])
        self.assertIn(b"is full", body)

    def test_refused_writes_are_logged_once_per_ten_seconds(self):
        """Each refused write logged a warning, so apps writing on to a full journal (a full
        disk, a reject-new stream at its limit) flooded the log; the broker logs the same
        refusals at most once per 10 s per listener. Now: the first, then at most one line per
        10 s saying how many were refused since the last line; every write is still a 503."""

        def refuse(times: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(times):
                    self.assertEqual(self.write(b"a=1")[0], 503)
                    self.clock.advance(1)
            return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]

        self.router.refuse = True
        full = "journal stream 'link-cloud' is full (max-bytes); append rejected"
        self.assertEqual(refuse(10), [f"ingest: write refused: {full} (logged at most once every 10 s while they go on)"])
        self.assertEqual(refuse(1), [f"ingest: write refused: {full} (10 refused since the last such line; logged at most once every 10 s while they go on)"])
        self.assertEqual(self.resource.stats.refused, 11)

    def test_unrouted_writes_are_204_and_kept_as_last_values(self):
        """A topic no link routes is acknowledged, counted, and readable back."""
        self.router.routed = lambda topic: False
        self.assertEqual(self.write(b"a=1")[0], 204)
        self.assertEqual(self.resource.stats.unrouted, 1)
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias?a", headers={"X-Exosite-CIK": CIK})[:2],
                         (200, b"a=1"))

    def test_unrouted_values_of_a_refused_write_are_counted_once_it_is_204(self) -> None:
        """``unrouted`` counts, of the values of writes answered 204, those no link routes
        (readside.md): it counted them before the write's end, so a write refused (503) with an
        unrouted value counted that value, and again when the app sent the write again and
        it was 204: unrouted 2 beside values 2, one unrouted value in truth."""
        self.router.routed = lambda topic: topic != "telemetry/a"
        self.router.refusals["telemetry/b"] = StreamFullError("link-cloud", "max-bytes")
        self.assertEqual(self.write(b"a=1&b=2")[0], 503)
        self.assertEqual((self.resource.stats.unrouted, self.resource.stats.values), (0, 0))
        del self.router.refusals["telemetry/b"]
        self.assertEqual(self.write(b"a=1&b=2")[0], 204)
        self.assertEqual((self.resource.stats.unrouted, self.resource.stats.values), (1, 2))

    def test_malformed_bodies_are_400_with_a_reason(self):
        """Not form-encoded, no pairs, a bad alias, too many aliases, not UTF-8: 400 each, nothing stored."""
        for body, reason in [(b"", b"empty"), (b"novalue", b"malformed"), (b"a%2Fb=1", b"'/'"),
                             (b"a=1&b=2&c=3&d=4&e=5", b"at most 4"), (b"a=%ff", b"UTF-8"),
                             (b"\xff=1", b"UTF-8")]:
            code, text, _ = self.write(body)
            self.assertEqual(code, 400, body)
            self.assertIn(reason, text, body)
        self.assertEqual(self.router.stored, [])

    def test_alias_length_limit(self):
        """An alias of 256 characters is written; one longer is 400 (docs/exosite.md)."""
        self.make(max_body=1000)
        self.assertEqual(self.write(b"a" * 256 + b"=1")[0], 204)
        code, text, _ = self.write(b"a" * 257 + b"=1")
        self.assertEqual(code, 400)
        self.assertIn(b"longer than 256 characters", text)
        self.assertEqual(self.router.stored, [("telemetry/" + "a" * 256, b"1", None)])

    def test_too_large_is_413(self):
        """A body over max_body: 413 naming the limit."""
        code, text, _ = self.write(b"a=" + b"x" * 300)
        self.assertEqual(code, 413)
        self.assertIn(b"at most 200", text)

    def test_other_content_types_are_415(self):
        """JSON is not what the device API takes."""
        code, _, _ = self.write(b"{}", {"Content-Type": "application/json", "X-Exosite-CIK": CIK})
        self.assertEqual(code, 415)

    def test_the_declared_charset_is_honoured(self) -> None:
        """A form posted with ``charset=latin-1`` was decoded as UTF-8: its ``%E9`` was a 400
        (and a latin-1 text that happened to be valid UTF-8 was stored as other text). The
        declared charset decodes the body, writes and records alike, and the value is stored
        as UTF-8; a charset Python does not know is a 415 naming it, nothing written
        (exosite.md)."""
        def headers(kind: str) -> dict[str, str]:
            return {"Content-Type": kind, "X-Exosite-CIK": CIK}

        self.assertEqual(self.write(b"t=caf%E9", headers(FORM["Content-Type"] + "; charset=latin-1"))[0], 204)
        self.assertEqual(self.write(b"t=%C3%A9", headers(FORM["Content-Type"] + '; Charset="UTF-8"'))[0], 204)
        code, _, _ = self.call("POST", "/onep:v1/stack/alias/t", b"5=%E9",
                               headers(FORM["Content-Type"] + ";charset=windows-1252"))
        self.assertEqual(code, 204)
        self.assertEqual(self.router.stored[:2], [("telemetry/t", "café".encode(), None),
                                                  ("telemetry/t", "é".encode(), None)])
        self.assertEqual(self.router.stored[2][:2], ("telemetry/t", "é".encode()))
        code, text, _ = self.write(b"t=caf%E9", headers(FORM["Content-Type"] + "; charset=utf-8"))
        self.assertEqual((code, text), (400, b"the body is not form-encoded UTF-8\n"))
        for charset in ("x-klingon", "rot13"):
            code, text, _ = self.write(b"t=1", headers(f"{FORM['Content-Type']}; charset={charset}"))
            self.assertEqual((code, text), (415, f"unknown charset {charset!r}: send UTF-8 (or name the body's"
                                                 " charset)\n".encode()))
        self.assertEqual(len(self.router.stored), 3)

    def test_auth_headers(self):
        """No header, a malformed CIK, a bad VMS: 401; under auth: known an unknown CIK is 401 too."""
        self.assertEqual(self.write(b"a=1", FORM)[0], 401)
        self.assertEqual(self.write(b"a=1", dict(FORM, **{"X-Exosite-CIK": "short"}))[0], 401)
        self.assertEqual(self.write(b"a=1", dict(FORM, **{"X-Exosite-VMS": "v m"}))[0], 401)
        self.make(auth="known")
        code, text, _ = self.write(b"a=1")
        self.assertEqual(code, 401)
        self.assertIn(b"unknown CIK", text)
        self.make(auth="known", ciks=(CIK,))
        self.identities.extra = {CIK}
        self.assertEqual(self.write(b"a=1")[0], 204)

    def test_vms_activates_and_writes_as_that_device(self):
        """X-Exosite-VMS activates the serial locally (CIK kept, mode 0600), under auth: known too,
        and {device} is the serial."""
        self.make(topic="telemetry/{device}/{alias}")
        code, _, _ = self.write(b"a=1", dict(FORM, **{"X-Exosite-VMS": "acme box sn42"}))
        self.assertEqual(code, 204)
        self.assertEqual(self.router.stored[0][0], "telemetry/sn42/a")
        path = self.state / "devices.json"
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        code, cik, _ = self.call("POST", "/provision/activate", b"vendor=acme&model=box&sn=sn42", FORM)
        self.assertEqual(code, 200)
        self.assertIn(cik.decode(), path.read_text())
        self.make(auth="known", topic="telemetry/{device}/{alias}")
        self.assertEqual(self.write(b"b=2", dict(FORM, **{"X-Exosite-CIK": cik.decode()}))[0], 204)
        self.assertEqual(self.router.stored[-1][0], "telemetry/sn42/b")
        # under auth: known too, a VMS request activates its serial (as POST /provision/activate does)
        self.assertEqual(self.write(b"c=3", dict(FORM, **{"X-Exosite-VMS": "acme box sn43"}))[0], 204)
        self.assertEqual(self.router.stored[-1][0], "telemetry/sn43/c")

    def test_a_web_pages_form_post_activates_nothing(self) -> None:
        """A page the operator opened could make the browser POST a form (no CORS preflight)
        to /provision/activate, activating serials until max_devices refused the real devices.
        A request whose Origin is not the ingest's own, or whose Sec-Fetch-Site is cross-site
        or same-site, is 403 saying why, and nothing is activated, stored or read."""
        activate = b"vendor=acme&model=box&sn=sn42"
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"},
                        {"Sec-Fetch-Site": "cross-site"}):
            code, body, _ = self.call("POST", "/provision/activate", activate, dict(FORM, **headers))
            self.assertEqual((code, body.split(b":")[0]), (403, b"cross-site browser requests are refused"), headers)
            self.assertEqual(body.count(b"\n"), 1)
            code, body, _ = self.write(b"a=1", dict(FORM, **{"X-Exosite-CIK": CIK}, **headers))
            self.assertEqual(code, 403, headers)
        self.assertEqual((self.identities.devices, self.router.stored, self.resource.stats.bad), ({}, [], 8))
        code, body, _ = self.call("POST", "/provision/activate", activate, dict(FORM, Origin="http://evil.example"))
        self.assertEqual(body, b"cross-site browser requests are refused: Origin http://evil.example is not this"
                               b" listener's (http://localhost:8090)\n")

    def test_a_page_of_the_ingests_own_origin_and_clients_without_browser_headers_pass(self) -> None:
        """Clients send no Origin (gmq clients, apps, containers naming the host as they
        will): unchanged; a browser request whose Origin is the ingest's own passes too."""
        self.assertEqual(self.write(b"a=1", dict(FORM, **{"X-Exosite-CIK": CIK, "Host": "host.containers.internal"}))[0],
                         204)
        self.assertEqual(self.write(b"a=2", dict(FORM, **{"X-Exosite-CIK": CIK, "Origin": "http://localhost:8090",
                                                          "Sec-Fetch-Site": "same-origin"}))[0], 204)
        self.assertEqual(len(self.router.stored), 2)

    def test_a_cors_preflight_gets_no_allow_headers(self) -> None:
        """A browser's preflight (OPTIONS, with its Origin) is 403 like the request it asks
        for; without an Origin, OPTIONS is 405 as before; neither says Access-Control-Allow-*."""
        preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "x-exosite-cik"}
        for headers, status in ((preflight, 403), ({}, 405)):
            code, _, answer = self.call("OPTIONS", "/onep:v1/stack/alias", None, headers)
            self.assertEqual(code, status)
            self.assertEqual([name for name, _ in answer.getAllRawHeaders() if name.lower().startswith(b"access-control")],
                             [])

    def test_a_serial_that_is_no_topic_level_is_refused(self) -> None:
        """{device} is one level of the topic: a serial holding '/' wrote as another device
        (``a/b`` under telemetry/{device}/{alias} is device ``a``'s alias ``b/t``), one holding
        '+' or '#' was refused as if its alias were wrong; both are 400 naming the serial.
        Under a topic without {device} any serial writes."""
        self.make(topic="telemetry/{device}/{alias}")
        for serial in ("a/b", "a+", "#"):
            code, text, _ = self.write(b"t=1", dict(FORM, **{"X-Exosite-VMS": f"acme box {serial}"}))
            self.assertEqual((code, text.decode()),
                             (400, f"the serial {serial!r} cannot be the {{device}} level of the topic "
                                   "'telemetry/{device}/{alias}': no '/', '+' or '#' in it\n"), serial)
        self.assertEqual(self.router.stored, [])
        self.make()
        self.assertEqual(self.write(b"t=1", dict(FORM, **{"X-Exosite-VMS": "acme box a/b"}))[0], 204)
        self.assertEqual(self.router.stored[-1][0], "telemetry/t")

    def test_an_activation_the_disk_refuses_is_503_saying_why(self) -> None:
        """An activation whose devices.json the disk refuses (full) is 503 with Retry-After and a
        body saying what failed, as a write the journal refuses on a full disk (exosite.md:
        errors have a one-line body saying what is wrong; 503: a write error, disk full, the app
        sends again), logged without a traceback; the CIK is issued once the disk has room. It
        was 500 'internal error', with a traceback logged at every attempt."""
        def full(*args: Any) -> Any:
            return fail(OSError(28, "No space left on device"))
        self.identities.run_blocking = full
        code, text, headers = self.call("POST", "/provision/activate", b"vendor=a&model=b&sn=1", FORM)
        self.assertEqual(code, 503)
        self.assertIn(b"No space left on device", text)
        self.assertEqual(headers.getRawHeaders("retry-after"), ["5"])
        self.assertEqual(self.flushLoggedErrors(OSError), [])
        code, _, _ = self.write(b"a=1", dict(FORM, **{"X-Exosite-VMS": "acme box sn42"}))
        self.assertEqual(code, 503)
        self.identities.run_blocking = lambda f, *a: succeed(f(*a))
        code, cik, _ = self.call("POST", "/provision/activate", b"vendor=a&model=b&sn=1", FORM)
        self.assertEqual((code, len(cik)), (200, 40))

    def test_activate_needs_vendor_model_sn(self):
        """A missing field is 400 naming it; the same serial always gets the same CIK."""
        code, text, _ = self.call("POST", "/provision/activate", b"vendor=a&model=b", FORM)
        self.assertEqual((code, text), (400, b"missing sn\n"))
        first = self.call("POST", "/provision/activate", b"vendor=a&model=b&sn=1", FORM)[1]
        again = self.call("POST", "/provision/activate", b"vendor=a&model=b&sn=1", FORM)[1]
        self.assertEqual(first, again)
        self.assertEqual(len(first), 40)

    def test_a_new_serial_past_max_devices_is_403(self) -> None:
        """The devices activated locally are bounded by ``max_devices``: an app naming a new
        serial each time made devices.json (and the memory holding it) grow without end. Past
        it, a new serial's activation, and a write whose VMS names one, are 403 saying so, nothing
        stored; serials activated before go on, by VMS and by CIK; the snapshot's ``devices``
        counts them (exosite.md)."""
        self.identities.max_devices = 2
        first = self.call("POST", "/provision/activate", b"vendor=a&model=b&sn=1", FORM)[1]
        self.assertEqual(self.write(b"a=1", dict(FORM, **{"X-Exosite-VMS": "acme box sn2"}))[0], 204)
        message = (b"the ingest holds 2 activated devices, its max_devices (2): remove devices no longer used from"
                   b" devices.json while the gateway is stopped, or raise ingest.max_devices\n")
        self.assertEqual(self.call("POST", "/provision/activate", b"vendor=a&model=b&sn=3", FORM)[:2], (403, message))
        self.assertEqual(self.write(b"a=2", dict(FORM, **{"X-Exosite-VMS": "acme box sn3"}))[:2], (403, message))
        self.assertEqual(len(self.router.stored), 1)
        self.assertNotIn("sn3", (self.state / "devices.json").read_text())
        self.assertEqual(self.call("POST", "/provision/activate", b"vendor=a&model=b&sn=1", FORM)[:2], (200, first))
        self.assertEqual(self.write(b"a=3", dict(FORM, **{"X-Exosite-VMS": "acme box sn2"}))[0], 204)
        self.assertEqual(self.write(b"a=4", dict(FORM, **{"X-Exosite-CIK": first.decode()}))[0], 204)
        self.assertEqual(len(self.identities.devices), 2)

    def test_record_keeps_the_given_timestamps(self):
        """POST .../alias/<alias> with ts=value pairs: one record per value, carrying ts."""
        code, _, _ = self.call("POST", "/onep:v1/stack/alias/temp", b"1600000000=20&1600000001=21",
                               dict(FORM, **{"X-Exosite-CIK": CIK}))
        self.assertEqual(code, 204)
        self.assertEqual(self.router.stored, [("telemetry/temp", b"20", 1600000000.0),
                                              ("telemetry/temp", b"21", 1600000001.0)])
        code, text, _ = self.call("POST", "/onep:v1/stack/alias/temp", b"yesterday=20",
                                  dict(FORM, **{"X-Exosite-CIK": CIK}))
        self.assertEqual((code, text), (400, b"timestamp 'yesterday' is not a number\n"))
        # float() read another script's digits, an exponent, an underscore and spaces as a time
        for stamp in ("\u0661\u0666\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0660", "1.6e9", "1_600_000_000",
                      " 1600000000"):
            code, text, _ = self.call("POST", "/onep:v1/stack/alias/temp", quote(stamp).encode() + b"=20",
                                      dict(FORM, **{"X-Exosite-CIK": CIK}))
            self.assertEqual((code, text), (400, f"timestamp {stamp!r} is not a number\n".encode()), stamp)
        self.assertEqual(len(self.router.stored), 2, "nothing of them stored")

    def test_read_answers_last_values_or_204(self):
        """GET ?a&b: 200 with the values known, form-encoded; 204 when none is."""
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias?a&b", headers={"X-Exosite-CIK": CIK})[0], 204)
        self.write(b"a=x%20y")
        code, body, headers = self.call("GET", "/onep:v1/stack/alias?a&b", headers={"X-Exosite-CIK": CIK})
        self.assertEqual((code, body), (200, b"a=x%20y"))
        self.assertEqual(headers.getRawHeaders("content-type"), [READ_TYPE])
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias", headers={"X-Exosite-CIK": CIK})[0], 400)

    def test_hybrid_write_read(self):
        """Exosite's Hybrid Write/Read: POST /onep:v1/stack/alias?<alias 1>&<alias 2> with the
        writes as the body writes them, then answers the read as a GET would (200 with the
        values known, those just written included; 204 when none is). The query was ignored:
        the write was answered 204, so the app read 'no values' for values there were."""
        headers = dict(FORM, **{"X-Exosite-CIK": CIK, "Accept": "application/x-www-form-urlencoded; charset=utf-8"})
        self.write(b"a=1")
        code, body, response = self.call("POST", "/onep:v1/stack/alias?a&b", b"b=2&c=3", headers)
        self.assertEqual((code, body), (200, b"a=1&b=2"))
        self.assertEqual(response.getRawHeaders("content-type"), [READ_TYPE])
        self.assertEqual([topic for topic, _, _ in self.router.stored], ["telemetry/a", "telemetry/b", "telemetry/c"])
        self.assertEqual(self.call("POST", "/onep:v1/stack/alias?x", b"c=4", headers)[:2], (204, b""))
        self.assertEqual(self.values.get("c").value, "4")
        code, body, _ = self.call("POST", "/onep:v1/stack/alias?a/b", b"d=5", headers)
        self.assertEqual(code, 400)
        self.assertNotIn("telemetry/d", [topic for topic, _, _ in self.router.stored])  # refused whole

    def test_long_poll_client_hanging_up_is_no_error(self):
        """A long-poll whose client hangs up stops waiting, quietly: nothing is answered and
        nothing is logged as a failure. The wait was cancelled before the resource noted the
        client gone, so each hang-up logged two critical tracebacks ('ingest: request
        failed' CancelledError, then 'answering failed': finish() on a lost connection)."""
        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        from gateway.ingest.service import quiet_site

        transport = StringTransport()
        channel = quiet_site(self.resource, 75).buildProtocol(None)
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /onep:v1/stack/alias?cmd HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + CIK.encode()
                             + b"\r\nRequest-Timeout: 30000\r\n\r\n")
        self.assertEqual(self.values.waiting, 1)
        channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.values.waiting, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_long_poll_waits_for_a_change_or_304(self):
        """Request-Timeout waits for the next value (200 + Last-Modified) or answers 304 on timeout."""
        headers = {"X-Exosite-CIK": CIK, "Request-Timeout": "30000"}
        d = self.treq.get(BASE + "/onep:v1/stack/alias?cmd", headers=headers)
        self.treq.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 304)
        d = self.treq.get(BASE + "/onep:v1/stack/alias?cmd", headers=headers)
        self.treq.flush()
        self.clock.advance(1)
        self.values.set("cmd", "reboot")
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), [READ_TYPE])
        stamp = response.headers.getRawHeaders("last-modified")[0]
        self.assertEqual(http.stringToDatetime(stamp.encode()), 1_700_000_031)
        # Newer than If-Modified-Since: at once; not newer: wait.
        older = http.datetimeToString(1_700_000_000).decode()
        code, body, _ = self.call("GET", "/onep:v1/stack/alias?cmd", headers=dict(headers, **{"If-Modified-Since": older}))
        self.assertEqual((code, body), (200, b"cmd=reboot"))
        d = self.treq.get(BASE + "/onep:v1/stack/alias?cmd", headers=dict(headers, **{"If-Modified-Since": stamp}))
        self.treq.flush()
        self.assertNoResult(d)
        self.clock.advance(30)
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 304)
        self.assertEqual(self.values.waiting, 0)

    def test_a_write_after_a_step_back_of_the_wall_clock_is_the_last_value(self) -> None:
        """NTP steps the clock back an hour: a value written after it is the alias's last
        value at once, for reads and long-polls; its time is the previous value's (an alias's
        times never go back), so a long-poll with that one's Last-Modified waits for the next
        change rather than hiding it for the hour. The value from before the step was kept
        for the hour, as if newer, and every write meanwhile was lost to reads."""
        cik = {"X-Exosite-CIK": CIK}
        self.write(b"temp=1")
        stamp = self.values.get("temp").modified
        self.clock.step(-3600)
        self.clock.advance(1)
        self.write(b"temp=2")
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias?temp", headers=cik)[:2], (200, b"temp=2"))
        self.assertEqual(self.values.get("temp").modified, stamp)
        d = self.treq.get(BASE + "/onep:v1/stack/alias?temp", headers=dict(cik, **{
            "Request-Timeout": "30000", "If-Modified-Since": http.datetimeToString(stamp - 1).decode()}))
        self.treq.flush()
        content = self.treq.content(self.successResultOf(d))
        self.treq.flush()
        self.assertEqual(self.successResultOf(content), b"temp=2")
        # a cloud value (set without a time) after the step keeps the alias's time too
        self.values.set("temp", "3")
        self.assertEqual(self.values.get("temp"), ("3", stamp))

    def test_malformed_reads_are_400_with_a_reason(self):
        """exosite.md's 400s of the read side: no alias named, a long-poll of more than one, a
        Request-Timeout that is no whole number of milliseconds (a negative one waited not at
        all, and 1_000 was taken as int() reads it; the reason quotes it, bounded and escaped, and
        says what is taken: it said only "Request-Timeout is milliseconds"), an If-Modified-Since that is no HTTP date;
        each with a one-line reason, and no long-poll left waiting."""
        poll = {"X-Exosite-CIK": CIK, "Request-Timeout": "1000"}
        NOT_MS = b"is not a whole number of milliseconds (0 to 300000; a longer one waits 300000)"
        for path, headers, reason in (
                ("?", {"X-Exosite-CIK": CIK}, b"name at least one alias to read: ?alias1&alias2"),
                ("?a&b", poll, b"a long-poll (Request-Timeout) reads exactly one alias"),
                ("?a", dict(poll, **{"Request-Timeout": "1.5"}), b"Request-Timeout '1.5' " + NOT_MS),
                ("?a", dict(poll, **{"Request-Timeout": "-5"}), b"Request-Timeout '-5' " + NOT_MS),
                ("?a", dict(poll, **{"Request-Timeout": "1_000"}), b"Request-Timeout '1_000' " + NOT_MS),
                # (repeated bounded, on one line: its first 100 characters and its length)
                ("?a", dict(poll, **{"Request-Timeout": "x\x1b" + "9" * 200}),
                 b"Request-Timeout 'x\\x1b" + b"9" * 98 + b"... (202 characters)' " + NOT_MS),
                ("?a", dict(poll, **{"If-Modified-Since": "yesterday"}), b"If-Modified-Since is not an HTTP date"),
                ("?a", dict(poll, **{"If-Modified-Since": ""}), b"If-Modified-Since is not an HTTP date")):
            self.assertEqual(self.call("GET", "/onep:v1/stack/alias" + path, headers=headers)[:2],
                             (400, reason + b"\n"), path)
        self.assertEqual(self.values.waiting, 0)
        # a whole number past max_poll_ms, however long, waits max_poll_ms (int() refuses 4300+ digits)
        d = self.treq.get(BASE + "/onep:v1/stack/alias?a", headers=dict(poll, **{"Request-Timeout": "9" * 5000}))
        self.treq.flush()
        self.clock.advance(299)
        self.treq.flush()
        self.assertNoResult(d)
        self.clock.advance(1)
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 304)

    def test_a_percent_that_begins_no_escape_is_400(self):
        """``a=%ZZ`` is not form-encoded (a ``%`` is sent as ``%25``): 400 saying so, nothing
        stored or kept as a last value; it was answered 204 and stored as the text ``%ZZ``.
        The same for a record, an activation and a read's query."""
        for body in (b"a=%ZZ", b"a=50%", b"%zz=1", b"a=1&b=%4"):
            code, text, _ = self.write(body)
            self.assertEqual(code, 400, body)
            self.assertIn(b"is not a percent escape", text, body)
        cik = {"X-Exosite-CIK": CIK}
        self.assertEqual(self.call("POST", "/onep:v1/stack/alias/a", b"1700000000=%G0", dict(FORM, **cik))[0], 400)
        self.assertEqual(self.call("POST", "/provision/activate", b"vendor=v&model=m&sn=%ZZ", FORM)[0], 400)
        self.assertEqual(self.call("GET", "/onep:v1/stack/alias?%ZZ", headers=cik)[:2], (400, b"malformed query\n"))
        self.assertEqual((self.router.stored, self.values.values), ([], {}))
        self.assertEqual(self.write(b"a=100%25")[0], 204)
        self.assertEqual(self.router.stored, [("telemetry/a", b"100%", None)])

    def test_timestamp(self):
        """GET /timestamp: the gateway's epoch seconds."""
        self.assertEqual(self.call("GET", "/timestamp")[:2], (200, b"1700000000"))

    def test_unknown_paths_and_methods(self):
        """404 outside the API, 405 for a wrong method."""
        self.assertEqual(self.call("GET", "/onep:v1/rpc/process")[0], 404)
        self.assertEqual(self.call("PUT", "/onep:v1/stack/alias", b"a=1")[0], 405)
        self.assertEqual(self.call("GET", "/provision/activate")[0], 405)

    def test_a_wrong_method_is_told_the_allowed_ones(self):
        """A 405 carries ``Allow`` with the methods the path takes (RFC 9110 says it must),
        as the admin API's and /metrics' 405s do; the ingest's had none."""
        for method, path, allowed in (("PUT", "/onep:v1/stack/alias", "GET, HEAD, POST"),
                                      ("OPTIONS", "/onep:v1/stack/alias/temp", "POST"),
                                      ("HEAD", "/onep:v1/stack/alias/temp", "POST"),
                                      ("GET", "/provision/activate", "POST"),
                                      ("HEAD", "/provision/activate", "POST"),
                                      ("DELETE", "/timestamp", "GET, HEAD")):
            code, _, headers = self.call(method, path, headers={"X-Exosite-CIK": CIK})
            self.assertEqual((code, headers.getRawHeaders("allow")), (405, [allowed]), (method, path))

    def test_head_is_answered_as_get_without_the_body(self):
        """HEAD works where GET does (RFC 9110 §9.3.2): the GET's status line and headers
        (``Content-Length`` too) and no body, and ``Allow`` names it; it was refused 405 while
        ``Allow`` named GET. No line is logged for it (Twisted's 'returning a message body'
        for a HEAD whose resource returned one)."""
        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        from gateway.ingest.service import quiet_site

        def exchange(method: bytes, path: bytes) -> bytes:
            transport = StringTransport()
            channel = quiet_site(self.resource, 75).buildProtocol(None)
            channel.makeConnection(transport)
            channel.dataReceived(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + CIK.encode()
                                 + b"\r\n\r\n")
            channel.connectionLost(Failure(ConnectionDone()))  # (its idle timeout is the global reactor's)
            return b"".join(line for line in transport.value().splitlines(keepends=True)
                            if not line.startswith(b"Date: "))

        self.write(b"a=x%20y")
        for path in (b"/onep:v1/stack/alias?a", b"/onep:v1/stack/alias?nothing", b"/timestamp",
                     b"/onep:v1/stack/alias", b"/onep:v1/rpc/process"):
            get = exchange(b"GET", path)
            with capturedLogs() as events:
                head = exchange(b"HEAD", path)
            self.assertEqual(head, get[:get.index(b"\r\n\r\n") + 4], path)
            self.assertEqual([formatEvent(event) for event in events], [], path)
        self.assertTrue(exchange(b"HEAD", b"/onep:v1/stack/alias?a").startswith(b"HTTP/1.1 200 OK\r\n"))

    def test_record_alias_in_the_path_is_checked(self):
        """A percent-encoded alias is decoded; one with '/' or invalid UTF-8 is 400."""
        headers = dict(FORM, **{"X-Exosite-CIK": CIK})
        self.assertEqual(self.call("POST", "/onep:v1/stack/alias/caf%C3%A9", b"1=1", headers)[0], 204)
        self.assertEqual(self.router.stored[-1][0], "telemetry/café")
        self.assertEqual(self.call("POST", "/onep:v1/stack/alias/a%2Fb", b"1=1", headers)[0], 400)
        self.assertEqual(self.call("POST", "/onep:v1/stack/alias/%FF", b"1=1", headers)[0], 400)

    def test_a_record_without_an_alias_is_400_not_a_write(self):
        """POST .../alias/ (the record path with no alias) is refused with why, stores nothing;
        a write goes to .../alias without the slash."""
        headers = dict(FORM, **{"X-Exosite-CIK": CIK})
        code, text, _ = self.call("POST", "/onep:v1/stack/alias/", b"temp=21", headers)
        self.assertEqual((code, text), (400, b"no alias in the path: POST /onep:v1/stack/alias/<alias> records, "
                                              b"POST /onep:v1/stack/alias writes\n"))
        self.assertEqual(self.router.stored, [])
        self.assertEqual(self.resource.stats.bad, 1)


    def test_a_body_of_another_type_is_415_whatever_it_holds(self) -> None:
        """A multipart body that is not valid multipart gets the 415 the docs promise for
        another content type, with its one-line reason, and the connection stays open.
        twisted.web parsed it into args before the resource saw it and, failing, answered a
        bare 400 and closed the connection (the ingest parses bodies itself: it no longer asks
        twisted.web to, for a form body either)."""
        from twisted.internet.testing import StringTransport

        from gateway.ingest.service import quiet_site

        args: list[int] = []
        render = self.resource.render

        def spy(request: Any) -> Any:
            args.append(len(request.args))
            return render(request)

        self.resource.render = spy  # type: ignore[method-assign]
        transport = StringTransport()
        channel = quiet_site(self.resource, 75).buildProtocol(None)
        channel.makeConnection(transport)
        for kind, body in ((b"multipart/form-data; boundary=x", b"a=1"), (FORM["Content-Type"].encode(), b"a=1")):
            channel.dataReceived(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + CIK.encode()
                                 + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: 3\r\n\r\n" + body)
        answers = transport.value()
        self.assertTrue(answers.startswith(b"HTTP/1.1 415 "), answers[:100])
        self.assertIn(b"send application/x-www-form-urlencoded\n", answers)
        self.assertIn(b"HTTP/1.1 204 ", answers)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(args, [0, 0])
        channel.connectionLost(None)

    def test_a_body_that_stops_coming_is_answered_408(self) -> None:
        """Half a body, then a byte each 74 s (slowloris): each byte restarted the 75 s idle
        timeout, so the connection was held for ever. The body has 30 s from the end of the head
        (and 1 s more per KiB that comes): it is answered 408 and closed, nothing stored
        (docs/exosite.md)."""
        from twisted.internet.testing import StringTransport

        from gateway.httpchannels import BODY_GRACE
        from gateway.ingest.service import IDLE_TIMEOUT, quiet_site

        site = quiet_site(self.resource, IDLE_TIMEOUT)
        site.reactor = self.clock
        transport = StringTransport()
        channel = site.buildProtocol(None)
        channel.makeConnection(transport)
        channel.dataReceived(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + CIK.encode()
                             + b"\r\nContent-Length: 20\r\n\r\na=1&b=")
        self.clock.advance(BODY_GRACE - 1)
        channel.dataReceived(b"2")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)  # (the byte gave it 1/1024 s more)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"), transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.router.stored, [])
        channel.connectionLost(None)

    def test_body_over_max_body_is_never_held(self):
        """Over max_body, the site's requests drop the body as it comes (413 all the same):
        twisted.web kept all of it and parsed a form body whole into args on the reactor
        thread (a 200 MB write: gigabytes of memory, the gateway stalled ~50 s)."""
        from twisted.internet.testing import StringTransport

        from gateway.ingest.service import quiet_site

        seen: list[tuple[int, int]] = []
        render = self.resource.render

        def spy(request: Any) -> Any:
            request.content.seek(0, 2)
            seen.append((request.content.tell(), len(request.args)))
            return render(request)

        self.resource.render = spy  # type: ignore[method-assign]
        site = quiet_site(self.resource, 75)
        for framing, body in ((b"Content-Length: 100000\r\n", b"a=1&" * 25000),
                              (b"Transfer-Encoding: chunked\r\n", b"186a0\r\n" + b"a=1&" * 25000 + b"\r\n0\r\n\r\n")):
            transport = StringTransport()
            channel = site.buildProtocol(None)
            channel.makeConnection(transport)
            channel.dataReceived(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: x\r\nX-Exosite-CIK: " + CIK.encode()
                                 + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n" + framing + b"\r\n")
            for i in range(0, len(body), 4096):
                channel.dataReceived(body[i:i + 4096])
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value()[:100])
            self.assertIn(b"request body of 100000 bytes; at most 200", transport.value())
            channel.connectionLost(None)
        self.assertEqual(seen, [(0, 0), (0, 0)])
        self.assertEqual(self.router.stored, [])
        code, _, _ = self.write(b"a=1")  # within max_body: as before
        self.assertEqual(code, 204)

def held_writes() -> tuple[list[tuple[Any, tuple[Any, ...], Deferred[Any]]], Any]:
    """A ``run_blocking`` that holds each call until a test runs it, and the list it holds
    them in (function, arguments, the Deferred to fire)."""
    queued: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

    def run_blocking(f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        queued.append((f, args, d))
        return d

    return queued, run_blocking


class LocalIdentitiesTests(SynchronousTestCase):
    """Local activations are durable before their CIK is handed out, several at once too."""

    def test_concurrent_activations_all_kept(self):
        """Serials activated at once are written one write at a time, each with every device:
        the writes ran together in the thread pool on one temp file (FileNotFoundError at the
        rename, a 500 to the app) and each held only its own serial, so a CIK handed out could
        be missing from devices.json after a restart."""
        path = Path(self.mktemp()) / "devices.json"
        queued, run_blocking = held_writes()
        identities = LocalIdentities(path, run_blocking)
        ciks: dict[str, str] = {}
        for serial in ("sn1", "sn2", "sn3"):
            identities.activate("acme", "box", serial).addCallback(lambda cik, serial=serial: ciks.update({serial: cik}))
        self.assertEqual(len(queued), 1)  # one write in flight at a time
        while queued:
            self.assertEqual(len(queued), 1)
            f, args, d = queued.pop(0)
            d.callback(f(*args))
        self.assertEqual(len(ciks), 3)
        again = LocalIdentities(path, run_blocking)
        again.load()
        self.assertEqual({serial: device["cik"] for serial, device in again.devices.items()}, ciks)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_activations_being_saved_count_toward_max_devices(self) -> None:
        """Serials waiting for their write count toward ``max_devices`` (a burst of new serials
        cannot pass it while the file is being written); a file loaded with more than
        ``max_devices`` keeps them all and only refuses new serials."""
        path = Path(self.mktemp()) / "devices.json"
        queued, run_blocking = held_writes()
        identities = LocalIdentities(path, run_blocking, max_devices=3)
        results = [identities.activate("acme", "box", f"sn{n}") for n in range(5)]
        self.failureResultOf(results[3], TooManyDevices)
        self.failureResultOf(results[4], TooManyDevices)
        while queued:
            f, args, d = queued.pop(0)
            d.callback(f(*args))
        self.assertEqual(sorted(identities.devices), ["sn0", "sn1", "sn2"])
        smaller = LocalIdentities(path, run_blocking, max_devices=1)
        smaller.load()
        self.assertEqual(len(smaller.devices), 3)
        self.assertEqual(self.successResultOf(smaller.activate("acme", "box", "sn2")), identities.devices["sn2"]["cik"])
        self.failureResultOf(smaller.activate("acme", "box", "sn9"), TooManyDevices)

    def test_a_burst_of_activations_is_one_write(self):
        """First activations that arrive while a write runs are saved together by the next
        write (a group commit): each was a whole-file write of its own, one after another
        (2,000 new serials took 21 s), and none of them gets its CIK before it is on disk."""
        path = Path(self.mktemp()) / "devices.json"
        queued, run_blocking = held_writes()
        identities = LocalIdentities(path, run_blocking)
        ciks: dict[str, str] = {}
        serials = [f"sn{n}" for n in range(100)]
        for serial in serials:
            identities.activate("acme", "box", serial).addCallback(lambda cik, serial=serial: ciks.update({serial: cik}))
        f, args, d = queued.pop(0)
        d.callback(f(*args))  # the first write: sn0 alone
        self.assertEqual(list(ciks), ["sn0"])
        self.assertEqual(len(queued), 1)  # the other 99 in one write
        f, args, d = queued.pop(0)
        self.assertEqual(ciks.keys(), {"sn0"})  # not handed out before the write is done
        d.callback(f(*args))
        self.assertEqual(queued, [])
        self.assertEqual(sorted(ciks), sorted(serials))
        again = LocalIdentities(path, run_blocking)
        again.load()
        self.assertEqual({serial: device["cik"] for serial, device in again.devices.items()}, ciks)

    def test_a_failed_batch_fails_its_activations_only(self):
        """A write that fails errbacks every activation of its batch; activations that arrived
        during it are written next, and a serial of the failed batch asked again gets a new
        CIK that is saved."""
        path = Path(self.mktemp()) / "devices.json"
        queued, run_blocking = held_writes()
        identities = LocalIdentities(path, run_blocking)
        first = identities.activate("acme", "box", "sn1")
        _, _, d = queued.pop(0)
        second = identities.activate("acme", "box", "sn2")
        third = identities.activate("acme", "box", "sn3")
        d.errback(OSError("disk full"))
        self.failureResultOf(first, OSError)
        f, args, d = queued.pop(0)
        d.errback(OSError("disk full"))
        self.failureResultOf(second, OSError)
        self.failureResultOf(third, OSError)
        self.assertEqual(queued, [])
        again = identities.activate("acme", "box", "sn2")
        f, args, d = queued.pop(0)
        d.callback(f(*args))
        cik = self.successResultOf(again)
        self.assertEqual(identities.serial_of(cik), "sn2")
        self.assertEqual(self.successResultOf(identities.activate("acme", "box", "sn2")), cik)  # kept now
        reloaded = LocalIdentities(path, run_blocking)
        reloaded.load()
        self.assertEqual(list(reloaded.devices), ["sn2"])

    def test_a_failed_write_is_not_kept(self):
        """A write that fails errbacks its activation and leaves it out of later writes."""
        path = Path(self.mktemp()) / "devices.json"
        failing = [True]

        def run_blocking(f: Any, *args: Any) -> Deferred[Any]:
            if failing.pop() if failing else False:
                return fail(OSError("disk full"))
            return succeed(f(*args))

        identities = LocalIdentities(path, run_blocking)
        self.failureResultOf(identities.activate("acme", "box", "sn1"), OSError)
        cik = self.successResultOf(identities.activate("acme", "box", "sn2"))
        again = LocalIdentities(path, run_blocking)
        again.load()
        self.assertEqual({serial: d["cik"] for serial, d in again.devices.items()}, {"sn2": cik})

    def test_an_unusable_file_is_set_aside_and_the_ingest_starts(self):
        """A devices.json that is not JSON, or whose entry lacks its CIK or holds one that is no
        CIK (a number: its activation answered 500), is moved aside to devices.json.damaged
        (kept, not overwritten by the next activation; mode 0600 whatever its mode was, as it
        may hold CIKs) and the ingest starts with no device; the next activation writes a fresh file."""
        for text in ("{not json", '{"devices": {"sn1": {"vendor": "acme"}}}', '{"devices": []}', "[" * 5000,
                     '{"devices": {"sn1": {"cik": 5}}}', '{"devices": {"sn1": {"cik": "not a cik"}}}'):
            path = Path(self.mktemp()) / "devices.json"
            path.parent.mkdir()
            path.write_text(text)
            path.chmod(0o644)
            identities = LocalIdentities(path, lambda f, *a: succeed(f(*a)))
            identities.load()
            self.assertEqual(identities.devices, {})
            self.assertEqual((path.parent / "devices.json.damaged").read_text(), text)
            self.assertEqual((path.parent / "devices.json.damaged").stat().st_mode & 0o777, 0o600)
            cik = self.successResultOf(identities.activate("acme", "box", "sn2"))
            again = LocalIdentities(path, lambda f, *a: succeed(f(*a)))
            again.load()
            self.assertEqual(again.serial_of(cik), "sn2")

    def test_a_symbolic_link_to_nothing_is_set_aside_and_told(self):
        """A devices.json that is a symbolic link to nothing (or holds null) is damage, told and
        moved aside as any unusable file: it was taken for no file, in silence, and the next
        activation wrote through the link."""
        for make in ("link", "null"):
            path = Path(self.mktemp()) / "devices.json"
            path.parent.mkdir()
            if make == "link":
                path.symlink_to("elsewhere.json")
            else:
                path.write_text("null")
            events = capture_log_events(self)
            identities = LocalIdentities(path, lambda f, *a: succeed(f(*a)))
            identities.load()
            [error] = [e for e in events if "unusable" in e.get("log_format", "")]
            self.assertIn("symbolic link to 'elsewhere.json'" if make == "link" else "null", error["error"])
            aside = path.parent / "devices.json.damaged"
            self.assertTrue(aside.is_symlink() if make == "link" else aside.exists())
            self.successResultOf(identities.activate("acme", "box", "sn2"))
            self.assertFalse((path.parent / "elsewhere.json").exists())

    def test_the_log_says_what_is_wrong_with_an_unusable_file(self):
        """The error names what is wrong with the file, in words: it said ``('cik'; moved to
        ...)`` for an entry without its CIK (a KeyError's text) and quoted Python's messages
        (``'list' object has no attribute 'items'``) for a file of another shape."""
        wrong = {'{"devices": {"sn1": {"vendor": "acme"}}}': "the entry of 'sn1' has no cik",
                 '{"devices": {"sn1": 5}}': "the entry of 'sn1' is not an object",
                 '{"devices": []}': 'not {"devices": {serial: {"cik": ..., "vendor": ..., "model": ...}}}',
                 '[1]': 'not {"devices": {serial: {"cik": ..., "vendor": ..., "model": ...}}}',
                 '{"devices": {"sn1": {"cik": 5}}}': "the cik of 'sn1' is not a CIK (40 hex characters)",
                 '{"devices": {"sn1": {"cik": "not a cik"}}}': "the cik of 'sn1' is not a CIK (40 hex characters)",
                 '{"devices": {"sn1": {"cik": "%s\\n"}}}' % ("a" * 40): "the cik of 'sn1' is not a CIK (40 hex characters)"}
        for text, says in wrong.items():
            path = Path(self.mktemp()) / "devices.json"
            path.parent.mkdir()
            path.write_text(text)
            events = capture_log_events(self)
            LocalIdentities(path, lambda f, *a: succeed(f(*a))).load()
            errors = [e for e in events if "unusable" in e.get("log_format", "")]
            self.assertEqual([e["error"] for e in errors], [says], text)


#: Bytes that matter to a form body: separators, escapes (good and bad), UTF-8 and not.
_form_bytes = st.lists(st.sampled_from([b"a", b"=", b"&", b"%", b"%2", b"%ZZ", b"%25", b"%ff", b"%C3%A9", b"/",
                                        b"+", b"#", b"1", b"\xff", b"\x00", b";", b" ", b"17e8"]),
                       max_size=12).map(b"".join)


class NoInputIs500Tests(SynchronousTestCase):
    """Whatever a local client sends, the ingest answers one of exosite.md's statuses: never a
    500 (an exception of the ingest's own), and a 204 only for what was stored."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)

    def answer(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        router = FakeRouter()
        resource = DeviceAPIResource(IngestSettings(max_body=64, max_aliases=4), router.persist,
                                     LastValues(self.clock), LocalIdentities(Path(self.mktemp()) / "devices.json",
                                                                             lambda f, *a: succeed(f(*a))),
                                     self.clock, "gw")
        treq = StubTreq(resource)
        d = treq.request(method, BASE + path, data=body or None, headers=headers)
        treq.flush()
        self.clock.advance(301)  # a long-poll ends by max_poll_ms
        treq.flush()
        return self.successResultOf(d).code, router

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.sampled_from(["POST", "GET", "PUT", "HEAD"]),
           st.sampled_from(["/onep:v1/stack/alias", "/onep:v1/stack/alias/a", "/onep:v1/stack/alias/",
                            "/provision/activate", "/timestamp", "/x"]),
           _form_bytes, _form_bytes,
           st.sampled_from([{}, {"X-Exosite-CIK": CIK}, {"X-Exosite-CIK": "zz"}, {"X-Exosite-VMS": "v m s"},
                            {"X-Exosite-VMS": "v m"}]),
           st.sampled_from([{}, FORM, {"Content-Type": "text/plain"}, {"Request-Timeout": "10"},
                            {"Request-Timeout": "-1"}, {"Request-Timeout": "5", "If-Modified-Since": "x"}]))
    def test_any_request(self, method: str, path: str, query: bytes, body: bytes, auth: dict[str, str],
                         extra: dict[str, str]) -> None:
        """Any method, path, query, body and headers: a documented status, never 500."""
        quoted = query.decode("latin-1").encode("ascii", "backslashreplace").decode().replace("#", "%23")
        code, router = self.answer(method, path + ("?" + quoted if query else ""), body, {**auth, **extra})
        self.assertIn(code, (200, 204, 304, 400, 401, 404, 405, 413, 415), (method, path, query, body))
        if code != 204 or method != "POST":
            self.assertEqual(router.stored, [])
