"""Twisted endpoint strings (``tcp:1883:interface=127.0.0.1``, ``tls:host=h:port=8883``),
split into their arguments: the one parser the broker's listeners and the links share;
and the parse-only check of the server endpoints of the ingest, the admin API and /metrics."""

from __future__ import annotations


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


def server_endpoint_problem(description: str) -> str | None:
    """Why Twisted's ``serverFromString`` cannot parse ``description`` (``None`` when it can).

    Only parsed: no reactor is touched and nothing listens.
    """
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(object(), description)
    except (ValueError, TypeError, KeyError) as exc:
        return f"not a Twisted server endpoint: {description!r} ({exc})"
    args, kwargs = split_description(description)
    if args[:1] in (["tcp"], ["ssl"]):  # parsed as any whole number; listen() would refuse it
        port = args[1] if len(args) > 1 else kwargs.get("port", "")
        if not port.isdigit() or int(port) > 65535:
            return f"{description!r}: the port must be from 0 to 65535, not {port!r}"
    return None
