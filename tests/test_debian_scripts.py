"""The .deb's maintainer scripts (debian/gateway.postinst, postrm), run with the commands they
call replaced by stubs that record their arguments."""

from __future__ import annotations

import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

DEBIAN = Path(__file__).resolve().parent.parent / "debian"
#: The commands the scripts call, stubbed: each records its arguments and succeeds.
STUBBED = ("getent", "adduser", "deluser", "delgroup", "install", "chown", "chmod", "rmdir", "dpkg-statoverride")


class ConfigFileModeTests(SynchronousTestCase):
    """/etc/gateway/gateway.yaml may hold secrets (a link's password, ingest.ciks): the package
    makes it 0640, root and the gateway's group (docs/install.md); dpkg unpacked it 0644, for
    every local user to read."""

    def run_script(self, name: str, argument: str, overridden: bool) -> list[str]:
        """Run ``debian/<name> <argument>`` with stubs; the commands it ran, one line each.

        :param overridden: whether ``dpkg-statoverride --list`` finds an override already.
        """
        if not (DEBIAN / name).exists():
            raise SkipTest("no debian/ here (the .deb build runs the suite on a copy without it)")
        work = Path(self.mktemp())
        stubs, calls = work / "bin", work / "calls"
        (work / "venv" / "bin").mkdir(parents=True)
        stubs.mkdir()
        for command in (*STUBBED, "../venv/bin/python"):
            stub = stubs / command
            listing = f'[ "$1" = --list ] && exit {0 if overridden else 1}\n' if command == "dpkg-statoverride" else ""
            stub.write_text(f'#!/bin/sh\n{listing}echo "{stub.name} $*" >> {calls}\n')
            stub.chmod(0o755)
        script = (DEBIAN / name).read_text().replace("VENV=/opt/venvs/gateway", f"VENV={work / 'venv'}")
        # (postrm's rm -rf of the package's paths is made harmless: only the stubs' calls are looked at)
        script = script.replace("rm -rf ", "true ")
        subprocess.run(["sh", "-c", script, name, argument], check=True, env={"PATH": f"{stubs}:/usr/bin:/bin"},
                       capture_output=True, timeout=30)
        lines = calls.read_text().splitlines() if calls.exists() else []
        return [line for line in lines if not line.startswith(("python", "install"))]

    def test_postinst_overrides_the_mode_once(self) -> None:
        """configure adds the override (root, gateway, 0640, applied now); an override there
        already (the administrator's own) is left as it is."""
        self.assertIn("dpkg-statoverride --update --add root gateway 0640 /etc/gateway/gateway.yaml",
                      self.run_script("gateway.postinst", "configure", overridden=False))
        self.assertFalse([call for call in self.run_script("gateway.postinst", "configure", overridden=True)
                          if call.startswith("dpkg-statoverride")])

    def test_purge_removes_the_override(self) -> None:
        """purge removes it with the file (a later install starts afresh); remove keeps it."""
        self.assertIn("dpkg-statoverride --remove /etc/gateway/gateway.yaml",
                      self.run_script("gateway.postrm", "purge", overridden=True))
        self.assertFalse([call for call in self.run_script("gateway.postrm", "remove", overridden=True)
                          if call.startswith("dpkg-statoverride")])
