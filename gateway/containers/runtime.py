"""The container runtime interface: what the gateway needs from podman (or a later containerd).

Everything a runtime must offer is here; :mod:`gateway.containers.podman` implements it over
podman's libpod REST API, and ``tests/containers/fakes.py`` in memory (both are checked
against these protocols by the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

from gateway.containers.description import ContainerDescription


@dataclass(frozen=True)
class ImageInfo:
    """An image in the runtime's store.

    :param id: the image id (the config digest, hex).
    :param digest: the manifest digest (``sha256:...``) it was pulled or loaded by.
    :param names: its tags.
    """

    id: str
    digest: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerState:
    """A container as the runtime sees it.

    :param id: the runtime's id.
    :param name: the runtime's name.
    :param labels: its labels (the gateway's say which app and version it is).
    :param running: whether its process runs.
    :param pid: its main process id while it runs.
    :param exit_code: how it last ended (None before it ever ran, or when the runtime does not say).
    :param started_at: when it last started (RFC 3339, as the runtime says it).
    :param image_id: the image it was created from.
    :param memory_limit: the memory limit applied, in bytes (None: none).
    :param stopping: whether the runtime is stopping it, or was when the one stopping it died
        (podman 4.3 then keeps it ``stopping`` for good: it refuses to start it, and a forced
        removal forgets it but leaves its process running; a stop ends it).
    """

    id: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    running: bool = False
    pid: int | None = None
    exit_code: int | None = None
    started_at: str = ""
    image_id: str = ""
    memory_limit: int | None = None
    stopping: bool = False


@dataclass(frozen=True)
class RuntimeEvent:
    """One container event from the runtime's stream.

    :param action: ``start``, ``died``, ``remove`` ... (the runtime's words).
    :param container_id: the container's id.
    :param name: its name.
    :param labels: its labels.
    :param exit_code: for ``died``: how it ended.
    """

    action: str
    container_id: str
    name: str
    labels: dict[str, str]
    exit_code: int | None = None


class Stream(Protocol):
    """A long response being read (events, logs)."""

    #: fires with None when the stream ends (errback when it broke)
    done: Deferred[None]

    def cancel(self) -> None:
        """Stop reading; ``done`` then fires."""


class ContainerRuntime(Protocol):
    """A container runtime the gateway drives; every call returns a Deferred.

    Errors are :class:`gateway.containers.errors.RuntimeFailure` (``NotFound`` for an unknown
    container or image, ``RuntimeUnavailable`` when the runtime does not answer) and
    :class:`gateway.containers.errors.ImageError` for pulls and loads.
    """

    def ping(self) -> Deferred[None]:
        """Fires when the runtime answers."""

    def pull(self, reference: str, credentials: tuple[str, str] | None, tls_verify: bool) -> Deferred[ImageInfo]:
        """Pull ``reference`` from its registry."""

    def load(self, archive: Path) -> Deferred[list[str]]:
        """Load an OCI (or docker) archive; fires with the names of the images it held."""

    def image(self, reference: str) -> Deferred[ImageInfo]:
        """Inspect a local image."""

    def remove_image(self, image_id: str) -> Deferred[None]:
        """Delete a local image (fails while a container uses it)."""

    def create(self, name: str, image_id: str, description: ContainerDescription,
               labels: dict[str, str]) -> Deferred[str]:
        """Create (not start) a container; fires with its id."""

    def start(self, container_id: str) -> Deferred[None]:
        """Start a created or stopped container."""

    def stop(self, container_id: str, timeout: float) -> Deferred[None]:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; fires once it has stopped."""

    def remove(self, container_id: str) -> Deferred[None]:
        """Delete a container (killing it if it runs); an unknown one is fine."""

    def inspect(self, container_id: str) -> Deferred[ContainerState]:
        """The container's state now."""

    def containers(self, label: str) -> Deferred[list[ContainerState]]:
        """Every container (running or not) that carries the label ``label``."""

    def events(self, on_event: Callable[[RuntimeEvent], None]) -> Deferred[Any]:
        """Follow container events from now on; fires with a :class:`Stream` once subscribed."""

    def logs(self, container_id: str, since: str, on_output: Callable[[int, bytes], None]) -> Deferred[Any]:
        """Follow a container's output from ``since`` (1 stdout, 2 stderr); fires with a Stream."""
