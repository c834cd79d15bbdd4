"""``device_info``: GWE's filesystem and OS metadata, plus the gateway's own facts.

:func:`system_facts` is blocking (it reads ``/proc``, ``/etc/os-release`` and calls
``statvfs`` on every mount): run it in a thread. :func:`device_info` adds the parts that
come from snapshots, taken on the reactor thread.
"""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

from gateway.certinfo import CertificateSnapshot
from gateway.readside import GatewayStatus, to_jsonable
from gateway.telemetry.facts import Sections

#: psutil's address families by name (AF_LINK is psutil's for MACs).
_FAMILIES = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}


def _filesystems(psutil: Any) -> list[dict[str, Any]]:
    out = []
    for part in psutil.disk_partitions(all=False):
        entry: dict[str, Any] = {"device": part.device, "mountpoint": part.mountpoint, "fstype": part.fstype,
                                 "options": part.opts}
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError as exc:
            entry["error"] = str(exc)
        else:
            entry.update(total=usage.total, used=usage.used, free=usage.free, percent=usage.percent)
        out.append(entry)
    return out


def _interfaces(psutil: Any) -> dict[str, Any]:
    stats = psutil.net_if_stats()
    out: dict[str, Any] = {}
    for name, addresses in sorted(psutil.net_if_addrs().items()):
        entry: dict[str, Any] = {"mac": None, "addresses": []}
        for address in addresses:
            if address.family == psutil.AF_LINK:
                entry["mac"] = address.address
            elif address.family in _FAMILIES:
                # a link-local IPv6 address without psutil's "%<interface>" zone: the interface
                # is the entry's name, and an address with a zone is no address to most parsers
                entry["addresses"].append({"family": _FAMILIES[address.family],
                                           "address": address.address.split("%", 1)[0],
                                           "netmask": address.netmask, "broadcast": address.broadcast})
        stat = stats.get(name)
        if stat is not None:
            entry.update(up=stat.isup, speed_mbps=stat.speed, mtu=stat.mtu)
        out[name] = entry
    return out


def _memory(psutil: Any) -> dict[str, int]:
    memory, swap = psutil.virtual_memory(), psutil.swap_memory()
    return {"total": memory.total, "available": memory.available, "used": memory.used, "free": memory.free,
            "swap_total": swap.total, "swap_used": swap.used}


def _state_dir(state_dir: Path) -> dict[str, Any]:
    st = os.statvfs(state_dir)
    return {"path": str(state_dir), "total": st.f_blocks * st.f_frsize, "free": st.f_bavail * st.f_frsize}


def system_facts(state_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """The machine's facts for ``device_info`` (blocking), and the errors met on the way."""
    sections = Sections()
    psutil = sections.take("psutil", lambda: __import__("psutil"))
    facts: dict[str, Any] = {}
    uname = platform.uname()
    facts["os"] = {"system": uname.system, "kernel": uname.release, "kernel_version": uname.version,
                   "architecture": uname.machine}
    facts["hostname"] = sections.take("hostname", socket.gethostname)
    facts["os_release"] = sections.take("os_release", platform.freedesktop_os_release, {})
    if psutil is None:  # its sections are there all the same, empty, as the docs promise
        facts.update(cpu=None, memory=None, filesystems=[], interfaces={}, boot_time=None)
    else:
        facts["cpu"] = sections.take("cpu", lambda: {"count": psutil.cpu_count(),
                                                     "load": list(os.getloadavg())})
        facts["memory"] = sections.take("memory", lambda: _memory(psutil))
        facts["filesystems"] = sections.take("filesystems", lambda: _filesystems(psutil), [])
        facts["interfaces"] = sections.take("interfaces", lambda: _interfaces(psutil), {})
        boot = sections.take("boot_time", psutil.boot_time)
        facts["boot_time"] = boot
    facts["state_dir"] = sections.take("state_dir", lambda: _state_dir(state_dir))
    return facts, sections.errors


def device_info(facts: dict[str, Any], status: GatewayStatus, certificates: tuple[CertificateSnapshot, ...],
                now: float) -> dict[str, Any]:
    """The report body: the machine's facts, uptime, the gateway and its certificates.

    :param facts: from :func:`system_facts`.
    :param status: the read side's gateway status.
    :param certificates: every TLS certificate the gateway uses (listeners, links).
    :param now: the time of the report (seconds since the epoch).
    """
    body = dict(facts)
    boot = facts.get("boot_time")
    # (uptimes in whole seconds, to the nearest, as the gateway's and its programs' everywhere)
    body["uptime_s"] = round(now - boot) if isinstance(boot, (int, float)) else None
    body["gateway"] = {"version": status.version, "pid": status.pid, "started_at": status.started_at,
                       "uptime_s": status.uptime_s, "previous_stop": to_jsonable(status.previous_stop)}
    body["certificates"] = to_jsonable(certificates)
    return body
