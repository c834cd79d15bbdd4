"""What the admin API needs from the rest of the gateway, as small Protocols.

The real objects are the read side (``gateway.readside.ReadSide``), the apps' operations
(``gateway.apps.operations.AppOperations``), the update service
(``gateway.updates.service.UpdateService``), the upload service
(``gateway.uploads.service.UploadService``), the journal service
(``gateway.journal.service.JournalService``), the telemetry service's reports and metrics,
and the config changer (``gateway.commands.reconfigure.ConfigChanger``). Tests hand in
fakes that are checked against these same Protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, runtime_checkable

from twisted.internet.defer import Deferred

from gateway.apps.snapshot import AppsSnapshot
from gateway.broker.snapshot import BrokerSnapshot
from gateway.fleet.snapshot import FleetSnapshot
from gateway.ingest.snapshot import IngestSnapshot
from gateway.journal.snapshot import JournalSnapshot
from gateway.links.snapshot import LinksSnapshot
from gateway.readside import GatewayStatus
from gateway.twin.snapshot import TwinSnapshot
from gateway.updates.snapshot import UpdatesSnapshot

if TYPE_CHECKING:  # (the check's loader and YAML are not needed to describe it)
    from gateway.commands.dropin import CheckOutcome


@runtime_checkable
class ReadSideLike(Protocol):
    """The gateway's read side (:class:`gateway.readside.ReadSide`): typed snapshots of every
    service, cheap to take."""

    def status(self) -> GatewayStatus:
        """Version, started_at, uptime_s, pid, services (name, running, error)."""

    def broker(self) -> BrokerSnapshot:
        """The broker's snapshot."""

    def journal(self) -> JournalSnapshot:
        """The journal's snapshot (``streams``)."""

    def links(self) -> LinksSnapshot:
        """The links' snapshot (``links``)."""

    def apps(self) -> AppsSnapshot:
        """The apps' snapshot (``apps``: engine_report data and restarts)."""

    def updates(self) -> UpdatesSnapshot:
        """The update operations' snapshot (``operations``)."""

    def ingest(self) -> IngestSnapshot | None:
        """The local HTTP ingest's snapshot (``None``: no ingest)."""

    def twin(self) -> TwinSnapshot | None:
        """The local twin's snapshot (``None``: the twin is off)."""

    def fleet(self) -> FleetSnapshot | None:
        """The fleet channel's snapshot (``None``: the fleet is off)."""


@runtime_checkable
class AppOperationsLike(Protocol):
    """The apps' operations: the one implementation every door calls."""

    def install(self, archive: Path) -> Deferred[Any]:
        """Install a package file; fires with an ``InstallResult``."""

    def uninstall(self, name: str) -> Deferred[None]:
        """Stop and delete an installed app."""

    def start(self, name: str) -> Deferred[None]:
        """Start an app or program."""

    def stop(self, name: str) -> Deferred[None]:
        """Stop an app or program."""

    def restart(self, name: str) -> Deferred[None]:
        """Stop, then start an app or program."""

    def status(self, name: str | None = None) -> list[Any]:
        """Program statuses (of one app or program)."""

    def tail_bytes(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[bytes]:
        """The last lines of a program's log, as they are."""

    def log_path(self, name: str, stderr: bool = False) -> Path:
        """The file a program's log goes to (to follow it)."""


@runtime_checkable
class UpdatesLike(Protocol):
    """The update service's requests, the same the MQTT topics reach."""

    def handle_request(self, command: str, request: Any) -> Any:
        """Carry out an ``install``, ``download`` or ``cancel`` request (bare or in a Ditto
        envelope) as the MQTT topics do, refusals reported alike; returns the operation
        started (None for a cancel)."""


@runtime_checkable
class UploadsLike(Protocol):
    """The upload service's inbox, the same the cloud commands and the local topics reach."""

    def handle(self, operation: str, payload: bytes) -> Deferred[tuple[int, dict[str, Any]]]:
        """One Kanto AutoUploadable operation; fires with ``(status, body)``: 204, 400, 404 or 500."""

    def snapshot(self) -> dict[str, Any]:
        """``{"uploads": [lastUpload statuses, newest first], "autoUpload": {...}}``."""

    def new_correlation_id(self) -> str:
        """A fresh upload id for a trigger that names none."""


@runtime_checkable
class JournalLike(Protocol):
    """The journal service's operation on whole streams."""

    def drop(self, name: str, force: bool = False) -> Deferred[Any]:
        """Delete a stream the configuration no longer uses; fires once its directory is gone.

        :raises UnknownStreamError: no such stream (404).
        :raises StreamInUseError: the configuration uses it (409).
        :raises StreamNotDrainedError: (as the Deferred's failure) records not acknowledged,
            without ``force`` (409).
        """


@runtime_checkable
class ReportsLike(Protocol):
    """The telemetry service's reports and metrics page."""

    def report_names(self) -> tuple[str, ...]:
        """The reports it can build."""

    def last_reports(self) -> Mapping[str, Mapping[str, Any]]:
        """Report name -> the last body published."""

    def request_report(self, name: str) -> Deferred[Mapping[str, Any]]:
        """Build and publish one report now; ``UnknownReport`` for a bad name."""

    def render_metrics(self, accept: str) -> tuple[bytes, str]:
        """The Prometheus page: (body, content type)."""


@runtime_checkable
class ConfigChangerLike(Protocol):
    """Safe configuration changes: check, get, apply with confirm-or-revert."""

    def get(self, path: str) -> Any:
        """The value at a dotted key path; ``ConfigKeyError`` when absent."""

    def check(self, changes: Mapping[str, Any]) -> Deferred[CheckOutcome]:
        """Fires with every error of the configuration the changes would give (none when
        valid), and then its warnings."""

    def apply(self, changes: Mapping[str, Any], confirm_within: float | None,
              origin: str) -> Deferred[Any]:
        """Validate, write the drop-in, apply; fires with an ``ApplyResult``."""

    def pending(self) -> Any:
        """The change waiting for confirmation, or None."""


@dataclass
class Backends:
    """What the admin API reads and acts through; None where this gateway lacks it (503).

    :param readside: the services' snapshots.
    :param apps: the hosted apps' operations.
    :param updates: the update service.
    :param reports: the telemetry service (reports and metrics).
    :param config: the config changer (check, get, apply).
    :param uploads: the upload service.
    :param journal: the journal service (dropping a stream no longer used).
    """

    readside: ReadSideLike | None = None
    apps: AppOperationsLike | None = None
    updates: UpdatesLike | None = None
    reports: ReportsLike | None = None
    config: ConfigChangerLike | None = None
    uploads: UploadsLike | None = None
    journal: JournalLike | None = None
