"""Errors of the hosted-applications package, all under :class:`gateway.errors.AppError`."""

from gateway.errors import AppError


class ManifestError(AppError):
    """A ``supervisor.conf`` or ``app.yaml`` is malformed; the message says where."""


class UnsafeArchiveError(AppError):
    """A package was refused before anything was written: traversal, links out, devices, size."""


class InstallError(AppError):
    """An install failed (bad name, ``install.sh`` failed or timed out, name clash)."""


class AlreadyCurrentError(InstallError):
    """The package's version is the app's current version already; nothing was changed.

    :param name: the app.
    :param version: its current version.
    """

    def __init__(self, name: str, version: str) -> None:
        super().__init__(f"{name} {version} is already the current version")
        self.name = name
        self.version = version


class NameTakenError(AppError):
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
