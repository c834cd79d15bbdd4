"""The links' read-side snapshot: per link state, traffic, backlog, drain rate, certificates.

Taken by :meth:`gateway.links.service.LinksService.snapshot`; reports, ``/metrics`` and the
admin API read these, never the links' fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.certinfo import CertificateSnapshot
from gateway.degraded import Degraded

#: The :class:`~gateway.degraded.Degraded` reason of a link whose cursor saves fail.
CURSOR_NOT_SAVED = "cursor-not-saved"


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
    :param bytes_up: MQTT bytes sent to the cloud (before TLS; an HTTP link's: request bodies).
    :param bytes_down: MQTT bytes received from the cloud (before TLS; an HTTP link's: answer bodies).
    :param backlog: records in the link's journal stream not yet acknowledged by the cloud.
    :param pending: of those, records held in memory (read, offered or in flight).
    :param drain_rate: records the cloud acknowledged per second, over the last 10 s.
    :param certificates: the TLS certificates it uses (client, CA) and the server's, when TLS.
    :param cursor_failing: while the saves of its cursor fail (a full disk: what it sent is
        sent again after a restart, more the longer it lasts): reason ``cursor-not-saved``, the
        last failure's error, since when, how many in a row; ``None`` once a save works.
    :param taken_over: while another client probably takes its session over at every
        connection (the same client id: :mod:`gateway.links.takeover`): reason
        ``session-taken-over``, what to do, since the first of the cloud's early closes in a
        row, how many; ``None`` once a connection lasts ``stable_after`` (always for an HTTP link).
    :param topic_cache: topics whose part of the cloud's limits an MQTT link caches now (at most
        4,096: then the cache starts again empty; 0 when no limit looks at the topic, and for an
        HTTP link).
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
    cursor_failing: Degraded | None = None
    taken_over: Degraded | None = None
    topic_cache: int = 0


@dataclass(frozen=True)
class LinksSnapshot:
    """Every cloud link.

    :param links: the links, in config order.
    :param cursor_failing: while a link's cursor saves fail (:func:`links_cursor_failing`),
        else ``None``.
    :param route_cache: local topics whose destinations the uplink routing caches now (at most
        4,096: then the cache starts again empty).
    """

    links: tuple[LinkSnapshot, ...]
    cursor_failing: Degraded | None = None
    route_cache: int = 0


def links_cursor_failing(links: tuple[LinkSnapshot, ...]) -> Degraded | None:
    """The links' :class:`Degraded` from theirs: the reason and start of the link whose cursor
    saves have failed longest, every such link's words (``link <name>: <error>``, longest
    first, joined by ``; ``) and the failures of them all; ``None`` while every save works."""
    states = sorted(((link.name, link.cursor_failing) for link in links if link.cursor_failing is not None),
                    key=lambda n: n[1].since)
    if not states:
        return None
    first = states[0][1]
    return Degraded(first.reason, "; ".join(f"link {name}: {state.error}" for name, state in states),
                    first.since, sum(state.failures for _, state in states))
