"""The container description: what to run (image, env, mounts, ports, limits, restart policy).

Kanto's container description, flattened: the same knobs under shorter names (see
``docs/containers.md`` for the mapping). Declared in the ``containers`` config section or
shipped as a JSON/YAML artifact of an update operation (:mod:`gateway.containers.descfile`).
Every field has a default so the config loader can build it; :meth:`ContainerDescription.problems`
says what is still wrong (no image, a bad memory size).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Literal

RestartType = Literal["no", "always", "on-failure", "unless-stopped"]
NetworkMode = Literal["bridge", "host", "none"]

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)[bB]?\s*\Z", re.ASCII)  # (ASCII: int() reads ٣ and ３ too)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}\Z")  # (\Z: "$" takes a name before a trailing newline)
_CPU_RANGE = re.compile(r"([0-9]+)(?:-([0-9]+))?\Z")  # ([0-9]: \d takes any Unicode digit, as ٣)


def parse_size(text: str) -> int:
    """``"64M"`` -> 67108864 (``K``, ``M``, ``G`` are powers of 1024; no suffix: bytes).

    :raises ValueError: for anything else.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size like 512K, 64M or 1G")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 2**20, "g": 2**30}[match.group(2).lower()]


def cpuset_problem(text: str) -> str | None:
    """Why ``text`` is no CPU list as the kernel's cpuset takes it (``0-1``, ``0,2``,
    ``0-1,4``), or ``None``. Whether the CPUs exist is the install's to find: a description
    may be written for another board."""
    for part in text.split(","):
        match = _CPU_RANGE.match(part)
        if match is None or (match.group(2) is not None and int(match.group(2)) < int(match.group(1))):
            return (f"{text!r} is not a list of CPUs (numbers and ranges low-high, comma separated: "
                    "0-1 or 0,2)")
    return None


def valid_name(name: str) -> bool:
    """Whether ``name`` can name a container app (letters, digits, ``_.-``, 63 at most)."""
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted into the container."""

    source: str = field(default="", metadata={"doc": "absolute host path"})
    destination: str = field(default="", metadata={"doc": "absolute path in the container"})
    read_only: bool = field(default=False, metadata={"doc": "mount it read-only"})


@dataclass(frozen=True)
class PortMapping:
    """A host port forwarded to a container port (bridge network only)."""

    container_port: int = field(default=0, metadata={"min": 1, "max": 65535, "doc": "port inside"})
    host_port: int = field(default=0, metadata={"min": 1, "max": 65535, "doc": "port on the host"})
    host_ip: str = field(default="", metadata={"doc": "host address to bind (default: all)"})
    protocol: Literal["tcp", "udp"] = field(default="tcp", metadata={"doc": "tcp or udp"})


@dataclass(frozen=True)
class RestartPolicy:
    """When a container that ended is started again."""

    type: RestartType = field(default="unless-stopped", metadata={
        "doc": "no | always | on-failure (non-zero exit) | unless-stopped (always, unless an operator stopped it)"})
    max_retries: int = field(default=0, metadata={
        "min": 0, "doc": "quick restarts in a row (each end within apps.backoff_max of its start) before "
                         "FATAL (0: no limit); delegated: podman's on-failure restart tries"})
    delegate: bool = field(default=False, metadata={
        "doc": "let the runtime restart it (its own policy) instead of the gateway's backoff"})


@dataclass(frozen=True)
class LogLimits:
    """How the container's output is kept in ``<state>/logs/apps/<name>.log``."""

    max_size: str = field(default="1M", metadata={"doc": "rotate at this size (K/M/G)"})
    max_files: int = field(default=3, metadata={"min": 0, "doc": "rotated files kept"})


@dataclass(frozen=True)
class ContainerDescription:
    """One container app, as an operator describes it."""

    image: str = field(default="", metadata={"doc": "image reference, e.g. registry.local:5000/sensor:1.2"})
    archive: str | None = field(default=None, metadata={
        "doc": "file name of an OCI archive artifact of the same update holding the image"})
    command: tuple[str, ...] = field(default=(), metadata={"controls": True, "doc": "argv (default: the image's)"})
    env: dict[str, str] = field(default_factory=dict, metadata={"controls": True, "doc": "environment variables"})
    mounts: tuple[Mount, ...] = field(default=(), metadata={"doc": "bind mounts"})
    port_mappings: tuple[PortMapping, ...] = field(default=(), metadata={"doc": "published ports"})
    network_mode: NetworkMode = field(default="bridge", metadata={"doc": "bridge | host | none"})
    memory: str = field(default="", metadata={"doc": "memory limit (K/M/G suffix; empty: none)"})
    cpus: float = field(default=0.0, metadata={"min": 0, "doc": "CPU limit in cores (0: none)"})
    cpuset_cpus: str = field(default="", metadata={"doc": "CPUs it may run on, e.g. 0-1 or 0,2 (empty: all)"})
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy, metadata={"doc": "restart policy"})
    log: LogLimits = field(default_factory=LogLimits, metadata={"doc": "log rotation"})
    stop_timeout: float = field(default=10.0, metadata={
        "min": 0, "doc": "seconds after SIGTERM before the runtime kills it (rounded up to whole seconds)"})
    startsecs: float = field(default=1.0, metadata={"min": 0, "doc": "seconds up before it counts as RUNNING"})
    health_window: float | None = field(default=None, metadata={
        "min": 0, "doc": "seconds a new version must stay RUNNING (default: apps.health_window)"})
    autostart: bool = field(default=True, metadata={"doc": "run it when installed or declared"})

    def problems(self) -> list[str]:
        """What is wrong with this description (empty when it can be run)."""
        found = []
        if not self.image:
            found.append("image: an image reference is required")
        elif self.image.strip() != self.image or " " in self.image:
            found.append(f"image: {self.image!r} is not an image reference")
        if self.memory:
            try:
                if parse_size(self.memory) < 6 * 2**20:
                    found.append("memory: at least 6M (the runtime refuses less)")
            except ValueError as exc:
                found.append(f"memory: {exc}")
        if self.cpuset_cpus:
            problem = cpuset_problem(self.cpuset_cpus)
            if problem is not None:
                found.append(f"cpuset_cpus: {problem}")
        try:
            parse_size(self.log.max_size)
        except ValueError as exc:
            found.append(f"log.max_size: {exc}")
        for i, mount in enumerate(self.mounts):
            if not mount.source.startswith("/") or not mount.destination.startswith("/"):
                found.append(f"mounts.{i}: source and destination must be absolute paths")
        if self.port_mappings and self.network_mode != "bridge":
            found.append("port_mappings: only with network_mode bridge")
        for key in self.env:
            if not key or "=" in key:
                found.append(f"env: {key!r} is not a variable name")
        return found

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """:meth:`problems` as the config loader wants them: (key path, message)."""
        for problem in self.problems():
            key, _, message = problem.partition(": ")
            yield tuple(key.split(".")), message

    @property
    def memory_bytes(self) -> int | None:
        """The memory limit in bytes, or None."""
        return parse_size(self.memory) if self.memory else None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form (what :func:`gateway.containers.descfile.from_mapping` reads back)."""
        return asdict(self)

    def fingerprint(self, version: str) -> str:
        """A short hash of this description and version: the runtime container's name ends with it."""
        body = json.dumps([version, self.to_json()], sort_keys=True).encode()
        return hashlib.sha256(body).hexdigest()[:12]
