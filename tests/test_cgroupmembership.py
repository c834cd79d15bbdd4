"""The one parser of ``/proc/<pid>/cgroup``: cgroup v1, v2 and the hybrid layout, lines not so
made, and a file that cannot be read."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import cgroupmembership
from gateway.cgroupmembership import CgroupMembership, own_cgroups, parse_cgroups, read_cgroups, unified_path

#: A cgroup v1 machine (no v2 hierarchy at all), as /proc/self/cgroup lists it.
V1 = ("12:pids:/system.slice/gateway.service\n"
      "4:memory:/system.slice/gateway.service\n"
      "3:cpu,cpuacct:/system.slice/gateway.service\n"
      "1:name=systemd:/system.slice/gateway.service\n")
#: A pure cgroup v2 machine.
V2 = "0::/system.slice/gateway.service\n"
#: The hybrid layout: v1's hierarchies and the v2 one beside them (systemd's "unified").
HYBRID = "4:memory:/system.slice/gateway.service\n1:name=systemd:/system.slice/gateway.service\n0::/system.slice/gateway.service\n"


class ParseTests(SynchronousTestCase):
    """What each line of /proc/<pid>/cgroup says."""

    def test_cgroup_v1(self) -> None:
        """A line per hierarchy with its controllers (a named one too), paths without their slash;
        no v2 cgroup."""
        cgroups = parse_cgroups(V1)
        self.assertEqual(cgroups[0], CgroupMembership("12", ("pids",), "system.slice/gateway.service"))
        self.assertEqual(cgroups[2].controllers, ("cpu", "cpuacct"))
        self.assertEqual(cgroups[3].controllers, ("name=systemd",))
        self.assertEqual([c.unified for c in cgroups], [False] * 4)
        self.assertIsNone(unified_path(cgroups))

    def test_cgroup_v2(self) -> None:
        """The one 0:: line: no controllers, the unified hierarchy; its root is ""."""
        self.assertEqual(parse_cgroups(V2), [CgroupMembership("0", (), "system.slice/gateway.service")])
        self.assertEqual(unified_path(parse_cgroups(V2)), "system.slice/gateway.service")
        self.assertEqual(unified_path(parse_cgroups("0::/\n")), "")

    def test_hybrid(self) -> None:
        """v1's lines and the v2 one, each found, in the file's order."""
        cgroups = parse_cgroups(HYBRID)
        self.assertEqual([c.hierarchy for c in cgroups], ["4", "1", "0"])
        self.assertEqual(cgroups[0].controllers, ("memory",))
        self.assertEqual(unified_path(cgroups), "system.slice/gateway.service")

    def test_lines_not_so_made_are_skipped(self) -> None:
        """A line without its three fields (or an empty one) is skipped, the others kept; a path
        holding a colon keeps it."""
        text = "garbage\n\n5:memory\n0::/a:b \n"
        self.assertEqual(parse_cgroups(text), [CgroupMembership("0", (), "a:b")])
        self.assertEqual(parse_cgroups(""), [])


class ReadTests(SynchronousTestCase):
    """The file read: as file names are decoded; one that cannot be read."""

    def test_a_file_is_read_and_parsed(self) -> None:
        """The cgroups it lists; a path in bytes that are not UTF-8 names the same directory."""
        path = Path(self.mktemp())
        path.write_bytes(b"0::/system.slice/caf\xe9.service\n")
        [cgroup] = read_cgroups(path)
        self.assertEqual(os.fsencode(cgroup.path), b"system.slice/caf\xe9.service")

    def test_a_missing_file(self) -> None:
        """read_cgroups raises OSError; own_cgroups (the gateway's) has none (not Linux)."""
        missing = Path(self.mktemp())
        self.assertRaises(OSError, read_cgroups, missing)
        self.patch(cgroupmembership, "OWN_CGROUPS", missing)
        self.assertEqual(own_cgroups(), [])
