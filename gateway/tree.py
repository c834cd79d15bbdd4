"""The service tree: which services the gateway runs, in dependency order."""

from __future__ import annotations

from typing import Any, Callable

from twisted.python.failure import Failure

from gateway.apps.service import AppsService
from gateway.broker.service import BrokerService
from gateway.broker.settings import client_address
from gateway.config import Config
from gateway.root import GatewayService
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
    broker = BrokerService(config.broker, reactor, state_dir=config.state_dir)
    broker.setServiceParent(root)
    root.broker = broker  # type: ignore[attr-defined]
    address = client_address(config.broker.listeners[0]) if config.broker.listeners else ""
    apps = AppsService(config.sections["apps"], config.state_dir, reactor, broker_address=address)
    apps.setName("apps")
    apps.setServiceParent(root)
    return root
