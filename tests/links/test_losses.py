"""Loss reports get through a full stream: the link queues them in the stream's reserve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.errors import StreamFullError
from gateway.journal.losses import LossEntry, LossLedger, LossReason, LossReport
from gateway.journal.record import Record
from gateway.journal.settings import StreamSettings
from gateway.links.losses import LOSS_CHECK_INTERVAL, LossReporter
from gateway.links.mqtt import MQTTLink
from gateway.links.settings import LinkSettings, RouteSettings
from tests.journal.helpers import appended, open_stream, read_all
from tests.journal.powercut import PowerCutFiles
from tests.links.test_protocol import Wire


class Connection(Wire):
    """What :meth:`MQTTLink.connected` needs of a connection besides publishing."""

    transport = None  # (no TLS: no peer certificate)

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        pass


class FullStreamTests(SynchronousTestCase):
    """reject-new, the stream at max_bytes, the link connects."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.files = PowerCutFiles()
        self.stream_settings = StreamSettings(max_bytes=64 * 1024, segment_bytes=16 * 1024, overflow="reject-new")
        self.stream = open_stream(self.files, self.stream_settings, self.clock)
        self.successResultOf(self.stream.cursor("cloud"))
        refused: list[Any] = []
        for i in range(10_000):  # fill it; a client then retries its refused message twice
            d = appended(self.stream, Record("telemetry/x", b"%06d" % i + b"." * 100, 1, received=900.0))
            d.addErrback(lambda f: refused.append(f.trap(StreamFullError)))
            if len(refused) == 3:
                break
        self.assertEqual(self.stream.loss_report().totals, {"rejected": 3})
        self.link = self.make_link(self.stream)

    def make_link(self, stream: Any) -> MQTTLink:
        """The link ``cloud`` on ``stream``, reporting losses on ``losses/gw``."""
        settings = LinkSettings(loss_topic="losses/{device}", routes=(RouteSettings("telemetry/#", "up/{#}"),),
                                downlink=())
        return MQTTLink("cloud", settings, stream, self.clock, ("t", "gw"),
                        lambda *a: None, lambda *a: None)  # type: ignore[arg-type,return-value]

    def test_report_queued_at_connect_goes_beside_the_backlog(self) -> None:
        """The report made at connect is queued despite the full stream, is not one more
        rejection, and goes up beside the backlog (not after it) without errors logged."""
        wire = Connection()
        self.link.connected(wire, False)  # type: ignore[arg-type]
        self.clock.advance(0)  # (the report's write)
        self.assertEqual(len(wire.sent), 64)  # the window, all backlog
        self.link.pubacks([wire.sent[0][3]])
        topic, payload = wire.sent[64][:2]
        self.assertEqual(topic, "losses/gw")
        report = json.loads(payload)
        self.assertEqual((report["link"], report["totals"]), ("cloud", {"rejected": 3}))
        self.assertEqual(self.stream.loss_report().totals, {"rejected": 3})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_report_is_not_queued_again_after_a_restart(self) -> None:
        """links.md: the report is queued when it has changed. After a crash (the stream
        reopened from what was fsynced, a new link) the same report is not queued again at
        connect; a loss after the restart is reported."""
        self.link.connected(Connection(), False)  # type: ignore[arg-type]
        self.clock.advance(0)
        stream = open_stream(self.files, self.stream_settings, self.clock)
        link = self.make_link(stream)
        link.connected(Connection(), False)  # type: ignore[arg-type]
        self.clock.advance(0)

        def reports() -> list[dict[str, Any]]:
            return [json.loads(r.payload) for r in read_all(stream, "probe") if r.topic == "losses/gw"]

        self.assertEqual([r["totals"] for r in reports()], [{"rejected": 3}])
        self.failureResultOf(appended(stream, Record("telemetry/x", b"z" * 100, 1)), StreamFullError)
        link.check_losses()
        self.clock.advance(0)
        self.assertEqual([r["totals"] for r in reports()], [{"rejected": 4}])

    def test_each_report_is_the_whole_ledger(self) -> None:
        """links.md: a report is not what changed since the last one but every loss the
        stream's ledger holds (the links never clear it), so a receiver keeps the latest
        report instead of adding reports up."""
        self.link.connected(Connection(), False)  # type: ignore[arg-type]
        self.clock.advance(0)
        self.stream.note_loss("max-age", 2, 200, 1, 2, 900.0, 900.0)
        self.clock.advance(0)
        self.link.check_losses()
        self.clock.advance(0)
        reports = [json.loads(r.payload) for r in read_all(self.stream, "probe") if r.topic == "losses/gw"]
        self.assertEqual([(r["totals"], [e["reason"] for e in r["entries"]]) for r in reports],
                         [({"rejected": 3}, ["rejected"]),
                          ({"rejected": 3, "max-age": 2}, ["rejected", "max-age"])])

    def test_no_report_while_disconnected(self) -> None:
        """The periodic check does nothing while the link is down (the next connect reports)."""
        before = self.stream.next_seq
        self.link.check_losses()
        self.assertEqual(self.stream.next_seq, before)

    def test_reserve_is_bounded(self) -> None:
        """Reserved appends are refused too once the reserve is used up, without counting as
        rejected; an ordinary append still is."""
        big = Record("losses/gw", b"r" * 100_000, 1)
        outcomes: list[Any] = []
        for _ in range(4):
            d = self.stream.append(big, reserved=True)
            self.clock.advance(0)
            d.addBoth(outcomes.append)
        self.assertEqual([isinstance(o, int) for o in outcomes], [True, True, False, False])
        self.assertEqual(self.stream.loss_report().totals, {"rejected": 3})
        self.failureResultOf(appended(self.stream, Record("telemetry/x", b"y", 1)), StreamFullError)
        self.assertEqual(self.stream.loss_report().totals, {"rejected": 4})


class LedgerStream:
    """What :class:`LossReporter` needs of a link's stream: a loss report of ``count`` entries
    (alternating reasons, all fields of realistic width) and the records appended."""

    def __init__(self, count: int) -> None:
        reasons: list[LossReason] = ["max-bytes", "rejected"]
        self.report = LossLedger([LossEntry(reasons[i % 2], 1_000 + i, 160_000 + i, 10_000_000 + i, 10_000_900 + i,
                                            1_700_000_000.123 + i, 1_700_000_100.456 + i, 1_700_000_200.789 + i)
                                  for i in range(count)]).report("link-cloud")
        self.losses_reported: str | None = None
        self.appended: list[Record] = []

    def loss_report(self) -> LossReport:
        return self.report

    def mark_losses_reported(self, key: str | None) -> None:
        self.losses_reported = key

    def append(self, record: Record, reserved: bool = False) -> Any:
        self.appended.append(record)
        return succeed(len(self.appended))


class ReportSizeTests(SynchronousTestCase):
    """A report fits one cloud message: its entries are the newest that fit 64 KiB of JSON."""

    def report_of(self, count: int) -> tuple[dict[str, Any], int]:
        stream = LedgerStream(count)
        reporter = LossReporter("cloud", "losses/{device}", stream, ("t", "gw"),  # type: ignore[arg-type]
                                Clock(), lambda record: None)
        reporter.check()
        (record,) = stream.appended
        return json.loads(record.payload), len(record.payload)

    def test_a_full_ledger_sends_its_newest_entries_and_counts_the_others(self) -> None:
        """links.md: a full ledger (1,000 entries, about 190 KB as JSON, over AWS IoT's 128 KB
        for one message, which would refuse it and get it again for ever) is sent as its newest
        entries within 64 KiB, ``omitted`` saying how many older ones are left out; ``totals``
        still counts every entry."""
        report, size = self.report_of(1000)
        self.assertLess(size, 64 * 1024 + 1024)
        kept = len(report["entries"])
        self.assertEqual(report["omitted"], 1000 - kept)
        self.assertGreater(kept, 200)
        self.assertEqual([e["records"] for e in report["entries"]], list(range(2000 - kept, 2000)))
        self.assertEqual(report["totals"], {"max-bytes": sum(range(1000, 2000, 2)),
                                            "rejected": sum(range(1001, 2000, 2))})

    def test_a_small_ledger_is_sent_whole_without_omitted(self) -> None:
        """Entries that fit are all sent, and the report has no ``omitted`` key."""
        report, _ = self.report_of(10)
        self.assertEqual(len(report["entries"]), 10)
        self.assertNotIn("omitted", report)


class RefusingLedgerStream(LedgerStream):
    """A stream whose appends, reserved ones too, are refused while ``full`` (a disk below
    ``min_free_bytes`` by more than the reserve's half of it)."""

    full = True

    def append(self, record: Record, reserved: bool = False) -> Any:
        if self.full:
            return fail(StreamFullError("link-cloud", "min-free-disk"))
        return super().append(record, reserved)


class RefusedReportTests(SynchronousTestCase):
    """links.md (Loss reports): a report the stream refuses even from its reserve is logged at
    once, then at most once every 10 minutes while the checks (every 30 s) go on failing."""

    def test_a_refused_report_is_logged_at_most_once_every_10_minutes(self) -> None:
        """A disk that stays full logs 2 lines in 10 minutes of checks (it logged 21), the
        second counting the refusals since the first; once a report is queued, the next
        refusal is logged at once."""
        clock = Clock()
        stream = RefusingLedgerStream(3)
        reporter = LossReporter("cloud", "losses/{device}", stream, ("t", "gw"),  # type: ignore[arg-type]
                                clock, lambda record: None)

        def lines_of_checks(count: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(count):
                    reporter.check()
                    clock.advance(LOSS_CHECK_INTERVAL)
            return [formatEvent(e) for e in events if "loss report" in formatEvent(e)]

        lines = lines_of_checks(21)
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0], "link cloud: the journal loss report could not be queued (journal stream"
                         " 'link-cloud' is full (min-free-disk); append rejected): the next check tries again"
                         " (logged at most once every 10 minutes"
                         " until one is)")
        told = lines[0].replace("(logged", "(20 not published since the last such line; logged")
        self.assertEqual(lines[1], told)
        page = " ".join((Path(__file__).resolve().parents[2] / "docs" / "links.md").read_text().split())
        self.assertTrue(f"`{told}`" in page, "links.md (Loss reports) does not quote the line")
        stream.full = False
        self.assertEqual(lines_of_checks(1), [])
        self.assertEqual(len(stream.appended), 1)
        stream.full = True
        stream.report = LossLedger([LossEntry("rejected", 9, 9, 0, 0, 0.0, 0.0, 0.0)]).report("link-cloud")
        self.assertEqual(len(lines_of_checks(1)), 1)
