"""Errors of the hosted-applications package, all under :class:`gateway.errors.AppError`."""

from gateway.errors import AppError


class PackageError(AppError):
    """A package was refused or did not install; it names the app and version when known.

    :param message: one line for an operator.
    :param name: the package's app, once the package has named it (else None).
    :param version: the package's version, likewise.
    :param log: longer output that goes with it (``install.sh``'s), else empty.
    """

    def __init__(self, message: str, name: str | None = None, version: str | None = None,
                 log: str = "") -> None:
        super().__init__(message)
        self.name = name
        self.version = version
        self.log = log

    def naming(self, name: str, version: str) -> "PackageError":
        """This error, naming the package it concerns where it did not yet.

        :param name: the package's app.
        :param version: the package's version.
        """
        if self.name is None:
            self.name, self.version = name, version
        return self


class ManifestError(PackageError):
    """A ``supervisor.conf`` or ``app.yaml`` is malformed; the message says where."""


class UnsafeArchiveError(PackageError):
    """A package was refused before anything was written: traversal, links out, devices, size."""


class InstallError(PackageError):
    """An install failed (bad name, ``install.sh`` failed or timed out, name clash)."""


class AlreadyCurrentError(InstallError):
    """The package's version is the app's current version already; nothing was changed.

    :param name: the app.
    :param version: its current version.
    """

    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"{name} {version} is already the current version", name, version)


class NameTakenError(PackageError):
    """A package names an app that is another kind's (a container) or a config program's;
    it was refused before anything was written."""


class HealthCheckError(AppError):
    """A new version did not stay healthy and was rolled back."""


class AppsStoppingError(AppError):
    """The apps service is stopping (the gateway stops, or restarts for a configuration
    change): the operation asked for was not done."""


class DesiredStateError(AppError):
    """A start, stop, restart or uninstall whose wish the disk refused to keep
    (``desired.json``, or a container app's ``containers/state.json``, on a full or read-only
    disk): nothing was changed, in memory or on disk, and no process was started or stopped."""


class UnknownAppError(AppError):
    """No app or program has that name."""


class AmbiguousProgramError(AppError):
    """The name is an app with several programs where one program is needed (its log):
    an argument to correct, not a missing app."""
