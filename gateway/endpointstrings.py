"""Twisted endpoint strings (``tcp:1883:interface=127.0.0.1``, ``tls:host=h:port=8883``),
split into their arguments: the one parser the broker's listeners and the links share, and
the one reading of the host and port a link's client endpoint names;
the check of an IPv6 address written as in a URL (``interface=::1``, ``host=[::1]``),
which they share too; what ``listen`` would refuse of a server endpoint that Twisted's parser
takes, which the broker's listeners share with the parse-only check of the server endpoints
of the ingest, the admin API and /metrics."""

from __future__ import annotations

import ipaddress
import re

from gateway.asciidigits import ascii_digits
from gateway.portnumbers import port_problem

#: The port a ``tls:`` client endpoint without ``port=`` connects to (MQTT over TLS).
TLS_DEFAULT_PORT = "8883"


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """Split an endpoint string into positional and keyword arguments (``\\:`` escapes a colon)."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    args = [p for p in parts if "=" not in p]
    kwargs = dict(p.split("=", 1) for p in parts if "=" in p)
    return args, kwargs


#: Where an endpoint string names a host or an address: a keyword's value, or a client's first
#: positional argument (``tcp:HOST:PORT``).
_ADDRESS_STARTS = re.compile(r"(?:^|(?<=[^\\]:))(?P<key>interface|host|bindAddress)=|^(?P<kind>tcp|tls|ssl):")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def unescaped_ipv6_problem(description: str) -> str | None:
    """Why ``description`` cannot be what its writer meant when it has an IPv6 address written
    as in a URL or a shell: with bare colons (``interface=::1``), which Twisted's parser reads
    as separators (a confusing error, or another host and port: ``tcp:host=::1:port=1883``
    connected to port 1 of no host), or in brackets (``host=[\\:\\:1]``). ``None`` when it
    has none.
    """
    for match in _ADDRESS_STARTS.finditer(description):
        rest = description[match.end():]
        key = match.group("key")
        written = f"{key}=\\:\\:1" if key else f"{match.group('kind')}:\\:\\:1:PORT"
        if rest.startswith("["):
            inner = rest[1:].split("]", 1)[0].replace("\\", "")
            bad = _is_ipv6(inner)
        else:
            tokens = rest.split(":")
            last = len(tokens) if key else len(tokens) - 1  # (a client's positional host: a port follows)
            bad = any(_is_ipv6(":".join(tokens[:n])) for n in range(3, last + 1))
        if bad:
            return (f"{description!r}: an IPv6 address in an endpoint string is written with its colons "
                    f"escaped and without brackets ({written} for ::1)")
    return None


def listen_problem(args: list[str], kwargs: dict[str, str], description: str) -> tuple[str, str | None] | None:
    """What Twisted's parser lets through and ``listen`` would refuse: a port out of range,
    an interface that is not an IP address (a name is resolved only then, and one that does not
    resolve stops the start), a backlog that is not a number, no unix path, a ``systemd:``
    endpoint naming no socket.

    :param args: ``description``'s positional arguments, :func:`split_description`'s.
    :param kwargs: its keyword arguments.
    :return: what is wrong and the keyword it is in (``port``, ``interface``, ``backlog`` or
        ``None``), or ``None`` when Twisted would listen on it.
    """
    kind = args[0] if args else ""
    if kind in ("tcp", "tcp6", "ssl"):
        # (Twisted's parser takes any whole number, ٣ too)
        port = port_problem(_written_server_port(args, kwargs), lowest=0)  # (0: any free port)
        if port is not None:
            return f"{description!r}: {port}", "port"
        interface = kwargs.get("interface", "")
        try:
            if interface:
                ipaddress.ip_address(interface)
        except ValueError:
            return f"interface must be an IP address, not {interface!r}: {description!r}", "interface"
    if kind == "unix" and not (args[1:] and args[1]) and not kwargs.get("address"):
        return f"unix endpoint needs a path: {description!r}", None
    if "backlog" in kwargs and not ascii_digits(kwargs["backlog"]):
        return f"backlog must be a whole number, not {kwargs['backlog']!r}: {description!r}", "backlog"
    if kind == "systemd":
        if kwargs.get("domain") not in ("INET", "INET6", "UNIX"):
            return f"systemd endpoint needs domain=INET, INET6 or UNIX: {description!r}", None
        index, name = kwargs.get("index"), kwargs.get("name")
        if (index is None) == (name is None) or (index is not None and not ascii_digits(index)):
            return f"systemd endpoint needs index=NUMBER or name=NAME: {description!r}", None
    return None


def server_endpoint_problem(description: str) -> str | None:
    """Why ``description`` cannot be the endpoint of the ingest, the admin API or /metrics
    (``None`` when it can): ``listen`` would refuse it (:func:`listen_problem`: a port or a
    backlog not in ASCII digits too), or Twisted's ``serverFromString`` cannot parse it.
    ``systemd:`` (socket activation) is the broker's listeners' alone: its sockets exist only
    when systemd starts the gateway, and only the broker keeps its own across a configuration
    change.

    Only parsed: no reactor is touched and nothing listens.
    """
    from twisted.internet.endpoints import serverFromString

    unescaped = unescaped_ipv6_problem(description)
    if unescaped:
        return unescaped
    args, kwargs = split_description(description)
    if args[:1] == ["systemd"]:
        return (f"{description!r}: socket activation (systemd:) is for the broker's listeners only: give this one"
                " a tcp: or unix: endpoint")
    # (before Twisted's parser, whose int() takes ٩٨٨٣ as 9883 and fails on ² or a word with
    # its own words: a port or a backlog is refused in the config's)
    problem = listen_problem(args, kwargs, description)
    if problem is not None:
        return problem[0]
    try:
        serverFromString(object(), description)
    except (ValueError, TypeError, KeyError) as exc:
        return f"not a Twisted server endpoint: {description!r} ({exc})"
    except OSError as exc:  # (an ssl: endpoint's certificate or key read at parse time)
        return f"{description!r}: {exc.strerror or exc}{f': {exc.filename!r}' if exc.filename else ''}"
    return None


def _written_server_port(args: list[str], kwargs: dict[str, str]) -> str:
    """A ``tcp:``, ``tcp6:`` or ``ssl:`` server endpoint's port as written (``""`` when none)."""
    return args[1] if len(args) > 1 else kwargs.get("port", "")


def tcp_host_port(positional: list[str], fields: dict[str, str]) -> tuple[str, str]:
    """The host and port of a ``tcp:`` (or ``ssl:``) client endpoint as written (``""`` where
    none is), where Twisted's parser reads them: ``tcp:HOST:PORT``, ``tcp:host=H:port=P``,
    ``tcp:host=H:P``.

    :param positional: the endpoint's positional arguments after its kind
        (:func:`split_description`'s, without the first).
    :param fields: its keyword arguments.
    """
    host, port = fields.get("host", ""), fields.get("port", "")
    if len(positional) == 2:
        host, port = positional
    elif len(positional) == 1 and "host" in fields:
        port = positional[0]
    elif len(positional) == 1:
        host = positional[0]
    return host, port


def client_host_port(args: list[str], fields: dict[str, str]) -> tuple[str, str] | None:
    """The host and port a ``tls:``, ``tcp:`` or ``ssl:`` client endpoint connects to, as written
    (``""`` where none is; a ``tls:`` one's port :data:`TLS_DEFAULT_PORT` unless written), or
    ``None`` for another kind (``unix:``).

    :param args: the endpoint's positional arguments, :func:`split_description`'s.
    :param fields: its keyword arguments.
    """
    kind = args[:1]
    if kind == ["tls"]:
        return fields.get("host", ""), fields.get("port", TLS_DEFAULT_PORT)
    if kind in (["tcp"], ["ssl"]):
        return tcp_host_port(args[1:], fields)
    return None

