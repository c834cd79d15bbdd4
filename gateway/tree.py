"""The service tree: which services the gateway runs, in dependency order."""

from __future__ import annotations

from typing import Any, Callable

from twisted.python.failure import Failure

from gateway.admin.api import Backends
from gateway.admin.service import AdminService
from gateway.apps.service import AppsService
from gateway.broker.service import BrokerService
from gateway.broker.settings import client_address
from gateway.config import Config
from gateway.journal.service import JournalService
from gateway.links.service import LinksService
from gateway.readside import ReadSide
from gateway.root import GatewayService
from gateway.updates.commands import UpdateCommands
from gateway.updates.httpclient import make_http_client
from gateway.updates.service import UpdateService
from gateway.state import StateDirService


def build_service(config: Config, reactor: Any,
                  on_start_failure: Callable[[Failure], None] | None = None) -> GatewayService:
    """Compose the root service: state dir, then ``journal -> broker -> links -> ... -> admin``.

    :param config: the loaded configuration.
    :param reactor: the running reactor (asyncio), injected into every service.
    :param on_start_failure: called if a service cannot start.
    """
    root = GatewayService(reactor, config.gateway.shutdown_timeout, on_start_failure)
    StateDirService(config.state_dir).setServiceParent(root)
    journal = JournalService(config.sections["journal"], config.state_dir, reactor)
    journal.setServiceParent(root)
    broker = BrokerService(config.broker, reactor, state_dir=config.state_dir)
    broker.setServiceParent(root)
    links = LinksService(config.sections["links"], reactor, broker, journal,
                         identity=(config.gateway.tenant_id, config.gateway.device_id))
    links.setServiceParent(root)
    root.journal, root.broker, root.links = journal, broker, links  # type: ignore[attr-defined]
    address = client_address(config.broker.listeners[0]) if config.broker.listeners else ""
    apps = AppsService(config.sections["apps"], config.state_dir, reactor, broker_address=address)
    apps.setName("apps")
    apps.setServiceParent(root)
    root.apps = apps  # type: ignore[attr-defined]
    update_settings = config.sections["updates"]
    updates = UpdateService(update_settings, config.state_dir, reactor,
                            make_http_client(reactor, update_settings.download), broker.bus.publish,
                            app_installer=apps.operations)
    updates.setName("updates")
    updates.setServiceParent(root)
    root.updates = updates  # type: ignore[attr-defined]
    UpdateCommands(updates, broker.bus, config.gateway.device_id).setServiceParent(root)
    readside = ReadSide(reactor, broker, journal, links, apps, updates, services=root)
    root.readside = readside  # type: ignore[attr-defined]
    # Last: the admin API reads every service and acts through their own operations.
    previous_admin = getattr(root, "admin", None)  # the sparklines' hour goes on across a rebuild
    admin = AdminService(config.sections["admin"], config.state_dir, reactor,
                         Backends(readside=readside, apps=apps.operations, updates=updates),
                         history=previous_admin.history if previous_admin is not None else None)
    admin.setServiceParent(root)
    root.admin = admin  # type: ignore[attr-defined]
    return root
