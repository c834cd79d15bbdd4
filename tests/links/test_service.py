"""The links service with the real broker: durable acknowledgement, status, identity, downlink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred, fail, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.broker.durable_ack import DurableAckHandler
from gateway.broker.bus import BusMessage
from gateway.errors import BrokerError, JournalError
from gateway.links.router import Router, Rule
from gateway.journal.errors import JournalClosedError, StreamFullError
from gateway.journal.record import Record
from gateway.links.mqtt import FAILING_LOG_INTERVAL
from gateway.links.service import STOPPED, LinksService
from gateway.links.settings import KANTO_DOWNLINK, LinkSettings, LinksSettings, RouteSettings
from tests.links.memory import MemoryJournal
from tests.logevents import capture_log_events
from tests.broker.harness import port_of, start_broker
from tests.links.mosquitto import Mosquitto
from tests.ports import free_port
from tests.mqttclient import TestClient


def sleep(seconds: float) -> Any:
    return deferLater(reactor, seconds, lambda: None)


class RecordingBus:
    """A local bus that keeps what is published on it and takes every subscription."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, int, bool]] = []
        #: topic -> the link a retained message was published for (what :meth:`retained_link` says)
        self.retained_links: dict[str, str] = {}

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, link: str = "") -> Deferred[None]:
        """Record the message; it is taken at once."""
        self.published.append((topic, payload, qos, retain))
        if retain and payload and link:
            self.retained_links[topic] = link
        elif retain:
            self.retained_links.pop(topic, None)
        return succeed(None)

    def retained_link(self, topic: str) -> str:
        """The link whose retained message the topic holds, as the broker's bus says."""
        return self.retained_links.get(topic, "")

    def subscribe(self, topic_filter: str, callback: Any) -> Any:
        """Take the subscription; nothing is ever delivered to it."""
        return lambda: None


class ConnectionStatusTests(SynchronousTestCase):
    """``edge/connection/remote/status`` in the form Kanto's suite-connector publishes it."""

    def test_timestamp_is_whole_seconds(self) -> None:
        """Kanto's ``ConnectionStatus.Timestamp`` is an ``int64`` of Unix seconds, which a Go
        app cannot decode from a fraction: every status, with or without a link, carries whole
        seconds, in its top-level fields and per link."""
        clock = Clock()
        clock.advance(1795296878.969)
        bus = RecordingBus()
        links = LinksService(LinksSettings(), clock, bus, None)
        links.startService()
        links._link_status("cloud", True, "")
        statuses = [json.loads(payload) for topic, payload, _, _ in bus.published
                    if topic == "edge/connection/remote/status"]
        self.assertEqual([(type(s["timestamp"]), s["timestamp"]) for s in statuses], [(int, 1795296878)] * 2)
        self.assertEqual(statuses[-1]["links"]["cloud"]["timestamp"], 1795296878)


    def test_statuses_refused_are_logged_once_per_interval(self) -> None:
        """While the journal refuses every link status (a stream full for hours, a link whose
        cause changes at each attempt to connect) the first refusal is a line, then at most one
        every 10 minutes with their count, and the first after a status published again at
        once: each refused status was a line."""
        clock = Clock()
        bus = RecordingBus()
        refusing = [True]
        publish = bus.publish

        def refused(topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
            if refusing[0]:
                return fail(StreamFullError("link-cloud", "max-bytes"))
            return publish(topic, payload, qos, retain)

        self.patch(bus, "publish", refused)
        links = LinksService(LinksSettings(), clock, bus, None)
        events = capture_log_events(self)
        links.startService()
        for attempt in range(120):  # 20 minutes, an attempt every 10 s
            links._link_status("cloud", False, f"attempt {attempt % 2}")
            clock.advance(10)
        lines = [formatEvent(e) for e in events if "not published" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2, lines)  # the start's at 0 s, then at 600 s
        self.assertEqual(lines[1], "link status not published: journal stream 'link-cloud' is full (max-bytes);"
                                   " append rejected (61 not published since the last such line; logged at most"
                                   " once every 10 minutes until one is)")
        refusing[0] = False
        links._link_status("cloud", True, "")
        refusing[0] = True
        del events[:]
        links._link_status("cloud", False, "gone")
        self.assertEqual(len([e for e in events if "not published" in e.get("log_format", "")]), 1)

    def test_identity_answers_refused_are_a_throttled_warning(self) -> None:
        """An answer to ``edge/thing/request`` the broker refuses (it is stopping, a route's
        stream is full) is one warning, then at most one per 10 minutes: the answer's Deferred
        went back to the bus, which logged a critical traceback per request."""
        clock = Clock()
        bus = RecordingBus()
        refusing = [True]
        publish = bus.publish

        def refused(topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[None]:
            if refusing[0] and topic == "edge/thing/response":
                return fail(BrokerError("the broker is not running"))
            return publish(topic, payload, qos, retain)

        self.patch(bus, "publish", refused)
        links = LinksService(LinksSettings(), clock, bus, None)
        events = capture_log_events(self)
        links.startService()
        request = BusMessage("edge/thing/request", b"", 1, False)
        for _ in range(5):
            self.assertIsNone(links._thing_request(request))
        lines = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(lines, ["answer on edge/thing/response not published: the broker is not running ("
                                 "logged at most once every 10 minutes until"
                                 " one is)"])
        refusing[0] = False
        links._thing_request(request)
        self.assertEqual(json.loads(bus.published[-1][1])["deviceId"], "default:gateway")
        refusing[0] = True
        links._thing_request(request)
        self.assertEqual(len([e for e in events if e["log_level"] >= LogLevel.warn]), 2)

    def test_without_links_and_before_the_first_connection(self) -> None:
        """docs/links.md: with no link the status says so, retained; a link's cause before its
        first connection is ``not connected yet``."""
        clock = Clock()
        bus = RecordingBus()
        LinksService(LinksSettings(), clock, bus, None).startService()
        self.assertEqual([(topic, json.loads(payload), retain) for topic, payload, _, retain in bus.published],
                         [("edge/connection/remote/status",
                           {"connected": False, "timestamp": 0, "cause": "no cloud link configured", "links": {}},
                           True)])
        bus = RecordingBus()
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), clock, bus,
                             MemoryJournal())
        links.startService()
        self.addCleanup(links.stopService)
        status = json.loads(bus.published[0][1])
        self.assertEqual((status["cause"], status["links"]["cloud"]["cause"]), ("not connected yet",) * 2)


class LinkStartFailureTests(SynchronousTestCase):
    """A link that cannot start (a CIK file its user may not read) stops the links' start."""

    def test_the_start_fails_with_the_links_own_error(self) -> None:
        """The error is the link's (the gateway's start line says it), not a FirstError wrapping
        it, whose text is a Failure's repr with its traceback."""
        from gateway.links.mqtt import MQTTLink
        from gateway.stateaccess import StateAccessError

        self.patch(MQTTLink, "start", lambda link: fail(StateAccessError("cloud.cik may not be used")))
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), MemoryReactorClock(),
                             RecordingBus(), MemoryJournal())
        failure = self.failureResultOf(links.startService(), StateAccessError)
        self.assertEqual(failure.getErrorMessage(), "cloud.cik may not be used")


class DefaultDeviceIdTests(SynchronousTestCase):
    """Cloud links on the default gateway.device_id say at start what that risks (docs/configuration.md)."""

    def warnings(self, links: dict[str, LinkSettings], device: str) -> list[str]:
        events = capture_log_events(self)
        service = LinksService(LinksSettings(links=links), MemoryReactorClock(), RecordingBus(), MemoryJournal(),
                               identity=("default", device))
        service.startService()
        self.addCleanup(service.stopService)
        return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]

    def test_cloud_links_on_the_default_device_id_are_one_warning_naming_the_risk_and_the_remedy(self) -> None:
        """One warning names the links, the risk (two boxes on the default id take each other's
        cloud session over) and the remedy; a box with its own id, or without a cloud link, has
        none. Before, the takeover warning came only once two boxes were fighting."""
        both = {"cloud": LinkSettings(loss_topic=None),
                "backup": LinkSettings(loss_topic=None, endpoint="tcp:host=127.0.0.1:port=1884")}  # (two clouds)
        self.assertEqual(self.warnings(both, "gateway"), [
            "cloud links (backup, cloud) run on the default gateway.device_id 'gateway': two gateways left on it are"
            " one device to the cloud and take each other's cloud session over at every reconnect; set"
            " gateway.device_id to this gateway's own id (configuration.md)"])
        self.assertEqual(self.warnings(both, "box-17"), [])
        self.assertEqual(self.warnings({}, "gateway"), [])

    def test_a_link_with_its_own_client_id_is_not_named(self) -> None:
        """A link whose client id does not take {device} is its own device to the cloud: it
        is left out of the warning (it named every link)."""
        links = {"cloud": LinkSettings(loss_topic=None), "own": LinkSettings(loss_topic=None, client_id="box-17-own")}
        warnings = self.warnings(links, "gateway")
        self.assertEqual(len(warnings), 1)
        self.assertIn("cloud links (cloud) run on the default", warnings[0])
        self.assertEqual(self.warnings({"own": links["own"]}, "gateway"), [])


class LeftoverStreamTests(SynchronousTestCase):
    """The journal stream of a link no longer configured (removed, or renamed) keeps what that
    link had not sent (docs/links.md): the links say so when they start."""

    def test_unsent_records_of_a_link_no_longer_configured_are_logged(self) -> None:
        """A warning names the stream, the link it waits for and how many records wait; a
        configured link's stream, a leftover with nothing waiting and a stream that is not a
        link's say nothing. Before, the records stayed on disk and nothing said so: renaming a
        link left its backlog behind without a word."""
        journal = MemoryJournal()
        for name, waiting in (("link-old", 2), ("link-done", 0), ("link-cloud", 3), ("broker-state", 4)):
            stream = journal.stream(name)
            stream.cursor("cloud")
            for i in range(waiting):
                stream.append(Record("t", b"%d" % i))
        events = capture_log_events(self)
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), MemoryReactorClock(),
                             RecordingBus(), journal, identity=("default", "gw1"))
        links.startService()
        self.addCleanup(links.stopService)
        warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(warnings, ["journal link-old: no link 'old' is configured: its 2 records not sent yet "
                                    "stay in the journal and go up once a link of that name is configured again"
                                    " (or drop them: gatewayctl journal drop link-old --force)"])


class UnmappedDownlinkTests(SynchronousTestCase):
    """A cloud message that no downlink mapping takes (a server sending what the link did not
    subscribe to) is dropped and logged, at most once per ``UNMAPPED_LOG_INTERVAL``."""

    def test_a_flood_of_unmapped_messages_is_one_line_per_interval(self) -> None:
        """Each such message was one warning: a server could flood the log. Now the first is
        logged, the rest of the interval is counted into the next line, and nothing is published."""
        from gateway.links.mqtt import UNMAPPED_LOG_INTERVAL
        from gateway.mqtt.packets import Publish
        from tests.logevents import capture_log_events

        clock, bus = Clock(), RecordingBus()
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), clock, bus,
                             MemoryJournal())
        links.startService()
        self.addCleanup(links.stopService)
        link = links.links["cloud"]
        published = len(bus.published)
        events = capture_log_events(self)

        def lines() -> list[str]:
            return [e["more"] for e in events if "no downlink mapping" in e.get("log_format", "")]

        for n in range(1000):
            self.successResultOf(link.message(Publish(f"other/{n}", b"x", 1, False, False, n + 1)))
        self.assertEqual(lines(), [""])
        clock.advance(UNMAPPED_LOG_INTERVAL)
        self.successResultOf(link.message(Publish("other/last", b"x", 1, False, False, 1)))
        self.assertEqual(lines(), ["", " (and 999 more since the last such line)"])
        self.assertEqual(len(bus.published), published)


class RefusedQoS0Tests(SynchronousTestCase):
    """Routed QoS 0 messages the journal refuses (a full disk; a cloud down for hours under
    ``overflow: reject-new``) are not stored, and said so at most once per
    ``QOS0_REFUSED_LOG_INTERVAL``."""

    def test_a_stream_refusing_every_message_is_one_line_per_interval(self) -> None:
        """Each refused batch was one warning: a device publishing QoS 0 telemetry 200 times a
        second to a gateway on a full disk wrote ~180 KB of log per second (seen on a real
        gateway on a full tmpfs). Now the first is logged, the messages refused in the rest of
        the interval are counted into the next line."""
        from gateway.journal.errors import StreamFullError
        from gateway.links.service import QOS0_REFUSED_LOG_INTERVAL

        clock, journal = Clock(), MemoryJournal()
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), clock, RecordingBus(),
                             journal)
        links.startService()
        self.addCleanup(links.stopService)
        refusal = StreamFullError("link-cloud", "min-free-disk")
        journal.stream("link-cloud").append_many = \
            lambda records, on_durable, on_failed, reserved=False: on_failed(Failure(refusal))
        events = capture_log_events(self)

        def lines() -> list[str]:
            return [formatEvent(e) for e in events if "not journaled" in e.get("log_format", "")]

        done: list[object] = []

        def unseen(_: object) -> None:
            self.fail("a refused QoS 0 message is logged here, not the caller's to handle")

        for n in range(1000):
            self.assertTrue(links.persist_many([(f"telemetry/{n}", b"x", 0, False)], done.append, unseen))
        self.assertEqual(len(done), 1000)  # (no longer waiting: the broker stops counting them)
        self.assertEqual(lines(), ["QoS 0 messages on telemetry/0 not journaled: journal stream 'link-cloud' is full "
                                   "(min-free-disk); append rejected (logged at most once every 10 s while they go on)"])
        clock.advance(QOS0_REFUSED_LOG_INTERVAL)
        links.persist_many([("telemetry/a", b"x", 0, False), ("telemetry/b", b"x", 0, False)], done.append, unseen)
        self.assertEqual(lines()[1:], ["QoS 0 messages on telemetry/a not journaled: journal stream 'link-cloud' is "
                                       "full (min-free-disk); append rejected (1001 refused since the last such line; "
                                       "logged at most once every 10 s while they go on)"])


class QoS0RefusedCountTests(SynchronousTestCase):
    """docs/links.md: the first line about QoS 0 messages a stream refuses counts only the
    messages refused with the one it names."""

    def test_a_flood_past_a_full_stream_counts_the_refused_not_the_batch(self) -> None:
        """100 QoS 0 messages in one socket read, the stream (reject-new, 8 KiB) taking the
        first ones: the line counted the whole batch, "(100 refused; ...)" on a real gateway
        where 47 were refused and the others journaled."""
        from gateway.journal.settings import StreamSettings
        from tests.journal.helpers import open_stream
        from tests.journal.powercut import PowerCutFiles

        clock, journal = Clock(), MemoryJournal()
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), clock, RecordingBus(),
                             journal)
        links.startService()
        self.addCleanup(links.stopService)
        real = open_stream(PowerCutFiles(), StreamSettings(max_bytes=8192, min_free_bytes=0, overflow="reject-new"),
                           clock)
        stream = journal.stream("link-cloud")
        stream.append_many = real.append_many  # type: ignore[method-assign]
        stream.refusing = real.refusing  # type: ignore[attr-defined]
        events = capture_log_events(self)
        done: list[object] = []
        messages = [(f"telemetry/{n}", b"x" * 100, 0, False) for n in range(100)]
        self.assertTrue(links.persist_many(messages, done.append, lambda _: self.fail("QoS 0: logged, not failed")))
        clock.advance(0)
        refused = real.refusing.total
        stored = real.next_seq - 1
        self.assertEqual((stored + refused, stored > 0, refused > 0), (100, True, True))
        lines = [formatEvent(e) for e in events if "not journaled" in e.get("log_format", "")]
        self.assertEqual(lines, [f"QoS 0 messages on telemetry/0 not journaled: journal stream '{real.name}' is full"
                                 f" (max-bytes); append rejected ({refused} refused; logged at most once every 10 s"
                                 " while they go on)"])


class ReservedAppendTests(SynchronousTestCase):
    """docs/commands.md: the gateway's command replies get in while a stream is full under
    ``reject-new`` (a cloud just back with a backlog to drain, a local flood)."""

    def test_a_reserved_message_gets_in_while_a_reject_new_stream_refuses_the_others(self) -> None:
        """A stream full under reject-new refused the reply to a command the cloud sent as its
        link came back (the backlog not drained yet): the cloud never got an answer. A
        ``reserved`` publish (the command dispatcher's replies, through the bus) may use the
        stream's reserve; other publishes are still refused, counted as ``rejected``."""
        from gateway.journal.service import JournalService
        from gateway.journal.settings import JournalSettings, StreamSettings
        from tests.journal.helpers import run_now
        from tests.journal.powercut import PowerCutFiles

        clock = Clock()
        journal = JournalService(JournalSettings(streams={"link-cloud": StreamSettings(
            max_bytes=8192, segment_bytes=4096, overflow="reject-new", min_free_bytes=0)}), Path("/state"), clock,
            files=PowerCutFiles(), run=run_now)
        journal.startService()
        self.addCleanup(journal.stopService)
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), clock, RecordingBus(),
                             journal)
        links.startService()
        self.addCleanup(links.stopService)

        def persist(topic: str, reserved: bool = False) -> list[object]:
            result: list[object] = []
            links.persist_many([(topic, b"x" * 200, 1, False)], result.append,
                               lambda failure: result.append(failure.value), reserved=reserved)
            clock.advance(0)  # (the end of the reactor turn: the batch is written)
            return result

        while not isinstance(persist("telemetry/flood")[0], StreamFullError):
            pass
        [durable] = persist("command//gw1/res/1/200", reserved=True)
        self.assertIsInstance(durable, int)
        self.assertIsInstance(persist("telemetry/flood")[0], StreamFullError)
        self.assertEqual(journal.stream("link-cloud").snapshot().refused_appends, 2)


class QoS0DurableTests(SynchronousTestCase):
    """docs/broker.md (A publisher that does not wait): nobody waits for a QoS 0 message, but
    the broker counts a client's QoS 0 messages waiting for the disk, so the links' hook says
    when the journal is done with them, on every stream they go to."""

    def test_a_qos0_batch_is_reported_once_durable_on_every_link(self) -> None:
        """QoS 0 messages routed to two links: ``on_durable`` once both appends are durable,
        not before; a topic no link routes is not appended (``False``)."""
        journal = MemoryJournal()
        links = LinksService(LinksSettings(links={"a": LinkSettings(loss_topic=None), "b": LinkSettings(loss_topic=None)}),
                             Clock(), RecordingBus(), journal)
        links.startService()
        self.addCleanup(links.stopService)
        for name in ("link-a", "link-b"):
            journal.stream(name).hold = True
        done: list[object] = []
        self.assertTrue(links.persist_many([("telemetry/t", b"1", 0, False), ("telemetry/u", b"2", 0, False)],
                                           done.append, lambda failure: self.fail(failure)))
        journal.stream("link-a").release()
        self.assertEqual(done, [])
        journal.stream("link-b").release()
        self.assertEqual(done, [None])
        self.assertFalse(links.persist_many([("local/x", b"3", 0, False)], done.append, done.append))
        self.assertIsNone(links.persist("telemetry/v", b"4", 0, False))  # (a single QoS 0 message: nothing to wait for)



def accepted_silently(factory: Any) -> Any:
    """A connection that ``factory`` (the endpoint's, from ``MemoryReactor.tcpClients``) got
    from a server that has not said anything yet, on a StringTransport."""
    connection = factory.buildProtocol(None)
    connection.makeConnection(StringTransport())
    return connection


class StartFailureTests(SynchronousTestCase):
    """What a link that cannot start says."""

    def test_a_cursor_the_disk_refuses_fails_the_start_with_its_own_error(self) -> None:
        """A link whose cursor cannot be made (its directory not writable) fails the start
        with that OSError, which the tree tells in words (gateway.root.start_child). It came
        wrapped in a FirstError: "gateway failed to start: FirstError[#0, [Failure instance:
        Traceback (failure with no frames): <class 'PermissionError'>: ...]]"."""
        from gateway.root import start_child

        journal = MemoryJournal()
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), Clock(), RecordingBus(),
                             journal)
        refusal = PermissionError(13, "Permission denied", "/state/journal/link-cloud/cursors/cloud.json")
        journal.stream("link-cloud").cursor = lambda name: fail(refusal)  # type: ignore[method-assign]
        failure = self.failureResultOf(start_child(links))
        message = failure.getErrorMessage()  # (its words name the user the suite runs as)
        self.assertTrue(message.startswith("links: /state/journal/link-cloud/cursors/cloud.json may not be used by"
                                           " the gateway's user "), message)
        self.assertNotIn("FirstError", message)


class ConnectAttemptLogTests(SynchronousTestCase):
    """A cloud down for hours costs the log one line per connection attempt, not three."""

    def test_an_attempt_does_not_log_the_factory_starting_and_stopping(self) -> None:
        """ClientService starts and stops the link's factory at every attempt: Twisted's
        "Starting factory <MQTTLink object at 0x...>" and "Stopping factory ..." were two of
        the three lines each retry logged (seen on a real gateway whose cloud was down)."""
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), Clock(), RecordingBus(),
                             MemoryJournal())
        links.startService()
        self.addCleanup(links.stopService)
        link = links.links["cloud"]
        events = capture_log_events(self)
        link.doStart()
        link.doStop()
        self.assertEqual([formatEvent(e) for e in events], [])

    def test_a_cloud_down_for_hours_is_a_line_per_interval_not_per_attempt(self) -> None:
        """A link whose attempts keep failing for the same cause logs it once, then at most
        once per FAILING_LOG_INTERVAL with the number of attempts; a new cause is logged at
        once, and so is the first failure after the link was connected again. Before, each
        attempt logged a line for ever (Twisted's "Scheduling retry ..."), 150 an hour."""
        reactor = MemoryReactorClock()
        settings = LinkSettings(loss_topic=None, backoff_initial=1.0, backoff_max=10.0, min_connect_interval=0.0)
        links = LinksService(LinksSettings(links={"cloud": settings}), reactor, RecordingBus(), MemoryJournal(),
                             identity=("default", "gw1"))
        events = capture_log_events(self)
        links.startService()
        self.addCleanup(links.stopService)

        def fail_attempts(seconds: float, error: Exception) -> None:
            end = reactor.seconds() + seconds
            while reactor.seconds() < end:
                for client in reactor.tcpClients:
                    client[2].clientConnectionFailed(None, Failure(error))
                reactor.tcpClients.clear()
                reactor.advance(1.0)

        def warnings() -> list[str]:
            return [str(formatEvent(e)) for e in events if e["log_level"] >= LogLevel.warn]

        fail_attempts(FAILING_LOG_INTERVAL * 3 - 1, error.ConnectionRefusedError())
        lines = warnings()
        self.assertEqual(len(lines), 3, lines)
        self.assertEqual(lines[0], "link cloud cannot connect: connection refused by 127.0.0.1:1883: nothing listens "
                                   "there (check the endpoint's host and port)")
        self.assertRegex(lines[1], r"^link cloud still cannot connect \(\d+ failed attempts since the last such "
                                   r"line\): connection refused by 127.0.0.1:1883")
        fail_attempts(30, error.TimeoutError())
        self.assertEqual(len(warnings()), 4)
        self.assertIn("link cloud cannot connect: ", warnings()[3])

    def test_the_first_failure_after_a_connection_is_a_cannot_connect_line(self) -> None:
        """The first attempt that fails after the link was connected is logged at once as
        ``cannot connect: <cause>``, even when its cause is the one the lost connection ended
        with. A cloud that resends a packet over ``max_packet_size`` at every CONNACK logged
        ``still cannot connect (1 failed attempts since the last such line): ...``, a line
        that no line came before (seen on a real gateway with mosquitto)."""
        reactor = MemoryReactorClock()
        settings = LinkSettings(loss_topic=None, backoff_initial=1.0, backoff_max=1.0, min_connect_interval=0.0,
                                max_packet_size=100, downlink=())
        links = LinksService(LinksSettings(links={"cloud": settings}), reactor, RecordingBus(), MemoryJournal(),
                             identity=("default", "gw1"))
        events = capture_log_events(self)
        links.startService()
        self.addCleanup(links.stopService)
        connack, big = b"\x20\x02\x01\x00", b"\x30\xcb\x01\x00\x01c" + b"x" * 200  # (203 bytes remaining)
        for answer in ([connack, big], [connack + big], [connack + big]):  # accepted then lost; twice never accepted
            connection = accepted_silently(reactor.tcpClients.pop()[2])
            for data in answer:
                connection.dataReceived(data)
            connection.connectionLost(Failure(error.ConnectionAborted()))
            reactor.advance(1.0)
        cause = "malformed packet from 127.0.0.1:1883: packet of 203 bytes is over the 100 limit"
        self.assertEqual([str(formatEvent(e)) for e in events if e["log_level"] >= LogLevel.warn
                          and str(formatEvent(e)).startswith("link cloud ")],
                         [f"link cloud cannot connect: {cause}"])

    def attempts_answered(self, answer: bytes) -> list[str]:
        """The warnings of two FAILING_LOG_INTERVALs of attempts, each TCP connection taken
        by a cloud that answers CONNECT with ``answer`` (and then nothing)."""
        reactor = MemoryReactorClock()
        settings = LinkSettings(loss_topic=None, backoff_initial=1.0, backoff_max=10.0, min_connect_interval=0.0,
                                connect_timeout=5.0)
        links = LinksService(LinksSettings(links={"cloud": settings}), reactor, RecordingBus(), MemoryJournal(),
                             identity=("default", "gw1"))
        events = capture_log_events(self)
        links.startService()
        self.addCleanup(links.stopService)
        end = reactor.seconds() + FAILING_LOG_INTERVAL * 2 - 1
        attempts, open_ = 0, []
        while reactor.seconds() < end:
            attempts += len(reactor.tcpClients)
            open_ += [accepted_silently(client[2]) for client in reactor.tcpClients]
            reactor.tcpClients.clear()
            for connection in open_:
                connection.dataReceived(answer)
            reactor.advance(1.0)
            for connection in [c for c in open_ if c.transport.disconnecting]:
                open_.remove(connection)
                connection.connectionLost(Failure(error.ConnectionAborted()))
        self.assertGreater(attempts, 50)
        return [str(formatEvent(e)) for e in events if e["log_level"] >= LogLevel.warn]

    def test_a_cloud_that_never_answers_connect_is_a_line_per_interval_not_per_attempt(self) -> None:
        """A cloud that takes the TCP connection and never answers CONNECT (a load balancer
        without a healthy backend) is the same condition as one that refuses it: the link
        cannot connect. It logged "closing the link connection: no CONNACK ..." at every
        attempt besides the link's throttled line; now the link's line alone says it."""
        warnings = self.attempts_answered(b"")
        self.assertEqual(len(warnings), 2, warnings[:3])
        self.assertEqual(warnings[0], "link cloud cannot connect: no CONNACK from 127.0.0.1:1883 within 5 s: "
                                      "is it an MQTT server?")
        self.assertRegex(warnings[1], r"^link cloud still cannot connect \(\d+ failed attempts since the last such "
                                      r"line\): no CONNACK from 127.0.0.1:1883")

    def test_a_cloud_that_answers_connect_with_garbage_is_a_line_per_interval(self) -> None:
        """Likewise a cloud answering CONNECT with a malformed packet (here a PUBLISH before
        any CONNACK): "closing the link connection: ..." came at every attempt."""
        warnings = self.attempts_answered(b"\x30\x03\x00\x01a")
        self.assertEqual(len(warnings), 2, warnings[:3])
        self.assertEqual(warnings[0], "link cloud cannot connect: malformed packet from 127.0.0.1:1883: packet type 3 "
                                      "before CONNACK")

    def test_an_attempt_the_gateways_stop_ends_is_no_failed_attempt(self) -> None:
        """The gateway stopping while an attempt waits for its CONNACK ends that connection
        itself: that is no failure of the cloud. It logged "link cloud cannot connect:
        127.0.0.1:1883 closed the connection before accepting the MQTT session (is it an
        MQTT port?)" at every stop while the cloud was silent (seen on a real gateway)."""
        reactor = MemoryReactorClock()
        links = LinksService(LinksSettings(links={"cloud": LinkSettings(loss_topic=None)}), reactor, RecordingBus(),
                             MemoryJournal())
        links.startService()
        connection = accepted_silently(reactor.tcpClients[0][2])
        events = capture_log_events(self)
        stopped = links.stopService()
        connection.connectionLost(Failure(error.ConnectionDone()))  # (the stop aborted it)
        self.successResultOf(stopped)
        self.assertEqual([str(formatEvent(e)) for e in events if e["log_level"] >= LogLevel.warn], [])

    def test_a_ping_timeout_is_one_warning_naming_the_link(self) -> None:
        """A connected link whose cloud stops answering PINGREQ logs one warning that names
        the link and says what happened; before, the only warning was the protocol's
        "closing the link connection: no PINGRESP ...", which named no link."""
        reactor = MemoryReactorClock()
        settings = LinkSettings(loss_topic=None, keepalive=10, ping_timeout=3.0)
        links = LinksService(LinksSettings(links={"cloud": settings}), reactor, RecordingBus(), MemoryJournal(),
                             identity=("default", "gw1"))
        links.startService()
        self.addCleanup(links.stopService)
        connection = accepted_silently(reactor.tcpClients[0][2])
        events = capture_log_events(self)
        connection.dataReceived(b"\x20\x02\x00\x00")  # CONNACK, accepted
        reactor.advance(10)  # the PINGREQ goes
        reactor.advance(3)  # no PINGRESP
        self.assertTrue(connection.transport.disconnecting)
        connection.connectionLost(Failure(error.ConnectionAborted()))
        warnings = [str(formatEvent(e)) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(warnings, ["link cloud disconnected: 127.0.0.1:1883 stopped answering: no PINGRESP within 3 s "
                                    "(ping_timeout); the server is overloaded or the network to it stalled"])


class HeldDownlinkTests(SynchronousTestCase):
    """``hold_downlink``: what the clouds send waits, unacknowledged, until the tree is up."""

    def test_cloud_messages_wait_for_open_downlink(self) -> None:
        """Cloud messages that come before :meth:`LinksService.open_downlink` are held (their
        Deferreds, which the link acknowledges the cloud on, unfired), then published in
        arrival order; later ones go at once. Without the hold a command queued in the cloud
        while the gateway was down reached the bus before the command dispatcher subscribed."""
        bus = RecordingBus()
        links = LinksService(LinksSettings(), Clock(), bus, None, hold_downlink=True)
        first = links._publish_local("command//gw/req/1/ping", b"{}", 1, False)
        second = links._publish_local("c//gw/q/1/ping", b"{}", 1, False)
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.assertEqual(bus.published, [])
        links.open_downlink()
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(links._publish_local("command//gw/req/2/ping", b"{}", 1, False))
        self.assertEqual([topic for topic, _, _, _ in bus.published],
                         ["command//gw/req/1/ping", "c//gw/q/1/ping", "command//gw/req/2/ping"])

    def test_hold_downlink_holds_again_once_the_services_stop(self) -> None:
        """:meth:`LinksService.hold_downlink` (the tree calls it when its services begin to
        stop) holds what comes from then on, unacknowledged: the command dispatcher stops
        before the links, and a command published with nobody subscribed was acknowledged to
        the cloud and lost; held, the cloud broker sends it again to the next start."""
        bus = RecordingBus()
        links = LinksService(LinksSettings(), Clock(), bus, None)
        self.successResultOf(links._publish_local("command//gw/req/1/ping", b"{}", 1, False))
        links.hold_downlink()
        links.hold_downlink()  # (a second call keeps what the first held)
        late = links._publish_local("command//gw/req/2/ping", b"{}", 1, False)
        self.assertNoResult(late)
        self.assertEqual([topic for topic, _, _, _ in bus.published], ["command//gw/req/1/ping"])

    def test_a_held_removal_is_judged_when_it_is_published(self) -> None:
        """docs/topics.md: an empty cloud message on a topic whose retained message that link
        brought removes it (published retained, empty); held, it is judged when the downlink
        opens, by the retained messages then. Another link's empty message, or one on a topic
        without that link's copy, goes as it came."""
        bus = RecordingBus()
        links = LinksService(LinksSettings(), Clock(), bus, None, hold_downlink=True)
        links._publish_local("command//gw/req/1/x", b"on", 1, True, link="cloud")
        links._publish_local("command//gw/req/1/x", b"", 1, False, link="backup")
        links._publish_local("command//gw/req/1/x", b"", 1, False, link="cloud")
        links._publish_local("command//gw/req/1/x", b"", 1, False, link="cloud")
        self.assertEqual(bus.published, [])
        links.open_downlink()
        self.assertEqual([(payload, retain) for _, payload, _, retain in bus.published],
                         [(b"on", True), (b"", False), (b"", True), (b"", False)])


class ShortCommandTopicTests(TestCase):
    """Which local topics a cloud command is published on, by the default downlink."""

    def test_commands_only(self) -> None:
        """command//<device>/req/... comes down as it is and on its short form c//<device>/q/...;
        replies and other topics are not taken by it."""
        downlink = Router([Rule.compile("cloud", d.filter, d.topic, d.qos) for d in KANTO_DOWNLINK], "t1", "gw1",
                          every_rule=True)

        def short(topic: str) -> str | None:
            found = [d.topic for d in downlink.route(topic) if d.topic != topic]
            return found[0] if found else None

        self.assertEqual(short("command//dev1/req/7/switch"), "c//dev1/q/7/switch")
        self.assertEqual(short("command//gw1/req//command"), "c//gw1/q//command")
        self.assertEqual([d.topic for d in downlink.route("command//dev1/req/7/switch")],
                         ["command//dev1/req/7/switch", "c//dev1/q/7/switch"])
        for topic in ("command//dev1/res/7/200", "telemetry/a/b/req/c", "c//dev1/q/7/x"):
            self.assertIsNone(short(topic))


class LinksServiceTests(TestCase):
    """What local clients see of the links."""

    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        self.cloud = Mosquitto(reactor, Path(self.mktemp()), free_port())
        self.addCleanup(self.cloud.stop)
        self.broker = yield start_broker(self, reactor)
        link = LinkSettings(endpoint=f"tcp:host=127.0.0.1:port={self.cloud.port}", keepalive=5,
                            routes=(RouteSettings("telemetry/#", "up/{#}"),), downlink=KANTO_DOWNLINK)
        self.journal = MemoryJournal()
        self.links = LinksService(LinksSettings(links={"cloud": link}, policy_id="p1"), reactor,
                                  self.broker.bus, self.journal, identity=("t1", "gw1"), retry_policy=lambda attempt: 0.1,
                                  durable_gate=self.broker.durable_gate)
        yield self.links.startService()
        self.addCleanup(self.links.stopService)
        self.device = yield self.client()

    @inlineCallbacks
    def client(self) -> Any:
        client = TestClient(reactor)
        yield client.connect(port_of(self.broker))
        self.addCleanup(client.stop)
        return client

    def held_stream(self) -> Any:
        """The link's stream, holding every append back from durable until ``release()``."""
        stream = self.links.links["cloud"].stream
        stream.hold = True  # type: ignore[attr-defined]
        return stream

    @inlineCallbacks
    def test_puback_waits_for_durable_append(self) -> None:
        """A routed QoS 1 publish is acknowledged only once the stream holds it durably."""
        stream = self.held_stream()
        acked = self.device.publish("telemetry/x", b"1", qos=1)
        yield sleep(0.3)
        self.assertFalse(acked.called)
        self.assertEqual([r.topic for r in stream.records], ["up/x"])  # type: ignore[attr-defined]
        stream.release()  # type: ignore[attr-defined]
        yield acked

    @inlineCallbacks
    def test_acks_of_one_group_commit_leave_together(self) -> None:
        """Appends that become durable together are acknowledged together, in order, in one write."""
        batches: list[list[int]] = []
        real = DurableAckHandler.acknowledge_all

        def spy(handler: DurableAckHandler, messages: list[Any]) -> None:
            batches.append([m.packet_id for m in messages])
            real(handler, messages)

        self.patch(DurableAckHandler, "acknowledge_all", spy)
        stream = self.held_stream()
        acked = [self.device.publish("telemetry/x", b"%d" % i, qos=1) for i in range(5)]
        while len(stream.records) < 5:  # type: ignore[attr-defined]
            yield sleep(0.05)
        stream.release()  # type: ignore[attr-defined]
        yield gatherResults(acked)
        self.assertEqual(len(batches), 1)
        self.assertEqual(len(batches[0]), 5)
        self.assertEqual(batches[0], sorted(batches[0]))

    @inlineCallbacks
    def test_pubrec_waits_for_durable_append(self) -> None:
        """QoS 2: PUBREC (and so the whole flow) waits for the append too."""
        stream = self.held_stream()
        acked = self.device.publish("telemetry/x", b"2", qos=2)
        yield sleep(0.3)
        self.assertFalse(acked.called)
        stream.release()  # type: ignore[attr-defined]
        yield acked
        self.assertEqual(len(stream.records), 1)  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_unrouted_acked_at_once(self) -> None:
        """Topics no route takes are acknowledged as amqtt does, without touching a stream."""
        stream = self.held_stream()
        yield self.device.publish("local/only", b"x", qos=1)
        self.assertEqual(stream.records, [])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_route_qos_and_retain_flag(self) -> None:
        """docs/links.md: a message goes up at its route's QoS (1 here, whatever the local
        publish's) and keeps its retain flag."""
        stream = self.held_stream()
        self.device.publish("telemetry/a", b"r", qos=0, retain=True)
        acked = self.device.publish("telemetry/b", b"n", qos=1)
        while len(stream.records) < 2:  # type: ignore[attr-defined]
            yield sleep(0.05)
        stream.release()  # type: ignore[attr-defined]
        yield acked
        self.assertEqual([(r.topic, r.qos, r.retain) for r in stream.records],  # type: ignore[attr-defined]
                         [("up/a", 1, True), ("up/b", 1, False)])

    @inlineCallbacks
    def test_failed_append_is_not_acked(self) -> None:
        """When the journal cannot store it, no PUBACK: the connection closes for a later resend."""
        stream = self.links.links["cloud"].stream
        stream.append = lambda record, reserved=False: fail(JournalError("disk full"))  # type: ignore[method-assign]
        acked = self.device.publish("telemetry/x", b"3", qos=1)
        yield self.device.disconnected()
        self.assertFalse(acked.called)
        acked.addErrback(lambda f: None)
        acked.cancel()

    @inlineCallbacks
    def test_stopped_links_refuse_what_they_would_have_journaled(self) -> None:
        """Once the links have stopped (the broker and the ingest stop after them: a shutdown
        or a configuration change), a routed QoS 1 publish is refused, not taken as routed
        nowhere: the broker closes the connection without PUBACK, the ingest answers 503
        (docs/commands.md). The broker acknowledged it at once, the ingest answered 204, and
        the message was in no stream."""
        stream = self.links.links["cloud"].stream
        yield self.links.stopService()
        refused = yield self.assertFailure(self.links.persist("telemetry/x", b"1", 1, False), JournalClosedError)
        self.assertEqual(str(refused), STOPPED)
        acked = self.device.publish("telemetry/x", b"2", qos=1)
        yield self.device.disconnected()
        self.assertFalse(acked.called)
        acked.addErrback(lambda f: None)
        acked.cancel()
        self.assertEqual(stream.records, [])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_stopped_links_keep_their_counters_in_the_snapshot(self) -> None:
        """Once the service has stopped, its snapshot shows the links it stopped, ``stopped``,
        with what they sent: a configuration change reads them there to carry them into the
        next usage_report's since_last (docs/telemetry.md). The snapshot was empty then, and
        what the links sent between the last report and the change was in no report."""
        yield self.cloud.start()
        for i in range(2):
            yield self.device.publish("telemetry/x", b"%d" % i, qos=1)
        cloud = self.links.links["cloud"]
        while cloud.snapshot().acked < 2:
            yield sleep(0.05)
        yield self.links.stopService()
        [link] = self.links.snapshot().links
        self.assertEqual((link.name, link.state, link.sent, link.acked), ("cloud", "stopped", 2, 2))
        self.assertGreater(link.bytes_up, 0)

    @inlineCallbacks
    def test_bus_publish_is_journaled_when_routed(self) -> None:
        """The gateway's own routed publishes (update statuses) go up too: the bus publish
        waits until the stream holds the message, and fails when it cannot store it."""
        stream = self.held_stream()
        published = self.broker.bus.publish("telemetry/gateway/report", b"r", 1, False)
        yield sleep(0.1)
        self.assertFalse(published.called)
        self.assertEqual([r.topic for r in stream.records], ["up/gateway/report"])  # type: ignore[attr-defined]
        stream.release()  # type: ignore[attr-defined]
        yield published
        yield self.broker.bus.publish("edge/local/only", b"x", 1, False)  # unrouted: not journaled
        self.assertEqual(len(stream.records), 1)  # type: ignore[attr-defined]
        stream.append = lambda record, reserved=False: fail(JournalError("disk full"))  # type: ignore[method-assign]
        yield self.assertFailure(self.broker.bus.publish("telemetry/gateway/report", b"r", 1, False), JournalError)

    @inlineCallbacks
    def test_status_and_identity(self) -> None:
        """The retained status follows the link; edge/thing/request is answered."""
        app = yield self.client()
        yield app.subscribe("edge/connection/remote/status", 1)
        status = json.loads((yield app.next_message()).payload)
        self.assertEqual((status["connected"], status["links"]["cloud"]["connected"]), (False, False))
        yield self.cloud.start()
        while not status["connected"]:
            status = json.loads((yield app.next_message()).payload)
        self.assertEqual(status["cause"], "")
        yield app.subscribe("edge/thing/response", 1)
        yield app.publish("edge/thing/request", b"", qos=1)
        answer = json.loads((yield app.next_message()).payload)
        self.assertEqual(answer, {"deviceId": "t1:gw1", "tenantId": "t1", "policyId": "p1"})  # Kanto: the thing id

    @inlineCallbacks
    def command_as_received(self, topic_filter: str) -> Any:
        """The message a local app subscribed to ``topic_filter`` gets when the cloud publishes
        the command ``command//dev1/req/7/switch``."""
        app = yield self.client()
        yield app.subscribe(topic_filter, 1)
        yield self.cloud.start()
        while not self.links.links["cloud"].is_connected:
            yield sleep(0.05)
        yield sleep(0.2)  # the link's SUBSCRIBE reaches mosquitto
        backend = TestClient(reactor)
        yield backend.connect(self.cloud.port)
        self.addCleanup(backend.stop)
        yield backend.publish("command//dev1/req/7/switch", b"on", qos=1)
        message = yield app.next_message()
        return message

    @inlineCallbacks
    def test_downlink_command(self) -> None:
        """A command published in the cloud reaches a local app under the local contract."""
        message = yield self.command_as_received("command//+/req/#")
        self.assertEqual((message.topic, message.payload), ("command//dev1/req/7/switch", b"on"))

    @inlineCallbacks
    def test_downlink_command_short_form(self) -> None:
        """docs/topics.md: commands come down on command//<device>/req/<req-id>/<name>, also
        c//+/q/#: an app subscribed to Hono's short form gets each command on it."""
        message = yield self.command_as_received("c//+/q/#")
        self.assertEqual((message.topic, message.payload, message.qos), ("c//dev1/q/7/switch", b"on", 1))

    @inlineCallbacks
    def reconnected(self, link: Any) -> Any:
        """Drop ``link``'s connection (when it has one) and wait until it is connected again,
        its SUBSCRIBE at the cloud."""
        before = link.connects
        if link.is_connected:
            link.protocol.transport.abortConnection()
        while link.connects == before or not link.is_connected:
            yield sleep(0.05)
        yield sleep(0.2)  # the link's SUBSCRIBE reaches mosquitto

    @inlineCallbacks
    def test_a_command_the_cloud_withdraws_is_no_longer_retained_locally(self) -> None:
        """docs/topics.md, against mosquitto: a command kept retained in the cloud comes down
        retained when the link subscribes (each connect) and the local broker keeps it; when
        the cloud's copy is removed (an empty retained PUBLISH there), mosquitto sends the
        link an empty message without the flag (MQTT 3.1.1), and the local copies go too:
        after the link's next connect an app that subscribes gets no command. Before, the
        local copy stayed for ever."""
        cloud, retained = self.links.links["cloud"], self.broker.broker.retained
        yield self.cloud.start()
        yield self.reconnected(cloud)
        backend = TestClient(reactor)
        yield backend.connect(self.cloud.port)
        self.addCleanup(backend.stop)
        yield backend.publish("command//dev1/req/9/reboot", b"now", qos=1, retain=True)
        yield self.reconnected(cloud)  # (it came live, without the flag: now it comes retained)
        while "c//dev1/q/9/reboot" not in retained:
            yield sleep(0.05)
        self.assertEqual([retained[t].payload for t in ("command//dev1/req/9/reboot", "c//dev1/q/9/reboot")],
                         [b"now", b"now"])
        app = yield self.client()
        yield app.subscribe("command//+/req/#", 1)
        message = yield app.next_message()
        self.assertEqual((message.topic, message.payload, message.retain), ("command//dev1/req/9/reboot", b"now", 1))
        yield backend.publish("command//dev1/req/9/reboot", b"", qos=1, retain=True)
        message = yield app.next_message()
        self.assertEqual((message.topic, message.payload, message.retain), ("command//dev1/req/9/reboot", b"", 0))
        yield self.reconnected(cloud)
        later = yield self.client()
        yield later.subscribe("command//+/req/#", 1)
        yield later.subscribe("c//+/q/#", 1)
        yield backend.publish("command//dev1/req/10/ping", b"{}", qos=1)
        message = yield later.next_message()
        self.assertEqual((message.topic, message.payload), ("command//dev1/req/10/ping", b"{}"))
        self.assertEqual([t for t in retained if t.startswith("c")], [])
