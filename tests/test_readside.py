"""The read side: to_jsonable, ReadSide, rates and certificates (unit), and every service's
snapshot moving with real traffic through the whole tree (broker, journal, a TLS link to a
real mosquitto)."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway import __version__
from gateway import config as gateway_config
from gateway.broker.snapshot import BrokerSnapshot
from gateway.certinfo import DAY, CertificateInfo, at, read_certificate
from gateway.clockstep import CLOCK_SET_SINCE
from gateway.commands.reconfigure import PendingChange
from gateway.containers.snapshot import ContainersSnapshot
from gateway.containers.supervisor import UNREACHABLE
from gateway.degraded import Degraded
from gateway.ingest.snapshot import IngestSnapshot
from gateway.journal.record import Record
from gateway.journal.snapshot import JournalSnapshot
from gateway.links.snapshot import LinksSnapshot
from gateway.telemetry.snapshot import AccountingSnapshot
from gateway.twin.snapshot import TwinSnapshot
from gateway.links.rate import RateMeter
from gateway.offservice import OffService
from gateway.lastrun import PreviousStop
from gateway.readside import GatewayStatus, ReadSide, ServiceState, to_jsonable
from gateway.tree import build_service
from tests.ingest.test_integration import CIK, http_client
from tests.journal.helpers import appended, refusing_journal
from tests.links.mosquitto import Mosquitto
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.steppingclock import SteppingClock
from tests.tlscerts import make_pki


class Colour(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Inner:
    path: Path
    colour: Colour


@dataclass(frozen=True)
class Outer:
    name: str
    ratio: float
    items: tuple[Inner, ...]
    extra: dict[int, float | None]


class ToJsonableTests(SynchronousTestCase):
    """Snapshots become plain JSON data."""

    def test_nested_dataclasses_enums_paths_and_floats(self) -> None:
        """Dataclasses become dicts in field order, tuples lists, enums values, paths strings,
        mapping keys strings, and NaN/infinity None (JSON cannot carry them)."""
        value = Outer("x", float("nan"), (Inner(Path("/a/b"), Colour.RED),), {1: float("inf"), 2: 0.5})
        data = to_jsonable(value)
        self.assertEqual(data, {"name": "x", "ratio": None, "items": [{"path": "/a/b", "colour": "red"}],
                                "extra": {"1": None, "2": 0.5}})
        self.assertEqual(list(data), ["name", "ratio", "items", "extra"])
        json.dumps(data, allow_nan=False)

    def test_a_field_marked_never_shown_is_left_out(self) -> None:
        """A field marked NEVER_SHOWN (a pending change's previous drop-in, which may hold
        secrets) is never in the data, whatever its value; the others are, in order."""
        pending = PendingChange("admin", ("a.b",), "a: {password: SECRET}\n", 10.0, ("cloud",), 5.0)
        self.assertEqual(to_jsonable(pending), {"origin": "admin", "keys": ["a.b"], "deadline": 10.0,
                                                "required_links": ["cloud"], "applied_at": 5.0, "boot": "",
                                                "boot_deadline": 0.0})
        self.assertNotIn("SECRET", json.dumps(to_jsonable({"pending": pending, "all": [pending]})))

    def test_bytes_become_text(self) -> None:
        """Bytes become text (readside.md): UTF-8, a byte that is not UTF-8 as U+FFFD."""
        self.assertEqual(to_jsonable({"a": b"caf\xc3\xa9", "b": bytearray(b"\xff")}), {"a": "caf\u00e9", "b": "\ufffd"})

    def test_unknown_types_are_refused(self) -> None:
        """A value that is not data (an object) is a bug: TypeError names its type."""
        error = self.assertRaises(TypeError, to_jsonable, {"x": object()})
        self.assertIn("object", str(error))


#: Snapshots in which nothing fails, of the services whose state the status reads from theirs.
WELL: dict[str, Any] = {
    "journal": JournalSnapshot("/j", ()),
    "broker": BrokerSnapshot(True, 0, 0, 0, 0, (0, 0, 0), (0, 0, 0), 0, 0, 0, 0, 0, 0, (), ()),
    "twin": TwinSnapshot("acme:gw1", 1, 1, None),
    "links": LinksSnapshot(()),
}


class FakeService:
    """A service of the tree with a snapshot (by default its :data:`WELL` one, if any)."""

    def __init__(self, name: str, running: bool, snap: Any = None) -> None:
        self.name, self.running, self.snap = name, running, snap if snap is not None else WELL.get(name)

    def snapshot(self) -> Any:
        return self.snap


class ReadSideTests(SynchronousTestCase):
    """ReadSide hands out each service's snapshot and the process status."""

    def tree(self, sections: str) -> Any:
        """The real service tree (not started) of a configuration of ``sections`` (YAML lines)
        beside a state directory of its own; its state directory's lock is let go at the end."""
        work = Path(self.mktemp())
        work.mkdir()
        path = work / "gateway.yaml"
        path.write_text(f"gateway: {{state_dir: {work / 'state'}}}\n" + sections)
        root = build_service(gateway_config.load(path), reactor)
        self.addCleanup(root.getServiceNamed("state").stopService)  # (the state directory's lock)
        return root

    def test_status_and_snapshots(self) -> None:
        """Uptime counts from construction; services are listed in tree order; each method
        returns that service's snapshot as it is."""
        clock = Clock()
        clock.advance(1000)
        services = [FakeService("journal", True), FakeService("broker", True),
                    FakeService("links", False), FakeService("apps", True, "A"), FakeService("updates", True, "U")]
        side = ReadSide(clock, services[1], services[0], services[2], services[3], services[4],
                        services=services, pid=42)
        clock.advance(12.25)
        self.assertEqual(side.status(), GatewayStatus(__version__, 1000.0, 12, 42, (
            ServiceState("journal", True), ServiceState("broker", True), ServiceState("links", False),
            ServiceState("apps", True), ServiceState("updates", True))))
        self.assertEqual((side.broker(), side.journal(), side.links(), side.apps(), side.updates()),
                         (WELL["broker"], WELL["journal"], WELL["links"], "A", "U"))
        self.assertEqual((side.ingest(), side.twin(), side.fleet()), (None, None, None))  # no ingest, twin, fleet

    def test_uptime_is_whole_seconds(self) -> None:
        """docs/admin.md: the gateway's ``uptime_s`` is whole seconds, to the nearest, as its
        programs' and containers' are (it was 6.7 in GET /status and 7 in GET /apps)."""
        clock = Clock()
        services = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(clock, *services, services=services, pid=42)
        clock.advance(6.7)
        uptime = side.status().uptime_s
        self.assertEqual((uptime, type(uptime)), (7, int))

    def test_the_status_says_how_the_previous_run_ended(self) -> None:
        """The status's previous_stop is what the state directory's service found as it started
        (docs/readside.md, the previous run); without one, no previous run is known."""
        services = [FakeService("journal", True), FakeService("broker", True), FakeService("links", True),
                    FakeService("apps", True, "A"), FakeService("updates", True, "U")]
        previous = PreviousStop("unclean", 900.0, 4000, 10.0, "reboot", 2, 900.0)
        side = ReadSide(Clock(), services[1], services[0], services[2], services[3], services[4],
                        previous_stop=lambda: previous)
        self.assertEqual(side.status().previous_stop, previous)
        without = ReadSide(Clock(), services[1], services[0], services[2], services[3], services[4])
        self.assertEqual(without.status().previous_stop, PreviousStop("none"))

    def test_pid_is_the_process_that_runs(self) -> None:
        """Without a pid given, the status names the process it is asked in: twistd without
        --nodaemon builds the tree and then forks, and the status (gatewayctl status,
        device_info) named the parent that had exited, not the pid in twistd's pid file."""
        services = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(Clock(), *services, services=services)
        self.assertEqual(side.status().pid, os.getpid())
        self.patch(os, "getpid", lambda: 4242)  # the daemon twistd forked
        self.assertEqual(side.status().pid, 4242)

    def test_uptime_across_steps_of_the_wall_clock(self) -> None:
        """docs/readside.md: started_at is a time (the wall clock's), uptime_s a duration. NTP
        steps the clock of a gateway booted at 1970 forward by 56 years, then back an hour:
        the uptime is the time it ran (it was 56 years, then 0 for an hour), and it goes on
        across a configuration change's new read side."""
        clock = SteppingClock()
        clock.advance(100)
        services = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(clock, *services, services=services, pid=42)
        clock.advance(30)
        clock.step(56 * 365 * 86400.0)
        clock.advance(10)
        self.assertEqual((side.status().started_at, side.status().uptime_s), (100.0, 40.0))
        clock.step(-3600.0)
        clock.advance(5)
        again = ReadSide(clock, *services, services=services, pid=42)
        again.goes_on_from(side)
        self.assertEqual((again.status().started_at, again.status().uptime_s), (100.0, 45.0))

    def test_the_reactors_lag(self) -> None:
        """The status says how late the reactor ran its timers at worst lately, when it
        measures that (the gateway's reactor, gateway/reactorlag.py); 0.0 otherwise."""
        services = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        self.assertEqual(ReadSide(Clock(), *services, services=services, pid=42).status().reactor_lag_s, 0.0)

        class LateClock(Clock):
            def timers_late(self) -> float:
                return 5.4

        self.assertEqual(ReadSide(LateClock(), *services, services=services, pid=42).status().reactor_lag_s, 5.4)

    def test_ingest_twin_and_fleet(self) -> None:
        """The ingest's, the twin's and the fleet's snapshots, when the tree has those services."""
        services = [FakeService(name, True, name.upper()) for name in ("broker", "journal", "links", "apps",
                                                                        "updates", "ingest", "twin", "fleet")]
        side = ReadSide(Clock(), *services[:5], services=services, ingest=services[5], twin=services[6],
                        fleet=services[7])
        self.assertEqual((side.ingest(), side.twin(), side.fleet()), ("INGEST", "TWIN", "FLEET"))

    def test_an_ingest_that_could_not_listen_says_so_in_the_status(self) -> None:
        """The ingest's port was in use: the gateway goes on without it (docs/exosite.md), and
        its service is started, but the status (gatewayctl status) said only ``running``. Its
        state now says it is not listening and why, from the ingest's snapshot; the other
        services, and an ingest that listens (or is off: not listening, no error), have none."""
        failed = IngestSnapshot(False, "Couldn't listen on 127.0.0.1:8090: [Errno 98] Address already in use.",
                                0, 0, 0, 0, 0, 0, 0)
        ingest = FakeService("ingest", True, failed)
        services = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(Clock(), *services, services=[*services, ingest], ingest=ingest)
        states = side.status().services
        self.assertEqual(states[-1], ServiceState("ingest", True, "not listening: Couldn't listen on"
                                                  " 127.0.0.1:8090: [Errno 98] Address already in use."))
        self.assertEqual({s.error for s in states[:-1]}, {""})
        for fine in (IngestSnapshot(True, "", 0, 0, 0, 0, 0, 0, 0), IngestSnapshot(False, "", 0, 0, 0, 0, 0, 0, 0)):
            ingest.snap = fine
            self.assertEqual(side.status().services[-1], ServiceState("ingest", True, ""))

    def test_a_journal_refusing_appends_says_so_in_the_status(self) -> None:
        """A journal whose stream a full disk makes refuse every append ran on as ``running``
        with no error (gatewayctl status, GET /status): its state now says why, since when and
        how many were refused, from the journal's snapshot (and that the refusals' loss counts
        are not written either); and nothing once appends work."""
        clock = Clock()
        clock.advance(1796211823)
        journal = refusing_journal(clock)
        others = [FakeService(name, True) for name in ("broker", "links", "apps", "updates")]
        side = ReadSide(clock, others[0], journal, *others[1:], services=[journal, *others])
        self.assertEqual(side.status().services[0], ServiceState(
            "journal", True, "min-free-disk: link-cloud refuses appends: 0 bytes free on the disk, min_free_bytes"
            " is 0 (since 2026-12-02T11:43:43Z, 2 failed); ledger-not-saved: link-cloud's loss ledger: [Errno 28]"
            " No space left on device: '/state/journal/link-cloud/losses.json.tmp' (since 2026-12-02T11:43:43Z,"
            " 1 failed)"))
        self.assertEqual({s.error for s in side.status().services[1:]}, {""})
        journal.files.capacity = 1 << 30  # type: ignore[attr-defined]
        clock.advance(journal.settings.retention_check_s)  # (the free space measured again)
        self.successResultOf(appended(journal.stream("link-cloud"), Record("t", b"x")))
        self.assertEqual(side.status().services[0], ServiceState("journal", True, ""))


    def test_a_checkpoint_or_twin_not_saved_says_so_in_the_status(self) -> None:
        """The broker whose checkpoint saves fail and the twin whose things.json writes fail
        (a full disk) give their snapshot's failure as their state's error; they said only
        ``running``."""
        checkpoint = Degraded("checkpoint-not-saved", "[Errno 28] No space left on device", 0.0, 3)
        twin = FakeService("twin", True, TwinSnapshot("acme:gw1", 1, 1, None, dataclasses.replace(
            checkpoint, reason="not-saved", failures=1)))
        broker = FakeService("broker", True, dataclasses.replace(WELL["broker"], checkpoint_failing=checkpoint))
        others = [FakeService(name, True) for name in ("journal", "links", "apps", "updates")]
        side = ReadSide(Clock(), broker, *others, services=[broker, twin], twin=twin)
        self.assertEqual(side.status().services, (
            ServiceState("broker", True, "checkpoint-not-saved: [Errno 28] No space left on device"
                                         " (since 1970-01-01T00:00:00Z, 3 failed)"),
            ServiceState("twin", True, "not-saved: [Errno 28] No space left on device"
                                       " (since 1970-01-01T00:00:00Z, 1 failed)")))


    def test_app_accounting_off_or_failing_says_so_in_the_status(self) -> None:
        """The per-app accounting whose nft failed at start counted nothing and said ``running``:
        its state's error now says why (a failure, as the other services' are); one off for an
        ordinary reason (not root, no nft, ``app_accounting: off``) is not in error, its ``off``
        says why; one that counts has neither. ``off`` is in the JSON only when it says something."""
        failed = Degraded("table-not-made", "nft cannot run: [Errno 9] Bad file descriptor", 0.0, 1)
        accounting = FakeService("app-accounting", True, AccountingSnapshot(False, "", failed))
        others = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(Clock(), *others, services=[accounting, *others], accounting=accounting)
        self.assertEqual(side.accounting(), accounting.snap)
        self.assertEqual(side.status().services[0], ServiceState(
            "app-accounting", True, "table-not-made: nft cannot run: [Errno 9] Bad file descriptor"
                                    " (since 1970-01-01T00:00:00Z, 1 failed)"))
        accounting.snap = AccountingSnapshot(False, "the gateway does not run as root", None)
        self.assertEqual(side.status().services[0],
                         ServiceState("app-accounting", True, "", "the gateway does not run as root"))
        self.assertEqual(to_jsonable(side.status().services[0]), {
            "name": "app-accounting", "running": True, "error": "", "off": "the gateway does not run as root"})
        self.assertEqual({(s.error, s.off) for s in side.status().services[1:]}, {("", "")})
        self.assertEqual(to_jsonable(side.status().services[1]), {"name": "broker", "running": True, "error": ""})
        accounting.snap = AccountingSnapshot(True, "", None)
        self.assertEqual(side.status().services[0], ServiceState("app-accounting", True, ""))
        self.assertIsNone(ReadSide(Clock(), *others).accounting())

    def test_an_ingest_or_twin_off_by_configuration_says_so_in_the_status(self) -> None:
        """With ``ingest.enabled: false`` the ingest said ``running`` while it listened nowhere:
        its snapshot's ``off`` is its state's ``off``. A service the configuration turned off
        and the tree has only as an :class:`OffService` (the twin) says so the same way."""
        off = IngestSnapshot(False, "", 0, 0, 0, 0, 0, 0, 0, "ingest.enabled: false")
        ingest = FakeService("ingest", True, off)
        twin = OffService("twin", "twin.enabled: false")
        twin.startService()
        services = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(Clock(), *services, services=[*services, ingest, twin], ingest=ingest)
        self.assertEqual(side.status().services[-2:], (
            ServiceState("ingest", True, "", "ingest.enabled: false"),
            ServiceState("twin", True, "", "twin.enabled: false")))
        self.assertEqual({s.off for s in side.status().services[:-2]}, {""})
        self.assertIsNone(side.twin())
        ingest.snap = IngestSnapshot(True, "", 0, 0, 0, 0, 0, 0, 0)
        self.assertEqual(side.status().services[-2], ServiceState("ingest", True, ""))

    def test_the_tree_lists_an_ingest_and_twin_turned_off(self) -> None:
        """Built with ``ingest.enabled: false`` and ``twin.enabled: false``, the tree's status
        listed the ingest as ``running`` and the twin not at all: both are there, off, each
        naming its configuration key; the twin's own module is still not imported for it."""
        root = self.tree("telemetry: {metrics_endpoint: ''}\ningest: {enabled: false}\ntwin: {enabled: false}\n")
        states = {s.name: s for s in root.parts.readside.status().services}
        self.assertEqual((states["ingest"].off, states["twin"].off),
                         ("ingest.enabled: false", "twin.enabled: false"))
        self.assertEqual(root.parts.readside.ingest().off, "ingest.enabled: false")
        self.assertIsNone(root.parts.twin)

    def test_the_tree_lists_containers_fleet_and_metrics_turned_off(self) -> None:
        """Containers and the fleet client are off unless configured, and the status did not
        list them then: they are there, off, each naming its configuration key. So is the
        ``metrics`` service with ``telemetry.metrics_endpoint: ""`` (the status said
        ``telemetry running`` and nothing of /metrics), after the telemetry service, which
        runs (its reports go on)."""
        root = self.tree("telemetry: {metrics_endpoint: ''}\n")
        states = {s.name: s for s in root.parts.readside.status().services}
        self.assertEqual((states["containers"].off, states["fleet"].off),
                         ("containers.enabled: false", "fleet.enabled: false"))
        self.assertEqual((root.parts.containers, root.parts.fleet), (None, None))
        self.assertEqual((states["metrics"].off, states["telemetry"].off), ('telemetry.metrics_endpoint: ""', ""))
        self.assertLess(list(states).index("telemetry"), list(states).index("metrics"))

    def test_the_tree_gives_the_containers_snapshot_to_the_status(self) -> None:
        """With containers on, the read side has the containers service's snapshot, and its
        ``runtime_failing`` (podman not reached) is the service's error in the status."""
        root = self.tree("containers: {enabled: true, socket: /tmp/gw-podman.sock}\n")  # (never made: not started)
        service = root.parts.containers
        self.assertEqual(root.parts.readside.containers(), ContainersSnapshot(None))
        failing = service.supervisor.runtime_failing.failed(UNREACHABLE, "podman does not answer: no socket", 0.0)
        self.assertEqual(root.parts.readside.containers(), ContainersSnapshot(failing))
        [state] = [s for s in root.parts.readside.status().services if s.name == "containers"]
        self.assertEqual(state.error, "podman-unreachable: podman does not answer: no socket"
                                      " (since 1970-01-01T00:00:00Z, 1 failed)")

    def test_a_journal_whose_loss_ledger_is_not_written_says_so_in_the_status(self) -> None:
        """A journal whose stream's loss ledger the disk refuses gives its ``ledger_failing`` as
        its state's error, after its ``refusing`` when both hold; it said only ``running``."""
        ledger = Degraded("ledger-not-saved", "link-cloud's loss ledger: [Errno 28] No space left on device", 0.0, 2)
        refusing = Degraded("disk-full", "link-cloud refuses appends: [Errno 28] No space left on device", 0.0, 5)
        journal = FakeService("journal", True, JournalSnapshot("/j", (), None, ledger))
        others = [FakeService(name, True) for name in ("broker", "links", "apps", "updates")]
        side = ReadSide(Clock(), others[0], journal, *others[1:], services=[journal, *others])
        self.assertEqual(side.status().services[0], ServiceState(
            "journal", True, "ledger-not-saved: link-cloud's loss ledger: [Errno 28] No space left on device"
                             " (since 1970-01-01T00:00:00Z, 2 failed)"))
        journal.snap = JournalSnapshot("/j", (), refusing, ledger)
        self.assertEqual(side.status().services[0].error,
                         "disk-full: link-cloud refuses appends: [Errno 28] No space left on device"
                         " (since 1970-01-01T00:00:00Z, 5 failed); ledger-not-saved: link-cloud's loss ledger:"
                         " [Errno 28] No space left on device (since 1970-01-01T00:00:00Z, 2 failed)")
        self.assertEqual({s.error for s in side.status().services[1:]}, {""})

    def test_a_link_cursor_not_saved_says_so_in_the_status(self) -> None:
        """The links service whose link's cursor saves fail (a full disk) gives the links'
        failure as its state's error; it said only ``running``."""
        failing = Degraded("cursor-not-saved", "link cloud: [Errno 28] No space left on device", 0.0, 5)
        links = FakeService("links", True, LinksSnapshot((), failing))
        others = [FakeService(name, True) for name in ("broker", "journal", "apps", "updates")]
        side = ReadSide(Clock(), others[0], others[1], links, *others[2:], services=[links, *others])
        self.assertEqual(side.status().services[0], ServiceState(
            "links", True, "cursor-not-saved: link cloud: [Errno 28] No space left on device"
                           " (since 1970-01-01T00:00:00Z, 5 failed)"))
        self.assertEqual({s.error for s in side.status().services[1:]}, {""})


    def test_containers_that_do_not_reach_podman_say_so_in_the_status(self) -> None:
        """The containers service while podman does not answer gives its snapshot's
        ``runtime_failing`` as its state's error (gatewayctl status, GET /status,
        ``gateway_service_degraded``); it said only ``running``, and only the container apps
        and the log said podman was down."""
        failing = Degraded("podman-unreachable", "podman does not answer: cannot connect to its socket:"
                           " connection refused", 0.0, 3)
        containers = FakeService("containers", True, ContainersSnapshot(failing))
        others = [FakeService(name, True) for name in ("broker", "journal", "links", "apps", "updates")]
        side = ReadSide(Clock(), *others, services=[containers, *others], containers=containers)
        self.assertEqual(side.containers(), containers.snap)
        self.assertEqual(side.status().services[0], ServiceState(
            "containers", True, "podman-unreachable: podman does not answer: cannot connect to its socket:"
                                " connection refused (since 1970-01-01T00:00:00Z, 3 failed)"))
        self.assertEqual({s.error for s in side.status().services[1:]}, {""})
        containers.snap = ContainersSnapshot(None)
        self.assertEqual(side.status().services[0], ServiceState("containers", True, ""))
        self.assertIsNone(ReadSide(Clock(), *others).containers())


class RateMeterTests(SynchronousTestCase):
    """A drain rate over the last ten seconds, from a running total."""

    def test_rate_over_the_window_and_decay(self) -> None:
        """10 events a second for 20 s reads 10/s; 20 s idle later it reads 0."""
        meter = RateMeter(0.0)
        for second in range(1, 21):
            meter.add(10, second + 0.5)
        self.assertEqual(meter.rate(21.0), 10.0)
        self.assertEqual(meter.rate(41.0), 0.0)
        self.assertEqual(RateMeter(5.0).rate(5.0), 0.0)

    def test_a_burst_after_a_pause_is_spread_over_the_window(self) -> None:
        """60 records acknowledged at once after a quiet minute are 6 a second over the last
        10 s, for as long as they are in them: not 60 a second (their second alone), nor 0
        (one batch counted after the sample it made). It was 59/s, then 0/s."""
        for batches in ([(1, 100.0), (59, 100.01)], [(60, 100.0)]):
            meter = RateMeter(0.0)
            meter.add(5, 30.0)
            for n, when in batches:
                meter.add(n, when)
            self.assertAlmostEqual(meter.rate(101.0), 6.0)
            self.assertAlmostEqual(meter.rate(109.9), 6.0)
            self.assertEqual(meter.rate(110.2), 0.0)

    def test_a_meter_younger_than_the_window(self) -> None:
        """Events within the first seconds count over the time the meter has run, while they
        are in the last ten seconds, and not once they are older: 20 s later the rate is 0."""
        meter = RateMeter(0.0)
        meter.add(12, 0.2)
        meter.add(3, 0.5)
        self.assertEqual(meter.rate(5.0), 3.0)
        self.assertEqual(meter.rate(9.0), 15 / 9.0)
        self.assertEqual(meter.rate(10.6), 0.0)
        self.assertEqual(meter.rate(30.0), 0.0)


class CertificateTests(SynchronousTestCase):
    """Certificate files are read once; days left are computed at each snapshot."""

    def test_days_left(self) -> None:
        """The test PKI's certificates expire in two days; an unreadable file says why."""
        pki = make_pki(Path(self.mktemp()))
        info = read_certificate("link cloud client", pki["client_cert"])
        self.assertIn("device-1", info.subject)
        import time
        snap = at(info, time.time())
        assert snap.days_left is not None
        self.assertTrue(1.99 < snap.days_left <= 2.0, snap.days_left)
        self.assertAlmostEqual(at(info, info.not_after - 3 * DAY).days_left, 3.0)  # type: ignore[operator]
        missing = read_certificate("x", "/nonexistent.pem")
        self.assertEqual((missing.not_after, missing.subject), (None, ""))
        self.assertIn("No such file", missing.error)
        self.assertIsNone(at(CertificateInfo("x", "", "", None), 0.0).days_left)

    def test_no_days_left_while_the_clock_is_not_set(self) -> None:
        """A gateway without a real-time clock at 1970, before NTP: a certificate's days left
        are unknown (they were some 20,000: a report or an alert on them read nonsense), its
        expiry still given; /metrics gives no expiry for it, and still counts it readable."""
        info = CertificateInfo("link cloud client", "/etc/gateway/client.pem", "CN=device-1", 1830297600.0)
        snap = at(info, 60.0)
        self.assertEqual((snap.not_after, snap.days_left), (1830297600.0, None))
        self.assertIsNotNone(at(info, CLOCK_SET_SINCE).days_left)


class ListenerCertificateTests(SynchronousTestCase):
    """Which files a broker listener's certificates come from."""

    def test_ssl_listener_files(self) -> None:
        """certKey (else privateKey) is the server certificate; cafile the client CA; tcp has none."""
        from gateway.broker.service import listener_cert_files
        from gateway.broker.settings import ListenerSettings

        self.assertEqual(listener_cert_files(ListenerSettings("a", "ssl:8883:privateKey=/k.pem:certKey=/c.pem",
                                                              "/ca.pem")), [("server", "/c.pem"), ("ca", "/ca.pem")])
        self.assertEqual(listener_cert_files(ListenerSettings("b", "ssl:8883:privateKey=/both.pem")),
                         [("server", "/both.pem")])
        self.assertEqual(listener_cert_files(ListenerSettings("c", "tcp:1883")), [])

    def test_ca_in_the_endpoint(self) -> None:
        """A CA given as the endpoint's ``cafile=`` (docs/configuration.md: with ``cafile:``,
        ``cafile=`` or ``caCertsDir=``, client certificates are verified against it) is the
        listener's CA too, so its expiry is watched (telemetry.md: each ssl: broker listener's
        server certificate and cafile); it was left out. The listener's ``cafile:`` wins, as
        in the TLS options."""
        from gateway.broker.service import listener_cert_files
        from gateway.broker.settings import ListenerSettings

        endpoint = "ssl:8883:privateKey=/k.pem:certKey=/c.pem:cafile=/in-endpoint.pem"
        self.assertEqual(listener_cert_files(ListenerSettings("a", endpoint)),
                         [("server", "/c.pem"), ("ca", "/in-endpoint.pem")])
        self.assertEqual(listener_cert_files(ListenerSettings("b", endpoint, "/ca.pem")),
                         [("server", "/c.pem"), ("ca", "/ca.pem")])


class TreeSnapshotTests(TestCase):
    """Every service's snapshot, taken through the tree's ReadSide, moves with real traffic."""

    timeout = 60

    @inlineCallbacks
    def test_traffic_moves_every_snapshot(self) -> None:
        """QoS 1 publishes from a local client go through the broker and the journal up a TLS
        link to mosquitto: the broker counts them in, the link's stream counts appends and
        fsyncs, the link counts sent, acked and bytes, shows its certificates' days left, and
        the status lists every service running; a write to the local HTTP ingest and a twin
        command move the ingest's and the twin's snapshots."""
        work = Path(self.mktemp()).resolve()
        pki = make_pki(work / "pki")
        cloud = Mosquitto(reactor, work / "cloud", free_port(), pki)
        yield cloud.start()
        self.addCleanup(cloud.stop)
        port, ingest_port = free_port(), free_port()
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            "telemetry:\n  metrics_endpoint: ''\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            f"    tls:\n      endpoint: 'ssl:{free_port()}:interface=127.0.0.1:privateKey={pki['server_key']}"
            f":certKey={pki['server_cert']}'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tls:host=localhost:port={cloud.port}'\n"
            f"      ca_file: {pki['ca']}\n      cert_file: {pki['client_cert']}\n"
            f"      key_file: {pki['client_key']}\n      backoff_initial: 0.1\n"
            f"ingest:\n  endpoint: 'tcp:{ingest_port}:interface=127.0.0.1'\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        side: ReadSide = root.parts.readside
        for _ in range(200):
            if side.links().links[0].state == "connected":
                break
            yield deferLater(reactor, 0.05, lambda: None)
        before = side.links().links[0]
        self.assertEqual(before.state, "connected")
        self.assertIsNotNone(before.connected_since)
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(port)
        for i in range(5):
            yield client.publish("telemetry/room", b"21.%d" % i, 1)
        for _ in range(200):
            link = side.links().links[0]
            if link.acked >= 5 and link.backlog == 0:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        broker = side.broker()
        self.assertTrue(broker.running)
        self.assertEqual(broker.messages_in[1], 5)
        self.assertEqual(broker.payload_bytes_in, 5 * 4)
        self.assertGreaterEqual(broker.connections, 1)
        self.assertGreater(broker.listeners[0].bytes_received, 0)
        self.assertGreaterEqual(broker.listeners[0].bytes_sent, 2 + 5 * 4)  # its CONNACK and PUBACKs at least
        [server] = broker.certificates
        self.assertEqual((server.role, server.path), ("broker listener tls server", pki["server_cert"]))
        assert server.days_left is not None
        self.assertTrue(1.99 < server.days_left <= 2.0, server)
        self.assertEqual([ls.name for ls in broker.listeners], ["default", "tls"])
        [stream] = [s for s in side.journal().streams if s.name == "link-cloud"]
        self.assertGreaterEqual(stream.appends, 5)
        self.assertGreaterEqual(stream.fsyncs, 1)
        self.assertEqual(stream.fsync_latency.count, stream.fsyncs)
        link = side.links().links[0]
        self.assertEqual((link.name, link.connects, link.reconnects, link.in_flight), ("cloud", 1, 0, 0))
        self.assertGreaterEqual(link.sent, 5)
        self.assertGreaterEqual(link.acked, 5)
        self.assertEqual(link.backlog, 0)
        self.assertGreater(link.bytes_up, before.bytes_up)
        self.assertGreater(link.bytes_down, 0)
        roles = {c.role: c for c in link.certificates}
        self.assertEqual(set(roles), {"link cloud client", "link cloud ca", "link cloud server"})
        for cert in roles.values():
            assert cert.days_left is not None
            self.assertTrue(1.99 < cert.days_left <= 2.0, cert)
        status = side.status()
        self.assertTrue(all(s.running for s in status.services), status)
        self.assertEqual(side.apps().apps, ())
        self.assertEqual(side.updates().operations, ())
        json.dumps(to_jsonable((status, broker, side.journal(), link, side.apps(), side.updates())), allow_nan=False)

        ingest = side.ingest()
        assert ingest is not None
        self.assertEqual((ingest.listening, ingest.writes, ingest.values), (True, 0, 0))
        response = yield http_client(self).post(f"http://127.0.0.1:{ingest_port}/onep:v1/stack/alias",
                                                data=b"temp=21.5", headers=CIK)
        yield treq.content(response)
        self.assertEqual(response.code, 204)
        ingest = side.ingest()
        assert ingest is not None
        self.assertEqual((ingest.writes, ingest.values, ingest.unrouted, ingest.aliases), (1, 1, 0, 1))

        twin = side.twin()
        assert twin is not None
        namespace, name = twin.root.split(":", 1)
        yield client.publish("e", json.dumps({"topic": f"{namespace}/{name}/things/twin/commands/modify",
                                              "path": "/attributes/site", "value": "hall"}).encode(), 1)
        for _ in range(200):
            moved = side.twin()
            if moved is not None and moved.revision > twin.revision:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        assert moved is not None
        self.assertEqual((moved.root, moved.revision, moved.sync), (twin.root, twin.revision + 1, None))
        self.assertGreaterEqual(moved.things, 1)
        json.dumps(to_jsonable((side.ingest(), moved)), allow_nan=False)
