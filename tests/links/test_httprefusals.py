"""An HTTP link and what the cloud refuses for good: the record is counted as lost, the rest goes on."""

from __future__ import annotations

import json
import re
from typing import Any

from treq.testing import StubTreq
from twisted.logger import capturedLogs, formatEvent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.journal.record import encode
from tests.links.test_httplink import T0, Answering, HTTPLinkCase


class ExositeRefusalTests(HTTPLinkCase):
    """Exosite mode: a record the platform refuses for good does not hold up the link."""

    def sent_lines(self, events: list[dict[str, Any]]) -> list[str]:
        return [formatEvent(e) for e in events if "counted as lost" in formatEvent(e)]

    def test_an_unknown_alias_is_counted_as_lost_and_the_rest_goes_on(self) -> None:
        """A write to an alias the product does not have (404) was sent again after every
        backoff, for ever, and nothing behind it reached the cloud. Its records are now
        counted as lost (refused-by-cloud, one ledger entry per run of seqs), in one request
        (the URL names the alias: each of its values gets the same 404), a warning says why,
        and the records before and after it arrive; the cursor passes them all."""
        self.server.aliases = {"temp"}
        self.write("temp", "1")
        self.write("bogus", "x")
        self.write("bogus", "y")
        self.write("temp", "2")
        with capturedLogs() as events:
            link = self.start()
            self.pass_time(10)
            self.write("temp", "3")
            self.pass_time(5)
        self.assertEqual(self.server.sequence("temp"), ["1", "2", "3"])
        self.assertEqual(self.stream.acked["cloud"], 5)
        sizes = [len(encode(r, r.seq)) for r in self.stream.records]
        self.assertEqual(self.stream.noted, [("refused-by-cloud", 2, sizes[1] + sizes[2], 2, 3, T0, T0)])
        self.assertEqual(self.sent_lines(events), [
            "link cloud: seq 2 on bogus refused by the cloud: HTTP 404: unknown alias; counted as lost"
            " (refused-by-cloud) (and 1 more after it)"])  # (no line before it: 1 more since it, once)
        self.assertEqual([path for _, _, path in self.server.requests].count("/onep:v1/stack/alias/bogus"), 1)
        self.assertEqual((link.snapshot().acked, link.snapshot().backlog), (3, 0))
        self.assertEqual(self.statuses[-1], (True, ""))

    def test_one_refused_value_loses_only_itself(self) -> None:
        """A request of one alias holding a value the platform refuses (400) is split until
        that value goes alone: the other values of the alias arrive, in order, and only the
        refused one is lost."""
        for i in range(8):
            self.write("temp", "bad" if i == 5 else str(i))
        self.server.refuse("bad", 400)
        self.start()
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), ["0", "1", "2", "3", "4", "6", "7"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("refused-by-cloud", 1, 6, 6)])
        self.assertEqual(self.stream.acked["cloud"], 8)

    def test_each_refusal_of_a_body_and_its_reason(self) -> None:
        """400, 409 and 422 for a value are refused-by-cloud, 413 (too large) over-cloud-limit,
        as a message over an MQTT cloud's limits is; the value beside it in the same request
        arrives. (404 and 414 refuse a record's URL, which names its alias: below.)"""
        for status, reason in ((400, "refused-by-cloud"), (409, "refused-by-cloud"), (413, "over-cloud-limit"),
                               (422, "refused-by-cloud")):
            self.stream.noted.clear()
            self.server.refuse(f"v{status}", status)
            self.write("temp", f"v{status}")
            self.write("temp", f"ok{status}")
            link = self.start()
            self.pass_time(10)
            self.assertEqual([n[:2] for n in self.stream.noted], [(reason, 1)], status)
            self.assertEqual(self.stream.acked["cloud"], len(self.stream.records), status)
            self.assertEqual(self.server.sequence("temp")[-1], f"ok{status}")
            self.successResultOf(link.stop())

    def test_a_body_over_the_platform_s_limit(self) -> None:
        """413 for a request of several values: split, so each part fits; a value too large
        even alone is over-cloud-limit."""
        self.server.max_body = 300
        for i in range(10):
            self.write("temp", f"{i:040d}")
        self.write("temp", "z" * 400)
        self.write("temp", "last")
        self.start()
        self.pass_time(40)
        self.assertEqual(self.server.sequence("temp"), [f"{i:040d}" for i in range(10)] + ["last"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("over-cloud-limit", 1, 11, 11)])

    def test_a_url_too_long_for_the_platform(self) -> None:
        """An alias whose record URL the platform finds too long (414): over-cloud-limit."""
        self.server.max_url = 100
        long_alias = "a" * 120
        self.server.aliases = None
        self.write(long_alias, "1")
        self.write("temp", "2")
        self.start()
        self.pass_time(10)
        self.assertEqual(self.server.sequence("temp"), ["2"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("over-cloud-limit", 1, 1, 1)])

    def test_a_connection_closed_on_a_large_body_without_an_answer(self) -> None:
        """A proxy that closes the connection on a body over its limit, without answering: a
        request of several values is split; one value whose request is closed twice while the
        platform answers ``GET /timestamp`` just after each time is over-cloud-limit; the others arrive."""
        self.server.max_body = 300
        self.server.close_on_large = True
        for i in range(4):
            self.write("temp", f"{i:040d}")
        self.write("temp", "z" * 400)
        self.write("temp", "last")
        with capturedLogs() as events:
            self.start()
            self.pass_time(60)
        self.assertEqual(self.server.sequence("temp"), [f"{i:040d}" for i in range(4)] + ["last"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("over-cloud-limit", 1, 5, 5)])
        [line] = self.sent_lines(events)
        self.assertIn("link cloud: seq 5 on temp refused by the cloud: it closed the connection", line)
        self.assertTrue(line.endswith("; counted as lost (over-cloud-limit)"), line)

    def test_a_closed_connection_while_the_platform_is_unreachable_loses_nothing(self) -> None:
        """A connection closed unanswered while the platform does not answer anything else
        either (the network is down) is a failure like any other: retried, nothing lost."""
        api = self.server

        class Down(Resource):
            isLeaf = True
            down = False

            def render(self, request: Any) -> Any:
                if self.down and request.path != b"/provision/activate":
                    request.channel.transport.abortConnection()
                    return NOT_DONE_YET
                return api.render(request)

        down = Down()
        self.treq = StubTreq(down)
        self.write("temp", "1")
        self.start()
        self.pass_time(3)
        down.down = True
        self.write("temp", "2")
        self.pass_time(60)
        self.assertEqual(self.stream.noted, [])
        down.down = False
        self.pass_time(10)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])
        self.assertEqual(self.stream.noted, [])

    def test_a_network_resetting_small_requests_loses_nothing(self) -> None:
        """A network that resets connections (a flaky cellular link, a NAT) cut the request of
        one value alone twice, and ``GET /timestamp`` just after each got through: the value
        was counted as lost (over-cloud-limit), though the platform had taken a request as
        large before (found under 30 % resets: a few values in a thousand lost so). A close
        on a request no larger than one the platform took is the network's, not a limit on
        size: sent again with backoff, nothing lost."""
        api = self.server

        class Resetting(Resource):
            isLeaf = True
            resets = 3

            def render(self, request: Any) -> Any:
                if self.resets and request.method == b"POST" and request.content.getvalue().endswith(b"=2"):
                    self.resets -= 1
                    request.channel.transport.abortConnection()
                    return NOT_DONE_YET
                return api.render(request)

        resetting = Resetting()
        self.treq = StubTreq(resetting)
        self.write("temp", "1")
        self.start()
        self.pass_time(3)
        self.write("temp", "2")
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), ["1", "2"])
        self.assertEqual(self.stream.noted, [])
        self.assertEqual(resetting.resets, 0)
        self.assertEqual(self.stream.acked["cloud"], 2)

    def test_temporary_failures_and_auth_failures_lose_nothing(self) -> None:
        """429, 500, 502, 503 and a timeout, 401 (the CIK: activated again) and 403, and 415
        (the same for every request: no record can avoid it) are retried with backoff:
        nothing is counted as lost, everything arrives once they pass."""
        api = self.server

        class Failing(Resource):
            isLeaf = True
            status = 0

            def render(self, request: Any) -> Any:
                if self.status and request.path.startswith(b"/onep:"):
                    request.setResponseCode(self.status)
                    return b"not now"
                return api.render(request)

        failing = Failing()
        self.treq = StubTreq(failing)
        self.start()
        for i, status in enumerate((429, 500, 502, 503, 401, 403, 415)):
            failing.status = status
            self.write("temp", str(i))
            self.pass_time(20)
            self.assertEqual(self.stream.noted, [], status)
            self.assertIn(f"HTTP {status}", self.link.last_error + self.link.cause, status)
            failing.status = 0
            self.pass_time(10)
        self.server.fail("slow", 1, 60)
        self.write("temp", "slow")
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), [str(i) for i in range(7)] + ["slow"])
        self.assertEqual(self.stream.noted, [])

    def test_a_refused_loss_report_is_not_a_loss_itself(self) -> None:
        """A loss report on an alias the product does not have is refused (404): it is not
        counted as a loss, which would change the report and send a new one, refused again,
        for ever; an error says so."""
        from tests.links.memory import MemoryLossReport

        self.server.aliases = {"temp"}
        self.stream.losses = MemoryLossReport("link-cloud", entries=({"reason": "max-age", "records": 3},),
                                              totals={"max-age": 3})
        with capturedLogs() as events:
            self.start(loss_topic="gateway_losses")
            self.pass_time(40)
        self.assertEqual(self.stream.noted, [])
        self.assertEqual(self.stream.acked["cloud"], len(self.stream.records))
        self.assertIn("link cloud: the journal loss report was refused by the cloud on gateway_losses: HTTP 404:"
                      " unknown alias; it is not sent (does loss_topic name an alias of the product?)",
                      [formatEvent(e) for e in events])

    def test_the_warning_is_throttled(self) -> None:
        """Refused records flood no log: one line every 10 s counts the others."""
        self.server.aliases = {"temp"}
        for i in range(6):
            self.write(f"bogus{i}", "x")
        self.write("temp", "1")  # (taken: so the others are the records' fault, below)
        with capturedLogs() as events:
            self.start()
            self.pass_time(30)
        lines = self.sent_lines(events)
        self.assertLess(len(lines), 6, lines)
        self.assertEqual(sum(n[1] for n in self.stream.noted), 6)
        self.assertTrue(any(re.search(r"\(and \d+ more (since the last such line|after it)", line) for line in lines),
                        lines)


class RefusedWholeTests(HTTPLinkCase):
    """A cloud that refuses every request of a batch (a JSON format it does not read, a product
    with none of the aliases) shows no record at fault: nothing is dropped; the link backs off
    with the refusal as its status and reads the batch again, with what came meanwhile, whose
    records the cloud takes show which refused ones are at fault."""

    def test_a_json_cloud_refusing_everything_loses_nothing(self) -> None:
        """Every batch answered 400: nothing counted as lost, nothing acknowledged, the status
        says why, and once the cloud takes them (fixed), everything arrives in order."""
        refuser = Answering(self.clock, 400, b"unknown format")
        self.treq = StubTreq(refuser)
        for i in range(5):
            self.write("up/a", str(i))
        link = self.start(mode="json", url="https://ingest.example/v1")
        self.pass_time(60)
        self.assertEqual(self.stream.noted, [])
        self.assertEqual(self.stream.acked.get("cloud", 0), 0)
        self.assertEqual(link.cause, "HTTP 400: unknown format")
        self.assertEqual(self.statuses[-1], (False, "HTTP 400: unknown format"))
        self.successResultOf(link.stop())

    def test_a_refused_record_alone_waits_for_one_the_cloud_takes(self) -> None:
        """Exosite: the one record of a batch refused (400) is held, not dropped; when the next
        record comes and the cloud takes it, the refused one is counted as lost, the other arrives."""
        self.server.refuse("bad", 400)
        self.write("temp", "bad")
        self.start()
        self.pass_time(20)
        self.assertEqual((self.stream.noted, self.stream.acked.get("cloud", 0)), ([], 0))
        self.write("temp", "good")
        self.pass_time(60)
        self.assertEqual(self.server.sequence("temp"), ["good"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("refused-by-cloud", 1, 1, 1)])
        self.assertEqual(self.stream.acked["cloud"], 2)


class ProbeTests(HTTPLinkCase):
    """A batch that cannot grow (``batch_records: 1``, or full) shows no refused record at
    fault within itself: the records after it, read without moving the cursor, are its probe."""

    def test_a_record_refused_alone_is_decided_by_the_next_one_taken(self) -> None:
        """batch_records 1, exosite: a value refused (400) waited for ever, and every value
        after it behind it (no other request of its batch could be taken). The next value is
        its probe: taken, the refused one is counted as lost (refused-by-cloud) with a warning,
        and everything after it arrives in order; the cursor passes them all."""
        self.server.refuse("bad", 400)
        for value in ("1", "bad", "2", "3"):
            self.write("temp", value)
        with capturedLogs() as events:
            link = self.start(batch_records=1)
            self.pass_time(20)
            self.write("temp", "4")
            self.pass_time(5)
        self.assertEqual(self.server.sequence("temp"), ["1", "2", "3", "4"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("refused-by-cloud", 1, 2, 2)])
        self.assertEqual(self.stream.acked["cloud"], 5)
        self.assertIn("link cloud: seq 2 on temp refused by the cloud: HTTP 400: refused value; counted as lost"
                      " (refused-by-cloud)", [formatEvent(e) for e in events])
        self.assertEqual((link.snapshot().acked, link.snapshot().backlog), (4, 0))
        self.assertEqual(self.statuses[-1], (True, ""))

    def test_a_full_json_batch_refused_whole_is_decided_by_its_probe(self) -> None:
        """batch_records 2, json: a batch of two records each too large alone (413) cannot
        grow; the next two are its probe: taken, both are counted as lost (over-cloud-limit)."""
        taken: list[str] = []

        class Limited(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                payloads = [r["payload"] for r in json.loads(request.content.read())["records"]]
                if any(len(p) > 100 for p in payloads):
                    request.setResponseCode(413)
                    return b""
                taken.extend(payloads)
                return b""

        self.treq = StubTreq(Limited())
        for value in ("x" * 200, "y" * 200, "1", "2", "3"):
            self.write("up/a", value)
        self.start(mode="json", url="https://ingest.example/v1", batch_records=2)
        self.pass_time(30)
        self.assertEqual(taken, ["1", "2", "3"])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("over-cloud-limit", 2, 1, 2)])
        self.assertEqual(self.stream.acked["cloud"], 5)

    def test_a_cloud_refusing_everything_drops_nothing_with_one_record_batches(self) -> None:
        """batch_records 1, a product with none of the aliases (404 for every record): the probe
        is refused too, so nothing is counted as lost or acknowledged, the link is down with the
        refusal, holds no more than the batch and its probe, and sends them again after backing
        off; once the platform takes them, every value arrives in order."""
        self.server.aliases = set()
        for i in range(4):
            self.write("temp", str(i))
        link = self.start(batch_records=1)
        self.pass_time(60)
        self.assertEqual(self.stream.noted, [])
        self.assertEqual(self.stream.acked.get("cloud", 0), 0)
        self.assertEqual(link.cause, "HTTP 404: unknown alias")
        self.assertEqual(self.statuses[-1], (False, "HTTP 404: unknown alias"))
        self.assertLessEqual(link.pending, 2)
        self.server.aliases = None
        self.pass_time(30)
        self.assertEqual(self.server.sequence("temp"), ["0", "1", "2", "3"])
        self.assertEqual(self.stream.noted, [])
        self.assertEqual(self.stream.acked["cloud"], 4)


class JSONRefusalTests(HTTPLinkCase):
    """JSON mode: a batch refused for one record is split; the URL's own refusals drop nothing."""

    def collector(self, bad: dict[str, int]) -> list[list[str]]:
        """Serve ``self.treq``: a batch holding a payload of ``bad`` is refused whole with its status."""
        taken: list[list[str]] = []

        class Collector(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                payloads = [r["payload"] for r in json.loads(request.content.read())["records"]]
                statuses = [bad[p] for p in payloads if p in bad]
                if statuses:
                    request.setResponseCode(statuses[0])
                    return b'{"error": "invalid record"}'
                taken.append(payloads)
                return b""

        self.treq = StubTreq(Collector())
        return taken

    def test_a_batch_refused_for_one_record_loses_only_it(self) -> None:
        """A batch refused (422) because of one of its records was sent again for ever; it is
        split until the record goes alone: it is counted as lost, the others arrive in order."""
        taken = self.collector({"bad": 422})
        for i in range(10):
            self.write("up/a", "bad" if i == 3 else str(i))
        self.start(mode="json", url="https://ingest.example/v1")
        self.pass_time(30)
        self.assertEqual([p for batch in taken for p in batch], [str(i) for i in range(10) if i != 3])
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("refused-by-cloud", 1, 4, 4)])
        self.assertEqual(self.stream.acked["cloud"], 10)

    def test_a_batch_over_the_body_limit_is_split(self) -> None:
        """413 for a batch: sent in smaller parts, nothing lost, unless one record alone is too large."""
        taken: list[int] = []

        class Limited(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                body = request.content.read()
                if len(body) > 400:
                    request.setResponseCode(413)
                    return b""
                taken.extend(r["seq"] for r in json.loads(body)["records"])
                return b""

        self.treq = StubTreq(Limited())
        for i in range(10):
            self.write("up/a", f"{i:020d}")
        self.write("up/a", "z" * 500)
        self.start(mode="json", url="https://ingest.example/v1")
        self.pass_time(40)
        self.assertEqual(taken, list(range(1, 11)))
        self.assertEqual([n[:2] + n[3:5] for n in self.stream.noted], [("over-cloud-limit", 1, 11, 11)])

    def test_refusals_of_the_url_itself_drop_nothing(self) -> None:
        """404, 405, 414, 415 to a JSON link's fixed URL and content type, 401 and 403 say the
        URL, its format or the credentials are wrong, for every batch alike: retried with
        backoff, nothing counted as lost."""
        for status in (404, 405, 414, 415, 401, 403):
            refuser = Answering(self.clock, status, b"no")
            self.treq = StubTreq(refuser)
            self.write("up/a", str(status))
            link = self.start(mode="json", url="https://ingest.example/v1")
            self.pass_time(30)
            self.assertEqual(self.stream.noted, [], status)
            self.assertEqual(self.stream.acked.get("cloud", 0), 0, status)
            self.assertEqual(link.cause, f"HTTP {status}: no")
            self.assert_backed_off(refuser.times)
            self.successResultOf(link.stop())
