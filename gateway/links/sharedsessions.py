"""MQTT links that would share one cloud session: the same broker, the same client id.

A broker keeps one connection per client id (MQTT 3.1.1 §3.1.4-2): of two links that connect to
it with the same id, each one's CONNECT closes the other's connection, at every reconnect, for
ever, and each then warns that its session is taken over, as if by another gateway
(:mod:`gateway.links.takeover`). Two links left on the default endpoint and ``client_id``
(``{device}``) do that. It is allowed (a link may be meant as a second route to one cloud), so it
is told, not refused: once when the links start, and by ``--check-config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.addresses import host_port_text
from gateway.endpointstrings import client_host_port, split_description
from gateway.links.settings import LinkSettings


def broker_address(endpoint: str) -> str:
    """The broker an endpoint string connects to, as ``host:port`` for a ``tcp:``, ``tls:`` or
    ``ssl:`` one (the host lower-cased, without a final dot), else the string as written
    (``unix:path=...``): two spellings of one broker compare equal."""
    written = client_host_port(*split_description(endpoint))
    if written is None:
        return endpoint
    host, port = written
    host = host.strip("[]").lower().rstrip(".")
    return host_port_text(host, port)


@dataclass(frozen=True)
class SharedSession:
    """Links that connect to one broker with one client id.

    :ivar links: their names, in the configuration's order.
    :ivar broker: the broker (:func:`broker_address`).
    :ivar client_id: the client id they share, placeholders filled.
    """

    links: tuple[str, ...]
    broker: str
    client_id: str

    @property
    def text(self) -> str:
        """The warning, for a person: the links, the broker, the id, what will happen, what to do."""
        listed = ", ".join(self.links[:-1]) + f" and {self.links[-1]}"
        return (f"links {listed} connect to the same broker {self.broker} with the same client id "
                f"{self.client_id!r}: a broker keeps one connection per client id, so each link's connection "
                "closes the one connected before it, at every reconnect, for ever, and each link then warns "
                "that its session is taken over; give each link its own client_id (links.md), or its own "
                "endpoint where it is meant for another cloud")


def shared_sessions(links: Mapping[str, LinkSettings], tenant: str, device: str) -> list[SharedSession]:
    """The groups of links that connect to one broker with one client id (none when each link
    has a session of its own). A link with an empty client id (the broker assigns one) shares none.

    :param links: the MQTT links by name (``links.links``).
    :param tenant: ``gateway.tenant_id``, for the ``{tenant}`` of a client id.
    :param device: ``gateway.device_id``, for its ``{device}``.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for name, link in links.items():
        client_id = link.client_id_for(tenant, device)
        if client_id:
            groups.setdefault((broker_address(link.endpoint), client_id), []).append(name)
    return [SharedSession(tuple(names), broker, client_id)
            for (broker, client_id), names in groups.items() if len(names) > 1]
