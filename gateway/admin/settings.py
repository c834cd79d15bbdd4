"""The ``admin`` section of the configuration: where the admin API listens and its limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from gateway.endpointstrings import server_endpoint_problem, unescaped_ipv6_problem


def loopback_tcp(endpoint: str) -> bool:
    """Whether ``endpoint`` is a plain ``tcp:`` server endpoint with exactly one
    ``interface=``, and that one loopback: ``127.0.0.1`` or ``\\:\\:1`` (::1 escaped, as
    endpoint strings write it)."""
    if not endpoint.startswith("tcp:") or endpoint.count("interface=") != 1:
        return False
    value = re.split(r"(?<!\\):", endpoint.split("interface=", 1)[1])[0]
    return value in ("127.0.0.1", "\\:\\:1")


@dataclass(frozen=True)
class AdminSettings:
    """The admin API (HTTP + JSON on a unix socket, optionally on loopback TCP with a token)."""

    enabled: bool = field(default=True, metadata={"doc": "serve the admin API and status page"})
    socket: str = field(
        default="", metadata={"path": True, "empty_is_default": True,
                              "doc": "unix socket path; empty: <state_dir>/run/admin.sock"})
    socket_mode: str = field(
        default="0660", metadata={"octal": True,
                                  "doc": "the socket's permissions, a quoted octal string; its group is the gateway's"})
    tcp: str = field(
        default="", metadata={"doc": "also listen here, e.g. tcp:8780:interface=127.0.0.1 (loopback only;"
                                     " every request needs the bearer token); empty: no TCP"})
    token_file: str = field(
        default="", metadata={"path": True, "empty_is_default": True,
                              "doc": "bearer token for TCP, made on first start (0600);"
                                     " empty: <state_dir>/admin/token"})
    max_upload_bytes: int = field(
        default=256 * 2**20, metadata={"min": 1024, "doc": "largest app package accepted by upload"})
    max_json_bytes: int = field(
        default=2**20, metadata={"min": 1024, "max": 64 * 2**20, "doc": "largest JSON request body"})
    max_log_lines: int = field(
        default=10000, metadata={"min": 1, "doc": "most log lines one logs request returns"})
    follow_interval: float = field(
        default=1.0, metadata={"min": 0.1, "max": 60.0, "doc": "seconds between polls of a followed log"})
    history_interval: float = field(
        default=30.0, metadata={"min": 1.0, "max": 600.0,
                                "doc": "seconds between journal depth samples (an hour is kept)"})
    page_refresh: int = field(
        default=5, metadata={"min": 1, "max": 3600, "doc": "seconds between status page refreshes"})

    def config_problems(self) -> Iterator[tuple[tuple[str, ...], str]]:
        """TCP only on loopback; a socket mode that gives other users nothing (see
        ``gateway.config.ChecksItself``)."""
        unescaped = unescaped_ipv6_problem(self.tcp) if self.tcp else None
        if unescaped:  # (::1 written as in a URL: say how to write it, as every endpoint key does)
            yield ("tcp",), unescaped
        elif self.tcp and not loopback_tcp(self.tcp):
            yield ("tcp",), f"must be a tcp: endpoint with interface=127.0.0.1 (or \\:\\:1), not {self.tcp!r}"
        elif self.tcp:
            problem = server_endpoint_problem(self.tcp)
            if problem:
                yield ("tcp",), problem
        try:
            mode = int(self.socket_mode, 8)
        except ValueError:
            yield ("socket_mode",), f"must be octal like 0660, not {self.socket_mode!r}"
            return
        if mode & 0o007:
            yield ("socket_mode",), f"{self.socket_mode} gives other users access: use 0660 or 0600"
