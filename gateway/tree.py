"""The service tree: which services the gateway runs, in dependency order."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from gateway.apps.service import AppsService
from gateway.broker.service import BrokerService
from gateway.broker.settings import client_address
from gateway.commands.dispatcher import CommandDispatcher, Reply
from gateway.commands.gateway_commands import GatewayCommands
from gateway.commands.reconfigure import ConfigChanger
from gateway.commands.restart import ProcessRestart
from gateway.config import Config
from gateway.fleet.wiring import make_fleet_service
from gateway.ingest.service import IngestService
from gateway.journal.service import JournalService
from gateway.links.httpclient import make_link_client
from gateway.links.service import LinksService
from gateway.readside import ReadSide, to_jsonable
from gateway.root import GatewayService
from gateway.updates.commands import UPDATE_COMMANDS, UpdateCommands
from gateway.updates.httpclient import make_http_client
from gateway.updates.service import UpdateService
from gateway.state import StateDirService


def build_service(config: Config, reactor: Any,
                  on_start_failure: Callable[[Failure], None] | None = None) -> GatewayService:
    """Compose the root service: state dir, config changes, then ``journal -> broker -> links
    -> ... -> commands -> admin``.

    A pending configuration change whose confirm deadline has passed is reverted here,
    before anything starts (see :mod:`gateway.commands.reconfigure`).

    :param config: the loaded configuration.
    :param reactor: the running reactor (asyncio), injected into every service.
    :param on_start_failure: called if a service cannot start (or a reverted
        configuration cannot start again).
    """
    root = GatewayService(reactor, config.gateway.shutdown_timeout, on_start_failure)
    state = StateDirService(config.state_dir)
    state.setServiceParent(root)

    def restart_tree(new: Config) -> Deferred[tuple[str, ...]]:
        return root.replace_children((state, changer), lambda: add_services(root, new, reactor))

    changer = ConfigChanger(config, config.commands, reactor, restart_tree,
                            lambda: link_states(root), lambda *message: root.broker.bus.publish(*message),
                            lambda work: deferToThreadPool(reactor, reactor.getThreadPool(), work),
                            on_fatal=on_start_failure)
    changer.setServiceParent(root)
    root.changer = changer  # type: ignore[attr-defined]
    add_services(root, changer.recover(), reactor)
    root.started.addCallback(lambda _: changer.resume())
    return root


def link_states(root: GatewayService) -> dict[str, tuple[bool, str]]:
    """Each running cloud link's ``(connected, cause)``, for the confirm-or-revert watch."""
    links = getattr(root, "links", None)
    if links is None:
        return {}
    return {name: (link.is_connected, link.cause) for name, link in links.links.items()}


def add_services(root: GatewayService, config: Config, reactor: Any) -> None:
    """Add the services that a configuration change restarts, in dependency order."""
    journal = JournalService(config.journal, config.state_dir, reactor)
    journal.setServiceParent(root)
    broker = BrokerService(config.broker, reactor, state_dir=config.state_dir)
    broker.setServiceParent(root)
    links = LinksService(config.links, reactor, broker, journal,
                         identity=(config.gateway.tenant_id, config.gateway.device_id),
                         http_links=config.http_links,
                         http_client=lambda settings: make_link_client(reactor, settings), state_dir=config.state_dir)
    links.setServiceParent(root)
    root.journal, root.broker, root.links = journal, broker, links  # type: ignore[attr-defined]
    ingest = IngestService(config.ingest, config.state_dir, reactor, links.persist,
                           config.gateway.device_id)
    links.cloud_values.append(ingest.values.set)  # local reads see what the cloud wrote
    ingest.setServiceParent(root)
    root.ingest = ingest  # type: ignore[attr-defined]
    address = client_address(config.broker.listeners[0]) if config.broker.listeners else ""
    apps = AppsService(config.apps, config.state_dir, reactor, broker_address=address)
    apps.setName("apps")
    apps.setServiceParent(root)
    root.apps = apps  # type: ignore[attr-defined]
    update_settings = config.updates
    updates = UpdateService(update_settings, config.state_dir, reactor,
                            make_http_client(reactor, update_settings.download), broker.bus.publish,
                            app_installer=apps.operations)
    updates.setName("updates")
    updates.setServiceParent(root)
    root.updates = updates  # type: ignore[attr-defined]
    if config.fleet.enabled:
        fleet = make_fleet_service(config.fleet, config.state_dir, reactor, updates, config.gateway.device_id,
                                   apps.snapshot)
        fleet.setServiceParent(root)
        root.fleet = fleet  # type: ignore[attr-defined]
    update_commands = UpdateCommands(updates, broker.bus, config.gateway.device_id, cloud=False)
    update_commands.setServiceParent(root)
    readside = ReadSide(reactor, broker, journal, links, apps, updates, services=root)
    previous = getattr(root, "readside", None)
    if previous is not None:  # a configuration change restarted the tree, not the process
        readside.started_at = previous.started_at
    root.readside = readside  # type: ignore[attr-defined]
    # `report` asks the telemetry service (root.telemetry), which must be added above this
    # line: on a configuration change the tree is rebuilt and this must be the new one.
    commands = GatewayCommands(config.commands, reactor, apps.operations, readside, to_jsonable,
                               root.changer, ProcessRestart(reactor),  # type: ignore[attr-defined]
                               reports=getattr(root, "telemetry", None))
    handlers = commands.handlers()
    for name in UPDATE_COMMANDS:  # the update service's cloud commands share the one dispatcher
        handlers[name] = lambda request, n=name: Reply(*update_commands.answer(n, request.payload))
    CommandDispatcher(broker.bus, config.gateway.device_id, handlers).setServiceParent(root)
    root.commands = commands  # type: ignore[attr-defined]
