"""Bytes per hosted app: parsing (unit), and a real app downloading from a local server,
counted through its cgroup v2 and nftables where the kernel allows it."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from gateway import config as gateway_config
from gateway.degraded import Degraded
from gateway.apps.launch import CgroupJoin
from gateway.cgroupmembership import parse_cgroups, unified_path
from gateway.readside import ServiceState
from gateway.telemetry import appbytes
from gateway.telemetry.appbytes import (AccountingService, CgroupPlace, NftAccounting, detect, find_cgroup2,
                                        parse_counters)
from gateway.telemetry.snapshot import AccountingSnapshot
from gateway.tree import build_service
from tests.apps.fakes import FakeProcessReactor
from tests.journal.helpers import ManualRunner
from tests.logevents import capture_log_events
from tests.ports import free_port

BLOB = b"x" * 300_000


class ParsingTests(SynchronousTestCase):
    """What /proc and nft say, read."""

    def test_mounts_and_own_cgroup(self) -> None:
        """The first cgroup2 mount; the 0:: line of /proc/self/cgroup without its slash."""
        mounts = ("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
                  "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")
        self.assertEqual(find_cgroup2(mounts), Path("/sys/fs/cgroup/unified"))
        self.assertIsNone(find_cgroup2("proc /proc proc rw 0 0\n"))
        self.assertEqual(unified_path(parse_cgroups("1:cpu:/\n0::/system.slice/gateway.service\n")),
                         "system.slice/gateway.service")
        self.assertEqual(unified_path(parse_cgroups("0::/\n")), "")

    def test_counters_from_nft_json(self) -> None:
        """Each app's out and in rules give its bytes and packets each way; other rules are ignored."""
        listing = json.dumps({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "gateway_apps"}},
            {"rule": {"chain": "out", "comment": "app=web", "expr": [
                {"match": {}}, {"counter": {"packets": 7, "bytes": 451}}]}},
            {"rule": {"chain": "in", "comment": "app=web", "expr": [{"counter": {"packets": 5, "bytes": 1264}}]}},
            {"rule": {"chain": "in", "expr": [{"counter": {"packets": 1, "bytes": 1}}]}},
        ]}).encode()
        self.assertEqual(parse_counters(listing), {"web": {"bytes_in": 1264, "bytes_out": 451,
                                                           "packets_in": 5, "packets_out": 7}})


class DetectTests(SynchronousTestCase):
    """Why bytes per app are not counted, in the words docs/telemetry.md gives."""

    def test_not_root(self) -> None:
        """Not root (the packaged service runs as user gateway): the reason is "the gateway
        does not run as root"."""
        import os

        self.patch(os, "geteuid", lambda: 1000)
        self.assertEqual(detect(nft="/usr/sbin/nft"), (None, "the gateway does not run as root"))

    def test_a_mount_point_named_in_any_bytes(self) -> None:
        """A mount point whose name is not text in the file system encoding (``/media/café``
        in Latin-1 bytes; any non-ASCII one under ``LC_ALL=C`` with ``PYTHONUTF8=0``) made
        ``/proc/self/mounts`` undecodable: the UnicodeDecodeError ended the gateway's start
        (as root, with nft installed). The cgroup2 mount is found after it as usual."""
        import os

        self.patch(os, "geteuid", lambda: 0)
        proc = Path(self.mktemp())
        (proc / "self").mkdir(parents=True)
        (proc / "self" / "mounts").write_bytes(
            b"/dev/sdb1 /media/caf\xe9 vfat rw 0 0\n/dev/sdc1 /media/cl\xc3\xa9 vfat rw 0 0\n"
            b"cgroup2 /nowhere/cgroup cgroup2 rw 0 0\n")
        (proc / "self" / "cgroup").write_bytes(b"0::/system.slice/gateway.service\n")
        self.assertEqual(detect(nft="/usr/sbin/nft", proc=proc),
                         (None, "cgroup v2 is mounted at /nowhere/cgroup, not under /sys/fs/cgroup where nft looks"))


class SpawnFailureTests(SynchronousTestCase):
    """``nft`` that cannot even be spawned (the process out of descriptors: spawnProcess
    raises) costs the gateway its bytes per app, not its start."""

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.place = CgroupPlace(Path(self.mktemp()).resolve(), "gateway-apps-test")
        self.runner = ManualRunner()
        self.accounting = NftAccounting(self.reactor, self.place, nft="/usr/sbin/nft", table="gateway_apps_test",
                                        blocking=self.runner)

    def test_start_goes_on_without_accounting(self) -> None:
        """The service starts; one warning names app-accounting and the error, and the
        usage_report's ``apps.reason`` says it."""
        self.reactor.spawn_error = OSError(errno.EBADF, "Bad file descriptor")
        events = capture_log_events(self)
        self.assertIsNone(self.successResultOf(AccountingService(self.accounting).startService()))
        warnings = [e for e in events if e.get("log_level") in (LogLevel.warn, LogLevel.error)]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertEqual(formatEvent(warnings[0]),
                         "app-accounting: bytes per app will not be counted: nft cannot run: "
                         "[Errno 9] Bad file descriptor")
        self.assertFalse(self.accounting.supported)
        self.assertEqual(self.successResultOf(self.accounting.counters(("web",))),
                         {"supported": False, "reason": "nft cannot run: [Errno 9] Bad file descriptor", "apps": {}})

    def test_a_table_not_made_is_a_failure_in_the_snapshot(self) -> None:
        """The service that started without its table said ``running`` in the status while it
        counted nothing: its snapshot says it does not count, and why, as a failure (not an
        ordinary reason to be off): an nft that could not be spawned, or one that failed."""
        self.reactor.advance(1796211823)
        self.reactor.spawn_error = OSError(errno.EBADF, "Bad file descriptor")
        service = AccountingService(self.accounting)
        self.successResultOf(service.startService())
        self.assertEqual(service.snapshot(), AccountingSnapshot(False, "", Degraded(
            "table-not-made", "nft cannot run: [Errno 9] Bad file descriptor", 1796211823.0, 1)))

        refused = NftAccounting(self.reactor, self.place, nft="/usr/sbin/nft", table="gateway_apps_test")
        self.reactor.spawn_error = None
        started = refused.start()
        self.reactor.last.protocol.childDataReceived(2, b"Error: Could not process rule: Operation not permitted\n")
        self.reactor.last.exit(1)
        self.successResultOf(started)
        self.assertEqual(refused.snapshot(), AccountingSnapshot(False, "", Degraded(
            "table-not-made", "nft cannot make table gateway_apps_test: Error: Could not process rule: Operation"
            " not permitted", 1796211823.0, 1)))

    def test_counting_and_reads_that_fail_in_the_snapshot(self) -> None:
        """Once the table is made the snapshot says it counts; a read of the counters whose
        nft fails is a failure there until a read works again."""
        self.assertEqual(self.accounting.snapshot(), AccountingSnapshot(False, "", None))  # (not started)
        started = self.accounting.start()
        self.reactor.last.exit(0)
        self.successResultOf(started)
        self.assertEqual(self.accounting.snapshot(), AccountingSnapshot(True, "", None))
        self.reactor.advance(60)
        self.reactor.spawn_error = OSError(errno.EMFILE, "Too many open files")
        self.failureResultOf(self.accounting.counters(("web",)), OSError)
        self.reactor.spawn_error = None
        read = self.accounting.counters(("web",))
        self.reactor.last.protocol.childDataReceived(2, b"Error: No such file or directory\n")
        self.reactor.last.exit(1)
        self.failureResultOf(read, OSError)
        self.assertEqual(self.accounting.snapshot(), AccountingSnapshot(True, "", Degraded(
            "counters-not-read", "nft list table: Error: No such file or directory", 60.0, 2)))
        read = self.accounting.counters(("web",))
        self.reactor.last.protocol.childDataReceived(1, b'{"nftables": []}')
        self.reactor.last.exit(0)
        self.successResultOf(read)
        self.assertEqual(self.accounting.snapshot(), AccountingSnapshot(True, "", None))

    def test_reading_and_removing_fail_as_deferreds(self) -> None:
        """Once the table is made, a read of the counters whose ``nft`` cannot be spawned fails
        its Deferred (the usage_report says why), and the stop goes on with a warning."""
        started = self.accounting.start()
        self.reactor.last.exit(0)
        self.successResultOf(started)
        self.reactor.spawn_error = OSError(errno.EMFILE, "Too many open files")
        self.failureResultOf(self.accounting.counters(("web",)), OSError)
        events = capture_log_events(self)
        stopped = self.accounting.stop()
        self.runner.step()  # (the cgroups removed)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertIn("apps accounting table not removed: [Errno 24] Too many open files",
                      [formatEvent(e) for e in events])

    def ready(self) -> None:
        self.patch(appbytes, "NFT_CGROUP_ROOT", self.place.mount)
        started = self.accounting.start()
        self.reactor.last.exit(0)
        self.successResultOf(started)

    def test_a_cgroup_is_made_off_the_reactor_thread(self) -> None:
        """Before a program spawns, its app's cgroup is made through the blocking runner (a
        ``mkdir`` on cgroupfs may take tens of ms, which held every client before): nothing
        is made until the runner runs it; then the join names its ``cgroup.procs``, with the
        app's rules the first time only. The stop removes the cgroups through it too."""
        self.ready()
        first = self.accounting.prepare("web")
        self.assertNoResult(first)
        directory = self.place.directory("web")
        self.assertFalse(directory.exists())
        self.runner.step()
        self.assertTrue(directory.is_dir())
        join = self.successResultOf(first)
        assert join is not None
        self.assertEqual((join.procs, join.nft), (str(directory / "cgroup.procs"), "/usr/sbin/nft"))
        self.assertIn('comment "app=web"', join.rules)
        again = self.accounting.prepare("web")
        self.runner.step()
        self.assertEqual(self.successResultOf(again), CgroupJoin(str(directory / "cgroup.procs")))
        stopped = self.accounting.stop()
        self.reactor.last.exit(0)
        self.assertNoResult(stopped)
        self.assertTrue(directory.exists())
        self.runner.step()
        self.successResultOf(stopped)
        self.assertFalse(directory.exists())

    def test_a_cgroup_not_made_is_logged_and_the_program_runs_uncounted(self) -> None:
        """A ``mkdir`` that fails (off the reactor thread) is one error line, as before, and
        the program runs in the gateway's own cgroup (no join); a later start tries again."""
        self.ready()
        self.place.directory("web").parent.mkdir(parents=True)
        self.place.directory("web").write_text("not a directory")
        events = capture_log_events(self)
        prepared = self.accounting.prepare("web")
        self.runner.step()
        self.assertIsNone(self.successResultOf(prepared))
        self.assertEqual([formatEvent(e) for e in events if e.get("log_level") == LogLevel.error],
                         [f"apps: bytes of web will not be counted: [Errno 17] File exists: "
                          f"'{self.place.directory('web')}'"])
        self.place.directory("web").unlink()
        prepared = self.accounting.prepare("web")
        self.runner.step()
        join = self.successResultOf(prepared)
        assert join is not None
        self.assertIn('comment "app=web"', join.rules)  # (the first join made: with its rules)


class OffTests(SynchronousTestCase):
    """Accounting off for an ordinary reason (the platform, or the configuration) is said as
    such: off, and why; not a failure."""

    def test_not_root_is_off_with_the_reason(self) -> None:
        """Not root: the service starts, counts nothing, and its snapshot says why."""
        service = AccountingService(NftAccounting(FakeProcessReactor(), None, "the gateway does not run as root"))
        self.assertIsNone(self.successResultOf(service.startService()))
        self.assertEqual(service.snapshot(), AccountingSnapshot(False, "the gateway does not run as root", None))
        self.assertIsNone(self.successResultOf(service.stopService()))

    def test_the_tree_has_the_service_when_it_is_off(self) -> None:
        """With ``app_accounting: off`` (and wherever the platform cannot count) the tree had no
        app-accounting service: ``gatewayctl status`` did not list it at all. It is there, and
        its state says it is off and why."""
        work = Path(self.mktemp())
        work.mkdir()
        path = work / "gateway.yaml"
        path.write_text(f"gateway: {{state_dir: {work / 'state'}}}\n"
                        "telemetry: {metrics_endpoint: '', app_accounting: 'off'}\n")
        root = build_service(gateway_config.load(path), reactor)
        self.addCleanup(root.getServiceNamed("state").stopService)  # (the state directory's lock)
        service = root.getServiceNamed("app-accounting")
        self.assertEqual(service.snapshot(), AccountingSnapshot(
            False, "per-app accounting is off (telemetry.app_accounting)", None))
        self.assertIn(ServiceState("app-accounting", False, "", "per-app accounting is off (telemetry.app_accounting)"),
                      root.parts.readside.status().services)


class RealAppTests(TestCase):
    """A hosted app downloads 300 kB from a local web server; usage_report counts it for that app."""

    timeout = 60

    @inlineCallbacks
    def test_download_is_counted_for_the_app(self) -> Any:
        """The app's bytes in cover the download and its bytes out its request; a second app
        that sends nothing counts (about) nothing."""
        place, reason = detect("gateway-apps-probe")
        if place is None:
            raise self.skipTest(f"per-app accounting is not available here: {reason}")
        probe = NftAccounting(reactor, place, table="gateway_apps_probe")
        yield probe.start()
        yield probe.stop()
        if probe.place is None:
            raise self.skipTest(f"per-app accounting is not available here: {probe.reason}")
        root_resource = Resource()
        root_resource.putChild(b"blob", Data(BLOB, "application/octet-stream"))
        web = reactor.listenTCP(0, Site(root_resource), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        done = work / "done"
        script = work / "fetch.py"
        script.write_text(
            "import sys, time, urllib.request\n"
            f"data = urllib.request.urlopen('http://127.0.0.1:{web.getHost().port}/blob').read()\n"
            f"open({str(done)!r}, 'w').write(str(len(data)))\n"
            "time.sleep(300)\n")
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"apps:\n  programs:\n    fetcher:\n      command: {sys.executable} {script}\n      startsecs: 0\n"
            f"    idle:\n      command: {sys.executable} -c 'import time; time.sleep(300)'\n      startsecs: 0\n"
            f"ingest:\n  endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "telemetry:\n  metrics_endpoint: ''\n")
        root = build_service(gateway_config.load(path), reactor)
        yield root.startService()
        self.addCleanup(root.stopService)
        for _ in range(200):
            if done.exists() and done.read_text():
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(done.read_text(), str(len(BLOB)))
        report = yield root.parts.telemetry.request_report("usage_report")
        apps = report["apps"]
        self.assertEqual((apps["supported"], apps["reason"]), (True, ""), apps)
        fetcher = apps["apps"]["fetcher"]["since_start"]
        self.assertGreaterEqual(fetcher["bytes_in"], len(BLOB))
        self.assertLess(fetcher["bytes_in"], len(BLOB) + 100_000)
        self.assertGreater(fetcher["bytes_out"], 0)
        self.assertLess(apps["apps"]["idle"]["since_start"]["bytes_in"], 1000)
        self.assertEqual(report["errors"], [])
