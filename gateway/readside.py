"""The read side: one place where reports, ``/metrics``, the admin API and remote commands
take the services' snapshots.

Every service offers ``snapshot()`` returning a frozen dataclass (``gateway/<pkg>/snapshot.py``);
:class:`ReadSide` holds the services and hands those out, plus the gateway's own status.
The ingest, the twin, the containers, the fleet channel and the per-app accounting are optional
(the twin, the containers and the fleet can be turned off):
their methods return ``None`` when the tree has no such service.
:func:`to_jsonable` turns any snapshot into plain JSON data.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Callable, Iterable, Mapping, Protocol

from twisted.internet.interfaces import IReactorTime

from gateway import __version__
from gateway.apps.snapshot import AppsSnapshot
from gateway.broker.snapshot import BrokerSnapshot
from gateway.clockstep import steady_seconds
from gateway.containers.snapshot import ContainersSnapshot
from gateway.degraded import Degraded, describe
from gateway.fleet.snapshot import FleetSnapshot
from gateway.ingest.snapshot import IngestSnapshot
from gateway.journal.snapshot import JournalSnapshot
from gateway.lastrun import PreviousStop
from gateway.links.snapshot import LinksSnapshot
from gateway.offservice import OffService
from gateway.reactorlag import reactor_lag
from gateway.telemetry.snapshot import AccountingSnapshot
from gateway.twin.snapshot import TwinSnapshot
from gateway.updates.snapshot import UpdatesSnapshot


class BrokerSource(Protocol):
    """Anything with the broker's snapshot (the real one: :class:`~gateway.broker.service.BrokerService`)."""

    def snapshot(self) -> BrokerSnapshot:
        """The broker now."""


class JournalSource(Protocol):
    """Anything with the journal's snapshot (:class:`~gateway.journal.service.JournalService`)."""

    def snapshot(self) -> JournalSnapshot:
        """The journal now."""


class LinksSource(Protocol):
    """Anything with the links' snapshot (:class:`~gateway.links.service.LinksService`)."""

    def snapshot(self) -> LinksSnapshot:
        """The links now."""


class AppsSource(Protocol):
    """Anything with the apps' snapshot (:class:`~gateway.apps.service.AppsService`)."""

    def snapshot(self) -> AppsSnapshot:
        """The apps now."""


class UpdatesSource(Protocol):
    """Anything with the updates' snapshot (:class:`~gateway.updates.service.UpdateService`)."""

    def snapshot(self) -> UpdatesSnapshot:
        """The update operations now."""


class IngestSource(Protocol):
    """Anything with the ingest's snapshot (:class:`~gateway.ingest.service.IngestService`)."""

    def snapshot(self) -> IngestSnapshot:
        """The ingest now."""


class TwinSource(Protocol):
    """Anything with the twin's snapshot (:class:`~gateway.twin.service.TwinService`)."""

    def snapshot(self) -> TwinSnapshot:
        """The twin now."""


class ContainersSource(Protocol):
    """Anything with the containers service's snapshot (:class:`~gateway.containers.service.ContainersService`)."""

    def snapshot(self) -> ContainersSnapshot:
        """The containers service now."""


class FleetSource(Protocol):
    """Anything with the fleet channel's snapshot (:class:`~gateway.fleet.service.FleetService`)."""

    def snapshot(self) -> FleetSnapshot:
        """The fleet channel now."""


class AccountingSource(Protocol):
    """Anything with the per-app accounting's snapshot (:class:`~gateway.telemetry.appbytes.AccountingService`)."""

    def snapshot(self) -> AccountingSnapshot:
        """The per-app accounting now."""


#: In a dataclass field's metadata: :func:`to_jsonable` leaves the field out while it is ``""``
#: (a key few entries of a list need, which leaves the others' shape as it was).
OMIT_EMPTY = "omit_empty"
#: In a dataclass field's metadata: :func:`to_jsonable` always leaves the field out (a value
#: kept for the gateway's own use that no reader may see, as the text of a drop-in that may
#: hold secrets), so that no endpoint, report or command has to remember to drop it.
NEVER_SHOWN = "never_shown"


class NamedService(Protocol):
    """What :meth:`ReadSide.status` reads of each service in the tree."""

    name: str | None
    running: int | bool


@dataclass(frozen=True)
class ServiceState:
    """One service of the tree.

    :param name: its name (``journal``, ``broker``, ``links``, ...).
    :param running: whether it is started.
    :param error: why a started service does not do its job, as its snapshot says (the
        ingest's ``not listening: <the bind failure>``; the journal's streams refusing appends
        or not writing their loss ledgers (both joined by ``; `` when both hold), the broker's
        checkpoint, a link's cursor or the twin's things not saved, the per-app accounting's
        ``nft`` failing, the containers' podman not reached, :func:`~gateway.degraded.describe`),
        else ``""``.
    :param off: why a service does not do its job for an ordinary reason, not a failure (the
        per-app accounting's: not root, no ``nft``, ``app_accounting: off``; the ingest's with
        ``ingest.enabled: false``; an :class:`~gateway.offservice.OffService`'s, the twin's with
        ``twin.enabled: false``), else ``""`` (and left out of its JSON).
    """

    name: str
    running: bool
    error: str = ""
    off: str = field(default="", metadata={OMIT_EMPTY: True})


@dataclass(frozen=True)
class GatewayStatus:
    """The gateway process.

    :param version: the gateway's version.
    :param started_at: when the service tree was built (seconds since the epoch).
    :param uptime_s: whole seconds since then, to the nearest (the programs' and containers'
        ``uptime_s`` are whole seconds too).
    :param pid: the process id.
    :param services: the services of the tree, in start order.
    :param reactor_lag_s: seconds the reactor ran a timer late at worst in the last minute or
        two (:mod:`gateway.reactorlag`): how long a busy turn held every answer up; 0.0 on a
        reactor that does not measure it.
    :param previous_stop: how the previous run on the state directory ended, and how many runs
        there ended without a clean stop (:mod:`gateway.lastrun`).
    """

    version: str
    started_at: float
    uptime_s: int
    pid: int
    services: tuple[ServiceState, ...]
    reactor_lag_s: float = 0.0
    previous_stop: PreviousStop = PreviousStop()


class ReadSide:
    """The services' snapshots, in one object built by :func:`gateway.tree.build_service`.

    :param clock: the reactor's clock (uptime).
    :param broker: the broker service.
    :param journal: the journal service.
    :param links: the links service.
    :param apps: the apps service.
    :param updates: the update service.
    :param services: the tree's services, for :meth:`status` (the root service iterates
        over its children, so it can be passed as it is).
    :param pid: the process id (default: the process's at each :meth:`status`).
    :param ingest: the ingest service, or ``None`` when the tree has none.
    :param twin: the twin service, or ``None`` when it is off (``twin.enabled: false``).
    :param accounting: the per-app accounting service, or ``None`` when the tree has none.
    :param fleet: the fleet service, or ``None`` when it is off (``fleet.enabled: false``).
    :param containers: the containers service, or ``None`` when it is off (``containers.enabled: false``).
    :param previous_stop: how the previous run ended (the state directory's service knows it
        once started); ``None``: unknown, :class:`~gateway.lastrun.PreviousStop`'s ``none``.
    """

    def __init__(self, clock: IReactorTime, broker: BrokerSource, journal: JournalSource, links: LinksSource,
                 apps: AppsSource, updates: UpdatesSource, services: Iterable[NamedService] = (),
                 pid: int | None = None, ingest: IngestSource | None = None,
                 twin: TwinSource | None = None, accounting: AccountingSource | None = None,
                 previous_stop: Callable[[], PreviousStop] | None = None,
                 fleet: FleetSource | None = None, containers: ContainersSource | None = None) -> None:
        self.clock = clock
        self._previous_stop = previous_stop
        self._broker = broker
        self._journal = journal
        self._links = links
        self._apps = apps
        self._updates = updates
        self._ingest = ingest
        self._twin = twin
        self._accounting = accounting
        self._fleet = fleet
        self._containers = containers
        self._services = services
        self.started_at = clock.seconds()
        self._steady_started_at = steady_seconds(clock)  # (the uptime: not moved by a step of the wall clock)
        self.pid = pid  # None: asked at each status (twistd may fork once the tree is built)

    def goes_on_from(self, previous: ReadSide) -> None:
        """A configuration change restarted the tree, not the process: ``started_at`` and the
        uptime go on from ``previous``'s."""
        self.started_at, self._steady_started_at = previous.started_at, previous._steady_started_at

    def status(self) -> GatewayStatus:
        """The gateway's version, uptime, pid, which services run, the reactor's lag, and how
        the previous run ended."""
        uptime = steady_seconds(self.clock) - self._steady_started_at
        pid = self.pid if self.pid is not None else os.getpid()
        previous = self._previous_stop() if self._previous_stop is not None else PreviousStop()
        return GatewayStatus(__version__, self.started_at, max(round(uptime), 0), pid,
                             tuple(ServiceState(s.name or "?", bool(s.running), self._error(s), self._off(s))
                                   for s in self._services), reactor_lag(self.clock), previous)

    def _error(self, service: NamedService) -> str:
        """What a service's snapshot says keeps it from its job (the gateway starts without
        an ingest that cannot listen: its service is started, not listening; a journal on a
        full disk refuses appends and fails to write its loss ledgers, the broker's checkpoint,
        a link's cursor and the twin's things are not saved, the per-app accounting's ``nft``
        fails, the containers service does not reach podman)."""
        if self._ingest is not None and service is self._ingest:
            error = self._ingest.snapshot().error
            return f"not listening: {error}" if error else ""
        failing: tuple[Degraded | None, ...] = ()
        if service is self._journal:
            journal = self._journal.snapshot()
            failing = (journal.refusing, journal.ledger_failing)
        elif service is self._broker:
            failing = (self._broker.snapshot().checkpoint_failing,)
        elif service is self._links:
            failing = (self._links.snapshot().cursor_failing,)
        elif self._twin is not None and service is self._twin:
            failing = (self._twin.snapshot().save_failing,)
        elif self._accounting is not None and service is self._accounting:
            failing = (self._accounting.snapshot().failing,)
        elif self._containers is not None and service is self._containers:
            failing = (self._containers.snapshot().runtime_failing,)
        return "; ".join(describe(f) for f in failing if f is not None)

    def _off(self, service: NamedService) -> str:
        """Why a service does nothing for an ordinary reason (the per-app accounting where the
        platform or the configuration rules it out, the ingest or a service the configuration
        turned off)."""
        if self._accounting is not None and service is self._accounting:
            return self._accounting.snapshot().off
        if self._ingest is not None and service is self._ingest:
            return self._ingest.snapshot().off
        return service.off if isinstance(service, OffService) else ""

    def broker(self) -> BrokerSnapshot:
        """The local broker's snapshot."""
        return self._broker.snapshot()

    def journal(self) -> JournalSnapshot:
        """The journal's snapshot (every stream)."""
        return self._journal.snapshot()

    def links(self) -> LinksSnapshot:
        """The cloud links' snapshot."""
        return self._links.snapshot()

    def apps(self) -> AppsSnapshot:
        """The hosted apps' snapshot."""
        return self._apps.snapshot()

    def updates(self) -> UpdatesSnapshot:
        """The update operations' snapshot."""
        return self._updates.snapshot()

    def ingest(self) -> IngestSnapshot | None:
        """The local HTTP ingest's snapshot (``None``: no ingest in this tree)."""
        return self._ingest.snapshot() if self._ingest is not None else None

    def twin(self) -> TwinSnapshot | None:
        """The local twin's snapshot (``None``: the twin is off)."""
        return self._twin.snapshot() if self._twin is not None else None

    def fleet(self) -> FleetSnapshot | None:
        """The fleet channel's snapshot (``None``: the fleet is off)."""
        return self._fleet.snapshot() if self._fleet is not None else None

    def containers(self) -> ContainersSnapshot | None:
        """The containers service's snapshot (``None``: the containers are off)."""
        return self._containers.snapshot() if self._containers is not None else None

    def accounting(self) -> AccountingSnapshot | None:
        """The per-app accounting's snapshot (``None``: no such service in this tree)."""
        return self._accounting.snapshot() if self._accounting is not None else None


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data from a snapshot: dataclasses become dicts (field order kept; a field
    marked :data:`OMIT_EMPTY` left out while it is ``""``, one marked :data:`NEVER_SHOWN`
    always), tuples and lists lists, enums their value, paths strings, mapping keys strings; a float that
    JSON cannot carry (NaN, infinity) becomes ``None``.

    :param obj: a snapshot, or anything made of the types above and JSON's own.
    :raises TypeError: for a value of another type (a bug: snapshots hold data only).
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get(NEVER_SHOWN) or f.metadata.get(OMIT_EMPTY) and getattr(obj, f.name) == "")}
    if isinstance(obj, (tuple, list)):
        return [to_jsonable(item) for item in obj]
    if isinstance(obj, Mapping):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).decode("utf-8", "replace")
    raise TypeError(f"to_jsonable: cannot convert {type(obj).__name__}")
