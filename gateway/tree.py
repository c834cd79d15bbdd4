"""The service tree: which services the gateway runs, in dependency order."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

from twisted.python.failure import Failure

from gateway.apps.service import AppsService
from gateway.broker.service import BrokerService
from gateway.broker.settings import client_address
from gateway.config import Config
from gateway.journal.service import JournalService
from gateway.links.service import LinksService
from gateway.readside import ReadSide
from gateway.root import GatewayService
from gateway.telemetry.appbytes import AccountingCleanup, NftAccounting, detect
from gateway.telemetry.service import TelemetryService
from gateway.telemetry.settings import TelemetrySettings
from gateway.updates.commands import UpdateCommands
from gateway.updates.httpclient import lazy_http_client
from gateway.updates.service import UpdateService
from gateway.state import StateDirService


def app_accounting(settings: TelemetrySettings, reactor: Any, state_dir: Path) -> NftAccounting:
    """Per-app byte accounting where the platform allows it (``telemetry.app_accounting``);
    its cgroups and nftables table are named for the state directory, so two gateways on one
    machine keep apart."""
    if settings.app_accounting == "off":
        return NftAccounting(reactor, None, "per-app accounting is off (telemetry.app_accounting)")
    tag = hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]
    place, reason = detect(f"gateway-apps-{tag}")
    return NftAccounting(reactor, place, reason, table=f"gateway_apps_{tag}")


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
    accounting = app_accounting(config.sections["telemetry"], reactor, config.state_dir)
    if accounting.supported:
        AccountingCleanup(accounting).setServiceParent(root)
    apps = AppsService(config.sections["apps"], config.state_dir, reactor, broker_address=address,
                       prepare_cgroup=accounting.prepare if accounting.supported else None)
    apps.setName("apps")
    apps.setServiceParent(root)
    root.apps = apps  # type: ignore[attr-defined]
    update_settings = config.sections["updates"]
    updates = UpdateService(update_settings, config.state_dir, reactor,
                            lazy_http_client(reactor, update_settings.download), broker.bus.publish,
                            app_installer=apps.operations)
    updates.setName("updates")
    updates.setServiceParent(root)
    root.updates = updates  # type: ignore[attr-defined]
    UpdateCommands(updates, broker.bus, config.gateway.device_id).setServiceParent(root)
    readside = ReadSide(reactor, broker, journal, links, apps, updates, services=root)
    root.readside = readside  # type: ignore[attr-defined]
    telemetry = TelemetryService(config.sections["telemetry"], readside, broker.bus, reactor, config.state_dir,
                                 (config.gateway.tenant_id, config.gateway.device_id),
                                 app_observers=apps.supervisor.observers, accounting=accounting)
    telemetry.setServiceParent(root)
    root.telemetry = telemetry  # type: ignore[attr-defined]
    return root
