"""The ``containers`` section of the gateway configuration."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from gateway.apps.names import log_name_problem
from gateway.containers.description import ContainerDescription, valid_name
from gateway.unixsocket import MAX_SOCKET_PATH  # (podman binds no longer path, the gateway connects to none)

#: The version podman's routes take in ``/v<version>/libpod/...`` (its ``VersionedPath``):
#: any other answers 404 to every request.
_API_VERSION = re.compile(r"v[0-9][0-9A-Za-z.-]*\Z")


def container_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a container of ``containers.containers`` (``None`` when it can)."""
    if not valid_name(name):
        return "not a valid container name (letters, digits, _.-; 63 at most)"
    problem = log_name_problem(name)
    return f"not a container name: {problem}" if problem is not None else None

@dataclass(frozen=True)
class ContainersSettings:
    """Where the runtime is, how the gateway reaches registries, and declared containers."""

    enabled: bool = field(default=False, metadata={"doc": "host containers (needs podman)"})
    socket: str = field(default="", metadata={
        "path": True, "empty_is_default": True,
        "doc": "podman's API socket (default: <state>/containers/podman.sock; a unix socket path "
               "has at most 107 bytes)"})
    start_service: bool = field(default=True, metadata={
        "doc": "the gateway runs `podman system service` on the socket itself (false: one runs already, "
               "e.g. systemd's podman.socket)"})
    podman_command: tuple[str, ...] = field(default=("podman",), metadata={
        "controls": True,
        "doc": "how to run podman (with global flags, e.g. --root) when the gateway starts the service"})
    api_version: str = field(default="v4.0.0", metadata={"doc": "libpod API version in request paths"})
    insecure_registries: tuple[str, ...] = field(default=(), metadata={
        "doc": "registries (host:port) reached over plain HTTP or without TLS verification"})
    credentials_file: str = field(default="", metadata={
        "path": True, "empty_is_default": True,
        "doc": "registry credentials, in the auth.json / docker config.json format"})
    request_timeout: float = field(default=60.0, metadata={
        "min": 1, "doc": "seconds a runtime request may take (pulls and loads: pull_timeout)"})
    pull_timeout: float = field(default=600.0, metadata={"min": 1, "doc": "seconds an image pull or load may take"})
    startretries: int = field(default=3, metadata={"min": 0, "doc": "failed retries of a start before FATAL"})
    containers: dict[str, ContainerDescription] = field(default_factory=dict, metadata={
        "doc": "containers declared here rather than installed by an update"})

    def config_problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """A socket path too long for a unix socket (podman's service would never answer on it),
        an ``api_version`` podman's routes would not take, an empty ``podman_command`` the service
        would need, an insecure registry written as a
        URL (it would match no image's registry), and a declared container naming an archive
        (only an update brings one: its image is pulled)."""
        problem = socket_path_problem(self.socket)
        if problem is not None:
            yield ("socket",), problem
        if not _API_VERSION.match(self.api_version):
            yield ("api_version",), (f"{self.api_version!r} is no libpod API version: v and a version number, "
                                     "as in v4.0.0")
        if self.start_service and not self.podman_command:
            yield ("podman_command",), "empty: the gateway needs it to run podman's service (start_service: true)"
        for index, registry in enumerate(self.insecure_registries):
            if not registry or "/" in registry:  # an image reference names its registry as host[:port]
                yield ("insecure_registries", str(index)), (f"{registry!r} is no registry: give host:port as an"
                                                             " image reference names it (registry.local:5000)")
        for name, description in self.containers.items():
            if description.archive is not None:
                yield ("containers", name, "archive"), ("only an update's description names an archive artifact; "
                                                        "a declared container's image is pulled")


def podman_socket(settings: ContainersSettings, state_dir: Path) -> Path:
    """podman's API socket: ``containers.socket``, or ``<state>/containers/podman.sock``."""
    return Path(settings.socket) if settings.socket else state_dir / "containers" / "podman.sock"


def socket_path_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be podman's API socket (too long for a unix socket), or ``None``."""
    length = len(os.fsencode(path))
    if length > MAX_SOCKET_PATH:
        return f"a unix socket path has at most {MAX_SOCKET_PATH} bytes, not {length}"
    return None
