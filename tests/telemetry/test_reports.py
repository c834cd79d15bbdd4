"""device_info and usage_report checked against /proc and os.statvfs on this machine."""

from __future__ import annotations

import builtins
import ipaddress
import os
import platform
import socket
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.lastrun import PreviousStop
from gateway.readside import GatewayStatus
from gateway.telemetry.device_info import device_info, system_facts
from gateway.telemetry.usage import UsageTracker, delta, interface_counters


def proc_net_dev() -> dict[str, tuple[int, int, int, int]]:
    """``/proc/net/dev``: per interface (rx bytes, rx packets, tx bytes, tx packets)."""
    out = {}
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        fields = [int(f) for f in rest.split()]
        out[name.strip()] = (fields[0], fields[1], fields[8], fields[9])
    return out


class DeviceInfoTests(SynchronousTestCase):
    """device_info's facts are this machine's."""

    def test_without_psutil_its_sections_are_empty(self) -> None:
        """psutil that cannot be imported leaves its sections null or empty, named in the
        errors (docs/telemetry.md); they were missing from the report altogether."""
        real = builtins.__import__

        def no_psutil(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "psutil":
                raise ImportError("No module named 'psutil'")
            return real(name, *args, **kwargs)

        self.patch(builtins, "__import__", no_psutil)
        facts, errors = system_facts(self.state)
        self.assertEqual({key: facts[key] for key in ("cpu", "memory", "filesystems", "interfaces", "boot_time")},
                         {"cpu": None, "memory": None, "filesystems": [], "interfaces": {}, "boot_time": None})
        self.assertEqual(errors, ["psutil: ImportError: No module named 'psutil'"])
        self.assertIsNone(device_info(facts, GatewayStatus("9.9", 100.0, 5, 77, ()), (), 1000.0)["uptime_s"])

    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.state.mkdir()
        self.facts, self.errors = system_facts(self.state)

    def test_no_errors_here(self) -> None:
        """Every section could be built on this machine."""
        self.assertEqual(self.errors, [])

    def test_os_and_host(self) -> None:
        """Kernel, architecture and hostname as uname says; os-release as the file says."""
        uname = os.uname()
        self.assertEqual(self.facts["os"]["kernel"], uname.release)
        self.assertEqual(self.facts["os"]["architecture"], uname.machine)
        self.assertEqual(self.facts["hostname"], socket.gethostname())
        release = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines()
                       if "=" in line and not line.startswith("#"))
        self.assertEqual(self.facts["os_release"]["ID"], release["ID"].strip('"'))

    def test_memory_and_cpu(self) -> None:
        """Memory total is /proc/meminfo's MemTotal; the CPU count is os.cpu_count()."""
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        self.assertEqual(self.facts["memory"]["total"], int(meminfo["MemTotal"].split()[0]) * 1024)
        self.assertEqual(self.facts["cpu"]["count"], os.cpu_count())
        self.assertEqual(len(self.facts["cpu"]["load"]), 3)

    def test_filesystems_match_statvfs(self) -> None:
        """Each filesystem's size is statvfs's blocks times fragment size; the state dir's
        free space is statvfs's available blocks."""
        self.assertTrue(self.facts["filesystems"])
        for fs in self.facts["filesystems"]:
            if "error" in fs:
                continue
            st = os.statvfs(fs["mountpoint"])
            self.assertEqual(fs["total"], st.f_blocks * st.f_frsize, fs)
        st = os.statvfs(self.state)
        self.assertEqual(self.facts["state_dir"]["total"], st.f_blocks * st.f_frsize)
        self.assertTrue(abs(self.facts["state_dir"]["free"] - st.f_bavail * st.f_frsize) < 64 << 20)

    def test_boot_time_and_interfaces(self) -> None:
        """Boot time is /proc/stat's btime; every interface of /proc/net/dev is listed, with
        its MAC from /sys/class/net where it has one."""
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        self.assertTrue(abs(self.facts["boot_time"] - btime) <= 1, (self.facts["boot_time"], btime))
        self.assertLessEqual(set(proc_net_dev()), set(self.facts["interfaces"]))
        for name, entry in self.facts["interfaces"].items():
            address = Path(f"/sys/class/net/{name}/address")
            if entry["mac"] and address.exists():
                self.assertEqual(entry["mac"], address.read_text().strip())

    def test_ipv6_addresses_have_no_zone(self) -> None:
        """Each IPv6 address is written as an address: a link-local one had psutil's zone after
        it, ``fe80::1%eth0``, which most parsers of addresses refuse (the interface is the
        entry's name). (Where the machine has a link-local address, as most do.)"""
        for name, entry in self.facts["interfaces"].items():
            for address in entry["addresses"]:
                if address["family"] == "ipv6":
                    self.assertIsNone(ipaddress.IPv6Address(address["address"]).scope_id, (name, address))

    def test_report_body(self) -> None:
        """The body adds uptime, the gateway (with how its previous run ended) and its
        certificates to the facts."""
        previous = PreviousStop("unclean", 90.0, 66, 10.0, "reboot", 2, 90.0)
        status = GatewayStatus("9.9", 100.0, 5, 77, (), previous_stop=previous)
        body = device_info(self.facts, status, (), self.facts["boot_time"] + 60.4)
        self.assertEqual((body["uptime_s"], type(body["uptime_s"])), (60, int))  # (whole seconds, as the gateway's)
        self.assertEqual(body["gateway"], {"version": "9.9", "pid": 77, "started_at": 100.0, "uptime_s": 5,
                                           "previous_stop": {"kind": "unclean", "at": 90.0, "pid": 66,
                                                             "started_at": 10.0, "cause": "reboot",
                                                             "unclean_stops": 2, "last_unclean_at": 90.0}})
        self.assertEqual(body["certificates"], [])
        self.assertEqual(platform.machine(), body["os"]["architecture"])


class InterfaceCounterTests(SynchronousTestCase):
    """usage_report's interface counters are /proc/net/dev's."""

    def test_counters_between_two_proc_readings(self) -> None:
        """Each counter lies between a /proc/net/dev reading before and one after."""
        before = proc_net_dev()
        counters = interface_counters()
        after = proc_net_dev()
        for name, (rx_b, rx_p, tx_b, tx_p) in before.items():
            c = counters[name]
            a = after[name]
            self.assertTrue(rx_b <= c["bytes_recv"] <= a[0], name)
            self.assertTrue(rx_p <= c["packets_recv"] <= a[1], name)
            self.assertTrue(tx_b <= c["bytes_sent"] <= a[2], name)
            self.assertTrue(tx_p <= c["packets_sent"] <= a[3], name)

    def test_delta(self) -> None:
        """Since-last is the difference; a counter that went down starts over from zero."""
        self.assertEqual(delta({"a": 10, "b": 3}, {"a": 4, "b": 7}), {"a": 6, "b": 3})
        self.assertEqual(delta({"a": 10}, None), {"a": 10})

    def test_a_tracker_carried_over_a_configuration_change(self) -> None:
        """The period and the interfaces' counters go on from the last report; so do the
        links': what the stopped links counted after the last report (30 sent) is in the next
        report's since_last with what the new ones count from zero (50). It was 50: the 30
        were in no report. A link configured anew counts from zero; one removed is dropped."""
        tracker = UsageTracker(100.0)
        tracker.section("interfaces", {"eth0": {"bytes_recv": 500}}, "since_boot")
        tracker.section("links", {"cloud": {"sent": 40}, "gone": {"sent": 5}}, "since_start")
        tracker.period(400.0)
        carried = tracker.carried({"cloud": {"sent": 70}, "gone": {"sent": 9}})
        carried.set_baseline("interfaces", {"eth0": {"bytes_recv": 900}})
        self.assertEqual(carried.section("interfaces", {"eth0": {"bytes_recv": 1000}}, "since_boot")["eth0"]
                         ["since_last"], {"bytes_recv": 500})
        links = carried.section("links", {"cloud": {"sent": 50}, "new": {"sent": 7}}, "since_start")
        self.assertEqual({name: (link["since_start"], link["since_last"]) for name, link in links.items()},
                         {"cloud": ({"sent": 50}, {"sent": 80}), "new": ({"sent": 7}, {"sent": 7})})
        again = carried.carried({"cloud": {"sent": 60}})  # another change: 10 more since that report
        self.assertEqual(again.section("links", {"cloud": {"sent": 1}}, "since_start")["cloud"]["since_last"],
                         {"sent": 11})
        unreported = UsageTracker(100.0).carried({"cloud": {"sent": 3}})  # a change before the first report
        self.assertEqual(unreported.section("links", {"cloud": {"sent": 2}}, "since_start")["cloud"]["since_last"],
                         {"sent": 5})
        self.assertEqual(carried.period(700.0), {"start": 400.0, "end": 700.0, "seconds": 300.0})
