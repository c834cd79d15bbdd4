"""The service tree: which services the gateway runs, in dependency order."""

from __future__ import annotations

import asyncio
import hashlib
from functools import partial
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from gateway import __version__, gctuning, httpaccesslog, logbridge
from gateway.admin.interfaces import Backends
from gateway.admin.service import AdminService
from gateway.apps.oomkills import OomKillCounts
from gateway.apps.operations import CONFIG_VERSION
from gateway.apps.service import AppsService
from gateway.blocking import in_reactor_threads
from gateway.broker.connection import STOP_GRACE
from gateway.broker.openlisteners import open_listener_warnings
from gateway.broker.service import BrokerService
from gateway.broker.settings import client_address
from gateway.broker.statelog import STATE_STREAM
from gateway.clockstep import BootClock, boot_id
from gateway.commands.dispatcher import CommandDispatcher, Reply
from gateway.commands.gateway_commands import GatewayCommands
from gateway.commands.reconfigure import ConfigChanger
from gateway.commands.restart import ProcessRestart
from gateway.config import Config
from gateway.exitdeadline import ExitDeadline
from gateway.ingest.service import IngestService
from gateway.journal.service import JournalService
from gateway.lastrun import journal_recovery, unclean_line
from gateway.links.httpclient import make_link_client
from gateway.links.service import LinksService
from gateway.nullentries import null_entry_warnings
from gateway.offservice import OffService
from gateway.readside import ReadSide, to_jsonable
from gateway.root import GatewayService
from gateway.telemetry.appbytes import TABLE, AccountingService, NftAccounting, detect
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.settings import TelemetrySettings
from gateway.telemetry.usage import link_counters
from gateway.updates.commands import UPDATE_COMMANDS, UpdateCommands
from gateway.updates.httpclient import lazy_http_client
from gateway.updates.service import UpdateService
from gateway.uploads.commands import UploadCommands
from gateway.uploads.commands import command_handlers as upload_command_handlers
from gateway.uploads.wiring import build_uploads
from gateway.state import StateDirService

if TYPE_CHECKING:  # imported by add_services only when they are on
    from gateway.containers.service import ContainersService
    from gateway.fleet.service import FleetService
    from gateway.twin.service import TwinService
    from gateway.uploads.service import UploadService


#: The services whose replacement must never run beside them: two journals would write the
#: same segment files and cursors, two brokers the same session store on the same ports.
EXCLUSIVE = ("journal", "broker")
#: Seconds after a configuration change has restarted the tree before the services it replaced
#: are collected (:func:`~gateway.gctuning.collect_and_release`): the request that made the
#: change (the old admin API's, a remote command's) is answered by them once the new ones have
#: started, and their connections close after that.
COLLECT_REPLACED_AFTER = 5.0


@dataclass(frozen=True)
class Parts:
    """The services one configuration's tree is made of, as :func:`add_services` wired them
    (``None``: not configured). Tests and tools reach a running gateway's services here."""

    journal: JournalService
    broker: BrokerService
    links: LinksService
    ingest: IngestService
    apps: AppsService
    updates: UpdateService
    uploads: UploadService
    readside: ReadSide
    telemetry: TelemetryService
    commands: GatewayCommands
    admin: AdminService
    twin: TwinService | None = None
    containers: ContainersService | None = None
    fleet: FleetService | None = None


class GatewayTree(GatewayService):
    """The gateway's root service with its parts: the configuration changer, and the
    services of the running configuration (replaced when a change restarts them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changer: ConfigChanger | None = None
        self.parts: Parts | None = None
        self.state: StateDirService | None = None
        self._collect_call: IDelayedCall | None = None

    def collect_replaced(self) -> None:
        """Collect the services a configuration change has replaced, in
        :data:`COLLECT_REPLACED_AFTER` seconds (once for changes in quick succession). They are
        cyclic garbage, a whole tree of it (broker sessions and queues, journal tails), which
        the gateway's rare full collections (:mod:`gateway.gctuning`) left for as long as a
        quiet gateway allocated too little to run one."""
        if self._collect_call is None or not self._collect_call.active():
            self._collect_call = self.clock.callLater(COLLECT_REPLACED_AFTER, gctuning.collect_and_release)

    def stopService(self) -> Deferred[None]:
        """Stop the gateway once a configuration change under way has ended (its services are
        restarting: stopping those that run now would leave the rest of the new tree to start
        after the stop), then every service as :class:`GatewayService` does; all within
        ``stop_limit``, the wait for the change included. No change begins from now on (a
        remote ``config.set`` still being checked is refused)."""
        self.stop_began()
        if self.state is not None:  # (its lock file says so until the process has ended)
            self.state.stopping()
        if self.changer is None:
            return self._stop_services()
        self.changer.close()

        def still_changing(failure: Failure) -> None:
            failure.trap(defer.TimeoutError)
            self.log.warn("a configuration change is still under way after {limit} s: stopping anyway",
                          limit=self.stop_limit)

        return self.changer.when_idle().addTimeout(self.stop_time_left(), self.clock).addErrback(
            still_changing).addCallback(lambda _: self._stop_services())

    def _stop_services(self) -> Deferred[None]:
        """Hold the downlink, drop a pending collection (the process ends), then stop every
        service as :class:`GatewayService` does."""
        if self._collect_call is not None and self._collect_call.active():
            self._collect_call.cancel()
        hold_downlink(self)
        return super().stopService()


def app_accounting(settings: TelemetrySettings, reactor: Any, state_dir: Path) -> NftAccounting:
    """Per-app byte accounting where the platform allows it (``telemetry.app_accounting``);
    its cgroups and nftables table are named for the state directory, so two gateways on one
    machine keep apart."""
    if settings.app_accounting == "off":
        return NftAccounting(reactor, None, "per-app accounting is off (telemetry.app_accounting)")
    tag = accounting_tag(state_dir)
    place, reason = detect(f"gateway-apps-{tag}")
    return NftAccounting(reactor, place, reason, table=f"{TABLE}_{tag}")


def accounting_tag(state_dir: Path) -> str:
    """What names the per-app accounting's cgroups and nftables table of the gateway whose
    state lives in ``state_dir`` (``gateway_apps_<tag>``)."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]


def build_service(config: Config, reactor: Any,
                  on_start_failure: Callable[[Failure], None] | None = None,
                  loop: asyncio.AbstractEventLoop | None = None,
                  exit_deadline: ExitDeadline | None = None) -> GatewayTree:
    """Compose the root service: state dir, config changes, then ``journal -> broker -> links
    -> ... -> commands -> admin``.

    The state directory is locked here, and then a pending configuration change whose
    confirm deadline has passed is reverted, before anything starts (see
    :mod:`gateway.commands.reconfigure`).

    :param config: the loaded configuration.
    :param reactor: the running reactor (asyncio), injected into every service.
    :param on_start_failure: called if a service cannot start (or a reverted
        configuration cannot start again).
    :param loop: the asyncio loop under ``reactor`` (``tap.py`` creates it), for the
        journal and the broker; ``None`` in tests (see :class:`JournalService`,
        :class:`BrokerService`).
    :param exit_deadline: ends the process if it has not ended soon after its stop
        (:class:`~gateway.root.GatewayService`); ``None`` in tests.
    :raises GatewayError: when the state directory cannot be locked (another gateway uses
        it), or a pending change cannot be reverted (:class:`~gateway.errors.ConfigRevertError`).
    """
    root = GatewayTree(reactor, config.gateway.shutdown_timeout, on_start_failure, exit_deadline=exit_deadline)
    root.about = about(config)
    state = StateDirService(config.state_dir, config.state_dir / config.journal.directory, clock=reactor)
    state.setServiceParent(root)
    root.state = state

    def restart_tree(new: Config) -> Deferred[tuple[str, ...]]:
        def started(names: tuple[str, ...]) -> tuple[str, ...]:
            tree_started(root)
            root.collect_replaced()
            return names

        use_process_settings(root, new)
        hold_downlink(root)
        return root.replace_children((state, changer), lambda: add_services(root, new, reactor, changer, loop),
                                     exclusive=EXCLUSIVE).addCallback(started)

    def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Deferred[None]:
        assert root.parts is not None, "the configuration changer publishes once the tree runs"
        return root.parts.broker.bus.publish(topic, payload, qos, retain)

    changer = ConfigChanger(config, config.commands, reactor, restart_tree,
                            lambda: link_states(root), publish,
                            in_reactor_threads(reactor),
                            on_fatal=on_start_failure, hosted_apps=lambda: hosted_apps(root),
                            boot_clock=BootClock(boot_id()))
    changer.setServiceParent(root)
    root.changer = changer
    state.lock()  # before a pending change is looked at: it may belong to another gateway
    running = changer.recover()  # (the configuration before an unconfirmed change, when it reverted it)
    root.shutdown_timeout = running.gateway.shutdown_timeout
    add_services(root, running, reactor, changer, loop)
    root.started.addCallback(lambda _: tree_started(root))

    def failed(failure: Failure) -> Failure:
        tell_previous_stop(root, started=False)
        return failure

    root.started.addCallbacks(lambda _: tell_previous_stop(root), failed)
    root.started.addCallback(lambda _: changer.resume())
    return root


def about(config: Config) -> str:
    """What the start line says of the gateway besides its services: its version and the
    configuration file, as an absolute path (twistd's ``--config`` may be relative to a
    working directory the log does not show)."""
    return f"version {__version__}, config {config.path.absolute()}"


def use_process_settings(root: GatewayTree, config: Config) -> None:
    """Set what of ``config`` belongs to the process, not to one service, when a
    configuration change (or its revert) restarts the tree: the time each service has to
    stop (``gateway.shutdown_timeout``) and the level the libraries log at
    (``gateway.log_level``, which also says whether the admin API's routine reads are
    logged). At start :func:`build_service` sets the first and ``tap.py`` the second, from
    the configuration :meth:`ConfigChanger.recover` leaves running."""
    root.shutdown_timeout = config.gateway.shutdown_timeout
    logbridge.install(config.gateway.log_level)
    httpaccesslog.log_routine_reads(config.gateway.log_level == "debug")


def tree_started(root: GatewayTree) -> None:
    """Once the whole tree has started (at start, and after a configuration change restarted
    it): start watching the apps' spool, so that a package dropped there while the gateway was
    down meets every kind of app already loaded (one named like a container is refused, as at
    run time, instead of hiding the container); and let the links deliver what the clouds
    send, so that a command the cloud kept for the gateway while it was offline, sent as soon
    as a link connects, finds the command dispatcher and the services it calls running (it
    was acknowledged to the cloud and lost)."""
    assert root.parts is not None, "the tree has started"
    root.parts.apps.spool.start()
    root.parts.links.open_downlink()


def tell_previous_stop(root: GatewayTree, started: bool = True) -> None:
    """Once the gateway has started (its journal recovered), or failed to start: log one line
    when the previous run on the state directory ended without a clean stop, with what the
    journal's recovery cut from its streams' tails when it has started (:mod:`gateway.lastrun`).
    A start that failed says it too: the failed start stops cleanly, and the next one would
    not tell it."""
    if root.state is None:
        return
    recovery = journal_recovery(root.parts.readside.journal()) if started and root.parts is not None else ""
    previous = root.state.previous_stop
    line = unclean_line(previous, recovery)
    if line is not None:  # (with its facts as fields, for a structured log's reader)
        root.log.warn("{line}", line=line, previous_stop=to_jsonable(previous), recovery=recovery)


def hold_downlink(root: GatewayTree) -> None:
    """Before the services stop (the gateway's stop, or a configuration change restarting
    them): let the links hold what the clouds send, unacknowledged, so that a command arriving
    once the command dispatcher (which stops before the links) has stopped is not acknowledged
    and lost, but sent again by the cloud broker to the links of the next start
    (:meth:`~gateway.links.service.LinksService.hold_downlink`)."""
    if root.parts is not None:
        root.parts.links.hold_downlink()


def hosted_apps(root: GatewayTree) -> list[tuple[str, str, str]]:
    """``(program, app, version)`` of each installed app's and container app's program, those
    the configuration declares (version ``config``) left out: names a configuration change
    may not give a program of its own."""
    if root.parts is None:
        return []
    return [(p.name, p.app, p.version) for p in root.parts.readside.apps().apps if p.version != CONFIG_VERSION]


def link_states(root: GatewayTree) -> dict[str, tuple[bool, str]]:
    """Each running cloud link's ``(connected, cause)``, for the confirm-or-revert watch."""
    if root.parts is None:
        return {}
    return {name: (link.is_connected, link.cause) for name, link in root.parts.links.links.items()}


def journal_users(config: Config) -> dict[str, str]:
    """The journal streams ``config`` uses, each with what uses it, in words: the broker's
    state log, each link's stream and the twin's shadow sync's. The others (a link's, once it
    is removed or renamed) may be dropped by the operator (``DELETE /journal/NAME``)."""
    users = {STATE_STREAM: "the broker's state log"}
    for name in [*config.links.links, *config.http_links.links]:
        users[f"link-{name}"] = f"the link {name!r}"
    if config.twin.enabled and config.twin.shadow_link:
        users[f"shadow-{config.twin.shadow_link}"] = f"the twin's shadow sync over the link {config.twin.shadow_link!r}"
    return users


def add_services(root: GatewayTree, config: Config, reactor: Any, changer: ConfigChanger,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Add the services that a configuration change restarts, in dependency order, and
    record them as the root's :class:`Parts`.

    The data path, explicitly: the broker's connections hand each client PUBLISH to the
    broker's :class:`~gateway.broker.durablegate.DurableGate`, which the links service fills
    with its ``persist_many`` (where every local append starts: its router picks the link
    streams the journal keeps); the links read those streams and publish downlinks on the
    broker's bus. A link the files set to null is one warning line each time
    (:mod:`gateway.nullentries`).
    """
    for line in null_entry_warnings(config.written):  # (a link with every default, which the files meant gone)
        root.log.warn("{problem}", problem=line)
    for line in open_listener_warnings(config.broker):  # (the default's anonymous rule, on a LAN address)
        root.log.warn("{problem}", problem=line)
    journal = JournalService(config.journal, config.state_dir, reactor, loop=loop, in_use=journal_users(config),
                             boot=BootClock(boot_id()))
    journal.setServiceParent(root)
    broker = BrokerService(config.broker, reactor, state_dir=config.state_dir, loop=loop,
                           state_stream=lambda: journal.stream(STATE_STREAM),
                           stop_grace=min(STOP_GRACE, config.gateway.shutdown_timeout / 2), boot=journal.boot)
    broker.setServiceParent(root)
    links = LinksService(config.links, reactor, broker.bus, journal,
                         identity=(config.gateway.tenant_id, config.gateway.device_id),
                         http_links=config.http_links,
                         http_client=lambda settings: make_link_client(reactor, settings, config.gateway.proxy),
                         state_dir=config.state_dir,
                         durable_gate=broker.durable_gate, hold_downlink=True, proxy=config.gateway.proxy,
                         report_prefix=config.telemetry.topic_prefix,
                         thing_id=config.twin.root_thing(config.gateway.tenant_id, config.gateway.device_id))
    links.setServiceParent(root)
    # The last values go on from the tree a configuration change replaces: a long-poll the old
    # ingest holds is answered by what the new links receive, and reads still see the values.
    ingest = IngestService(config.ingest, config.state_dir, reactor, links.persist,
                           config.gateway.device_id, root.parts.ingest.values if root.parts is not None else None)
    links.cloud_values.append(ingest.values.set)  # local reads see what the cloud wrote
    ingest.setServiceParent(root)
    twin: TwinService | None = None
    if config.twin.enabled:  # a service that is off is not even imported (idle footprint)
        from gateway.twin.service import TwinService

        twin = TwinService(config.twin, config.state_dir, reactor, broker.bus,
                           (config.gateway.tenant_id, config.gateway.device_id),
                           in_reactor_threads(reactor))
        twin.setServiceParent(root)
        if config.twin.shadow_link:
            from gateway.twin.syncservice import ShadowSyncService

            ShadowSyncService(config.twin, twin, links, journal, reactor).setServiceParent(root)
    else:  # (there when off too: its status says so)
        OffService("twin", "twin.enabled: false").setServiceParent(root)
    address = client_address(config.broker.listeners[0]) if config.broker.listeners else ""
    accounting = app_accounting(config.telemetry, reactor, config.state_dir)
    accounting_service = AccountingService(accounting)  # (there when off too: its status says why)
    accounting_service.setServiceParent(root)
    apps = AppsService(config.apps, config.state_dir, reactor, broker_address=address,
                       prepare_cgroup=accounting.prepare if accounting.supported else None,
                       oom_kills=OomKillCounts().count,
                       watch_spool=False)  # started by tree_started, once the containers are loaded too
    apps.setName("apps")
    apps.setServiceParent(root)
    containers_settings = config.containers
    containers: ContainersService | None = None
    if containers_settings.enabled:
        from gateway.containers.service import ContainersService

        containers = ContainersService(containers_settings, config.apps, config.state_dir, reactor, apps.writer,
                                       taken=apps.control.is_program)
        containers.setName("containers")
        containers.setServiceParent(root)
        apps.add_kind(containers.operations)
    else:
        OffService("containers", "containers.enabled: false").setServiceParent(root)
    update_settings = config.updates
    updates = UpdateService(update_settings, config.state_dir, reactor,
                            lazy_http_client(reactor, update_settings.download, config.fleet.server_ca_files(),
                                             config.gateway.proxy),
                            broker.bus.publish,
                            app_installer=apps.control, launcher=apps.launcher)
    updates.setName("updates")
    updates.setServiceParent(root)
    fleet: FleetService | None = None
    if config.fleet.enabled:
        from gateway.fleet.wiring import make_fleet_service

        fleet = make_fleet_service(config.fleet, config.state_dir, reactor, updates, config.gateway.device_id,
                                   apps.snapshot, config.gateway.proxy, boot=journal.boot)
        fleet.setServiceParent(root)
    else:
        OffService("fleet", "fleet.enabled: false").setServiceParent(root)
    update_commands = UpdateCommands(updates, broker.bus)
    update_commands.setServiceParent(root)
    uploads = build_uploads(config, reactor, broker.bus.publish, {
        "links": links.stats, "apps": apps.control.status,  # processes and containers
        "journal": lambda: readside.journal(),  # (made below: these run once the tree is up)
        "reports": lambda: telemetry.last_reports()})
    uploads.setServiceParent(root)
    UploadCommands(uploads, broker.bus, reactor).setServiceParent(root)
    state = root.state
    readside = ReadSide(reactor, broker, journal, links, apps, updates, services=root, ingest=ingest, twin=twin,
                        accounting=accounting_service,
                        previous_stop=(lambda: state.previous_stop) if state is not None else None, fleet=fleet,
                        containers=containers)
    previous = root.parts
    if previous is not None:  # a configuration change restarted the tree, not the process
        readside.goes_on_from(previous.readside)
        if fleet is not None and previous.fleet is not None:
            fleet.goes_on_from(previous.fleet)
    app_observers: list[Callable[[Any], None]] = apps.supervisor.observers
    if containers_settings.enabled:  # a container's state change is an app's: one list for telemetry
        app_observers = []

        def notify(changed: Any) -> None:
            for observer in list(app_observers):
                observer(changed)

        assert containers is not None
        for source in (apps.supervisor.observers, containers.supervisor.observers):
            source.append(notify)
    telemetry = TelemetryService(config.telemetry, readside, broker.bus, reactor, config.state_dir,
                                 (config.gateway.tenant_id, config.gateway.device_id),
                                 app_observers=app_observers, accounting=accounting,
                                 usage=previous.telemetry.usage.carried(link_counters(previous.readside.links()))
                                 if previous is not None else None)
    telemetry.setServiceParent(root)
    if config.telemetry.metrics_endpoint:  # (off, its modules are not even imported: idle footprint)
        from gateway.telemetry.metricsservice import MetricsService

        MetricsService(config.telemetry.metrics_endpoint, telemetry.render_metrics, reactor).setServiceParent(root)
    else:
        OffService("metrics", 'telemetry.metrics_endpoint: ""').setServiceParent(root)
    commands = GatewayCommands(config.commands, reactor, apps.control, readside, to_jsonable,
                               changer, ProcessRestart(reactor),
                               reports=telemetry)
    handlers = commands.handlers()
    for name in UPDATE_COMMANDS:  # the update service's cloud commands share the one dispatcher
        handlers[name] = partial(lambda n, request: Reply(*update_commands.answer(n, request.payload)), name)
    handlers.update(upload_command_handlers(uploads))  # upload.<operation>, answered when the service has
    CommandDispatcher(broker.bus, config.gateway.device_id, handlers, reactor).setServiceParent(root)
    # Last: the admin API reads every service and acts through their own operations.
    previous_admin = previous.admin if previous is not None else None  # the sparklines' hour goes on
    admin = AdminService(config.admin, config.state_dir, reactor,
                         Backends(readside=readside, apps=apps.control, updates=updates,
                                  reports=telemetry,
                                  config=changer,
                                  uploads=uploads, journal=journal),
                         history=previous_admin.history if previous_admin is not None else None)
    admin.setServiceParent(root)
    root.parts = Parts(journal, broker, links, ingest, apps, updates, uploads, readside, telemetry, commands, admin,
                       twin, containers, fleet)
