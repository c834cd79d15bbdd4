"""The ``links:`` section: cloud links over MQTT and the routes that feed them.

With no ``links:`` section there is no cloud link and nothing is journaled. A link
declared without ``routes`` or ``downlink`` gets the Kanto/Hono contract
(:data:`KANTO_ROUTES`, :data:`KANTO_DOWNLINK`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class RouteSettings:
    """Local topics that go up one link, and the topic they get in the cloud.

    The template's placeholders: ``{tenant}``, ``{device}`` (the gateway's identity),
    ``{topic}`` (the whole local topic), ``{1}``, ``{2}``... (the levels matched by the
    filter's ``+`` wildcards, in order) and ``{#}`` (the levels matched by ``#``; when
    they are empty, the ``/`` before ``{#}`` goes too).
    """

    filter: str = field(default="telemetry/#", metadata={"doc": "local MQTT topic filter"})
    topic: str = field(default="{topic}", metadata={"doc": "cloud topic template"})
    qos: int = field(default=1, metadata={"min": 0, "max": 1, "doc": "QoS towards the cloud"})


@dataclass(frozen=True)
class DownlinkSettings:
    """A cloud subscription whose messages are republished on the local broker.

    The local template takes ``{tenant}``, ``{device}``, ``{topic}`` (the cloud topic),
    ``{1}``... and ``{#}`` from the cloud filter, as for routes.
    """

    filter: str = field(default="command//+/req/#", metadata={"doc": "cloud MQTT topic filter"})
    topic: str = field(default="{topic}", metadata={"doc": "local topic template"})
    qos: int = field(default=1, metadata={"min": 0, "max": 2, "doc": "subscription QoS"})


#: Kanto's local contract mapped onto Hono's MQTT adapter: telemetry and events (long
#: and short forms) go up under the tenant and device; command replies go up as they are;
#: the gateway's update statuses go up as its telemetry.
KANTO_ROUTES: tuple[RouteSettings, ...] = (
    RouteSettings("telemetry/#", "telemetry/{tenant}/{device}/{#}"),
    RouteSettings("t/#", "telemetry/{tenant}/{device}/{#}"),
    RouteSettings("event/#", "event/{tenant}/{device}/{#}"),
    RouteSettings("e/#", "event/{tenant}/{device}/{#}"),
    RouteSettings("command//+/res/#", "command//{1}/res/{#}"),
    RouteSettings("c//+/s/#", "command//{1}/res/{#}"),
    RouteSettings("edge/gateway/updates/lastOperation", "telemetry/{tenant}/{device}/gateway/updates/lastOperation"),
)
#: Hono commands for the gateway and the devices behind it come down unchanged.
KANTO_DOWNLINK: tuple[DownlinkSettings, ...] = (DownlinkSettings("command//+/req/#", "{topic}"),)


@dataclass(frozen=True)
class LinkSettings:
    """One cloud MQTT broker and how to reach it.

    :ivar endpoint: a Twisted client endpoint string: ``tcp:host=...:port=1883`` or
        ``tls:host=...:port=8883`` (the TLS options are the ``ca_file``, ``cert_file``,
        ``key_file`` and ``hostname`` fields, not the string).
    """

    endpoint: str = field(default="tcp:host=127.0.0.1:port=1883", metadata={"doc": "Twisted client endpoint"})
    ca_file: str | None = field(default=None, metadata={"doc": "CA certificates (PEM); system CAs when unset"})
    cert_file: str | None = field(default=None, metadata={"doc": "client certificate (PEM)"})
    key_file: str | None = field(default=None, metadata={"doc": "client private key (PEM)"})
    hostname: str | None = field(default=None, metadata={"doc": "name the server certificate must carry"})
    client_id: str = field(default="{device}", metadata={"doc": "MQTT client id (placeholders allowed)"})
    username: str | None = field(default=None, metadata={"doc": "MQTT user name"})
    password: str | None = field(default=None, metadata={"doc": "MQTT password"})
    clean_session: bool = field(default=False, metadata={"doc": "start a new MQTT session on each connect"})
    keepalive: int = field(default=60, metadata={"min": 1, "max": 65535, "doc": "seconds between PINGREQs"})
    ping_timeout: float = field(default=10.0, metadata={"min": 0.1, "doc": "seconds to wait for PINGRESP"})
    connect_timeout: float = field(default=30.0, metadata={"min": 0.1, "doc": "seconds to wait for CONNACK"})
    will_topic: str | None = field(default=None, metadata={"doc": "will message topic"})
    will_payload: str = field(default="", metadata={"doc": "will message payload"})
    will_qos: int = field(default=1, metadata={"min": 0, "max": 2, "doc": "will message QoS"})
    will_retain: bool = field(default=False, metadata={"doc": "retain the will message"})
    window: int = field(default=64, metadata={"min": 1, "max": 65535, "doc": "QoS 1 publishes in flight"})
    resend_limit: int = field(default=4096, metadata={
        "min": 1, "doc": "duplicates a crash may cost at most (records sent, not yet durably acknowledged)"})
    linger_ms: float = field(default=5.0, metadata={
        "min": 0.0, "max": 1000.0,
        "doc": "ms to wait after new data is stored before sending it, so it goes in fewer writes"})
    backoff_initial: float = field(default=1.0, metadata={"min": 0.01, "doc": "first reconnect delay (s)"})
    backoff_factor: float = field(default=2.0, metadata={"min": 1.0, "doc": "delay growth per attempt"})
    backoff_max: float = field(default=120.0, metadata={"min": 0.01, "doc": "longest reconnect delay (s)"})
    rate_messages: float = field(default=0.0, metadata={"min": 0.0, "doc": "backlog drain msgs/s (0: no limit)"})
    rate_bytes: float = field(default=0.0, metadata={"min": 0.0, "doc": "backlog drain bytes/s (0: no limit)"})
    drain_order: Literal["interleave", "oldest"] = field(
        default="interleave", metadata={"doc": "live data beside the backlog, or strictly oldest first"})
    routes: tuple[RouteSettings, ...] = field(default=KANTO_ROUTES, metadata={"doc": "local -> cloud"})
    downlink: tuple[DownlinkSettings, ...] = field(default=KANTO_DOWNLINK, metadata={"doc": "cloud -> local"})
    loss_topic: str | None = field(default="event/{tenant}/{device}/gateway/journal/losses",
                                   metadata={"doc": "cloud topic for journal loss reports (none: off)"})


@dataclass(frozen=True)
class LinksSettings:
    """The ``links:`` section: named cloud links (none by default).

    :ivar status_topic: the local retained topic carrying each link's state.
    """

    links: dict[str, LinkSettings] = field(default_factory=dict, metadata={"doc": "cloud links by name"})
    status_topic: str = field(default="edge/connection/remote/status",
                              metadata={"doc": "local retained topic with every link's state"})
    thing_request_topic: str = field(default="edge/thing/request", metadata={"doc": "identity requests"})
    thing_response_topic: str = field(default="edge/thing/response", metadata={"doc": "identity answers"})
    policy_id: str = field(default="", metadata={"doc": "policyId given on edge/thing/response"})
