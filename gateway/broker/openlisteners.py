"""Warnings for broker listeners that take anonymous clients from beyond the machine: the
default configuration allows anonymous clients because its one listener is on 127.0.0.1, and
a listener added on another address (``bind: 0.0.0.0:9001``) keeps that rule silently.

The same goes for a broker that takes any client sending a user name: amqtt's
``AnonymousAuthPlugin`` with ``allow_anonymous: false`` (the broker's plugins when the section
lists none) checks only that a user name is sent, never a password, so alone it lets in
anyone who makes one up."""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

from gateway.broker.endpoints import client_cert_required
from gateway.broker.settings import BrokerSettings, ListenerSettings, plugin_entries
from gateway.endpointstrings import split_description

#: The amqtt plugin whose ``allow_anonymous`` (true unless set) lets clients without a user name in.
ANONYMOUS_PLUGIN = "amqtt.plugins.authentication.AnonymousAuthPlugin"
#: The gateway's auth plugin that refuses every client without a verified certificate: listed
#: too, it refuses anonymous clients (every auth plugin must agree).
CERTIFICATE_PLUGIN = "gateway.broker.auth.ClientCertificateAuthPlugin"
#: amqtt's entry-point plugins (the deprecated ``auth:`` section's names) that authenticate no
#: one (no ``authenticate``): listed in ``auth: plugins:``, they are not asked.
NOT_AUTH_ENTRY_POINTS = frozenset({"broker_sys", "event_logger_plugin", "packet_logger_plugin", "topic_acl",
                                   "topic_taboo"})


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


def _surely_not_auth(dotted_path: str) -> bool:
    """Whether the plugin at ``dotted_path`` is certainly no auth plugin: a class, among the
    modules already imported (reading the configuration imported every listed plugin; nothing is
    imported here), that is not a ``BaseAuthPlugin`` (amqtt asks only those). One not found may
    check credentials, as a user's own auth plugin does, and is taken as one that does."""
    from amqtt.plugins.base import BaseAuthPlugin  # (imported already: the settings' check loads amqtt)

    module_name, _, attr = dotted_path.rpartition(".")
    found = getattr(sys.modules.get(module_name), attr, None) if module_name else None
    return isinstance(found, type) and not issubclass(found, BaseAuthPlugin)


def user_name_rule(amqtt: dict[str, Any]) -> str | None:
    """What in amqtt's configuration, as the broker section built it, lets in any client that
    sends a user name, with no password or certificate checked, or None when nothing surely
    does: ``AnonymousAuthPlugin`` under ``plugins:`` with ``allow_anonymous: false`` (the
    broker's default when no plugin is listed) and no other auth plugin (another listed plugin
    that may be one, a user's own among them, keeps this quiet); or the deprecated ``auth:``
    section without ``allow-anonymous: true`` listing ``auth_anonymous`` and no other auth
    plugin (no list: every entry-point plugin, ``auth_file`` too, which checks passwords).
    Anonymous clients allowed (:func:`anonymous_rule`) are that function's to name."""
    plugins = amqtt.get("plugins")
    if plugins is not None:
        listed = dict(plugin_entries(plugins))
        options = listed.get(ANONYMOUS_PLUGIN)
        if not isinstance(options, dict) or options.get("allow_anonymous") is not False:
            return None
        if not all(_surely_not_auth(name) for name in listed if name != ANONYMOUS_PLUGIN):
            return None
        return f"{ANONYMOUS_PLUGIN}: allow_anonymous: false, and no other auth plugin"
    auth = amqtt.get("auth")
    if not isinstance(auth, dict) or auth.get("allow-anonymous") is True:
        return None
    names = auth.get("plugins")
    if not isinstance(names, list) or "auth_anonymous" not in names or not all(isinstance(n, str) for n in names):
        return None
    if not set(names) - {"auth_anonymous"} <= NOT_AUTH_ENTRY_POINTS:
        return None
    return "broker.auth: auth_anonymous without allow-anonymous: true, and no other auth plugin"


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
    """One line for each listener that takes anonymous clients, or any client that sends a
    user name, on an address beyond loopback: anything that reaches its port may publish and
    subscribe (valid, but seldom meant)."""
    rule = anonymous_rule(settings.amqtt)
    if rule is not None:
        takes = f"takes anonymous clients ({rule})"
    else:
        rule = user_name_rule(settings.amqtt)
        if rule is None:
            return []
        takes = (f"takes any client that sends a user name, with any password or none ({rule}:"
                 " AnonymousAuthPlugin checks only that one is sent)")
    lines = []
    for listener in settings.listeners:
        address = beyond_loopback(listener)
        if address is not None and not client_cert_required(listener):  # (certificate holders only)
            lines.append(f"broker.listeners.{listener.name}: {takes} on"
                         f" {address}, not on loopback only: anything that reaches"
                         " its port may publish and subscribe; let only known clients in (a password file,"
                         " client certificates: docs/broker.md) or bind it to 127.0.0.1")
    return lines
