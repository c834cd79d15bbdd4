"""Memory pressure: a real gateway (``twistd gateway``) in a memory cgroup whose hosted programs
leak until the kernel's OOM killer acts (the programs are killed and restarted, the gateway
stays up), and the packaged unit's part in it.

The real test needs root and the cgroup v1 memory controller (``/sys/fs/cgroup/memory``); it
is skipped otherwise.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests.apps.realtime import wait_until
from tests.gatewayprocess import spawn_gateway
from tests.ports import free_port

MEMORY = Path("/sys/fs/cgroup/memory")
#: The cgroup's limit: an idle gateway takes about 60 MiB of it.
LIMIT = 128 * 2**20
#: Takes 2 MiB more every 10 ms, for ever (``b"x" * n`` writes every page: it is resident).
LEAK = "import time\nheld = []\nwhile True:\n    held.append(b'x' * (2 << 20))\n    time.sleep(0.01)\n"
_names = itertools.count()
#: How the gateway's log tells such an end.
TOLD = (b" killed by signal 9 (SIGKILL) after ", b"s, not by the gateway: the kernel's OOM killer took it (out of"
        b" memory: its memory cgroup counted an OOM kill meanwhile)")


def oom_kills(cgroup: Path) -> int:
    """How many processes the OOM killer took in ``cgroup`` (v1 ``memory.oom_control``)."""
    for line in (cgroup / "memory.oom_control").read_text().splitlines():
        if line.startswith("oom_kill "):
            return int(line.split()[1])
    raise SkipTest("this kernel's memory.oom_control has no oom_kill count (before Linux 4.13)")


def told(output: bytes) -> bool:
    """Whether the gateway's ``output`` has a line that tells an end by the OOM killer."""
    return any(TOLD[0] in line and TOLD[1] in line for line in output.splitlines())


class MemoryCgroupTests(TestCase):
    """Two programs that leak alike: when the limit is reached each holds less than the gateway,
    which the OOM killer took (the largest) before the programs ran with a higher oom_score_adj."""

    timeout = 60

    def make_cgroup(self) -> Path:
        """A memory cgroup of :data:`LIMIT` (no swap beyond it), removed on cleanup."""
        if os.geteuid() != 0 or not (MEMORY / "memory.limit_in_bytes").exists():
            raise SkipTest("needs root and the cgroup v1 memory controller at /sys/fs/cgroup/memory")
        cgroup = MEMORY / f"gateway-test-oom-{os.getpid()}-{next(_names)}"
        cgroup.mkdir()
        self.addCleanup(self.remove_cgroup, cgroup)
        (cgroup / "memory.limit_in_bytes").write_text(str(LIMIT))
        if (cgroup / "memory.memsw.limit_in_bytes").exists():  # (with swap, the limit would swap, not kill)
            (cgroup / "memory.memsw.limit_in_bytes").write_text(str(LIMIT))
        return cgroup

    @inlineCallbacks
    def remove_cgroup(self, cgroup: Path) -> Any:
        """Once the gateway and its programs are gone (killed by the other cleanups), remove it."""
        for pid in (cgroup / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        yield wait_until(lambda: (cgroup / "cgroup.procs").read_text() == "", 10, what="an empty cgroup")
        cgroup.rmdir()

    @inlineCallbacks
    def test_leaking_programs_are_killed_and_restarted_not_the_gateway(self) -> None:
        """The OOM killer takes a leaking program, not the gateway; the program is restarted
        by its policy and the gateway's log says the OOM killer took it with SIGKILL; the
        gateway then stops cleanly."""
        cgroup = self.make_cgroup()
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        (work / "leak.py").write_text(LEAK)
        program = f"      command: {sys.executable} {work / 'leak.py'}\n      startsecs: 0\n"
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "apps:\n  backoff_initial: 0.1\n  backoff_max: 0.4\n"
            f"  programs:\n    leak1:\n{program}    leak2:\n{program}"
            # (no per-app accounting: its nft runs in this cgroup too, and nft 1.0 takes about
            # 0.5 MiB per nftables table on the machine, so tables other runs left can fill it)
            "telemetry:\n  metrics_endpoint: ''\n  app_accounting: false\ningest:\n  enabled: false\n")
        join = f'echo $$ > {cgroup / "cgroup.procs"} && exec "$@"'
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config),
                                prefix=("sh", "-c", join, "sh"))
        self.addCleanup(lambda: (work / "gateway.log").write_bytes(gateway.output))  # (a failure's story)
        yield gateway.ready.addTimeout(30, reactor)

        def restarted() -> bool:
            return (oom_kills(cgroup) >= 1 and told(gateway.output)
                    and gateway.output.count(b" spawned, pid ") >= 3)

        yield wait_until(lambda: restarted() or gateway.ended.called, 20, what="a program killed and restarted")
        self.assertFalse(gateway.ended.called, gateway.output.decode())
        gateway.transport.signalProcess("TERM")
        status = yield gateway.ended.addTimeout(30, reactor)
        self.assertEqual(status.signal, signal.SIGTERM, gateway.output.decode())


class PackagedUnitTests(SynchronousTestCase):
    """What the packaged systemd unit does when the OOM killer takes one of its processes."""

    def test_an_oom_kill_of_a_program_does_not_stop_the_gateway(self) -> None:
        """systemd's default OOMPolicy (stop) stops the whole unit when the kernel's OOM killer
        takes any of its processes: a leaking program took the broker, the links and every other
        program down with it. The unit says continue."""
        unit = (Path(__file__).parent.parent.parent / "debian" / "gateway.service").read_text()
        self.assertEqual([line for line in unit.splitlines() if line.startswith("OOMPolicy=")],
                         ["OOMPolicy=continue"])
