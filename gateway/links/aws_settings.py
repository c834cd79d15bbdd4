"""The ``aws:`` options of an MQTT link: AWS IoT Core's endpoint forms and topic conventions.

- ``tls:host=<prefix>-ats.iot.<region>.amazonaws.com:port=8883`` with ``cert_file`` and
  ``key_file``: nothing AWS-specific is needed beyond the link's TLS keys.
- the same on port 443: ``alpn: true`` offers the ALPN protocol ``x-amzn-mqtt-ca``.
- ``websocket: true``: MQTT over WebSocket (``/mqtt``, subprotocol ``mqtt``) with a URL
  signed with SigV4 from ``credentials_file``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

#: The ALPN protocol AWS IoT Core wants for MQTT with a client certificate on port 443.
ALPN_MQTT = "x-amzn-mqtt-ca"
#: ``<prefix>.iot.<region>.amazonaws.com`` (and ``.amazonaws.com.cn``).
_REGION = re.compile(r"\.iot\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
Problem = tuple[tuple[str, ...], str]


def region_of(host: str) -> str | None:
    """The region in an AWS IoT endpoint's host name, if it has one."""
    match = _REGION.search(host)
    return match.group(1) if match else None


@dataclass(frozen=True)
class AWSSettings:
    """AWS IoT Core options of an MQTT link.

    :ivar host: the WebSocket Host (and signed host); empty: the endpoint's host. A local
        emulator reached on 127.0.0.1 is told the AWS-shaped name here.
    """

    alpn: bool = field(default=False, metadata={"doc": f"offer ALPN {ALPN_MQTT} (TLS with a client cert on 443)"})
    websocket: bool = field(default=False, metadata={"doc": "MQTT over WebSocket with a SigV4-signed URL"})
    region: str = field(default="", metadata={"doc": "SigV4 region (empty: from the endpoint's host)"})
    credentials_file: str | None = field(default=None, metadata={
        "path": True, "doc": "AWS shared credentials file (INI) for the WebSocket signature"})
    profile: str = field(default="default", metadata={"doc": "profile in credentials_file"})
    path: str = field(default="/mqtt", metadata={"doc": "WebSocket path"})
    host: str = field(default="", metadata={"doc": "WebSocket Host header (empty: the endpoint's host)"})

    def config_problems(self) -> Iterable[Problem]:
        """One form at a time; the WebSocket form needs credentials."""
        if self.alpn and self.websocket:
            yield ("alpn",), "ALPN is for MQTT over TLS; websocket: true uses the WebSocket form"
        if self.websocket and not self.credentials_file:
            yield ("credentials_file",), "websocket: true signs its URL with these credentials"
        if not self.path.startswith("/"):
            yield ("path",), f"must start with '/', not {self.path!r}"
