"""The packaged gateway's self-update, root side: install the new package and put the old one
back when the new one fails (:mod:`gateway.updates.selfupdate` runs it in
``gateway-selfupdate.service``).

Before it installs, it makes sure it has the installed version's package: the copy it kept
when that version was installed this way, once ``dpkg-deb`` has read it through whole, or one
``dpkg-repack`` rebuilds from the installed files (a version installed by hand, or whose kept
copy is damaged). Then it runs the installer. The new version
has failed when

- the installer fails and has changed what is installed (a package left unpacked or
  half configured), or
- under systemd, the gateway's service does not come back as a new process that takes up
  the operation (writes :data:`ALIVE` with its pid in the result directory) within the
  health timeout: it does not start, or crashes before its updates service runs.

Then it installs the old package again (whose maintainer scripts restart the old gateway,
which takes up the operation and reports it failed). After a success it keeps the new
package, as the one to roll back to next time.

Before each step that changes what is installed (the new package's install, the rollback) it
records the step, with what finishing it needs, in :data:`STEP` in the keep directory (and a
copy in the result directory, which tells the gateway that a step is under way). A power cut
or a SIGKILL in the middle of it leaves the record: the next start of the helper (the path
unit starts it for the record too, at boot) finishes the step with :meth:`Rollback.finish`
(``dpkg --configure -a`` when ``dpkg --audit`` reports something, then the install or the
rollback again, both idempotent), and the result is written as for a step that was not cut.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.asciidigits import ascii_digits
from gateway.atomic import fsync_directory, read_json, remove_quietly, temporary_path, write_json_atomically, \
    write_parts_atomically
from gateway.filelayer import WRITE_SIZE, makedirs_durably
from gateway.updates.detached_run import execute

#: What the restarted gateway writes into the result directory when it takes up the operation.
ALIVE = "alive.json"
#: ``exit_code`` in the result when the new version did not start (the installer itself succeeded).
NOT_STARTED = 3
#: The step under way, in the keep directory (and its copy in the result directory).
STEP = "step.json"
#: The prefix of dpkg-repack's scratch directories in the keep directory.
REPACK_PREFIX = ".repack-"


def log(line: str) -> None:
    """One line on stderr (the unit's journal)."""
    sys.stderr.write(f"gateway-selfupdate: {line}\n")
    sys.stderr.flush()


def systemctl(*args: str) -> str | None:
    """``systemctl ARGS``' output, or None when systemd does not run here or it failed."""
    if not os.path.isdir("/run/systemd/system"):
        return None
    try:
        done = subprocess.run(["systemctl", *args], stdin=subprocess.DEVNULL, capture_output=True, check=False,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode("utf-8", "replace").strip() if done.returncode == 0 else None


class Rollback:
    """Installs a package with the safety net described in the module's docstring.

    :param package: the package name (``gateway``).
    :param keep_dir: where the installed version's package is kept (root's, not the gateway's).
    :param service: the gateway's systemd unit.
    :param health_timeout: seconds the new version has to take up the operation.
    """

    def __init__(self, package: str, keep_dir: Path, service: str, health_timeout: float,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 run: Callable[[list[str]], tuple[int, str]] = execute,
                 systemctl: Callable[..., str | None] = systemctl) -> None:
        self.package = package
        self.keep_dir = keep_dir
        self.service = service
        self.health_timeout = health_timeout
        self.sleep = sleep
        self.monotonic = monotonic
        self.run = run
        self.systemctl = systemctl

    def install(self, command: list[str], deb: Path, result_dir: Path) -> dict[str, Any]:
        """Install ``deb`` with ``command`` (the path appended), rolling back when it fails.

        :return: the result for the gateway: ``exit_code``, ``output`` (the installer's), and on
            a failure after which something was done, ``message`` saying what.
        """
        self.remove_leftovers()
        previous = self.installed()
        kept, why_not = self.previous_package(previous)
        log(f"rolls back to {kept}" if kept is not None else f"cannot roll back: {why_not}")
        record = {"step": "install", "deb": str(deb), "result_dir": str(result_dir), "previous": previous,
                  "kept": str(kept) if kept is not None else None, "why_not": why_not}
        return self._install(command, deb, record, self.main_pid() or None)

    def _install(self, command: list[str], deb: Path, record: dict[str, Any], before: int | None) -> dict[str, Any]:
        """Record the install step, run it, watch the new version replace the gateway's process
        ``before`` (None: not watched), roll back when it failed; the result (:meth:`install`)."""
        result_dir = Path(record["result_dir"])
        (result_dir / ALIVE).unlink(missing_ok=True)
        self.record(record)
        code, output = self.run([*command, str(deb)])
        if code != 0:
            if self.installed() == record["previous"]:
                return {"exit_code": code, "output": output}  # nothing changed: nothing to undo
            return self.roll_back(command, record, code, output, f"the installer exited with {code}")
        if before is not None:
            problem = self.watch(result_dir, before)
            if problem is not None:
                return self.roll_back(command, record, NOT_STARTED, output, problem)
        self.keep(deb)
        return {"exit_code": 0, "output": output}

    def record(self, step: dict[str, Any]) -> None:
        """Persist ``step`` (fsynced) before it changes what is installed: :data:`STEP` in the keep
        directory, where the next start finds it, and a copy in its result directory, which tells
        the gateway to wait for the result even while no helper runs."""
        makedirs_durably(str(self.keep_dir), 0o700)
        write_json_atomically(self.keep_dir / STEP, step)
        write_json_atomically(Path(step["result_dir"]) / STEP, step)

    def pending(self) -> dict[str, Any] | None:
        """The step a stop cut short (:meth:`record`), or None; an unreadable record is removed."""
        try:
            step = read_json(self.keep_dir / STEP)
        except (OSError, ValueError) as error:
            step = str(error)
        if step is None or isinstance(step, dict) and step.get("step") in ("install", "rollback") \
                and isinstance(step.get("result_dir"), str):
            return step
        log(f"the step record {self.keep_dir / STEP} is unreadable ({step}): removed")
        self.clear(None)
        return None

    def clear(self, result_dir: Path | None) -> None:
        """Remove the step's record once its result is written in ``result_dir``."""
        if (self.keep_dir / STEP).exists():
            (self.keep_dir / STEP).unlink()
            fsync_directory(self.keep_dir)
        if result_dir is not None:
            remove_quietly(result_dir / STEP)

    def finish(self, command: list[str], step: dict[str, Any], deb: Path | None, gone: str) -> dict[str, Any]:
        """Finish the ``step`` a stop cut short: let dpkg finish what it had begun, then install the
        new package again (``deb``; None when it is ``gone``, and why: then roll back) or roll back
        again. The result, as :meth:`install`'s."""
        log(f"finishing the {step['step']} of {step.get('deb')} that a stop cut short")
        base = command[:-1] if command[-1:] in (["-i"], ["--install"]) else None
        if base is not None:  # (another installer than dpkg -i: nothing to ask dpkg)
            code, output = self.run([*base, "--audit"])
            if code != 0 or output.strip():
                log(f"dpkg --audit: {' '.join(output.split())[-300:]}; running dpkg --configure -a")
                code, output = self.run([*base, "--configure", "-a"])
                log(f"dpkg --configure -a exited with {code}: {' '.join(output.split())[-300:]}")
        if step["step"] == "install" and deb is not None:
            # The gateway may be down (a new version that does not start): watched all the same.
            return self._install(command, deb, step, self.main_pid())
        if step["step"] == "install":
            return self.roll_back(command, step, 1, "", f"the install was cut short, and its package cannot be "
                                                        f"installed again ({gone})")
        return self.roll_back(command, step, step.get("exit_code", 1), step.get("output", ""),
                              step.get("failure", "the new version failed"))

    def installed(self) -> str | None:
        """The installed version and its state (``0.1.0 ii``), or None when not installed."""
        code, output = self.run(["dpkg-query", "-W", "-f=${Version} ${db:Status-Abbrev}", self.package])
        return output.strip() if code == 0 and output.strip() else None

    def remove_leftovers(self) -> None:
        """Remove what a run killed before its end left in the keep directory: a package's
        temporary file (:meth:`keep` writes it atomically) and dpkg-repack's scratch directory,
        each as large as the package, which nothing else would ever remove."""
        if not self.keep_dir.is_dir():
            return
        for leftover in self.keep_dir.glob(temporary_path(self.kept_path("*")).name):
            leftover.unlink(missing_ok=True)
        for scratch in self.keep_dir.glob(f"{REPACK_PREFIX}*"):
            shutil.rmtree(scratch, ignore_errors=True)

    def kept_path(self, version: str) -> Path:
        """Where the package of ``version`` is kept."""
        return self.keep_dir / f"{self.package}_{version.replace(':', '%3a')}.deb"

    def previous_package(self, installed: str | None) -> tuple[Path | None, str]:
        """The installed version's package, kept or rebuilt: the path, or None and why not."""
        if installed is None or not installed.endswith(" ii"):
            return None, f"{self.package} is not installed cleanly ({installed or 'not installed'})"
        version = installed.split()[0]
        kept = self.kept_path(version)
        damage = self.damage(kept, version) if kept.exists() else None
        if kept.exists() and damage is None:
            return kept, ""
        if damage is not None:
            # Never the one to roll back to: dpkg would stop in the middle of it, with neither
            # version installed whole. The installed files are whole: rebuilt from them below.
            log(f"the kept package {kept} is damaged ({damage}): removed")
            kept.unlink()
        if shutil.which("dpkg-repack") is None:
            why = (f"the package of {version} kept was damaged ({damage}) and is removed" if damage is not None
                   else f"no package of {version} is kept (it was not installed by gateway-selfupdate)")
            return None, f"{why}, and dpkg-repack, which would rebuild it, is not installed"
        makedirs_durably(str(self.keep_dir), 0o700)
        with tempfile.TemporaryDirectory(dir=self.keep_dir, prefix=REPACK_PREFIX) as scratch:
            # (gzip, fast: the package only waits here in case of a rollback; xz on a gateway's
            # CPU would take minutes for the venv)
            code, output = self.run(["env", "DPKG_DEB_COMPRESSOR_TYPE=gzip", "DPKG_DEB_COMPRESSOR_LEVEL=1", "sh",
                                     "-c", 'cd "$1" && exec dpkg-repack "$2"', "-", scratch, self.package])
            built = sorted(Path(scratch).glob("*.deb"))
            if code != 0 or len(built) != 1:
                return None, f"dpkg-repack could not rebuild {version} (exit {code}): {output.strip()[-300:]}"
            with built[0].open("rb") as package:  # durable under its name, as keep() makes it
                os.fsync(package.fileno())
            os.replace(built[0], kept)
            fsync_directory(self.keep_dir)
        return kept, ""

    def damage(self, kept: Path, version: str) -> str | None:
        """Why the kept package of ``version`` cannot be installed again (cut short, damaged on disk,
        another package or version under its name), or None when it is whole: ``dpkg-deb`` reads it
        through (every member decompressed, their checksums checked)."""
        code, output = self.run(["sh", "-c", 'dpkg-deb --fsys-tarfile "$1" >/dev/null && '
                                 "exec dpkg-deb --show --showformat='${Package} ${Version}' \"$1\"",
                                 "-", str(kept)])
        if code != 0:
            return f"dpkg-deb cannot read it (exit {code}): {' '.join(output.split())[-300:]}"
        if output.strip() != f"{self.package} {version}":
            return f"it holds {output.strip()!r}, not {self.package} {version}"
        return None

    def main_pid(self) -> int | None:
        """The gateway service's main pid (0: not running), or None without systemd."""
        shown = self.systemctl("show", "-p", "MainPID", "--value", self.service)
        return int(shown) if shown is not None and ascii_digits(shown) else None

    def watch(self, result_dir: Path, before: int) -> str | None:
        """Wait until a new gateway process takes up the operation; None when it did, else why not."""
        deadline = self.monotonic() + self.health_timeout
        restarted = False
        while True:
            pid = self.main_pid()
            try:
                alive = read_json(result_dir / ALIVE)
            except (OSError, ValueError):  # (not the gateway's: no new version running, as without one)
                alive = None
            if pid and pid != before and isinstance(alive, dict) and alive.get("pid") == pid:
                return None
            if not restarted and pid == before:
                # The package's scripts restart the service; when they did not (a policy said
                # no), the new version runs only after a restart.
                self.systemctl("restart", "--no-block", self.service)
                restarted = True
            if self.monotonic() >= deadline:
                state = self.systemctl("show", "-p", "ActiveState,SubState", "--value", self.service)
                return (f"the new version did not take up the operation within {self.health_timeout:g}s "
                        f"({self.service}: {' '.join((state or 'unknown').split())})")
            self.sleep(1.0)

    def roll_back(self, command: list[str], step: dict[str, Any], exit_code: int, output: str,
                  failure: str) -> dict[str, Any]:
        """Install the previous version again (recorded first, as the step ``rollback``) after the
        new one's ``failure``; the result, whose message says both."""
        version = step["previous"].split()[0] if step["previous"] else "the previous version"
        result: dict[str, Any] = {"exit_code": exit_code, "output": output, "message": f"{failure}; "}
        if step["kept"] is None:
            result["message"] += f"could not roll back to {version}: {step['why_not']}"
            return result
        self.record({**step, "step": "rollback", "exit_code": exit_code, "output": output, "failure": failure})
        code, done = self.run([*command, step["kept"]])
        result["message"] += (f"rolling back to {version} failed too (exit {code}): {done.strip()[-300:]}"
                              if code != 0 else f"rolled back to {version}")
        return result

    def keep(self, deb: Path) -> None:
        """Keep ``deb`` (now installed) as the package to roll back to, and only it."""
        installed = self.installed()
        if installed is None:
            return
        makedirs_durably(str(self.keep_dir), 0o700)
        target = self.kept_path(installed.split()[0])
        if target.exists() and target.samefile(deb):
            return
        # Durable before the one kept so far goes: a power cut after a plain copy and rename
        # could leave an empty package as the only version to roll back to.
        with deb.open("rb") as source:
            write_parts_atomically(target, iter(lambda: source.read(WRITE_SIZE), b""))
        olds = [old for old in self.keep_dir.glob(f"{self.package}_*.deb") if old != target]
        for old in olds:
            old.unlink()
        if olds:  # (durably: a power cut brought it back, two packages kept until the next install)
            fsync_directory(self.keep_dir)
