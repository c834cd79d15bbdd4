"""The process limit programs get: the gateway's ceiling (RLIMIT_NPROC, its pids cgroup) less a
reserve, and the launcher step that sets it."""

from __future__ import annotations

import io
import resource
from pathlib import Path
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.commands import run_command
from gateway.apps.launch import limit_processes
from gateway.apps.process import ProcessLauncher
from gateway.apps.processlimit import cgroup_pids_max, program_process_limit
from gateway.apps.settings import AppsSettings
from gateway.cgroupmembership import parse_cgroups
from tests.apps.fakes import FakeProcessReactor

INFINITY = resource.RLIM_INFINITY


class ProgramProcessLimitTests(SynchronousTestCase):
    """docs/apps.md: programs' forks fail apps.process_reserve before the gateway's would."""

    def test_the_reserve_is_kept_below_the_lower_ceiling(self) -> None:
        """The lower of RLIMIT_NPROC and pids.max, less the reserve (256 by default)."""
        self.assertEqual(AppsSettings().process_reserve, 256)
        self.assertEqual(program_process_limit(256, nproc=7000, pids_max=4915), 4659)
        self.assertEqual(program_process_limit(256, nproc=3000, pids_max=None), 2744)
        self.assertEqual(program_process_limit(100, nproc=INFINITY, pids_max=1000), 900)

    def test_a_small_ceiling_gives_programs_half(self) -> None:
        """A ceiling not twice the reserve is shared: half of it for the programs."""
        self.assertEqual(program_process_limit(256, nproc=300, pids_max=None), 150)

    def test_no_ceiling_no_limit(self) -> None:
        """A gateway without a ceiling leaves its programs without one too."""
        self.assertIsNone(program_process_limit(256, nproc=INFINITY, pids_max=None))


class CgroupPidsMaxTests(SynchronousTestCase):
    """The pids.max of the gateway's own pids cgroup (systemd's TasksMax) or of a parent."""

    def cgroups(self, files: dict[str, str]) -> Path:
        root = Path(self.mktemp())
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        return root

    def test_cgroup_v1(self) -> None:
        """The pids hierarchy of cgroup v1; the lower of the cgroup's and its parents'."""
        root = self.cgroups({"pids/system.slice/gateway.service/pids.max": "4915\n",
                             "pids/system.slice/pids.max": "max\n"})
        proc = parse_cgroups("12:pids:/system.slice/gateway.service\n4:memory:/system.slice/gateway.service\n0::/x\n")
        self.assertEqual(cgroup_pids_max(proc, root), 4915)
        (root / "pids/system.slice/pids.max").write_text("1000\n")
        self.assertEqual(cgroup_pids_max(proc, root), 1000)

    def test_cgroup_v2(self) -> None:
        """Pure cgroup v2 (a cgroup.controllers at the root), and the hybrid's unified."""
        root = self.cgroups({"cgroup.controllers": "cpu pids\n",
                             "system.slice/gateway.service/pids.max": "4915\n"})
        self.assertEqual(cgroup_pids_max(parse_cgroups("0::/system.slice/gateway.service\n"), root), 4915)
        hybrid = self.cgroups({"unified/system.slice/gateway.service/pids.max": "77\n"})
        proc = parse_cgroups("1:name=systemd:/x\n0::/system.slice/gateway.service\n")
        self.assertEqual(cgroup_pids_max(proc, hybrid), 77)

    def test_none_set_or_readable(self) -> None:
        """max everywhere, no pids files, or no /proc/self/cgroup text: no limit."""
        root = self.cgroups({"cgroup.controllers": "", "a/pids.max": "max\n"})
        self.assertIsNone(cgroup_pids_max(parse_cgroups("0::/a\n"), root))
        self.assertIsNone(cgroup_pids_max(parse_cgroups("0::/b\n"), root))
        self.assertIsNone(cgroup_pids_max(parse_cgroups(""), root))


class LimitProcessesTests(SynchronousTestCase):
    """The launcher's step: RLIMIT_NPROC, soft and hard, never raised above a hard one."""

    def test_sets_soft_and_hard(self) -> None:
        with mock.patch("resource.getrlimit", return_value=(INFINITY, INFINITY)), \
                mock.patch("resource.setrlimit") as setrlimit:
            limit_processes(4659)
        setrlimit.assert_called_once_with(resource.RLIMIT_NPROC, (4659, 4659))

    def test_a_lower_hard_limit_stays(self) -> None:
        with mock.patch("resource.getrlimit", return_value=(1000, 2000)), \
                mock.patch("resource.setrlimit") as setrlimit:
            limit_processes(4659)
        setrlimit.assert_called_once_with(resource.RLIMIT_NPROC, (2000, 2000))

    def test_a_failure_is_written_to_the_programs_stderr(self) -> None:
        with mock.patch("resource.getrlimit", return_value=(INFINITY, INFINITY)), \
                mock.patch("resource.setrlimit", side_effect=OSError(1, "Operation not permitted")), \
                mock.patch("sys.stderr", io.StringIO()) as stderr:
            limit_processes(10)
        self.assertIn("gateway launcher: cannot set its process limit to 10", stderr.getvalue())


class CommandsGetTheLimitTests(SynchronousTestCase):
    def test_install_scripts_and_health_checks_get_it_too(self) -> None:
        """run_command (install.sh, health checks, update scripts) launches with the limit."""
        fake = FakeProcessReactor()
        run_command(fake, ProcessLauncher(fake, fake.kill_group, max_processes=99), ("sh", "install.sh"),
                    Path("."), {}, 5.0)
        self.assertEqual(fake.last.args[6], "99")
