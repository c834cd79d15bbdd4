"""Building the upload service from the configuration (kept out of ``tree.py``, which only
places it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from gateway.config import Config
from gateway.operations.httpclient import lazy_http_client
from gateway.operations.status import Publish
from gateway.uploads.diagnostics import DiagnosticsBundle
from gateway.uploads.service import UploadService


def build_uploads(config: Config, reactor: Any, publish: Publish,
                  sources: Mapping[str, Callable[[], Any]]) -> UploadService:
    """The ``uploads`` service with its (lazily built) HTTP client and diagnostics bundle.

    :param config: the loaded configuration.
    :param reactor: the reactor.
    :param publish: the local bus's publish.
    :param sources: snapshots put in the diagnostics bundle (name -> callable).
    """
    settings = config.uploads
    # built when the first upload starts: an idle gateway does not import treq
    http = lazy_http_client(reactor, settings.ca_file, settings.concurrency, proxy=config.gateway.proxy)
    # the outbox messages name the gateway's thing (namespace:name), as edge/thing/response does
    thing_id = config.twin.root_thing(config.gateway.tenant_id, config.gateway.device_id)
    service = UploadService(settings, config.state_dir, reactor, http, publish,
                            (config.gateway.tenant_id, thing_id))
    # the bundle writes through the service's own thread pool, once that has started
    run_blocking = partial(_via_service, service)
    service.diagnostics = DiagnosticsBundle(config.state_dir, config, sources, settings.diagnostics_logs, run_blocking)
    return service


def _via_service(service: UploadService, f: Callable[..., Any], *args: Any) -> Any:
    return service.run_blocking(f, *args)


__all__ = ["build_uploads"]
