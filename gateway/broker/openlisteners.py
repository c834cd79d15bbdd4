"""Warnings for broker listeners that take anonymous clients from beyond the machine: the
default configuration allows anonymous clients because its one listener is on 127.0.0.1, and
a listener added on another address (``bind: 0.0.0.0:9001``) keeps that rule silently."""

from __future__ import annotations

import ipaddress
from typing import Any

from gateway.broker.endpoints import client_cert_required
from gateway.broker.settings import BrokerSettings, ListenerSettings, plugin_entries
from gateway.endpointstrings import split_description

#: The amqtt plugin whose ``allow_anonymous`` (true unless set) lets clients without a user name in.
ANONYMOUS_PLUGIN = "amqtt.plugins.authentication.AnonymousAuthPlugin"
#: The gateway's auth plugin that refuses every client without a verified certificate: listed
#: too, it refuses anonymous clients (every auth plugin must agree).
CERTIFICATE_PLUGIN = "gateway.broker.auth.ClientCertificateAuthPlugin"


def anonymous_rule(amqtt: dict[str, Any]) -> str | None:
    """What in amqtt's configuration, as the broker section built it, lets anonymous clients
    in, as written (``...AnonymousAuthPlugin: allow_anonymous: true``), or None when nothing
    does: ``AnonymousAuthPlugin`` under ``plugins:`` (a mapping or a list) with
    ``allow_anonymous`` true or not set (amqtt's default), without ``ClientCertificateAuthPlugin``;
    or the deprecated ``auth:`` section's ``allow-anonymous: true`` (read only without
    ``plugins:``) with its ``auth_anonymous`` plugin (listed, or no list: every entry-point plugin)."""
    plugins = amqtt.get("plugins")
    if plugins is not None:
        listed = dict(plugin_entries(plugins))
        if ANONYMOUS_PLUGIN not in listed or CERTIFICATE_PLUGIN in listed:
            return None
        options = listed[ANONYMOUS_PLUGIN] or {}
        if not isinstance(options, dict) or options.get("allow_anonymous", True) is not True:
            return None
        if "allow_anonymous" in options:
            return f"{ANONYMOUS_PLUGIN}: allow_anonymous: true"
        return f"{ANONYMOUS_PLUGIN} without allow_anonymous, which is true then"
    auth = amqtt.get("auth")
    if not isinstance(auth, dict) or auth.get("allow-anonymous") is not True:
        return None
    names = auth.get("plugins")
    if names is None or (isinstance(names, list) and "auth_anonymous" in names):
        return "broker.auth: allow-anonymous: true"
    return None


def beyond_loopback(listener: ListenerSettings) -> str | None:
    """The address a TCP or TLS listener takes connections on when it is not loopback only
    (``0.0.0.0``, ``::``, a LAN address), else ``None`` (loopback, a unix socket, a socket
    systemd hands over: what it listens on is the socket unit's to say)."""
    args, kwargs = split_description(listener.endpoint)
    kind = args[0] if args else ""
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    interface = kwargs.get("interface") or ("::" if kind == "tcp6" else "0.0.0.0")
    try:
        address = ipaddress.ip_address(interface.strip("[]"))
    except ValueError:
        return None  # (the settings took only addresses; a name is not guessed at here)
    if (getattr(address, "ipv4_mapped", None) or address).is_loopback:  # (::ffff:127.0.0.1 too)
        return None
    return interface


def open_listener_warnings(settings: BrokerSettings) -> list[str]:
    """One line for each listener that takes anonymous clients on an address beyond loopback:
    anything that reaches its port may publish and subscribe (valid, but seldom meant)."""
    rule = anonymous_rule(settings.amqtt)
    if rule is None:
        return []
    lines = []
    for listener in settings.listeners:
        address = beyond_loopback(listener)
        if address is not None and not client_cert_required(listener):  # (certificate holders only)
            lines.append(f"broker.listeners.{listener.name}: takes anonymous clients ({rule}) on"
                         f" {address}, not on loopback only: anything that reaches"
                         " its port may publish and subscribe; let only known clients in (a password file,"
                         " client certificates: docs/broker.md) or bind it to 127.0.0.1")
    return lines
