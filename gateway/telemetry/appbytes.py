"""Bytes per hosted app: each app's processes in a cgroup v2 of their own, counted by
nftables rules that match the cgroup of the socket (``socket cgroupv2``).

Where it works: Linux with cgroup v2 mounted under ``/sys/fs/cgroup`` (pure v2, or the
hybrid layout's ``/sys/fs/cgroup/unified``), nftables with the ``socket cgroupv2``
expression (kernel 5.13 and later), the ``nft`` command (Debian package ``nftables``) and
the gateway running as root. :func:`detect` says which of these is missing. When the
service tree starts, :class:`AccountingService` makes the gateway's table afresh (``inet
gateway_apps_<tag>``, chains ``out`` and ``in``) before the apps start: counters start at
zero with each start of the tree (the gateway's, and each configuration change applied or
reverted while it runs); the table is removed when the tree stops. The service is in the
tree wherever accounting is off too, so that its snapshot (:meth:`NftAccounting.snapshot`) can
say in the gateway's status why it counts nothing.

Each app gets ``<cgroup2>/<gateway's cgroup>/gateway-apps-<tag>/<app>`` (the tag names
the state directory, so two gateways on one machine keep apart); the apps' launcher calls
:meth:`NftAccounting.prepare` before it spawns a program, which creates the cgroup and, the
first time, hands the launcher the app's two rules: the launcher process (not the gateway's
reactor) adds them with ``nft`` and moves itself into the cgroup before it execs the
program, so the first byte is counted.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.apps.launch import CgroupJoin
from gateway.blocking import RunBlocking, in_reactor_threads
from gateway.cgroupmembership import read_cgroups, unified_path
from gateway.degraded import Failing
from gateway.filelayer import makedirs
from gateway.telemetry.snapshot import AccountingSnapshot

#: nft resolves ``socket cgroupv2`` paths under this directory.
NFT_CGROUP_ROOT = Path("/sys/fs/cgroup")
TABLE = "gateway_apps"

log = Logger()


@dataclass(frozen=True)
class CgroupPlace:
    """Where the apps' cgroups go.

    :param mount: the cgroup2 mount point.
    :param base: the apps' parent cgroup, relative to the mount (``gateway-apps``, or below
        the gateway's own cgroup).
    """

    mount: Path
    base: str

    def directory(self, app: str) -> Path:
        """The app's cgroup directory."""
        return self.mount / self.base / app

    def level(self, app: str) -> int:
        """The app's cgroup's depth in the cgroup2 hierarchy (``socket cgroupv2 level``)."""
        return len(Path(self.base, app).parts)

    def nft_path(self, app: str) -> str:
        """The app's cgroup as nft names it (relative to ``/sys/fs/cgroup``)."""
        return str(self.directory(app).relative_to(NFT_CGROUP_ROOT))


def find_cgroup2(mounts: str) -> Path | None:
    """The first cgroup2 mount point in ``/proc/self/mounts`` text."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def table_command(table: str) -> str:
    """One nft command line that makes ``table`` afresh with its empty ``out`` and ``in`` chains."""
    return (f"table inet {table} {{}}; delete table inet {table}; table inet {table} {{ "
            "chain out { type filter hook output priority 0; policy accept; }; "
            "chain in { type filter hook input priority 0; policy accept; }; }")


def detect(base_name: str = "gateway-apps", nft: str | None = None,
           proc: Path = Path("/proc")) -> tuple[CgroupPlace | None, str]:
    """Whether per-app accounting can work here: the place for the apps' cgroups, or ``None``
    and the reason (reads ``/proc`` and checks permissions; whether ``nft`` works is found
    when :meth:`NftAccounting.start` makes the table).

    :param base_name: the apps' cgroups' directory name.
    :param nft: the nft command (default: found on ``PATH``).
    :param proc: where procfs is mounted.
    """
    nft = nft or shutil.which("nft") or ""
    if not nft:
        return None, "the nft command is not installed (Debian package nftables)"
    if os.geteuid() != 0:
        return None, "the gateway does not run as root"  # (cgroups and nftables rules need root)
    try:
        # (as the file system encoding decodes names: a mount point in any bytes, /media/clé
        # under LC_ALL=C with PYTHONUTF8=0 or one in Latin-1, raised UnicodeDecodeError here)
        mount = find_cgroup2(os.fsdecode((proc / "self" / "mounts").read_bytes()))
        own = unified_path(read_cgroups(proc / "self" / "cgroup")) or ""
    except OSError as exc:
        return None, f"cannot read /proc: {exc}"
    if mount is None:
        return None, "no cgroup v2 hierarchy is mounted"
    if mount != NFT_CGROUP_ROOT and mount.parent != NFT_CGROUP_ROOT:
        return None, f"cgroup v2 is mounted at {mount}, not under {NFT_CGROUP_ROOT} where nft looks"
    place = CgroupPlace(mount, str(Path(own, base_name)) if own else base_name)
    parent = place.mount / own
    if not os.access(parent, os.W_OK):
        return None, f"cannot create cgroups under {parent}"
    return place, ""


def parse_counters(listing: bytes) -> dict[str, dict[str, int]]:
    """Per app, ``bytes_in``/``bytes_out``/``packets_in``/``packets_out`` from ``nft -j list table``."""
    out: dict[str, dict[str, int]] = {}
    for item in json.loads(listing).get("nftables", []):
        rule = item.get("rule")
        if not rule or not str(rule.get("comment", "")).startswith("app="):
            continue
        app = rule["comment"][4:]
        direction = "out" if rule.get("chain") == "out" else "in"
        for expr in rule.get("expr", []):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if counter:
                entry = out.setdefault(app, {"bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0})
                entry[f"bytes_{direction}"] += int(counter.get("bytes", 0))
                entry[f"packets_{direction}"] += int(counter.get("packets", 0))
    return out


class NftAccounting:
    """Per-app byte counters through cgroup v2 and nftables, or the reason there are none.

    :param reactor: for the ``nft`` runs that read the counters and remove the table, and the
        time of their failures.
    :param place: where the apps' cgroups go (from :func:`detect`), or ``None``.
    :param reason: why accounting is unavailable, when ``place`` is ``None`` (an ordinary
        reason: the platform or the configuration).
    :param nft: the nft command (an absolute path: the launcher runs it in the app's environment).
    :param table: the nftables table (``inet``) holding the rules.
    :param blocking: makes and removes the apps' cgroups off the reactor thread (cgroupfs may
        take tens of ms for a ``mkdir``); default: the reactor's thread pool.
    """

    def __init__(self, reactor: Any, place: CgroupPlace | None, reason: str = "", nft: str | None = None,
                 table: str = TABLE, blocking: RunBlocking | None = None) -> None:
        self.reactor = reactor
        self._blocking = blocking if blocking is not None else in_reactor_threads(reactor)
        self.place = place
        self.reason = reason
        self.nft = nft or shutil.which("nft") or "/usr/sbin/nft"
        self.table = table
        self._ready = False
        self._apps: set[str] = set()
        self._failing = Failing()

    @property
    def supported(self) -> bool:
        """Whether apps' bytes are counted."""
        return self.place is not None

    def snapshot(self) -> AccountingSnapshot:
        """Whether the apps' bytes are counted; if not, why: :attr:`reason` while that is an
        ordinary one, else the failure of ``nft``."""
        failing = self._failing.now
        off = self.reason if self.place is None and failing is None else ""
        return AccountingSnapshot(self._ready, off, failing)

    def start(self) -> Deferred[None]:
        """Make the table afresh (before any app starts); if ``nft`` cannot, accounting is off
        from now on, with the reason."""
        if self.place is None:
            return succeed(None)
        d = self._nft(table_command(self.table))

        def made(result: tuple[bytes, bytes, int]) -> None:
            if result[2] == 0:
                self._ready = True
                return
            self._unavailable(f"nft cannot make table {self.table}: "
                              f"{result[1].decode(errors='replace').strip()}")

        return d.addCallbacks(made, lambda f: self._unavailable(f"nft cannot run: {f.getErrorMessage()}"))

    def _nft(self, *args: str) -> Deferred[tuple[bytes, bytes, int]]:
        """Run ``nft args``: its output, errors and exit code; a spawn that fails (the process
        out of descriptors: ``spawnProcess`` raises) fails the Deferred, as a run that fails does."""
        return maybeDeferred(getProcessOutputAndValue, self.nft, args, env=dict(os.environ),
                             reactor=self.reactor)

    def _unavailable(self, reason: str) -> None:
        log.warn("app-accounting: bytes per app will not be counted: {reason}", reason=reason)
        self.place = None
        self.reason = reason
        self._failing.failed("table-not-made", reason, self.reactor.seconds())

    def prepare(self, app: str) -> Deferred[CgroupJoin | None]:
        """Before a program of ``app`` starts: make its cgroup (off the reactor thread); fires
        with what the launcher joins (its ``cgroup.procs`` file) and, the first time in this
        gateway's life, the app's rules it adds first (``None`` when accounting is unavailable,
        or the cgroup cannot be made: logged, and the program runs uncounted).

        Only a ``mkdir`` here: the ``nft`` run is the launcher's, in the child process.
        """
        place = self.place
        if place is None or not self._ready:
            return succeed(None)
        directory = place.directory(app)

        def made(_: object) -> CgroupJoin | None:
            if not self._ready:  # (the accounting stopped meanwhile: its table is gone)
                return None
            rules = ""
            if app not in self._apps:  # (decided here, on the reactor thread, by the first spawn made)
                match = f'socket cgroupv2 level {place.level(app)} "{place.nft_path(app)}"'
                rules = "".join(f'add rule inet {self.table} {chain} {match} counter comment "app={app}"\n'
                                for chain in ("out", "in"))
                self._apps.add(app)
            return CgroupJoin(str(directory / "cgroup.procs"), self.nft if rules else "", rules)

        def not_made(failure: Failure) -> None:
            failure.trap(OSError)
            log.error("apps: bytes of {app} will not be counted: {error}", app=app, error=failure.getErrorMessage())

        making = self._blocking(lambda: makedirs(str(directory)))
        return making.addCallbacks(made, not_made)

    def counters(self, apps: tuple[str, ...]) -> Deferred[dict[str, Any]]:
        """``{"supported", "reason", "apps": {app: {bytes_in, bytes_out, packets_in, packets_out}}}``
        for every app counted so far (and zeros for ``apps`` not started yet)."""
        if self.place is None:
            return succeed({"supported": False, "reason": self.reason, "apps": {}})
        zero = {"bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0}
        if not self._ready:
            return succeed({"supported": True, "reason": "", "apps": {app: dict(zero) for app in apps}})
        d = self._nft("-j", "list", "table", "inet", self.table)

        def parsed(result: tuple[bytes, bytes, int]) -> dict[str, Any]:
            out, err, code = result
            if code != 0:
                raise OSError(f"nft list table: {err.decode(errors='replace').strip()}")
            counted = parse_counters(out)
            self._failing.recovered()
            return {"supported": True, "reason": "",
                    "apps": {app: counted.get(app, dict(zero)) for app in sorted(set(apps) | set(counted))}}

        def unread(failure: Failure) -> Failure:
            self._failing.failed("counters-not-read", failure.getErrorMessage(), self.reactor.seconds())
            return failure

        return d.addCallback(parsed).addErrback(unread)

    def stop(self) -> Deferred[None]:
        """Remove the table (the counters end with the gateway) and the apps' empty cgroups
        (called once the apps have stopped)."""
        removed: Deferred[Any] = succeed(None)
        if self._ready:
            self._ready = False
            removed = self._nft("delete", "table", "inet", self.table)

            def checked(result: tuple[bytes, bytes, int]) -> None:
                if result[2] != 0:
                    log.warn("apps accounting table not removed: {error}",
                             error=result[1].decode(errors="replace").strip())

            removed.addCallbacks(checked, lambda f: log.warn("apps accounting table not removed: {error}",
                                                              error=f.getErrorMessage()))
        emptied: Deferred[Any] = succeed(None)
        if self.place is not None:
            cgroups = [self.place.directory(app) for app in sorted(self._apps)]
            cgroups.append(self.place.mount / self.place.base)
            emptied = self._blocking(lambda: _remove_empty(cgroups))
        self._apps.clear()
        return gatherResults([removed, emptied], consumeErrors=True).addCallback(lambda _: None)


def _remove_empty(cgroups: list[Path]) -> None:
    """Remove the cgroups that are empty (one that still holds a process stays; blocking)."""
    for cgroup in cgroups:
        try:
            cgroup.rmdir()
        except OSError:
            pass


class AccountingService(Service):
    """Placed before the apps in the tree, so it starts before them (the table is made, and
    the tree waits for it) and stops after them: then the table goes and the emptied cgroups
    with it. In the tree where accounting is off too (it does nothing then): its snapshot says
    in the gateway's status why it counts nothing.

    :param accounting: the accounting to start and stop.
    """

    name = "app-accounting"  # type: ignore[assignment]

    def __init__(self, accounting: NftAccounting) -> None:
        self.accounting = accounting

    def snapshot(self) -> AccountingSnapshot:
        """The accounting's snapshot (for the read side)."""
        return self.accounting.snapshot()

    def startService(self) -> Deferred[None]:
        """Make the accounting's table."""
        super().startService()
        return self.accounting.start()

    def stopService(self) -> Deferred[None]:
        """Remove the accounting's table and empty cgroups."""
        super().stopService()
        return self.accounting.stop()
