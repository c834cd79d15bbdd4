"""The ``gateway.proxy`` settings: the HTTP proxy that outgoing HTTP(S) requests and MQTT links
go through, its URL parsed and checked, and which target hosts bypass it (``no_proxy``).

Kept apart from :mod:`gateway.httpproxy` (the tunnel and the agents), which only a gateway
with a proxy and an HTTP client or an MQTT link in use imports: the configuration is read by
every gateway, and by ``gatewayctl check-config``.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple
from urllib.parse import unquote, urlsplit

from gateway.portnumbers import url_port_problem

#: A host name of ``no_proxy`` (``example.com``) or a domain (``.example.com``).
_NAME = re.compile(r"\.?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?", re.IGNORECASE)

#: What a proxy URL may be, as its errors say.
_FORM = "http://[user:password@]host:port"


class ProxyAddress(NamedTuple):
    """A proxy as :func:`proxy_address` read it from ``gateway.proxy.url``.

    :ivar host: its host name or IP address (an IPv6 address without brackets).
    :ivar port: its port.
    :ivar authorization: the ``Proxy-Authorization`` value (``Basic ...``) when the URL has a
        user, else ``None``.
    :ivar shown: the URL without its user and password: what logs and errors name.
    """

    host: str
    port: int
    authorization: bytes | None
    shown: str


def proxy_address(url: str) -> ProxyAddress:
    """Read a proxy URL, ``http://[user:password@]host:port``.

    :raises ValueError: saying what is wrong, without quoting the URL (it may hold a password).
    """
    if "://" not in url:
        raise ValueError(f"must be a URL, {_FORM} (with its scheme)")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValueError(f"must be {_FORM}, with an IPv6 address in closed brackets") from None
    written_port = url_port_problem(parts.netloc)
    if written_port is not None:  # (the URL is not quoted: it may hold a password)
        raise ValueError(f"{written_port} ({_FORM})")
    port = parts.port
    if parts.scheme.lower() != "http":
        raise ValueError(f"must be an http:// URL ({_FORM}): the gateway speaks plain HTTP to its proxy"
                         f" (a proxy of scheme {parts.scheme.lower()!r} is not supported); https:// requests go through"
                         " it in a CONNECT tunnel, TLS from the gateway to the server")
    host = parts.hostname or ""
    if not host or any(char.isspace() for char in host):
        raise ValueError(f"must name the proxy's host: {_FORM}")
    if port is None:
        raise ValueError(f"must name the proxy's port, from 1 to 65535: {_FORM} (squid listens on 3128,"
                         " tinyproxy on 8888)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"must be {_FORM} alone, without a path, a query or a fragment")
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
        authorization = b"Basic " + base64.b64encode(credentials)
    shown_host = f"[{host}]" if ":" in host else host
    return ProxyAddress(host, port, authorization, f"http://{shown_host}:{port}")


def no_proxy_problem(entry: str) -> str | None:
    """Why ``entry`` cannot be an item of ``gateway.proxy.no_proxy`` (``None`` when it can)."""
    if entry == "*":
        return None
    if not entry.strip():
        return "must not be empty"
    bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
    try:
        ipaddress.ip_network(bare, strict=False)
    except ValueError:
        pass
    else:
        return None
    if _NAME.fullmatch(entry) is None:
        return (f"must be a host name (example.com), a domain (.example.com), an IP address, a network"
                f" (10.0.0.0/8) or '*', without a scheme or a port, not {entry!r}")
    return None


def _host(host: str) -> str:
    """``host`` as matched against ``no_proxy``: lower case, without brackets or a final dot."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def bypasses(no_proxy: Iterable[str], host: str) -> bool:
    """Whether requests to ``host`` go directly rather than through the proxy: ``*`` bypasses
    it for every host; ``example.com`` for that host and the hosts under it
    (``api.example.com``); ``.example.com`` for the hosts under it only; an IP address for
    itself; a network (``10.0.0.0/8``) for the IP addresses in it (host names are not resolved
    for this).

    :param no_proxy: the ``no_proxy`` entries (checked by :func:`no_proxy_problem`).
    :param host: the target's host, as the request's URL names it.
    """
    host = _host(host)
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy:
        if entry == "*":
            return True
        entry = _host(entry)
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            name = entry.lstrip(".")
            if address is None and (host.endswith("." + name) or (host == name and not entry.startswith("."))):
                return True
            continue
        if address is not None and address.version == network.version and address in network:
            return True
    return False


@dataclass(frozen=True)
class ProxySettings:
    """``gateway.proxy``: the HTTP proxy that outgoing HTTP(S) requests (fleet, downloads,
    uploads, HTTP links) and MQTT links (in a CONNECT tunnel) go through; none by default."""

    url: str | None = field(default=None, metadata={"doc": "http://[user:password@]host:port of the proxy"})
    no_proxy: tuple[str, ...] = field(default=(), metadata={"doc": "hosts, .domains, IPs reached directly"})

    def address(self) -> ProxyAddress | None:
        """The proxy, or ``None`` when there is none (``url`` null or empty)."""
        return proxy_address(self.url) if self.url else None

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The URL must be one :func:`proxy_address` reads; each ``no_proxy`` entry one
        :func:`no_proxy_problem` accepts."""
        if self.url:
            try:
                proxy_address(self.url)
            except ValueError as exc:
                yield ("url",), str(exc)
        for index, entry in enumerate(self.no_proxy):
            problem = no_proxy_problem(entry)
            if problem is not None:
                yield ("no_proxy", str(index)), problem
