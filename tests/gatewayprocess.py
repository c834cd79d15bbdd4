"""Run ``twistd gateway`` as a real child process in trial tests."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred

from gateway import config as gateway_config
from gateway.errors import GatewayError
from gateway.telemetry.appbytes import TABLE, detect
from gateway.tree import accounting_tag

TWISTD = str(Path(sys.executable).parent / "twistd")
#: The per-app accounting's nftables tables are ``gateway_apps_<tag>`` (gateway/tree.py).
ACCOUNTING_TABLE_PREFIX = TABLE + "_"



class GatewayProcess(protocol.ProcessProtocol):
    """Collects a twistd process's output; fires ``ended`` with its status and ``ready`` when it is up."""

    def __init__(self, ready_line: bytes = b"gateway started") -> None:
        self.output = b""
        self.ready_line = ready_line
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[object] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self.ready_line in self.output and not self.ready.called:
            self.ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(reason)
        self.ended.callback(reason.value)


def spawn_gateway(test: Any, reactor: Any, *args: str, ready_line: bytes = b"gateway started",
                  env: dict[str, str] | None = None, uid: int | None = None,
                  open_files: int | None = None, prefix: tuple[str, ...] = ()) -> GatewayProcess:
    """Start ``twistd <args>`` (through this interpreter); killed and waited for on cleanup.

    :param env: its environment (default: this process's).
    :param uid: the user (and the group of that number) it runs as, through ``setpriv`` (see
        :func:`runs_as`); default: this process's.
    :param open_files: its limit of open file descriptors (``prlimit --nofile``, as systemd's
        ``LimitNOFILE``); default: this process's.
    :param prefix: a command that runs the interpreter (and twistd) given after it, as its
        arguments (``unshare -m ... sh -c '...; exec "$@"' sh``: a mount namespace of its own).
    """
    proc = GatewayProcess(ready_line)
    before, own = accounting_tables(), own_accounting_tables(args)
    # Runs after the process is killed and waited for (cleanups run last-in first-out).
    # Only this gateway's table: another run's gateways on this machine keep theirs.
    test.addCleanup(lambda: remove_accounting_leftovers((accounting_tables() - before) & own))
    # Through this interpreter: a venv's twistd script may name another one in its shebang
    # (the .deb's build venv lives elsewhere than where it is installed).
    limit = [] if open_files is None else [shutil.which("prlimit") or "prlimit", f"--nofile={open_files}:{open_files}"]
    command = [*prefix, *as_user(uid), *limit, sys.executable, TWISTD, *args]
    transport = reactor.spawnProcess(proc, command[0], command, env=os.environ.copy() if env is None else env)
    # Cleanups run last-in first-out: kill a process still running, then wait for its end.
    test.addCleanup(lambda: proc.ended)
    test.addCleanup(lambda: proc.ended.called or transport.signalProcess("KILL"))
    proc.transport = transport
    return proc


def as_user(uid: int | None) -> list[str]:
    """The command that runs what follows it as user ``uid`` (and the group of that number,
    no other groups); nothing for None."""
    if uid is None:
        return []
    return [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def runs_as(uid: int) -> bool:
    """Whether this interpreter can run as user ``uid`` here (root, ``setpriv``, an interpreter
    that user may execute): a test that needs another user skips otherwise."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    return subprocess.run([*as_user(uid), sys.executable, "-c", ""], capture_output=True).returncode == 0


def own_accounting_tables(args: tuple[str, ...]) -> set[str]:
    """The accounting table the gateway ``twistd <args>`` would make: named for the state
    directory of its ``--config`` (none when it names no config, or one that does not load)."""
    if "--config" not in args[:-1]:
        return set()
    try:
        config = gateway_config.load(args[args.index("--config") + 1])
    except GatewayError:
        return set()
    return {ACCOUNTING_TABLE_PREFIX + accounting_tag(config.state_dir)}


def accounting_tables() -> set[str]:
    """The gateways' per-app accounting tables in nftables now (empty where ``nft`` is
    missing or not allowed)."""
    nft = shutil.which("nft")
    if nft is None or os.geteuid() != 0:
        return set()
    listing = subprocess.run([nft, "list", "tables"], capture_output=True, text=True, timeout=30)
    return {line.split()[-1] for line in listing.stdout.splitlines()
            if line.startswith("table inet " + ACCOUNTING_TABLE_PREFIX)}


def remove_accounting_leftovers(tables: set[str]) -> None:
    """Remove what a killed gateway leaves of its per-app accounting: its nftables table,
    and its apps' empty cgroups. A gateway that stops removes them itself; one killed by
    SIGKILL cannot, and every table left makes each loopback packet cost more (its chains
    hook every packet in and out), which slows every later test and benchmark here. A
    restarted gateway makes its table afresh (the name is its state directory's), so only
    tests that kill gateways for good leave them."""
    nft = shutil.which("nft")
    for table in sorted(tables):
        if nft is not None:
            subprocess.run([nft, "delete", "table", "inet", table], capture_output=True, timeout=30)
        # The killed gateway was this process's child, in this process's cgroup: its apps'
        # cgroups are where detect() places them from here.
        place, _ = detect("gateway-apps-" + table[len(ACCOUNTING_TABLE_PREFIX):])
        if place is not None:
            base = place.mount / place.base
            for app in glob.glob(f"{base}/*/"):
                _rmdir(app)
            _rmdir(str(base))


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (a process still in it), or gone already
