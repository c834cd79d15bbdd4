"""Twisted's lines about connections it could not accept (out of file descriptors), throttled
in front of twistd's log: task.Clock, a list for the log (no sockets, no sleeps)."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from twisted.application.service import Application
from twisted.internet.task import Clock
from twisted.python import log as legacy_log
from twisted.python.syslog import SyslogObserver
from twisted.logger import ILogObserver, LogEvent, Logger, PredicateResult, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.acceptlog import ACCEPT_LOG_INTERVAL, AcceptErrorLines, is_accept_error, twistd_observer, without_retry_lines
from gateway.root import GatewayService



def refused_connection(log: Logger, port: int) -> None:
    """The three lines Twisted logs for a connection it closes as soon as it is accepted."""
    log.info("EMFILE encountered; releasing reserved file descriptor.")
    log.info("EMFILE recovery: Closed socket from {address}", address=("127.0.0.1", port))
    log.info("Re-reserving EMFILE recovery file descriptor.")


class ThreadCalls(Clock):
    """A clock that keeps what is handed to its thread (``callFromThread``), to run by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Callable[[], object]] = []

    def callFromThread(self, f: Callable[[], object]) -> None:
        self.calls.append(f)


class AcceptErrorLinesTests(SynchronousTestCase):
    """docs/configuration.md (Listeners): the first line passes, then one line per interval
    while they go on, then one when they stop; nothing else is held back."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[LogEvent] = []
        self.lines = AcceptErrorLines(self.events.append, self.clock)
        self.port_log = Logger(namespace="twisted.internet.tcp.Port", observer=self.lines)

    def texts(self) -> list[str]:
        return [str(formatEvent(event)) for event in self.events]

    def test_first_line_passes_then_one_count_per_interval_then_the_end(self) -> None:
        """A flood of refused connections: the first line, then after each interval a line
        with how many were held back; an interval without any ends the run with a line."""
        for port in range(10):
            refused_connection(self.port_log, 40000 + port)
        self.assertEqual(self.texts(), ["EMFILE encountered; releasing reserved file descriptor."])
        self.clock.advance(ACCEPT_LOG_INTERVAL)
        self.assertEqual(len(self.events), 2)
        self.assertIn("Twisted logged 29 more lines about connections it could not accept in the last 60 s",
                      self.texts()[1])
        self.assertEqual(self.events[1]["log_namespace"], "gateway.acceptlog")
        refused_connection(self.port_log, 40100)
        self.clock.advance(ACCEPT_LOG_INTERVAL)
        self.assertIn("Twisted logged 3 more lines", self.texts()[2])
        self.clock.advance(ACCEPT_LOG_INTERVAL)
        self.assertEqual(self.texts()[3],
                         "Twisted's lines about connections it could not accept stopped (32 held back in all)")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        refused_connection(self.port_log, 40200)  # a new run: its first line passes again
        self.assertEqual(self.texts()[4], "EMFILE encountered; releasing reserved file descriptor.")
        self.assertEqual(len(self.events), 5)

    def test_a_single_refusal_is_one_line(self) -> None:
        """One failed accept: its line, and no more (nothing was held back)."""
        Logger(namespace="twisted.internet.unix.Port", observer=self.lines).info(
            "Could not accept new connection ({acceptError})", acceptError="EMFILE")
        self.clock.advance(ACCEPT_LOG_INTERVAL * 3)
        self.assertEqual(self.texts(), ["Could not accept new connection (EMFILE)"])

    def test_other_events_pass(self) -> None:
        """Other lines, of Twisted's or not, pass even during a run, in order; so does a line
        with the same words from anywhere but Twisted."""
        refused_connection(self.port_log, 40000)
        self.port_log.info("Starting factory {f}", f="x")
        Logger(namespace="gateway.broker", observer=self.lines).info("EMFILE recovery: Closed socket from {address}",
                                                                      address="somewhere")
        self.assertEqual(self.texts(), ["EMFILE encountered; releasing reserved file descriptor.", "Starting factory x",
                                        "EMFILE recovery: Closed socket from somewhere"])

    def test_is_accept_error(self) -> None:
        """The lines held back are Twisted's accept loop's and its descriptor reservation's only."""
        self.assertTrue(is_accept_error({"log_namespace": "twisted.internet.tcp._FileDescriptorReservation",
                                         "log_format": "Could not reserve EMFILE recovery file descriptor."}))
        self.assertFalse(is_accept_error({"log_namespace": "twisted.internet.tcp.Port", "log_format": "{x}"}))
        self.assertFalse(is_accept_error({"message": ("EMFILE",), "isError": 0}))


class TwistdObserverTests(SynchronousTestCase):
    """The throttle and the filters stand in front of every log target twistd offers."""

    def test_standard_output(self) -> None:
        """``--nodaemon`` without ``--logfile`` and ``--logfile=-`` log to standard output: throttled."""
        for options in ({"nodaemon": True, "logfile": None}, {"nodaemon": True, "logfile": "-"}):
            self.assertIsInstance(twistd_observer(options, Clock()), AcceptErrorLines)

    def test_twistd_decides_for_a_logger_of_the_users_own(self) -> None:
        """``--logger`` (twistd takes it over the application's observer), a daemon told to log
        to standard output (twistd refuses it itself), or no twistd at all: no observer."""
        for options in ({"nodaemon": True, "logger": "a.b"}, {"nodaemon": False, "logfile": "-"}, None):
            self.assertIsNone(twistd_observer(options, Clock()), options)

    def sigusr1_restored(self) -> None:
        """Put SIGUSR1's handler back as it was once the test ends."""
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def test_sigusr1_without_a_log_file_is_one_line(self) -> None:
        """SIGUSR1 rotates a log file; logging to standard output (the Debian unit's
        ``--logfile=-``, ``make run``) or syslog there is none, and twistd left the signal its
        default action: a ``kill -USR1`` (a logrotate recipe) ended the gateway at once, with no
        clean stop. Now it is one line, written on the loop (the handler only queues it), and
        the gateway goes on."""
        self.patch(SyslogObserver, "openlog", staticmethod(lambda *args: None))
        self.patch(SyslogObserver, "syslog", staticmethod(lambda priority, line: None))
        for options, target in (({"nodaemon": True, "logfile": "-"}, "standard output"),
                                ({"nodaemon": True}, "standard output"),
                                ({"nodaemon": True, "syslog": True, "prefix": "gateway"}, "syslog")):
            self.sigusr1_restored()
            reactor = ThreadCalls()
            twistd_observer(options, reactor)
            self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)), options)  # (not SIG_DFL: the end)
            events: list[LogEvent] = []
            globalLogPublisher.addObserver(events.append)
            self.addCleanup(globalLogPublisher.removeObserver, events.append)
            os.kill(os.getpid(), signal.SIGUSR1)
            self.assertEqual(events, [])
            self.assertEqual(len(reactor.calls), 1)
            reactor.calls[0]()
            self.assertEqual([formatEvent(event) for event in events], [
                f"received SIGUSR1, which rotates a log file: the gateway logs to {target}, no file to rotate"])
            globalLogPublisher.removeObserver(events.append)

    def test_a_log_file_is_filtered_too(self) -> None:
        """docs/install.md (Logs): with ``--logfile PATH`` twistd wrote every ``Scheduling
        retry`` and ``Starting factory _HTTP11ClientFactory`` line (one to three per reconnect
        of each link while a cloud is down): the gateway filtered only standard output. Now
        the file twistd would write gets the same filtered, throttled log, and is rotated on
        SIGUSR1 as twistd rotates it."""
        self.sigusr1_restored()
        path = Path(self.mktemp())
        reactor = ThreadCalls()
        observer = twistd_observer({"nodaemon": True, "logfile": str(path)}, reactor)
        self.assertIsInstance(observer, AcceptErrorLines)
        assert observer is not None
        Logger(namespace="twisted.application._client_service.ClientService", observer=observer).info(
            "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.", attempt=3, endpoint="x", delay=1.5)
        Logger(namespace="twisted.web.client._HTTP11ClientFactory", observer=observer).info(
            "Starting factory {factory!r}", factory=object())
        Logger(namespace="gateway.links.mqtt.MQTTLink", observer=observer).warn("link cloud cannot connect: refused")
        text = path.read_text()
        self.assertNotIn("Scheduling retry", text)
        self.assertNotIn("Starting factory", text)
        self.assertIn("[gateway.links.mqtt.MQTTLink#warn] link cloud cannot connect: refused", text)
        os.kill(os.getpid(), signal.SIGUSR1)
        self.assertEqual(len(reactor.calls), 1)
        reactor.calls[0]()
        self.assertIn("link cloud cannot connect", Path(f"{path}.1").read_text())
        Logger(namespace="gateway.tree", observer=observer).info("after the rotation")
        self.assertEqual(path.read_text().count("\n"), 1)

    def test_a_daemon_logs_to_twistd_log(self) -> None:
        """A daemon without ``--logfile`` writes ``twistd.log`` in its directory, as twistd does."""
        self.sigusr1_restored()
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(work)
        observer = twistd_observer({"nodaemon": False, "logfile": None}, Clock())
        assert observer is not None
        Logger(namespace="gateway.tree", observer=observer).info("gateway started")
        self.assertIn("gateway started", (work / "twistd.log").read_text())

    def test_syslog_is_filtered_too(self) -> None:
        """``--syslog`` gets the same filtered log, under twistd's ``--prefix``."""
        opened: list[tuple[object, ...]] = []
        lines: list[str] = []
        self.patch(SyslogObserver, "openlog", staticmethod(lambda *args: opened.append(args)))
        self.patch(SyslogObserver, "syslog", staticmethod(lambda priority, line: lines.append(line)))
        observer = twistd_observer({"nodaemon": True, "syslog": True, "prefix": "gateway"}, Clock())
        assert observer is not None
        Logger(namespace="twisted.application._client_service.ClientService", observer=observer).info(
            "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds.", attempt=3, endpoint="x", delay=1.5)
        Logger(namespace="gateway.links.mqtt.MQTTLink", observer=observer).warn("link cloud cannot connect: refused")
        self.assertEqual(opened[0][0], "gateway")
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("link cloud cannot connect: refused", lines[0])

    def test_no_line_per_reconnect_of_a_link(self) -> None:
        """ClientService's "Scheduling retry N to connect <... object at 0x...> in D seconds."
        is left out: one per attempt for as long as a cloud is down (150 an hour at the default
        backoff_max), when the link logs why it cannot connect itself. Its other lines, and the
        same words from elsewhere, pass."""
        retry = "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds."
        self.assertEqual(without_retry_lines({"log_namespace": "twisted.application._client_service.ClientService",
                                              "log_format": retry, "attempt": 3, "endpoint": object(), "delay": 4.9}),
                         PredicateResult.no)
        for event in ({"log_namespace": "twisted.application._client_service.ClientService",
                       "log_format": "Duplicate ClientService.startService {log_source}"},
                      {"log_namespace": "gateway.links", "log_format": retry}, {"message": ("x",), "isError": 0}):
            self.assertEqual(without_retry_lines(event), PredicateResult.maybe, event)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = twistd_observer({"nodaemon": True}, Clock())
        assert observer is not None
        service_log = Logger(namespace="twisted.application._client_service.ClientService", observer=observer)
        service_log.info(retry, attempt=3, endpoint=object(), delay=4.9)
        service_log.warn("Duplicate ClientService.startService {log_source}")
        self.assertNotIn("Scheduling retry", out.getvalue())
        self.assertIn("Duplicate ClientService.startService", out.getvalue())

    def test_no_lines_of_ports_opening_and_closing(self) -> None:
        """Twisted's "<factory> starting on <port>" and "(TCP Port <port> Closed)" lines, eight
        at every start, stop and configuration change on a real gateway (beside the gateway's
        own "broker listener default on ..."), are left out; other legacy lines pass."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = twistd_observer({"nodaemon": True}, Clock())
        assert observer is not None
        legacy_log.addObserver(observer)  # (as twistd's log observer, the legacy API's lines come through it)
        self.addCleanup(legacy_log.removeObserver, observer)
        for line in ("MQTTListenerFactory starting on 1883", "LazySite starting on '/run/gateway/admin.sock'",
                     "(TCP Port 1883 Closed)", "(UNIX Port /run/gateway/admin.sock Closed)",
                     "MQTTListenerFactory (TLS) starting on 8883", "(TLS Port 8883 Closed)"):
            legacy_log.msg(line)
        legacy_log.msg("a factory starting on a Monday")
        self.assertNotIn("Port", out.getvalue())
        self.assertNotIn("starting on 1883", out.getvalue())
        self.assertIn("a factory starting on a Monday", out.getvalue())

    def test_no_lines_per_connection_of_an_http_link(self) -> None:
        """The "Starting factory _HTTP11ClientFactory(<function ... at 0x...>, ...)" and
        "Stopping factory ..." lines Twisted's HTTP client logs for each connection an HTTP
        link opens are left out: two per retry of a failing cloud (seen on a real gateway
        against a failing Exosite server: 18 of its 125 lines), two per request to a server
        that closes every connection. Other factories' lines, and the client's other lines, pass."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = twistd_observer({"nodaemon": True}, Clock())
        assert observer is not None
        client_log = Logger(namespace="twisted.web.client._HTTP11ClientFactory", observer=observer)
        client_log.info("Starting factory {factory!r}", factory=object())
        client_log.info("Stopping factory {factory!r}", factory=object())
        client_log.warn("something else")
        Logger(namespace="twisted.internet.protocol.Factory", observer=observer).info(
            "Starting factory {factory!r}", factory="other")
        self.assertNotIn("_HTTP11ClientFactory#info", out.getvalue())
        self.assertIn("something else", out.getvalue())
        self.assertIn("Starting factory 'other'", out.getvalue())

    def test_the_application_gets_it(self) -> None:
        """The root service hands its observer to twistd's application, which twistd logs to."""
        root = GatewayService(Clock(), 1.0)
        observer = twistd_observer({"nodaemon": True}, Clock())
        root.log_observer = observer
        application = Application("gateway")
        root.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), observer)
