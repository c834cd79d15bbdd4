"""The ``links:`` section: cloud links over MQTT and the routes that feed them.

With no ``links:`` section there is no cloud link and nothing is journaled. A link
declared without ``routes`` or ``downlink`` gets the Kanto/Hono contract
(:data:`KANTO_ROUTES`, :data:`KANTO_DOWNLINK`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal

from gateway.links.aws_settings import AWSSettings
from gateway.links.cloudlimits import (AWS_MAX_PAYLOAD, MIN_PUBLISH, MQTT_MAX_PACKET, MQTT_MAX_PAYLOAD, CloudLimits,
                                       aws_topic_problem)
from gateway.links.router import template_problems
from gateway.mqtt.topics import unreachable_request_topic, valid_filter, valid_topic
from gateway.shown import shown_repr

#: A problem found by a ``config_problems()`` check: (relative key path, message).
Problem = tuple[tuple[str, ...], str]
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: The CONNECT fields a link sends, each an MQTT string or binary data with a 16-bit length.
_MQTT_STRINGS = ("client_id", "username", "password", "will_topic", "will_payload")
#: The most bytes such a field holds.
_MQTT_MAX_STRING = 65535
#: The link keys that take the ``{tenant}`` and ``{device}`` placeholders (and no others).
IDENTITY_TEMPLATES = ("client_id", "will_topic", "loss_topic")
#: ``gateway.device_id``'s default: a link's client id and topics by default, so two boxes left
#: on it are one device to the cloud (the links warn of it at start).
DEFAULT_DEVICE_ID = "gateway"


def fill_identity(template: str, tenant: str, device: str) -> str:
    """``template`` (a link's ``client_id``, ``will_topic`` or ``loss_topic``) with its
    ``{tenant}`` and ``{device}`` placeholders filled in."""
    return template.replace("{device}", device).replace("{tenant}", tenant)


def _mapping_problems(topic_filter: str, template: str) -> Iterable[Problem]:
    if not valid_filter(topic_filter):
        yield ("filter",), f"not a valid MQTT topic filter: {topic_filter!r} ('#' only last, '+' and '#' alone in a level)"
    for problem in template_problems(template, topic_filter):
        yield ("topic",), problem


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

    def config_problems(self) -> Iterable[Problem]:
        """The filter must be a filter and the template render topics from it."""
        return _mapping_problems(self.filter, self.topic)


@dataclass(frozen=True)
class DownlinkSettings:
    """A cloud subscription whose messages are republished on the local broker.

    The local template takes ``{tenant}``, ``{device}``, ``{topic}`` (the cloud topic),
    ``{1}``... and ``{#}`` from the cloud filter, as for routes.
    """

    filter: str = field(default="command//+/req/#", metadata={"doc": "cloud MQTT topic filter"})
    topic: str = field(default="{topic}", metadata={"doc": "local topic template"})
    qos: int = field(default=1, metadata={"min": 0, "max": 2, "doc": "subscription QoS"})

    def config_problems(self) -> Iterable[Problem]:
        """The filter must be a filter and the template render topics from it."""
        return _mapping_problems(self.filter, self.topic)


#: Kanto's local contract mapped onto Hono's MQTT adapter: telemetry and events (long
#: and short forms) go up under the tenant and device; command replies go up as they are;
#: the gateway's update and upload statuses and configuration change reports go up as its
#: telemetry, upload requests as events.
KANTO_ROUTES: tuple[RouteSettings, ...] = (
    RouteSettings("telemetry/#", "telemetry/{tenant}/{device}/{#}"),
    RouteSettings("t/#", "telemetry/{tenant}/{device}/{#}"),
    RouteSettings("event/#", "event/{tenant}/{device}/{#}"),
    RouteSettings("e/#", "event/{tenant}/{device}/{#}"),
    RouteSettings("command//+/res/#", "command//{1}/res/{#}"),
    RouteSettings("c//+/s/#", "command//{1}/res/{#}"),
    RouteSettings("edge/gateway/updates/lastOperation", "telemetry/{tenant}/{device}/gateway/updates/lastOperation"),
    RouteSettings("edge/gateway/config/lastChange", "telemetry/{tenant}/{device}/gateway/config/lastChange"),
    RouteSettings("edge/gateway/reports/device_info", "telemetry/{tenant}/{device}/gateway/device_info"),
    RouteSettings("edge/gateway/reports/usage_report", "telemetry/{tenant}/{device}/gateway/usage_report"),
    RouteSettings("edge/gateway/reports/engine_report", "telemetry/{tenant}/{device}/gateway/engine_report"),
    RouteSettings("edge/gateway/uploads/lastUpload", "telemetry/{tenant}/{device}/gateway/uploads/lastUpload"),
    RouteSettings("edge/gateway/uploads/autoUpload", "telemetry/{tenant}/{device}/gateway/uploads/autoUpload"),
    RouteSettings("edge/gateway/uploads/request", "event/{tenant}/{device}/gateway/uploads/request"),
)
#: Hono commands for the gateway and the devices behind it come down unchanged, and also on
#: Hono's short form (an app subscribes to one of the two).
KANTO_DOWNLINK: tuple[DownlinkSettings, ...] = (DownlinkSettings("command//+/req/#", "{topic}"),
                                                DownlinkSettings("command//+/req/#", "c//{1}/q/{#}"))
#: A link with ``aws:`` and no ``routes``: telemetry, events and command replies go to AWS IoT
#: on their local topics, as they are (Kanto's AWS connector sends telemetry and events as its
#: Hono mapping does: docs/aws.md shows the routes that do the same); so do the
#: gateway's update, configuration and upload statuses, its telemetry reports and its
#: upload requests, without which an upload triggered through AWS never gets its ``start``.
AWS_ROUTES: tuple[RouteSettings, ...] = (
    RouteSettings("telemetry/#", "{topic}"),
    RouteSettings("t/#", "{topic}"),
    RouteSettings("event/#", "{topic}"),
    RouteSettings("e/#", "{topic}"),
    RouteSettings("command//+/res/#", "{topic}"),
    RouteSettings("c//+/s/#", "command//{1}/res/{#}"),
    RouteSettings("edge/gateway/updates/lastOperation", "{topic}"),
    RouteSettings("edge/gateway/config/lastChange", "{topic}"),
    RouteSettings("edge/gateway/reports/device_info", "{topic}"),
    RouteSettings("edge/gateway/reports/usage_report", "{topic}"),
    RouteSettings("edge/gateway/reports/engine_report", "{topic}"),
    RouteSettings("edge/gateway/uploads/lastUpload", "{topic}"),
    RouteSettings("edge/gateway/uploads/autoUpload", "{topic}"),
    RouteSettings("edge/gateway/uploads/request", "{topic}"),
)


@dataclass(frozen=True)
class LinkSettings:
    """One cloud MQTT broker and how to reach it.

    :ivar endpoint: a Twisted client endpoint string: ``tcp:host=...:port=1883`` or
        ``tls:host=...:port=8883`` (the TLS options are the ``ca_file``, ``cert_file``,
        ``key_file`` and ``hostname`` fields, not the string).
    """

    endpoint: str = field(default="tcp:host=127.0.0.1:port=1883", metadata={"doc": "Twisted client endpoint"})
    ca_file: str | None = field(default=None, metadata={"path": True,
                                                        "doc": "CA certificates (PEM); system CAs when unset"})
    cert_file: str | None = field(default=None, metadata={"path": True, "doc": "client certificate (PEM)"})
    key_file: str | None = field(default=None, metadata={"path": True, "doc": "client private key (PEM)"})
    hostname: str | None = field(default=None, metadata={"doc": "name the server certificate must carry"})
    client_id: str = field(default="{device}", metadata={"doc": "MQTT client id (placeholders allowed)"})
    username: str | None = field(default=None, metadata={"doc": "MQTT user name"})
    password: str | None = field(default=None, metadata={"controls": True, "doc": "MQTT password"})
    clean_session: bool = field(default=False, metadata={"doc": "start a new MQTT session on each connect"})
    keepalive: int = field(default=60, metadata={"min": 1, "max": 65535, "doc": "seconds between PINGREQs"})
    ping_timeout: float = field(default=10.0, metadata={"min": 0.1, "doc": "seconds to wait for PINGRESP"})
    connect_timeout: float = field(default=30.0, metadata={"min": 0.1, "doc": "seconds to wait for CONNACK"})
    max_packet_size: int = field(default=1 << 20, metadata={
        "min": 2, "max": 268435455,
        "doc": "largest packet taken from the cloud (bytes of its remaining length); a bigger one "
               "closes the connection"})
    max_message_bytes: int | None = field(default=None, metadata={
        "min": 0, "max": MQTT_MAX_PAYLOAD,
        "doc": "largest payload the cloud takes (bytes); a bigger message is not sent, it counts as lost "
               "(0: no limit; none: AWS IoT Core's 131072 on an aws: link, else no limit)"})
    max_publish_bytes: int = field(default=0, metadata={
        "min": 0, "max": MQTT_MAX_PACKET,
        "doc": "largest whole PUBLISH packet the cloud takes (bytes, as mosquitto's max_packet_size); "
               "a bigger message is not sent, it counts as lost (0: no limit)"})
    will_topic: str | None = field(default=None, metadata={"doc": "will message topic (placeholders allowed)"})
    will_payload: str = field(default="", metadata={"controls": True, "doc": "will message payload"})
    will_qos: int = field(default=1, metadata={"min": 0, "max": 2, "doc": "will message QoS"})
    will_retain: bool = field(default=False, metadata={"doc": "retain the will message"})
    # (at most the forwarder's packet ids for publishes, gateway.links.forwarder.MAX_PACKET_ID:
    # the ids above are its SUBSCRIBEs)
    window: int = field(default=64, metadata={"min": 1, "max": 64535, "doc": "QoS 1 publishes in flight"})
    resend_limit: int = field(default=4096, metadata={
        "min": 1, "doc": "duplicates a crash may cost at most (records sent, not yet durably acknowledged)"})
    linger_ms: float = field(default=5.0, metadata={
        "min": 0.0, "max": 1000.0,
        "doc": "ms to wait after new data is stored before sending it, so it goes in fewer writes"})
    backoff_initial: float = field(default=1.0, metadata={"min": 0.01, "doc": "first reconnect delay (s)"})
    backoff_factor: float = field(default=2.0, metadata={"min": 1.0, "doc": "delay growth per attempt"})
    backoff_max: float = field(default=25.0, metadata={
        "min": 0.01, "doc": "longest reconnect delay (s), and the retry cadence once reached: at least "
                            "1.25 x the fleet size / the broker's CONNECTs per second (docs/fleet.md)"})
    stable_after: float = field(default=60.0, metadata={
        "min": 0.0, "doc": "a connection dropping sooner after CONNACK counts as a failed attempt (s)"})
    min_connect_interval: float = field(default=1.0, metadata={
        "min": 0.0, "doc": "least time between two CONNECTs of this client id (s)"})
    rate_messages: float = field(default=0.0, metadata={"min": 0.0, "doc": "backlog drain msgs/s (0: no limit)"})
    rate_bytes: float = field(default=0.0, metadata={"min": 0.0, "doc": "backlog drain bytes/s (0: no limit)"})
    drain_order: Literal["interleave", "oldest"] = field(
        default="interleave", metadata={"doc": "live data beside the backlog, or strictly oldest first"})
    routes: tuple[RouteSettings, ...] = field(default=KANTO_ROUTES, metadata={"doc": "local -> cloud"})
    downlink: tuple[DownlinkSettings, ...] = field(default=KANTO_DOWNLINK, metadata={"doc": "cloud -> local"})
    loss_topic: str | None = field(default="event/{tenant}/{device}/gateway/journal/losses",
                                   metadata={"doc": "cloud topic for journal loss reports (none: off)"})
    aws: AWSSettings | None = field(default=None, metadata={
        "doc": "AWS IoT Core: ALPN on 443, or MQTT over WebSocket with SigV4 (docs/aws.md)"})

    def __post_init__(self) -> None:
        if self.aws is not None and self.routes is KANTO_ROUTES:  # routes not given: the AWS defaults
            object.__setattr__(self, "routes", AWS_ROUTES)

    def client_id_for(self, tenant: str, device: str) -> str:
        """The MQTT client id this gateway connects with: ``client_id`` with its placeholders filled."""
        return fill_identity(self.client_id, tenant, device)

    def cloud_limits(self) -> CloudLimits:
        """The largest message the cloud takes: ``max_message_bytes`` (AWS IoT Core's payload
        limit when unset on an ``aws:`` link), ``max_publish_bytes``, and AWS IoT Core's topic
        rules on an ``aws:`` link."""
        max_payload = self.max_message_bytes
        if max_payload is None:
            max_payload = AWS_MAX_PAYLOAD if self.aws is not None else 0
        return CloudLimits(max_payload, self.max_publish_bytes, self.aws is not None)

    def config_problems(self) -> Iterable[Problem]:
        """What would stop the link at start or at its first connect: the endpoint string,
        the TLS files (read and parsed now), the MQTT session's fields, the cloud's limits."""
        # (the endpoint's module brings TLS verification and proxies: only a configured link needs it)
        from gateway.links.endpoint import endpoint_problems

        yield from endpoint_problems(self)
        for key in IDENTITY_TEMPLATES:
            template = getattr(self, key)
            if template is not None:
                unknown = [n for n in _PLACEHOLDER.findall(template) if n not in ("tenant", "device")]
                for name in unknown:
                    yield (key,), f"unknown placeholder {{{name}}} (known: tenant, device)"
                if key != "client_id" and not unknown and not valid_topic(_PLACEHOLDER.sub("x", template)):
                    yield (key,), f"not a valid topic name: {shown_repr(template)}"
        for key in _MQTT_STRINGS:  # (a placeholder counted as written: the device id is checked apart)
            value = getattr(self, key)
            length = len(value.encode("utf-8", "surrogatepass")) if value is not None else 0
            if length > _MQTT_MAX_STRING:
                yield (key,), (f"is {length} bytes of UTF-8: MQTT's CONNECT carries at most {_MQTT_MAX_STRING} "
                               "(a 16-bit length, 3.1.1 section 1.5.3): the link could never connect")
        if not self.client_id and not self.clean_session:
            yield ("client_id",), "an empty client id needs clean_session: true (MQTT 3.1.1 §3.1.3-7)"
        if self.password is not None and self.username is None:
            yield ("password",), "needs username: MQTT 3.1.1 sends no password without a user name"
        if self.backoff_max < self.backoff_initial:
            yield ("backoff_max",), f"must be at least backoff_initial ({self.backoff_initial})"
        if 0 < self.max_publish_bytes < MIN_PUBLISH:
            yield ("max_publish_bytes",), (f"no PUBLISH is that small (one takes {MIN_PUBLISH} bytes or more): "
                                           "0 for no limit")
        given = self.max_message_bytes
        if self.aws is not None and given is not None and not 0 < given <= AWS_MAX_PAYLOAD:
            yield ("max_message_bytes",), (f"AWS IoT Core takes {AWS_MAX_PAYLOAD} bytes of payload at most, a quota it "
                                           f"does not raise: give 1 to {AWS_MAX_PAYLOAD}, or leave it unset for "
                                           f"{AWS_MAX_PAYLOAD}")
        if self.aws is not None and self.loss_topic:
            problem = aws_topic_problem(_PLACEHOLDER.sub("x", self.loss_topic))
            if problem is not None:
                yield ("loss_topic",), f"AWS IoT Core would refuse every loss report: {problem}"
        if self.aws is not None:  # AWS IoT Core answers no SUBACK for QoS 2, and takes no QoS 2 will
            if self.will_topic and self.will_qos == 2:
                yield ("will_qos",), "AWS IoT Core does not support QoS 2: use 0 or 1"
            for index, downlink in enumerate(self.downlink):
                if downlink.qos == 2:
                    yield ("downlink", str(index), "qos"), "AWS IoT Core does not support QoS 2: use 0 or 1"


def link_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a link, MQTT or HTTP (``None`` when it can): it names the
    link's journal stream ``link-<name>``."""
    from gateway.journal.cursors import check_name

    try:
        check_name(f"link-{name}" if name else "")  # an empty name is refused, not stream "link-"
    except ValueError:
        return "a link name is 1-95 of A-Z a-z 0-9 _ . - (it names the journal stream link-<name>)"
    return None


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

    def config_problems(self) -> Iterable[Problem]:
        """Local topics must be topics (the request topic may be a filter, not a ``$`` one: clients
        cannot publish there). Link names are
        checked beside the links' own problems, with the HTTP links' (gateway.config)."""
        for key in ("status_topic", "thing_response_topic"):
            if not valid_topic(getattr(self, key)):
                yield (key,), f"not a valid topic name: {shown_repr(getattr(self, key))}"
        unreachable = unreachable_request_topic(self.thing_request_topic)
        if not valid_filter(self.thing_request_topic):
            yield ("thing_request_topic",), f"not a valid topic filter: {self.thing_request_topic!r}"
        elif unreachable:
            yield ("thing_request_topic",), unreachable
