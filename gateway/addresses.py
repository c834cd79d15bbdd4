"""Twisted addresses as an operator writes them, for logs and the read side:
``127.0.0.1:1883``, ``[::1]:1883``, ``unix:/run/gateway/mqtt.sock``."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress


def address_parts(address: object) -> tuple[str, int]:
    """A Twisted address as ``(host, port)``; ``("unix:<path>", 0)`` for a unix socket's."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host, address.port
    if isinstance(address, UNIXAddress):
        return "unix:" + (address.name.decode() if isinstance(address.name, bytes) else str(address.name or "")), 0
    return str(address), 0


def address_text(address: object) -> str:
    """A Twisted address as an operator writes it: ``127.0.0.1:1883``, ``[::1]:1883``,
    ``unix:/run/gateway/mqtt.sock``."""
    host, port = address_parts(address)
    return host_port_text(host, port) if isinstance(address, (IPv4Address, IPv6Address)) else host


def host_port_text(host: str, port: object) -> str:
    """``host:port`` as an operator writes it, an IPv6 address in brackets: ``127.0.0.1:1883``,
    ``[::1]:1883``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
