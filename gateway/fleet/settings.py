"""The ``fleet:`` section: joining an Eclipse hawkBit (DDI API) fleet manager."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal
from urllib.parse import urlsplit

from gateway.configurl import URLForm, url_problem
from gateway.httpheaders import header_value_problem
from gateway.pemfiles import ca_file_problem

#: The DDI paths (``/{tenant}/controller/v1/...``) go after the base URL; a path prefix is kept.
_BASE_URL = URLForm("https://host[:port][/path]", path=True, query=False,
                    goes_after="the DDI paths go after it", authenticates="the gateway authenticates with token_file")


@dataclass(frozen=True)
class FleetSettings:
    """Where the DDI server is, who this gateway is there, and how often it asks."""

    enabled: bool = field(default=False, metadata={"doc": "poll a hawkBit DDI server for deployments"})
    base_url: str = field(default="", metadata={"doc": "the server's root URL (https://hawkbit.example.com)"})
    tenant: str = field(default="DEFAULT", metadata={"doc": "the hawkBit tenant"})
    controller_id: str = field(
        default="{device}", metadata={"doc": "this gateway's controller id; {device} is gateway.device_id"})
    auth: Literal["TargetToken", "GatewayToken", "none"] = field(
        default="TargetToken", metadata={"doc": "the Authorization scheme; none for anonymous servers"})
    token_file: str | None = field(
        default=None, metadata={"path": True, "doc": "file holding the security token (read at every start)"})
    ca_file: str | None = field(
        default=None, metadata={"path": True, "doc": "PEM CAs trusted for the server instead of the system store"})
    allow_http: bool = field(default=False, metadata={"doc": "accept a plain http:// base_url (tests, labs)"})
    poll_interval: float = field(
        default=300.0, metadata={"min": 1.0, "max": 86400.0,
                                 "doc": "seconds between polls until the server says (config.polling.sleep)"})
    min_poll_interval: float = field(
        default=10.0, metadata={"min": 0.1, "max": 86400.0,
                                "doc": "the soonest poll after a good one, whatever the server's sleep and the jitter"})
    poll_jitter: float = field(
        default=0.1, metadata={"min": 0.0, "max": 0.5,
                               "doc": "each sleep is spread by +/- this fraction (the one after the first good poll "
                                      "after a start or failed polls: +/- 0.5)"})
    retry_max_delay: float = field(
        default=600.0, metadata={"min": 1.0, "doc": "longest wait after failed polls (401, 429, 5xx, no answer)"})
    request_timeout: float = field(
        default=30.0, metadata={"min": 1.0, "max": 600.0, "doc": "seconds a DDI request may take"})
    attributes: dict[str, str] = field(
        default_factory=dict, metadata={"doc": "extra configData attributes (e.g. hw_boardname, hw_revision)"})

    def server_ca_files(self) -> dict[tuple[str, int], str]:
        """``{(host, port): ca_file}`` for the downloads of artifacts from the DDI server itself,
        which trust ``ca_file`` as its DDI requests do; empty unless an enabled fleet on https
        has one."""
        parts = urlsplit(self.base_url)
        try:
            port = parts.port or 443
        except ValueError:
            return {}
        if not self.enabled or self.ca_file is None or parts.scheme.lower() != "https" or not parts.hostname:
            return {}
        return {(parts.hostname, port): self.ca_file}

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """An enabled fleet needs a usable URL and, unless anonymous, a token file; its CA
        file is read and parsed as its client will at start. ``min_poll_interval`` above
        ``poll_interval`` is refused enabled or not, as every value out of its range is."""
        if self.min_poll_interval > self.poll_interval:
            yield ("min_poll_interval",), f"must not be above poll_interval ({self.poll_interval:g})"
        if not self.enabled:
            return
        problem = url_problem(self.base_url, _BASE_URL, allow_http=self.allow_http)
        if problem is not None:
            yield ("base_url",), problem
        for key in ("tenant", "controller_id"):  # each one segment of the DDI URL's path
            if getattr(self, key).strip() in ("", ".", ".."):
                yield (key,), (f"must name something, not {getattr(self, key)!r}: it is one segment of the DDI "
                               "URL's path ({base_url}/{tenant}/controller/v1/{controller_id}), where '.' and "
                               "'..' would name another resource")
        if self.auth != "none":
            if not self.token_file:
                yield ("token_file",), f"{self.auth} authentication needs a token file"
            else:
                try:  # read as gateway.fleet.wiring.authorization reads it at start
                    lines = Path(self.token_file).read_text().strip().splitlines()
                except (OSError, UnicodeDecodeError) as exc:
                    yield ("token_file",), f"cannot read {self.token_file!r}: {getattr(exc, 'strerror', None) or exc}"
                else:
                    if not lines or not lines[0].strip():
                        yield ("token_file",), f"{self.token_file!r} is empty (the token is its first line)"
                    elif (problem := header_value_problem(lines[0].strip())) is not None:
                        # (the token goes in the Authorization header: not repeated here)
                        yield ("token_file",), f"the token in {self.token_file!r} {problem}"
        problem = ca_file_problem(self.ca_file) if self.ca_file is not None else None
        if problem is not None:
            yield ("ca_file",), problem
