"""The ``metrics`` service: serves ``/metrics`` on ``telemetry.metrics_endpoint``.

A service of its own, after ``telemetry`` in the tree, so that the status says whether the
page is served: ``metrics running``, or, with ``metrics_endpoint: ""``, the tree's
:class:`~gateway.offservice.OffService` stand-in saying ``off (telemetry.metrics_endpoint: "")``
while the reports go on. The page is built by the telemetry service (``render_metrics``).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.addresses import address_text
from gateway.portholder import listen_refusal
from gateway.telemetry.errors import TelemetryError
from gateway.telemetry.metricspage import MetricsFactory, listen_metrics


class MetricsService(Service):
    """Listens on the metrics endpoint; a failure to bind stops the gateway at start.

    :param endpoint: a Twisted server endpoint string (``tcp:9883:interface=127.0.0.1``).
    :param render: ``accept header -> (body, content type)``: the telemetry service's
        ``render_metrics``.
    :param reactor: listens, and times the connections.
    """

    name = "metrics"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, endpoint: str, render: Callable[[str], tuple[bytes, str]], reactor: Any) -> None:
        self.endpoint = endpoint
        self.reactor = reactor
        self._factory = MetricsFactory(render, reactor)
        #: the listening port (``getHost()`` says where), ``None`` while not listening
        self.port: Any = None

    def startService(self) -> Deferred[None]:
        """Listen; fails with :class:`~gateway.telemetry.errors.TelemetryError` saying why not."""
        super().startService()
        endpoint = self.endpoint

        def listening(port: Any) -> None:
            self.port = port
            self.log.info("metrics on {address}", address=address_text(port.getHost()))

        def refused(failure: Failure) -> Failure:
            return Failure(TelemetryError(f"metrics endpoint {endpoint}: cannot listen: {listen_refusal(failure)}"))

        return maybeDeferred(listen_metrics, self.reactor, endpoint, self._factory).addCallbacks(listening, refused)

    def stopService(self) -> Deferred[None]:
        """Stop listening; its open connections close, each once its response in progress is
        sent (a keep-alive scraper's next scrape reaches the new service after a configuration
        change)."""
        super().stopService()
        self._factory.close_connections()
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)
