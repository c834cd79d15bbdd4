"""One operator model for every kind of hosted app: processes (GWE tarballs, native packages,
config programs) and other kinds such as containers (:mod:`gateway.containers`).

:class:`AppsControl` is what the admin API, ``gatewayctl``, remote commands and updates call:
a name is looked up among the hosted processes first, then in each other kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed

from gateway.apps.errors import UnknownAppError
from gateway.apps.logs import log_lines
from gateway.apps.operations import AppOperations, InstallResult


class HostedKind(Protocol):
    """Another kind of hosted app (containers): the same operations, names and states."""

    def owns(self, name: str) -> bool:
        """Whether ``name`` is one of this kind's apps."""

    def installs(self, name: str) -> bool:
        """Whether an install of an app named ``name`` is under way (not yet one of its apps)."""

    def start(self, name: str) -> Deferred[None]:
        """Start it; it is desired running."""

    def stop(self, name: str) -> Deferred[None]:
        """Stop it; it is desired stopped."""

    def restart(self, name: str) -> Deferred[None]:
        """Stop, then start it."""

    def uninstall(self, name: str) -> Deferred[None]:
        """Remove it."""

    def tail_bytes(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[bytes]:
        """Its log's last lines, as they are."""

    def log_path(self, name: str, stderr: bool = False) -> Path:
        """The file its stdout (or stderr) goes to."""

    def status(self, name: str) -> list[Any]:
        """Its statuses (objects shaped like :class:`gateway.apps.process.ProgramStatus`)."""

    def statuses(self) -> list[Any]:
        """Every app's status."""

    def install_files(self, name: str, version: str, files: list[Path],
                      digests: dict[str, dict[str, str]]) -> Deferred[Any]:
        """Install from an update's artifacts; fires with an InstallResult."""


class AppsControl:
    """The hosted apps' operations for every kind.

    :param operations: the hosted processes' operations.
    """

    def __init__(self, operations: AppOperations) -> None:
        self.operations = operations
        self.kinds: list[HostedKind] = []
        operations.other_kinds = lambda name: any(k.owns(name) or k.installs(name) for k in self.kinds)

    def _kind(self, name: str) -> HostedKind | None:
        if self.is_program(name):
            return None
        return next((k for k in self.kinds if k.owns(name)), None)

    def is_program(self, name: str) -> bool:
        """Whether ``name`` is a hosted process's program or app, installed apps that supervise
        nothing (one-shot packages) and an app whose install is under way included (other kinds
        must not take it)."""
        return (any(s.name == name or s.app == name for s in self.operations.status())
                or self.operations.registry.current(name) is not None or self.operations.installs(name))

    def install(self, archive: Path) -> Deferred[Any]:
        """Install a process app package (see :meth:`AppOperations.install`)."""
        return self.operations.install(archive)

    def install_container(self, name: str, version: str, files: list[Path],
                          digests: dict[str, dict[str, str]]) -> Deferred[Any]:
        """Install a container app from an update's artifacts (fires with an InstallResult,
        ``refused`` when a hosted process app or program has that name).

        :raises UnknownAppError: (as the failure) when the gateway hosts no containers.
        """
        if self.is_program(name):
            return succeed(InstallResult(False, "refused", name, version, None,
                                         f"refused: {name!r} is the name of a hosted process app or program"))
        for kind in self.kinds:
            if hasattr(kind, "install_files"):
                return kind.install_files(name, version, files, digests)
        return fail(UnknownAppError("this gateway does not host containers (containers.enabled)"))

    def start(self, name: str) -> Deferred[None]:
        """Start an app or program of any kind."""
        kind = self._kind(name)
        return kind.start(name) if kind is not None else self.operations.start(name)

    def stop(self, name: str) -> Deferred[None]:
        """Stop an app or program of any kind."""
        kind = self._kind(name)
        return kind.stop(name) if kind is not None else self.operations.stop(name)

    def restart(self, name: str) -> Deferred[None]:
        """Restart an app or program of any kind."""
        kind = self._kind(name)
        return kind.restart(name) if kind is not None else self.operations.restart(name)

    def uninstall(self, name: str) -> Deferred[None]:
        """Uninstall an app of any kind."""
        kind = self._kind(name)
        return kind.uninstall(name) if kind is not None else self.operations.uninstall(name)

    def tail(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[list[str]]:
        """The last lines of an app's or program's log as text, each without its end, a byte that
        is no UTF-8 as U+FFFD (:func:`~gateway.apps.logs.log_lines` of :meth:`tail_bytes`)."""
        return self.tail_bytes(name, lines, stderr).addCallback(log_lines, lines)

    def tail_bytes(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[bytes]:
        """The last lines of an app's or program's log, as they are."""
        kind = self._kind(name)
        return (kind.tail_bytes(name, lines, stderr) if kind is not None
                else self.operations.tail_bytes(name, lines, stderr))

    def log_path(self, name: str, stderr: bool = False) -> Path:
        """The file an app's or program's stdout (or stderr) goes to, for following it."""
        kind = self._kind(name)
        return kind.log_path(name, stderr) if kind is not None else self.operations.log_path(name, stderr)

    def status(self, name: str | None = None) -> list[Any]:
        """Every status (processes, then each kind), or those of one name."""
        if name is None:
            return [*self.operations.status(), *(s for k in self.kinds for s in k.statuses())]
        kind = self._kind(name)
        return kind.status(name) if kind is not None else self.operations.status(name)
