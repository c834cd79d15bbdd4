"""Unpacks a package into ``apps/<name>/<version>/`` and runs its ``install.sh``.

Switching versions, the health gate and rollback are in :mod:`gateway.apps.operations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway.apps.archive import ArchiveContents, extract_archive, inspect_archive
from gateway.apps.commands import CommandResult, run_command
from gateway.apps.errors import (AlreadyCurrentError, InstallError, ManifestError, NameTakenError,
                                 PackageError)
from gateway.apps.manifest import GWE_FILE, AppManifest, parse_app_yaml, read_manifest
from gateway.apps.names import check_name
from gateway.apps.process import ProcessLauncher
from gateway.apps.registry import AppRegistry
from gateway.atomic import write_atomically
from gateway.apps.settings import AppsSettings
from gateway.filelayer import makedirs_durably, sync_tree

T = TypeVar("T")
Blocking = Callable[[Callable[[], T]], "Deferred[T]"]
log = Logger()


@dataclass(frozen=True)
class PreparedPackage:
    """A package unpacked and installed on disk, not yet active.

    :param manifest: what it runs.
    :param home: its version directory.
    :param install_output: what ``install.sh`` printed ("" when there is none).
    """

    manifest: AppManifest
    home: Path
    install_output: str


class PackageInstaller:
    """Checks, unpacks and runs ``install.sh`` for one package at a time.

    :param settings: size limits and the install timeout.
    :param registry: the apps on disk.
    :param reactor: an IReactorProcess and IReactorTime.
    :param launcher: signals process groups.
    :param blocking: runs a blocking callable off the reactor thread.
    :param base_env: the environment ``install.sh`` gets for an app and version.
    :param name_taken: why a package may not take a name (another kind of app or a config
        program has it), or ``None`` when it may (the name is then the install's); asked
        before anything is unpacked.
    :param before_unpack: called with the name and version off the reactor thread, just before
        anything of the package is written (the install under way is recorded there).
    """

    def __init__(self, settings: AppsSettings, registry: AppRegistry, reactor: Any,
                 launcher: ProcessLauncher, blocking: Blocking[Any],
                 base_env: Callable[[str, str, Path], dict[str, str]],
                 name_taken: Callable[[str], str | None] = lambda name: None,
                 before_unpack: Callable[[str, str], None] = lambda name, version: None) -> None:
        self._before_unpack = before_unpack
        self._name_taken = name_taken
        self._settings = settings
        self._registry = registry
        self._reactor = reactor
        self._launcher = launcher
        self._blocking = blocking
        self._base_env = base_env
        self._script: Deferred[CommandResult] | None = None  # the install.sh running

    def stop(self) -> None:
        """The apps service stops: kill the ``install.sh`` running, as the gateway's end would
        (its :meth:`prepare` fails with CancelledError, the unpacked files removed)."""
        if self._script is not None:
            self._script.cancel()

    def identify(self, archive: Path, contents: ArchiveContents) -> tuple[str, str]:
        """The package's name and version: from ``app.yaml``, else from the file name.

        :raises ManifestError: when neither names it, or the name or version is not one safe
            path component; or when a package named by its file name lacks ``install.sh``
            (the error carries that name and version).
        """
        if contents.manifest is not None:
            manifest = parse_app_yaml(contents.manifest)
            return manifest.name, manifest.version
        match = GWE_FILE.match(archive.name)
        if match is None:
            raise ManifestError(f"{archive.name}: no app.yaml and not <name>.v<version>.tar.gz")
        # Checked before anything is written: the name and version become directories
        # under apps/ (a name of ".." would put the version directory outside it).
        name, version = check_name("name", match.group("name")), check_name("version", match.group("version"))
        if "install.sh" not in contents.members:  # (named by its file name all the same)
            raise ManifestError(f"{archive.name}: a GWE package needs install.sh", name, version)
        return name, version

    def discard(self, name: str, version: str) -> None:
        """Remove a version that did not install; and the app's directory if it has no other."""
        self._registry.remove_version(name, version)
        if self._registry.current(name) is None:
            self._registry.remove_app(name)

    @inlineCallbacks
    def prepare(self, archive: Path) -> Any:
        """Check, unpack and install ``archive``; nothing active changes.

        :return: a Deferred firing with a :class:`PreparedPackage`.
        :raises UnsafeArchiveError: refused before anything was written (or, by Python's
            extraction filter, while unpacking: then what was written is removed again).
        :raises ManifestError: the package does not describe itself properly, or its name or
            version would land on a file or directory the gateway keeps in ``apps/``.
        :raises NameTakenError: another kind of app or a config program has its name.
        :raises InstallError: ``install.sh`` failed, unpacking failed (a full disk) or the
            version is the current one; the unpacked files are removed again, and so is the
            app's directory when no version of it is current.
        """
        settings = self._settings
        contents: ArchiveContents = yield self._blocking(lambda: inspect_archive(
            archive, settings.max_archive_bytes, settings.max_unpacked_bytes,
            settings.max_members))
        name, version = self.identify(archive, contents)
        clash = self._registry.layout_clash(name, version)
        if clash is not None:
            raise ManifestError(f"{archive.name}: {clash}", name, version)
        taken = self._name_taken(name)
        if taken is not None:
            raise NameTakenError(taken, name, version)
        if self._registry.current(name) == version:
            raise AlreadyCurrentError(name, version)
        home = self._registry.version_dir(name, version)

        def unpack() -> AppManifest:
            self._before_unpack(name, version)
            self._registry.remove_version(name, version)
            extract_archive(archive, contents, home, sync=False)  # (synced once, below)
            makedirs_durably(str(self._registry.data_dir(name)))  # (the app's state kept across versions)
            return read_manifest(home, name, version)

        try:
            manifest: AppManifest = yield self._blocking(unpack)
            output = ""
            if (home / "install.sh").is_file():
                self._script = run_command(
                    self._reactor, self._launcher, ("sh", "install.sh"), home,
                    self._base_env(name, version, home), settings.install_timeout,
                    name=f"{name} {version} install.sh")
                try:
                    result: CommandResult = yield self._script
                finally:
                    self._script = None
                output = result.output.decode("utf-8", "replace")
                log_path = self._registry.install_log(name, version)
                yield self._blocking(lambda: write_atomically(log_path, result.output))
                if not result.ok:
                    why = (f"timed out after {settings.install_timeout:g} s (install_timeout)"
                           if result.exitstatus is None else f"exited with {result.exitstatus}")
                    raise InstallError(f"{name} {version}: install.sh {why}", name, version, output)
            # The unpacked files and what install.sh wrote there (compiled files, a generated
            # config) survive a power cut before anything points at this version: one pass
            # fsyncs each file once.
            yield self._blocking(lambda: sync_tree(str(home)))
        except BaseException as exc:
            yield self._blocking(lambda: self.discard(name, version))
            if isinstance(exc, OSError):
                raise InstallError(f"could not unpack {name} {version}: {exc}", name, version) from exc
            if isinstance(exc, PackageError):
                raise exc.naming(name, version)
            raise
        log.info("apps: {name} {version} unpacked and installed", name=name, version=version)
        return PreparedPackage(manifest, home, output)
