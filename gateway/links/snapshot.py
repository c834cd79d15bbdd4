"""The links' read-side snapshot: per link state, traffic, backlog, drain rate, certificates.

Taken by :meth:`gateway.links.service.LinksService.snapshot`; reports, ``/metrics`` and the
admin API read these, never the links' fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.certinfo import CertificateSnapshot


@dataclass(frozen=True)
class LinkSnapshot:
    """One cloud link at one moment (counters are since the links service started: the
    gateway's start, or the last configuration change applied or reverted while it runs, which
    restarts every service; they start again from zero then).

    :param name: the link's name in the config.
    :param endpoint: its endpoint string.
    :param state: ``connected``, ``disconnected`` or ``stopped``.
    :param connected_since: when the current connection was accepted (seconds since the
        epoch), or ``None`` when not connected.
    :param last_error: why the last connection ended or failed (``""`` when none has yet).
    :param connects: connections the cloud accepted (CONNACK).
    :param reconnects: accepted connections after the first.
    :param in_flight: QoS 1 publishes sent and not acknowledged.
    :param sent: publishes sent.
    :param acked: publishes the cloud acknowledged.
    :param resent: publishes sent again after a reconnect.
    :param bytes_up: MQTT bytes sent to the cloud (before TLS).
    :param bytes_down: MQTT bytes received from the cloud (before TLS).
    :param backlog: records in the link's journal stream not yet acknowledged by the cloud.
    :param pending: of those, records held in memory (read, offered or in flight).
    :param drain_rate: records the cloud acknowledged per second, over the last 10 s.
    :param certificates: the TLS certificates it uses (client, CA) and the server's, when TLS.
    """

    name: str
    endpoint: str
    state: str
    connected_since: float | None
    last_error: str
    connects: int
    reconnects: int
    in_flight: int
    sent: int
    acked: int
    resent: int
    bytes_up: int
    bytes_down: int
    backlog: int
    pending: int
    drain_rate: float
    certificates: tuple[CertificateSnapshot, ...]


@dataclass(frozen=True)
class LinksSnapshot:
    """Every cloud link.

    :param links: the links, in config order.
    """

    links: tuple[LinkSnapshot, ...]
