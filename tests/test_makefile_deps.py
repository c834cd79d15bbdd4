"""The Makefile's ``system-deps``: what it installs, and that a service its install started on
``make run``'s port is stopped again (run against stub ``dpkg``/``apt-get``/``systemctl``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent

#: A stub of a command: it appends its name and arguments to ``calls``; ``dpkg -s`` says the
#: packages named in ``$INSTALLED`` are installed and no other.
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CALLS"
if [ "$(basename "$0")" = dpkg ] && [ "$1" = -s ]; then
  case " $INSTALLED " in *" $2 "*) exit 0;; esac
  exit 1
fi
exit 0
"""


class SystemDepsTests(SynchronousTestCase):
    """``make system-deps DEBS=...`` on stub package tools."""

    def run_make(self, debs: str, installed: str, systemd: str) -> tuple[list[str], str]:
        """The stub calls and the output of ``make system-deps``."""
        if not (ROOT / "Makefile").exists():
            raise SkipTest("no Makefile here (the .deb build runs the suite on a copy without it)")
        if shutil.which("make") is None:
            raise SkipTest("make is not installed")
        work = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, work)
        (work / "bin").mkdir()
        for name in ("dpkg", "apt-get", "systemctl", "sudo"):
            (work / "bin" / name).write_text(STUB if name != "sudo" else '#!/bin/sh\nexec "$@"\n')
            (work / "bin" / name).chmod(0o755)
        env = dict(os.environ, PATH=f"{work / 'bin'}:{os.environ['PATH']}", CALLS=str(work / "calls"),
                   INSTALLED=installed)
        out = subprocess.run(["make", "-s", "-C", str(ROOT), "system-deps", f"DEBS={debs}",
                              f"SYSTEMD_RUNNING={systemd}"], env=env, capture_output=True, text=True,
                             timeout=30, check=True)
        calls = (work / "calls").read_text().splitlines() if (work / "calls").exists() else []
        return calls, out.stdout

    def test_a_mosquitto_service_it_started_is_stopped(self) -> None:
        """Under systemd, the mosquitto it installed (its service now on 127.0.0.1:1883) is
        disabled and stopped, so ``make run`` after ``make test`` gets its port."""
        calls, out = self.run_make("mosquitto curl", installed="", systemd="yes")
        self.assertIn("apt-get install -y -qq --no-install-recommends mosquitto curl", calls)
        self.assertEqual([c for c in calls if c.startswith("systemctl")], ["systemctl disable --now mosquitto"])
        self.assertIn("stopping and disabling the mosquitto service", out)

    def test_a_mosquitto_already_there_is_left_alone(self) -> None:
        """A mosquitto installed before is the machine owner's: its service is not touched; nor
        is anything without systemd."""
        calls, _ = self.run_make("mosquitto curl", installed="mosquitto", systemd="yes")
        self.assertEqual([c for c in calls if c.startswith("systemctl")], [])
        self.assertIn("apt-get install -y -qq --no-install-recommends curl", calls)
        calls, _ = self.run_make("mosquitto", installed="", systemd="")
        self.assertEqual([c for c in calls if c.startswith("systemctl")], [])

    def test_nothing_missing_installs_nothing(self) -> None:
        """All installed: no apt-get, no systemctl."""
        calls, out = self.run_make("mosquitto curl", installed="mosquitto curl", systemd="yes")
        self.assertEqual([c for c in calls if not c.startswith("dpkg -s")], [])
        self.assertEqual(out, "")
