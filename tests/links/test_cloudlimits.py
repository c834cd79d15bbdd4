"""A message the cloud would refuse (and close the connection for) is skipped, counted and logged, not
sent again and again: links.md "Messages over the cloud's limits"."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.losses import LossEntry, LossReport
from gateway.journal.record import Record, encode
from gateway.links.aws_settings import AWSSettings
from gateway.links.cloudlimits import AWS_MAX_PAYLOAD, CloudLimits, aws_topic_problem, publish_size
from gateway.links.forwarder import CURSOR_ACK_INTERVAL, OVER_LIMIT_LOG_INTERVAL, Forwarder
from gateway.links.losses import LossReporter
from gateway.links.settings import LinkSettings
from gateway.mqtt import packets
from tests.journal.helpers import appended, open_stream
from tests.journal.powercut import PowerCutFiles
from tests.links.memory import MemoryStream
from tests.links.test_protocol import Wire

SMALL, BIG = b"s" * 10, b"B" * 101
LIMITS = CloudLimits(max_payload=100)


def stream_of(*payloads: bytes, qos: int = 1, topic: str = "t") -> MemoryStream:
    """A stream holding one record per payload (seqs from 1), with the cursor ``cloud``."""
    stream = MemoryStream()
    stream.cursor("cloud")
    for i, payload in enumerate(payloads):
        stream.append(Record(topic, payload, qos, received=float(i)))
    return stream


def warnings(logs: list[dict[str, object]]) -> list[str]:
    """The warning lines among ``logs``."""
    return [formatEvent(e) for e in logs if e["log_level"] == LogLevel.warn]


class AWSTopicRuleTests(SynchronousTestCase):
    """AWS IoT Core's topic rules, as its quotas page and its device SDKs state them."""

    def test_slashes(self) -> None:
        """7 slashes are taken, 8 are not."""
        self.assertIsNone(aws_topic_problem("a/b/c/d/e/f/g/h"))
        self.assertEqual(aws_topic_problem("a/b/c/d/e/f/g/h/i"), "its topic has 8 slashes, AWS IoT Core takes 7 at most")

    def test_length_in_utf8_bytes(self) -> None:
        """256 bytes of UTF-8 are taken, 257 are not: 128 two-byte characters are 256 bytes."""
        self.assertIsNone(aws_topic_problem("é" * 128))
        self.assertEqual(aws_topic_problem("é" * 128 + "x"), "its topic is 257 bytes long, AWS IoT Core takes 256 at most")

    def test_basic_ingest_prefix_is_not_counted(self) -> None:
        """``$aws/rules/<rule>/`` counts neither its slashes nor its bytes."""
        self.assertIsNone(aws_topic_problem("$aws/rules/" + "r" * 100 + "/a/b/c/d/e/f/g/" + "x" * 240))
        self.assertIsNotNone(aws_topic_problem("$aws/rules/r/a/b/c/d/e/f/g/h/i"))

    def test_shadow_topics_are_taken(self) -> None:
        """The twin sync's requests, with AWS's longest thing and shadow names, are taken."""
        thing, shadow = "t" * 128, "s" * 64
        for action in ("update", "get", "delete"):
            self.assertIsNone(aws_topic_problem(f"$aws/things/{thing}/shadow/name/{shadow}/{action}"))
            self.assertIsNone(aws_topic_problem(f"$aws/things/{thing}/shadow/{action}"))

    def test_publish_size_is_the_encoded_packet(self) -> None:
        """publish_size counts what the codec writes, across the remaining length's sizes."""
        for payload in (0, 100, 127 - 7, 128, 16383, 16384, 2097152):
            for qos in (0, 1):
                encoded = packets.publish("tö/x", b"x" * payload, qos, False, 1 if qos else 0)
                self.assertEqual(publish_size(len("tö/x".encode()), payload, qos), len(encoded))


class SkipTests(SynchronousTestCase):
    """The forwarder skips a record over its link's limits: done for the cursor, a loss in the
    ledger, a warning; the records around it go in order."""

    def test_big_record_between_small_ones_qos1(self) -> None:
        """small, big, small: the cloud gets both small ones, in order; once they are
        acknowledged the cursor is past all three; the big one is an over-cloud-limit loss
        of its seq and frame size; one warning names the link, the seq, the topic and the limit."""
        stream = stream_of(SMALL, BIG, SMALL + b"2", topic="telemetry/room1")
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 8, clock, limits=LIMITS, link="up")
        wire = Wire()
        with capturedLogs() as logs:
            forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual([s[1] for s in wire.sent], [SMALL, SMALL + b"2"])
        forwarder.pubacks([s[3] for s in wire.sent])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual(stream.acked["cloud"], 3)
        frame = len(encode(stream.records[1], 2))
        self.assertEqual(stream.noted, [("over-cloud-limit", 1, frame, 2, 2, 1.0, 1.0)])
        self.assertEqual(warnings(logs), [
            "link up: seq 2 on telemetry/room1 not sent, the cloud would refuse it: its payload is 101 bytes,"
            " the cloud takes 100 (max_message_bytes); counted as lost (over-cloud-limit)"])

    def test_big_record_between_small_ones_qos0(self) -> None:
        """The same at QoS 0: the small ones are sent (done once sent), the big one skipped."""
        stream = stream_of(SMALL, BIG, SMALL + b"2", qos=0)
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 8, clock, limits=LIMITS)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual([(s[1], s[2]) for s in wire.sent], [(SMALL, 0), (SMALL + b"2", 0)])
        self.assertEqual(stream.acked["cloud"], 3)
        self.assertEqual([n[:2] + n[3:5] for n in stream.noted], [("over-cloud-limit", 1, 2, 2)])

    def test_at_the_limit_is_sent(self) -> None:
        """A payload of exactly the limit goes."""
        stream = stream_of(b"x" * 100)
        forwarder = Forwarder(stream, "cloud", 8, Clock(), limits=LIMITS)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 1)
        self.assertEqual(stream.noted, [])

    def test_consecutive_skips_are_one_entry_and_the_window_is_not_used(self) -> None:
        """A run of big records is one ledger entry; they take no room in the window, so the
        small records after them go at once."""
        stream = stream_of(SMALL, *[BIG] * 5, *[SMALL] * 3)
        forwarder = Forwarder(stream, "cloud", 2, Clock(), limits=LIMITS)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 2)
        forwarder.pubacks([s[3] for s in wire.sent])
        self.assertEqual(len(wire.sent), 4)
        self.assertEqual([n[:2] + n[3:5] for n in stream.noted], [("over-cloud-limit", 5, 2, 6)])

    def test_live_record_over_the_limit(self) -> None:
        """A live record offered beside a backlog is checked too, and not sent again when
        the cursor reaches it."""
        stream = stream_of(*[SMALL] * 10)
        clock = Clock()
        clock.advance(100)
        forwarder = Forwarder(stream, "cloud", 2, clock, limits=LIMITS)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        seq = self.successResultOf(stream.append(Record("t", BIG, 1, received=clock.seconds())))
        forwarder.offer(stream.records[seq - 1])
        for _ in range(10):
            forwarder.pubacks([s[3] for s in wire.sent])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual([s[1] for s in wire.sent], [SMALL] * 10)
        self.assertEqual([n[:2] + n[3:5] for n in stream.noted], [("over-cloud-limit", 1, 11, 11)])
        self.assertEqual(stream.acked["cloud"], 11)

    def test_warnings_at_most_every_10_seconds_with_a_count(self) -> None:
        """Big records keep coming: the first is logged, the next ones within 10 s are counted
        and told by the next line."""
        stream = stream_of(BIG)
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 8, clock, limits=LIMITS, link="up")
        wire = Wire()
        with capturedLogs() as logs:
            forwarder.attach(wire)  # type: ignore[arg-type]
            for _ in range(3):
                clock.advance(1)
                stream.append(Record("t", BIG, 1))
                clock.advance(0)  # (the forwarder reads what the stream woke it for)
            clock.advance(OVER_LIMIT_LOG_INTERVAL)
            stream.append(Record("t", BIG, 1))
            clock.advance(0)
        lines = warnings(logs)
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[0].startswith("link up: seq 1 on t not sent"))
        self.assertTrue(lines[1].startswith("link up: seq 5 on t not sent"))
        self.assertTrue(lines[1].endswith("(over-cloud-limit) (and 3 more since the last such line)"), lines[1])
        self.assertEqual(len(stream.noted), 5)

    def test_a_lines_count_tells_the_batch_from_those_since_the_last_line(self) -> None:
        """docs/links.md: big records read together, the first line names the first of them and
        counts the others as after it, none since a line before it (it said ``(and 1 more since
        the last such line)`` with no line before); the next line, past 10 s, counts those noted
        since the last line apart from those read with the one it names."""
        stream = stream_of(BIG, BIG)
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 8, clock, limits=LIMITS, link="up")
        with capturedLogs() as logs:
            forwarder.attach(Wire())  # type: ignore[arg-type]
            clock.advance(1)
            stream.append(Record("t", BIG, 1))
            clock.advance(0)  # (read alone, within 10 s of the line: counted by the next one)
            clock.advance(OVER_LIMIT_LOG_INTERVAL)
            stream.append(Record("t", BIG, 1))
            stream.append(Record("t", BIG, 1))
            clock.advance(0)
        lines = warnings(logs)
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith("link up: seq 1 on t not sent"), lines[0])
        self.assertTrue(lines[0].endswith("(over-cloud-limit) (and 1 more after it)"), lines[0])
        self.assertTrue(lines[1].startswith("link up: seq 4 on t not sent"), lines[1])
        self.assertTrue(lines[1].endswith("(over-cloud-limit) (and 1 more since the last such line, and 1 more"
                                          " after it)"), lines[1])
        self.assertEqual(len(stream.noted), 3)

    def test_long_topic_is_shortened_in_the_log(self) -> None:
        """The warning shows a long topic as other log lines do: its start and its length."""
        topic = "t/" + "x" * 300
        stream = stream_of(BIG, topic=topic)
        with capturedLogs() as logs:
            Forwarder(stream, "cloud", 8, Clock(), limits=LIMITS).attach(Wire())  # type: ignore[arg-type]
        self.assertIn(f"on {topic[:200]}... (302 bytes) not sent", warnings(logs)[0])

    def test_no_limits_sends_everything(self) -> None:
        """Without limits (a generic link's default) nothing is skipped."""
        stream = stream_of(SMALL, b"B" * 1_000_000)
        forwarder = Forwarder(stream, "cloud", 8, Clock())
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 2)

    def test_packet_limit_counts_the_whole_publish(self) -> None:
        """max_publish_bytes: a PUBLISH of exactly the limit goes, one byte more does not;
        the topic counts, and QoS 1's packet id."""
        limit = publish_size(len("a/b"), 50, 1)
        stream = stream_of(b"x" * 50, b"x" * 51, topic="a/b")
        stream.append(Record("a/b", b"x" * 51, 0))  # (QoS 0: no packet id, 2 bytes less)
        stream.append(Record("a/bc", b"x" * 50, 1))
        forwarder = Forwarder(stream, "cloud", 8, Clock(), limits=CloudLimits(max_packet=limit))
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual([(s[0], len(s[1])) for s in wire.sent], [("a/b", 50), ("a/b", 51)])
        self.assertEqual([n[3] for n in stream.noted], [2, 4])

    def test_the_topic_cache_is_bounded(self) -> None:
        """Under a limit that looks at the topic, each new topic's part is cached,
        TOPIC_CACHE_SIZE topics at most: the cache then starts again empty (readside.md: a link's
        ``topic_cache``); without such a limit nothing is cached."""
        from gateway.links.forwarder import TOPIC_CACHE_SIZE
        stream = MemoryStream()
        stream.cursor("cloud")
        for n in range(TOPIC_CACHE_SIZE + 4):
            stream.append(Record(f"t/{n}", b"x", 0))
        forwarder = Forwarder(stream, "cloud", 8, Clock(), limits=CloudLimits(max_packet=1000))
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), TOPIC_CACHE_SIZE + 4)
        self.assertEqual(forwarder.topics_cached, 4)
        self.assertEqual(Forwarder(stream_of(b"x"), "cloud", 8, Clock()).topics_cached, 0)

    def test_aws_topics(self) -> None:
        """An aws link's limits: a topic with 8 slashes is skipped, a shadow topic goes, a
        payload over 128 KiB is skipped."""
        limits = LinkSettings(aws=AWSSettings()).cloud_limits()
        stream = MemoryStream()
        stream.cursor("cloud")
        for topic, size in (("a/b/c/d/e/f/g/h/i", 1), ("$aws/things/gw/shadow/name/s/update", 1),
                            ("t", AWS_MAX_PAYLOAD), ("t", AWS_MAX_PAYLOAD + 1), ("a/b/c/d/e/f/g/h/i", 1)):
            stream.append(Record(topic, b"x" * size, 1))
        forwarder = Forwarder(stream, "cloud", 8, Clock(), limits=limits)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual([s[0] for s in wire.sent], ["$aws/things/gw/shadow/name/s/update", "t"])
        self.assertEqual([(n[3], n[4]) for n in stream.noted], [(1, 1), (4, 5)])


class StallWarningTests(SynchronousTestCase):
    """Without limits set, a cloud closing the connection on one message is told in the log:
    the same record oldest in flight at the end of 3 connections in a row (then 30, 300...)."""

    def cycle(self, forwarder: Forwarder, connections: int) -> Wire:
        """``connections`` connections that end before any PUBACK; the last one's wire."""
        wire = Wire()
        for _ in range(connections):
            wire = Wire()
            forwarder.attach(wire)  # type: ignore[arg-type]
            forwarder.detach()
        return wire

    def test_warned_at_the_third_connection_then_at_the_thirtieth(self) -> None:
        """BIG first: 2 connections say nothing, the 3rd warns naming its seq, topic and size
        and the settings; the next one at 30; nothing is dropped (it is sent each time)."""
        forwarder = Forwarder(stream_of(BIG, SMALL, topic="telemetry/room1"), "cloud", 8, Clock(), link="up")
        with capturedLogs() as logs:
            self.cycle(forwarder, 2)
            self.assertEqual(warnings(logs), [])
            wire = self.cycle(forwarder, 1)
        self.assertEqual(warnings(logs), [
            "link up: 3 connections in a row ended with seq 1 on telemetry/room1 (101 bytes of payload) sent and"
            " not acknowledged: if the cloud closes the connection on it (a message over its size or topic limits),"
            " set max_message_bytes or max_publish_bytes to its limits so that the link skips such messages"
            " (links.md)"])
        self.assertEqual([s[1] for s in wire.sent], [BIG, SMALL])  # still sent, first
        with capturedLogs() as logs:
            self.cycle(forwarder, 26)
            self.assertEqual(warnings(logs), [])
            self.cycle(forwarder, 1)
        self.assertEqual(len(warnings(logs)), 1)
        self.assertIn("30 connections in a row", warnings(logs)[0])

    def test_progress_between_connections_says_nothing(self) -> None:
        """Each connection gets the oldest record acknowledged before it ends (a flaky network,
        not a refused message): no warning however many connections end."""
        forwarder = Forwarder(stream_of(*[SMALL] * 10), "cloud", 1, Clock(), link="up")
        with capturedLogs() as logs:
            for _ in range(9):
                wire = Wire()
                forwarder.attach(wire)  # type: ignore[arg-type]
                forwarder.pubacks([wire.sent[-1][3]])
                forwarder.detach()
        self.assertEqual(warnings(logs), [])

    def test_a_link_stopping_is_no_stall(self) -> None:
        """The link's service stopping ends the connection too: not counted."""
        forwarder = Forwarder(stream_of(BIG), "cloud", 8, Clock(), link="up")
        with capturedLogs() as logs:
            self.cycle(forwarder, 2)
            forwarder.attach(Wire())  # type: ignore[arg-type]
            forwarder.stop()
        self.assertEqual(warnings(logs), [])


class RestartTests(SynchronousTestCase):
    """With the real journal: the skip survives a restart, and the loss shows where losses show."""

    def test_not_sent_after_a_restart_and_in_the_ledger(self) -> None:
        """Records already in the stream before the limit was set are checked when sent; after a
        crash the skipped record is not sent again; the loss is in the loss report (also after
        the restart) and in the stream's snapshot by reason."""
        files, clock = PowerCutFiles(), Clock()
        clock.advance(100)
        stream = open_stream(files, clock=clock)
        self.successResultOf(stream.cursor("cloud"))
        for payload in (SMALL, BIG, SMALL):
            appended(stream, Record("t", payload, 1, received=50.0))
        forwarder = Forwarder(stream, "cloud", 8, clock, limits=LIMITS)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        forwarder.pubacks([s[3] for s in wire.sent])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual([c.reason for c in stream.snapshot().losses], ["over-cloud-limit"])
        forwarder.detach()  # SIGKILL

        stream = open_stream(files, clock=clock)
        again = Forwarder(stream, "cloud", 8, clock, limits=LIMITS)
        wire = Wire()
        again.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(wire.sent, [])
        report = stream.loss_report()
        self.assertEqual(report.totals, {"over-cloud-limit": 1})
        self.assertEqual((report.entries[0].first_seq, report.entries[0].last_seq), (2, 2))


    def test_a_crash_before_the_cursor_s_save_counts_it_once(self) -> None:
        """The skip's ledger entry is written and the gateway dies before the cursor's save
        (saves wait up to 50 ms; one that only skipped waits for the record before it): the
        restarted link skips the record again, and it is still one loss. It was two."""
        files, clock = PowerCutFiles(), Clock()
        stream = open_stream(files, clock=clock)
        self.successResultOf(stream.cursor("cloud"))
        for payload in (SMALL, BIG, SMALL):
            appended(stream, Record("t", payload, 1, received=50.0))
        forwarder = Forwarder(stream, "cloud", 8, clock, limits=LIMITS)
        forwarder.attach(Wire())  # type: ignore[arg-type]
        clock.advance(0)  # the ledger is written; no PUBACK comes, the cursor stays at 0
        forwarder.detach()  # SIGKILL
        files.cut()

        stream = open_stream(files, clock=clock)
        self.assertEqual(stream.reader.cursors["cloud"].acked, 0)
        again = Forwarder(stream, "cloud", 8, clock, limits=LIMITS)
        wire = Wire()
        again.attach(wire)  # type: ignore[arg-type]
        self.assertEqual([s[1] for s in wire.sent], [SMALL, SMALL])
        again.pubacks([s[3] for s in wire.sent])
        clock.advance(CURSOR_ACK_INTERVAL)
        self.assertEqual(stream.reader.cursors["cloud"].acked, 3)
        self.assertEqual(stream.loss_report().totals, {"over-cloud-limit": 1})
        self.assertEqual(stream.stats().drops, {})


class LossReportFitsTests(SynchronousTestCase):
    """A loss report is cut to what the cloud takes, so the report itself is never skipped."""

    def entries(self, count: int) -> LossReport:
        """A report of ``count`` entries."""
        entries = tuple(LossEntry("over-cloud-limit", 1, 200, i, i, 1.0, 1.0, 2.0) for i in range(1, count + 1))
        return LossReport("link-cloud", entries, {"over-cloud-limit": count})

    def reporter(self, stream: MemoryStream, limits: CloudLimits) -> LossReporter:
        """A reporter on ``losses/gw`` with ``limits``."""
        return LossReporter("cloud", "losses/{device}", stream, ("t", "gw"), Clock(), lambda r: None, limits)

    def test_entries_cut_to_the_payload_limit(self) -> None:
        """With a 2000-byte payload limit, the newest entries that fit go, the rest are omitted."""
        stream = MemoryStream()
        stream.losses = self.entries(100)
        self.reporter(stream, CloudLimits(max_payload=2000)).check()
        payload = stream.records[0].payload
        self.assertLessEqual(len(payload), 2000)
        report = json.loads(payload)
        self.assertGreater(report["omitted"], 80)
        self.assertEqual(report["entries"][-1]["first_seq"], 100)
        self.assertEqual(len(report["entries"]) + report["omitted"], 100)

    def test_entries_cut_to_the_packet_limit(self) -> None:
        """The same with a packet limit: the whole PUBLISH fits."""
        stream = MemoryStream()
        stream.losses = self.entries(100)
        self.reporter(stream, CloudLimits(max_packet=2000)).check()
        record = stream.records[0]
        self.assertLessEqual(publish_size(len(record.topic), len(record.payload), 1), 2000)

    def test_a_report_that_cannot_fit_is_not_queued(self) -> None:
        """A limit too small even for a report without entries: nothing is queued (it would be
        skipped, a new loss, a new report, for ever); an error says why, once."""
        stream = MemoryStream()
        stream.losses = self.entries(3)
        reporter = self.reporter(stream, CloudLimits(max_payload=50))
        with capturedLogs() as logs:
            reporter.check()
            reporter.check()
        self.assertEqual(stream.records, [])
        errors = [formatEvent(e) for e in logs if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("link cloud: the journal loss report is not sent on losses/gw, the cloud would refuse it even"
                      " without its entries: its payload is", errors[0])


class SettingsTests(SynchronousTestCase):
    """The settings' limits and the config check."""

    def problems(self, settings: LinkSettings) -> list[tuple[tuple[str, ...], str]]:
        """The settings' problems, but the endpoint's (none here)."""
        return [p for p in settings.config_problems() if p[0] != ("endpoint",)]

    def test_defaults(self) -> None:
        """A generic link has no limit; an aws link AWS IoT Core's payload limit and topic rules."""
        self.assertEqual(LinkSettings().cloud_limits(), CloudLimits(0, 0, False))
        self.assertEqual(LinkSettings(aws=AWSSettings()).cloud_limits(), CloudLimits(AWS_MAX_PAYLOAD, 0, True))
        self.assertEqual(LinkSettings(max_message_bytes=1000, max_publish_bytes=2000).cloud_limits(),
                         CloudLimits(1000, 2000, False))
        self.assertEqual(LinkSettings(max_message_bytes=0).cloud_limits(), CloudLimits(0, 0, False))
        self.assertEqual(LinkSettings(aws=AWSSettings(), max_message_bytes=4096).cloud_limits(),
                         CloudLimits(4096, 0, True))

    def test_aws_payload_limit_beyond_aws_is_refused(self) -> None:
        """On an aws link, 0 (no limit) and more than 131072 are refused: AWS closes the connection."""
        for value in (0, AWS_MAX_PAYLOAD + 1):
            self.assertEqual(self.problems(LinkSettings(aws=AWSSettings(), max_message_bytes=value)), [
                (("max_message_bytes",), "AWS IoT Core takes 131072 bytes of payload at most, a quota it does not"
                                         " raise: give 1 to 131072, or leave it unset for 131072")])

    def test_packet_limit_too_small(self) -> None:
        """A packet limit no PUBLISH fits is refused."""
        self.assertEqual(self.problems(LinkSettings(max_publish_bytes=4)), [
            (("max_publish_bytes",), "no PUBLISH is that small (one takes 5 bytes or more): 0 for no limit")])
        self.assertEqual(self.problems(LinkSettings(max_publish_bytes=5)), [])

    def test_aws_loss_topic_aws_refuses(self) -> None:
        """An aws link's loss topic with more than 7 slashes is refused."""
        settings = LinkSettings(aws=AWSSettings(), loss_topic="a/b/c/d/e/f/g/{device}/losses")
        self.assertEqual(self.problems(settings), [
            (("loss_topic",), "AWS IoT Core would refuse every loss report: its topic has 8 slashes,"
                              " AWS IoT Core takes 7 at most")])
