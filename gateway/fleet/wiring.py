"""Building the fleet service from its settings: the token, the HTTP client, the DDI client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


from gateway.blocking import in_reactor_threads
from gateway.clockstep import BootClock
from gateway.fleet.attributes import gateway_attributes
from gateway.fleet.ddi import DDIClient
from gateway.fleet.service import FleetService
from gateway.fleet.settings import FleetSettings
from gateway.proxysettings import ProxySettings
from gateway.updates.httpclient import make_http_client
from gateway.updates.settings import DownloadSettings


def authorization(settings: FleetSettings) -> str | None:
    """The ``Authorization`` value: the scheme and the token file's first line (None for ``none``).

    :raises ValueError: when the token file is empty.
    """
    if settings.auth == "none" or not settings.token_file:
        return None
    token = Path(settings.token_file).read_text().strip().splitlines()
    if not token or not token[0].strip():
        raise ValueError(f"fleet.token_file {settings.token_file!r} is empty")
    return f"{settings.auth} {token[0].strip()}"


def make_fleet_service(settings: FleetSettings, state_dir: Path, reactor: Any, updates: Any, device_id: str,
                       apps_snapshot: Callable[[], Any] | None = None,
                       proxy: ProxySettings = ProxySettings(), boot: BootClock | None = None) -> FleetService:
    """The fleet service for the running gateway (hostnames verified; ``ca_file`` trusted when set).

    :param settings: the ``fleet`` section.
    :param state_dir: the state directory.
    :param reactor: the reactor.
    :param updates: the update service.
    :param device_id: ``gateway.device_id`` (for ``{device}`` in the controller id).
    :param apps_snapshot: the apps service's ``snapshot`` (hosted apps go into configData).
    :param proxy: ``gateway.proxy``: the DDI requests go through its proxy, when it has one.
    :param boot: this boot's clock, kept beside the state's times (None: not known).
    """
    http = make_http_client(reactor, DownloadSettings(concurrency=1, ca_file=settings.ca_file), proxy=proxy)
    controller = settings.controller_id.replace("{device}", device_id)
    ddi = DDIClient(http, reactor, settings.base_url, settings.tenant, controller, authorization(settings),
                    settings.request_timeout)
    return FleetService(settings, state_dir, reactor, ddi, updates, gateway_attributes(device_id, apps_snapshot),
                        in_reactor_threads(reactor), boot=boot)
