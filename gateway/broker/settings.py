"""The ``broker:`` section: an amqtt/hbmqtt broker configuration plus Twisted listeners.

A broker config pasted from amqtt or hbmqtt works as it is. Listeners of type ``tcp`` and
``ws`` (``bind``, ``ssl``, ``certfile``, ``keyfile``, ``cafile``) become Twisted endpoints; a
listener may instead name its Twisted endpoint string directly under ``endpoint:``.
``ws`` listeners serve MQTT over WebSocket (:mod:`gateway.broker.websocket`).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dacite

from gateway import jsontext
from gateway.asciidigits import ascii_digits
from gateway.broker.endpoints import EndpointError, load_ca_certificates, parse_endpoint, read_tls_file
from gateway.broker.limits import DEFAULT_MAX_SUBSCRIPTIONS, DEFAULT_MAX_TOPIC_LEVELS
from gateway.broker.outbox import DEFAULT_MAX_QUEUED_TOTAL, OVERFLOW_POLICIES
from gateway.broker.retainedlimits import DEFAULT_MAX_RETAINED_BYTES, DEFAULT_MAX_RETAINED_MESSAGES
from gateway.broker.sessions import DEFAULT_EXPIRATION, DEFAULT_MAX_OFFLINE
from gateway.broker.wsorigin import entry_problem
from gateway.configtext import key_problem, nul_problems, text_problem
from gateway.endpointstrings import split_description
from gateway.journal.record import MAX_BODY, MAX_MESSAGE
from gateway.portnumbers import port_problem



class ErrorSink(Protocol):
    """Where config problems go (:class:`gateway.config.ErrorList`)."""

    def add(self, path: tuple[str, ...], message: str) -> None:
        """Record one problem at ``path``."""

    def refuse_text(self, path: tuple[str, ...], message: str) -> None:
        """Record that the key or value at ``path`` holds text no configuration may (a NUL, a
        control character: :mod:`gateway.configtext`); nothing more is said at or under it."""

#: The listener used when the section names none: local clients only.
DEFAULT_ENDPOINT = "tcp:1883:interface=127.0.0.1"
#: MQTT's largest remaining length (§2.2.3): four length bytes of 7 bits each.
MQTT_MAX_PACKET_SIZE = 268_435_455
#: The largest ``max_packet_size`` accepted, below MQTT's: a PUBLISH the broker takes must fit
#: one journal record; bigger, it could be neither stored nor acknowledged.
MAX_PACKET_SIZE = MAX_MESSAGE
#: The smallest ``max_packet_size`` accepted: below it a client's CONNECT does not fit.
MIN_PACKET_SIZE = 64
#: The largest ``max_topic_levels`` accepted: the levels of a filter of 65535 bytes (§1.5.3),
#: ``+/+/...`` (a topic of only ``/`` has twice as many; ``0`` is no bound).
MAX_TOPIC_LEVELS = 32768
#: The smallest ``max_topic_levels`` accepted but ``0``: the levels of the longest topic the
#: gateway's local contract has its apps publish, a command's reply
#: ``command//<device>/res/<req-id>/<status>`` (below it the gateway's own topics break: an app's
#: reply closes its connection, ``edge/gateway/reports/request`` too under 4).
MIN_TOPIC_LEVELS = 6
#: The largest ``max_inflight_messages`` accepted: a QoS 1/2 delivery in flight holds one of the
#: client's packet identifiers, 1 to 65535 (§2.3.1); with all of them taken the next could not go.
MAX_INFLIGHT_MESSAGES = 65535
#: Plugins when the section names none: clients without a user name are refused (amqtt's
#: rule; it checks no password: FileAuthPlugin or client certificates do).
DEFAULT_PLUGINS: dict[str, Any] = {
    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
}
#: The same rule in the deprecated ``auth:`` section's terms, for a config with a ``topic-check:``
#: section and neither ``plugins`` nor ``auth``: amqtt reads ``topic-check`` only beside ``auth``
#: (entry-point plugins); its defaults for such a config let anonymous clients in and ignore it.
DEFAULT_AUTH: dict[str, Any] = {"plugins": ["auth_anonymous"], "allow-anonymous": False}


@dataclass(frozen=True)
class ListenerSettings:
    """One socket the broker serves on, owned by Twisted.

    :ivar name: the listener's name in the config (amqtt's listener name too).
    :ivar endpoint: a Twisted server endpoint string (``tcp:``, ``ssl:``, ``unix:``, ``systemd:``).
    :ivar cafile: CA certificates (PEM) that client certificates must chain to, or ``None``.
    :ivar require_client_cert: refuse TLS clients that present no valid certificate.
    :ivar max_connections: connections served at once; more are closed on accept (0: no limit).
    :ivar websocket: MQTT over WebSocket (``type: ws``) rather than over the bare stream.
    :ivar allowed_origins: the browser pages' origins a WebSocket listener takes besides its
        own host's (:mod:`gateway.broker.wsorigin`): ``scheme://host[:port]``, ``*`` (any) or
        ``null`` (pages opened from files).
    """

    name: str
    endpoint: str
    cafile: str | None = None
    require_client_cert: bool = False
    max_connections: int = 0
    websocket: bool = False
    allowed_origins: tuple[str, ...] = ()


def client_address(listener: ListenerSettings) -> str:
    """How a local client reaches ``listener``: ``mqtt://host:port`` (``[::1]`` for a listener
    on every IPv6 address), ``mqtts://...``, ``ws://...``, ``wss://...`` or ``unix://path``."""
    args, kwargs = split_description(listener.endpoint)
    kind = args[0] if args else ""
    where = args[1] if len(args) > 1 else kwargs.get("address" if kind == "unix" else "port")
    if kind == "unix" and where:
        return f"unix://{where}"
    if kind in ("tcp", "tcp6", "ssl") and where:
        loopback = "::1" if kind == "tcp6" else "127.0.0.1"  # (a tcp6 listener takes IPv6 clients)
        host = kwargs.get("interface") or loopback
        # every address: its loopback, ::1 for every IPv6 one (which takes IPv4 clients only
        # where the kernel's net.ipv6.bindv6only is 0)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        host = f"[{host}]" if ":" in host else host
        scheme = ("wss" if kind == "ssl" else "ws") if listener.websocket else ("mqtts" if kind == "ssl" else "mqtt")
        return f"{scheme}://{host}:{where}"
    return listener.endpoint  # (systemd: the socket unit says where it listens)


@dataclass(frozen=True)
class BrokerSettings:
    """What the broker service needs: its listeners, limits and amqtt's own config.

    :ivar listeners: the Twisted-owned listeners.
    :ivar amqtt: the configuration handed to amqtt's ``Broker`` (Twisted listeners appear
        there as ``external`` ones).
    :ivar max_packet_size: the largest MQTT packet accepted, in bytes.
    :ivar connect_timeout: seconds a client has to send CONNECT after connecting.
    :ivar max_inflight_messages: QoS 1/2 messages sent to a client and not yet acknowledged, at most.
    :ivar max_inflight_bytes: bytes of those messages' PUBLISH packets, at most (0: no limit);
        one message goes whatever its size when nothing is in flight.
    :ivar max_queued_messages: messages a session's queue holds (offline, or behind a slow client).
    :ivar max_queued_bytes: payload bytes a session's queue holds.
    :ivar queue_overflow: which QoS 1/2 messages a full queue drops: ``drop_new`` or ``drop_oldest``
        (QoS 0 messages always go first).
    :ivar max_queued_bytes_total: what the persistent sessions' queues hold together, at most,
        each message counting its payload and topic plus 330 bytes (0: no bound); past it the
        oldest queued messages go (:mod:`gateway.broker.outbox`).
    :ivar persistent_client_expiration: seconds a persistent session is kept after its client
        went offline (0: until ``max_offline_sessions`` pushes it out).
    :ivar max_offline_sessions: persistent sessions kept for offline clients, at most (the
        longest offline go first).
    :ivar max_topic_levels: the most levels of a topic a client publishes to (PUBLISH, will) or
        subscribes to (0: any).
    :ivar max_subscriptions: the most topic filters one session holds (0: any).
    :ivar max_retained_messages: the most retained messages a client's PUBLISH may leave (0: any).
    :ivar max_retained_bytes: the most bytes (topics and payloads) of retained messages a
        client's PUBLISH may leave (0: any).
    """

    listeners: tuple[ListenerSettings, ...] = (ListenerSettings("default", DEFAULT_ENDPOINT),)
    amqtt: dict[str, Any] = field(default_factory=dict)
    max_packet_size: int = 1 << 20
    connect_timeout: float = 10.0
    max_inflight_messages: int = 100
    max_inflight_bytes: int = 4 << 20
    max_queued_messages: int = 1000
    max_queued_bytes: int = 16 << 20
    queue_overflow: str = "drop_new"
    max_queued_bytes_total: int = DEFAULT_MAX_QUEUED_TOTAL
    persistent_client_expiration: float = DEFAULT_EXPIRATION
    max_offline_sessions: int = DEFAULT_MAX_OFFLINE
    max_topic_levels: int = DEFAULT_MAX_TOPIC_LEVELS
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    max_retained_messages: int = DEFAULT_MAX_RETAINED_MESSAGES
    max_retained_bytes: int = DEFAULT_MAX_RETAINED_BYTES

#: Units of ``persistent_client_expiration`` (mosquitto's, plus seconds and minutes' absence:
#: mosquitto's ``m`` is a month).
DURATION_UNITS = {"s": 1, "h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a number of seconds or mosquitto's ``<n>h|d|w|m|y`` (``m``: 30 days; ``s`` too).

    :raises ValueError: for anything else, a negative duration, or YAML's ``.nan`` and
        ``.inf`` (no expiry is ``0``).
    """
    rule = "seconds, or a whole number followed by s, h, d, w, m or y"
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError(f"not a duration ({rule}): {jsontext.given(value)}")  # (in YAML's words)
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
            if not math.isfinite(seconds):
                raise ValueError(f"must be a finite number of seconds (0: no expiry), not {value!r}")
        elif (isinstance(value, str) and value[-1:] in DURATION_UNITS and ascii_digits(value[:-1])):
            seconds = float(int(value[:-1]) * DURATION_UNITS[value[-1]])
        else:
            raise ValueError(f"not a duration ({rule}): {jsontext.given(value)}")
    except OverflowError:
        raise ValueError(f"not a duration: {value!r} is too large") from None
    if seconds < 0:
        raise ValueError(f"must not be negative: {value!r}")
    return seconds


def _endpoint_from_bind(listener: dict[str, Any]) -> str:
    """Translate an amqtt ``tcp`` listener (``bind``, ``ssl``, cert files) to an endpoint string.

    :raises EndpointError: ``bind`` has no port from 0 to 65535 after its last colon, or names
        a host that is not in the hosts file (:func:`_bind_address`); quoting the ``bind`` as written.
    """
    bind = str(listener.get("bind") or "127.0.0.1:1883")
    host, _, port = bind.rpartition(":")
    problem = port_problem(port, lowest=0)
    if problem is not None:
        raise EndpointError(f"needs host:port, {bind!r}: {problem}", "port")
    host = _bind_address(host.strip("[]") or "0.0.0.0")

    def quote(value: Any) -> str:  # endpoint syntax: a backslash escapes the next character
        return str(value).replace("\\", "\\\\").replace(":", "\\:")

    if listener.get("ssl"):
        return (f"ssl:{quote(port)}:interface={quote(host)}:privateKey={quote(listener.get('keyfile'))}"
                f":certKey={quote(listener.get('certfile'))}")
    return f"tcp:{quote(port)}:interface={quote(host)}"


#: Where the names an amqtt listener's ``bind`` may use are read from (never DNS, which can hang).
HOSTS_FILE = "/etc/hosts"


def _bind_address(host: str) -> str:
    """The address an amqtt listener's ``bind`` host listens on: the host itself when it is an IP
    address, else the first IPv4 address :data:`HOSTS_FILE` gives the name (the first IPv6 one when
    it gives none; amqtt, through asyncio, listened on all of them). ``localhost`` is 127.0.0.1
    when the file does not name it. No lookup is made (it would wait on DNS): a name DNS alone
    knows is refused.

    :raises EndpointError: the name is not in the file.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    found, unread = _hosts_file_addresses(host)
    if not found and host.lower() == "localhost":
        return "127.0.0.1"
    if not found:
        why = f" ({HOSTS_FILE} cannot be read: {unread})" if unread else ""
        raise EndpointError(f"{host!r} is neither an IP address nor a name in {HOSTS_FILE}{why}: a listener's"
                            " address is not looked up in DNS (write the address)", "interface")
    return min(found, key=lambda address: ":" in address)


def _hosts_file_addresses(name: str) -> tuple[list[str], str]:
    """The addresses :data:`HOSTS_FILE` gives ``name`` (any case), in its order; and why the file
    cannot be read ("" when it can)."""
    try:
        with open(HOSTS_FILE, encoding="utf-8", errors="replace") as hosts:
            lines = hosts.readlines()
    except OSError as exc:
        return [], str(exc.strerror or exc)
    found = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) > 1 and name.lower() in (field.lower() for field in fields[1:]):
            try:
                found.append(str(ipaddress.ip_address(fields[0])))
            except ValueError:
                continue  # (a line that is not an address and names: the resolver skips it too)
    return found, ""


#: Where an amqtt listener's endpoint problems are reported: the key the user wrote for the
#: endpoint keyword the problem is in (``bind`` for the rest).
BIND_KEYS = {"privateKey": "keyfile", "certKey": "certfile", "cafile": "cafile"}


#: amqtt's keys of whole seconds (``int | None`` in its ``BrokerConfig``), checked here.
AMQTT_SECONDS = ("sys_interval", "timeout_disconnect_delay", "session_expiry_interval")
#: The ``broker:`` keys with a ``_``: the gateway's and amqtt's (not ``auth``'s or a plugin's).
UNDERSCORED_KEYS = ("max_packet_size", "connect_timeout", "max_inflight_messages", "max_inflight_bytes",
                    "max_queued_messages", "max_queued_bytes", "max_queued_bytes_total", "queue_overflow",
                    "persistent_client_expiration",
                    "max_offline_sessions", "max_topic_levels", "max_subscriptions", "max_retained_messages",
                    "max_retained_bytes") + AMQTT_SECONDS
#: Their spellings with ``-`` (hbmqtt's, which amqtt's docs still use and amqtt 0.12's config
#: check refuses, such as ``timeout-disconnect-delay``; a ``-`` in a key is read as ``_`` in
#: every section, docs/configuration.md), and the keys they are read as.
DASHED_KEYS = {key.replace("_", "-"): key for key in UNDERSCORED_KEYS}
#: A listener's keys that name files (amqtt's): each takes a non-empty string when given.
LISTENER_FILE_KEYS = ("cafile", "certfile", "keyfile")
#: amqtt's listener keys the broker ignores (docs/broker.md): not handed to amqtt's check,
#: which would refuse a ``capath`` that does not exist.
IGNORED_LISTENER_KEYS = ("capath", "cadata", "reader", "writer")
#: Every key a listener takes: amqtt's (its ``ListenerConfig``) and the gateway's.
LISTENER_KEYS = ("type", "bind", "max_connections", "ssl", "cafile", "certfile", "keyfile", "endpoint",
                 "require_client_cert", "allowed_origins") + IGNORED_LISTENER_KEYS
#: Every key the section takes: the gateway's, and amqtt's (its ``BrokerConfig``; ``topic-check``
#: as amqtt reads it, and ``topic_check``, its field's name, is read as that). Any other is one
#: error under its own key (amqtt's check named them all in one line under plain ``broker:``).
BROKER_KEYS = UNDERSCORED_KEYS + ("listeners", "plugins", "auth", "topic-check")
#: The same as :data:`DASHED_KEYS` for a listener's keys (hbmqtt's ``max-connections``).
DASHED_LISTENER_KEYS = {key.replace("_", "-"): key for key in LISTENER_KEYS if "_" in key}


def _allowed_origins(value: Any, websocket: bool, path: tuple[str, ...], errors: ErrorSink) -> tuple[str, ...]:
    """A listener's ``allowed_origins`` (``value``; None when not given), each wrong entry an
    error under its index; only a WebSocket listener takes it (browsers send an ``Origin``)."""
    if value is None:
        return ()
    path = path + ("allowed_origins",)
    if not websocket:
        errors.add(path, "only a websocket listener (type: ws) checks the Origin of browser pages")
        return ()
    if not isinstance(value, list):
        errors.add(path, f"must be a list of origins (scheme://host[:port]), or ['*'] for any, not "
                         f"{jsontext.given(value)}")
        return ()
    for index, entry in enumerate(value):
        problem = entry_problem(entry)
        if problem is not None:
            errors.add(path + (str(index),), f"{problem}, not {jsontext.given(entry)}")
    return tuple(str(entry) for entry in value)


def _is_path(value: Any) -> bool:
    """Whether ``value`` can name a file: a non-empty string (never a number turned into one)."""
    return isinstance(value, str) and bool(value.strip())


def _readable(path: str | os.PathLike[str]) -> bool:
    """Whether the file ``path`` can be read (a name holding a NUL never can: ``os.access``
    raises ValueError for it)."""
    try:
        return os.access(path, os.R_OK)
    except ValueError:
        return False


def _underscored(mapping: dict[str, Any], spellings: dict[str, str], path: tuple[str, ...],
                 errors: ErrorSink) -> None:
    """Rename the keys of ``mapping`` (in place) that ``spellings`` maps (hbmqtt's ``-``
    spellings) to the spelling read (amqtt's); both given is an error."""
    for old, new in spellings.items():
        if old not in mapping:
            continue
        if new in mapping:  # (as every section says it: the keys as written, under the second)
            first, second = [key for key in mapping if key in (old, new)]
            errors.add(path + (second,), f"given twice, as {first!r} and {second!r}")
            del mapping[old]
        else:
            mapping[new] = mapping.pop(old)


def _tls_keys_fit(listener: dict[str, Any], endpoint: Any, path: tuple[str, ...], errors: ErrorSink) -> bool:
    """amqtt's rules for a listener's ``ssl``, ``certfile`` and ``keyfile`` (its own check never sees
    them: they become the endpoint): ``ssl`` is true or false, certfile and keyfile go together,
    and an ``ssl`` listener without ``endpoint:`` has them. Whether they fit; problems go to ``errors``."""
    ssl_on = listener.get("ssl", False)
    if not isinstance(ssl_on, bool):
        errors.add(path + ("ssl",), f"must be true or false, not {jsontext.given(ssl_on)}")
        return False
    has_cert, has_key = listener.get("certfile") is not None, listener.get("keyfile") is not None
    if has_cert != has_key:
        errors.add(path + ("keyfile" if has_cert else "certfile",),
                   "needed too: certfile and keyfile go together (amqtt requires both)")
        return False
    if ssl_on and endpoint is None and not has_cert:
        errors.add(path + ("certfile",), "an ssl listener needs certfile and keyfile")
        return False
    return True


def _positive_number(value: Any, path: tuple[str, ...], errors: ErrorSink, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.add(path, f"must be a positive number, not {jsontext.given(value)}")
        return default
    if not value > 0:  # (nan is not > 0)
        errors.add(path, f"must be a positive number, not {value!r}")
        return default
    if isinstance(value, float) and math.isinf(value):  # YAML's .inf: no deadline, a silent client stays for ever
        errors.add(path, f"must be a finite number, not {value!r}")
        return default
    try:
        return float(value)
    except OverflowError:
        errors.add(path, "must be a positive number, not an integer too large for one")
        return default


def _whole_number(value: Any, path: tuple[str, ...], errors: ErrorSink, low: int, high: int | None,
                  default: int) -> int:
    if value is None:
        return default
    wrong_kind = isinstance(value, bool) or not isinstance(value, int)
    if wrong_kind or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"from {low} up"
        errors.add(path, f"must be a whole number {bounds}, not {jsontext.given(value) if wrong_kind else value}")
        return default
    return value


def plugin_entries(plugins: Any) -> list[tuple[str, Any]]:
    """The ``plugins:`` value's plugins as amqtt's plugin manager reads them: ``(dotted path,
    settings)`` of a mapping, or of a list of names (``None`` settings: the plugin's defaults)
    and mappings; nothing of another value."""
    if isinstance(plugins, dict):
        return list(plugins.items())
    if not isinstance(plugins, list):
        return []
    return [entry for p in plugins if isinstance(p, (str, dict))
            for entry in ([(p, None)] if isinstance(p, str) else p.items())]


def _check_plugins(plugins: Any, errors: ErrorSink) -> None:
    """Report plugins that cannot be imported now, rather than when the broker starts, and
    check each one's settings as amqtt will: against the plugin's ``Config`` dataclass
    (dacite, strict, as amqtt's plugin manager does), with the files it names readable."""
    if plugins is not None and not isinstance(plugins, (dict, list)):
        errors.add(("broker", "plugins"), "must be a mapping of plugins (dotted path: settings) or a list of them, "
                                          f"not {jsontext.given(plugins)}")
        return
    for name, plugin_config in plugin_entries(plugins):
        path = ("broker", "plugins", str(name))
        module, _, attr = str(name).rpartition(".")
        try:
            plugin = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError, ValueError) as exc:
            errors.add(path, f"cannot import plugin: {exc}")
            continue
        config_class = getattr(plugin, "Config", None)
        if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
            continue  # an entry-point style plugin reads its own section
        if plugin_config is not None and not isinstance(plugin_config, dict):
            errors.add(path, f"must be a mapping of the plugin's settings, not {jsontext.given(plugin_config)}")
            continue
        try:
            settings = dacite.from_dict(data_class=config_class, data=plugin_config or {},
                                        config=dacite.Config(strict=True))
        except dacite.DaciteError as exc:
            errors.add(path, f"not a valid configuration of this plugin: {exc}")
            continue
        for field_name, value in vars(settings).items():
            if field_name.endswith("_file") and isinstance(value, (str, os.PathLike)) and not _readable(value):
                errors.add(path + (field_name,), f"cannot read {str(value)!r}")
            elif field_name == "password_file" and isinstance(value, (str, os.PathLike)) and _reads_hashes(plugin):
                _check_password_file(value, path + (field_name,), errors)


def _reads_hashes(plugin: Any) -> bool:
    """Whether ``plugin`` is amqtt's ``FileAuthPlugin`` (or one made from it), whose
    ``password_file`` holds ``user:hash`` lines."""
    from amqtt.plugins.authentication import FileAuthPlugin  # imported already: it is configured
    return isinstance(plugin, type) and issubclass(plugin, FileAuthPlugin)


def _check_password_file(file: str | os.PathLike[str], path: tuple[str, ...], errors: ErrorSink) -> None:
    """Report the lines of a readable password file (``user:hash``) that amqtt cannot use, by
    number: amqtt would log such a line whole, and it may be a password."""
    from gateway.broker.passwordfile import password_file_problems  # amqtt's hashers: only with such a file
    try:
        text = Path(file).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        errors.add(path, f"cannot read {str(file)!r}: {exc.strerror}")
        return
    for problem in password_file_problems(text):
        errors.add(path, f"{str(file)!r}: {problem}")


def _check_auth_files(auth: Any, errors: ErrorSink) -> None:
    """Report files the deprecated ``auth:`` section names (hbmqtt's ``password-file``) that
    cannot be read, as :func:`_check_plugins` does for a plugin's ``*_file`` settings."""
    if not isinstance(auth, dict):
        return  # (a wrong type is refused by parse_broker_section)
    for key, value in auth.items():
        if str(key).endswith(("-file", "_file")) and isinstance(value, str) and not _readable(value):
            errors.add(("broker", "auth", str(key)), f"cannot read {value!r}")
        elif key == "password-file" and isinstance(value, str):
            _check_password_file(value, ("broker", "auth", key), errors)


def _check_plugin_names(config: dict[str, Any], known: list[str], errors: ErrorSink) -> None:
    """Report the names the deprecated ``auth:`` and ``topic-check:`` sections list under
    ``plugins`` that are none of amqtt's entry-point plugins (``auth_file``, ``topic_acl``...):
    amqtt skips such a name without a word, so a misspelt ``topic_acl`` left its ACL unapplied
    (every client could use every topic) and a misspelt auth plugin refused every client.

    :param known: the names of amqtt's entry-point plugins.
    """
    if config.get("plugins") is not None:
        return  # (amqtt then ignores both sections)
    for section in ("auth", "topic-check"):
        names = config[section].get("plugins") if isinstance(config.get(section), dict) else None
        path = ("broker", section, "plugins")
        if names is not None and not isinstance(names, list):  # (amqtt would match a text's substrings)
            errors.add(path, f"must be a list of amqtt plugin names, not {jsontext.given(names)}")
            continue
        for index, name in enumerate(names or ()):
            if name not in known:
                shown = repr(name) if isinstance(name, str) else jsontext.given(name)
                errors.add(path + (str(index),), f"no amqtt plugin {shown} (known: {', '.join(known)})")


def _refuse_anonymous_by_default(auth: dict[str, Any], errors: ErrorSink) -> None:
    """Make the deprecated ``auth:`` section refuse anonymous clients unless its
    ``allow-anonymous`` says true (in place): amqtt's ``AnonymousAuthPlugin`` lets them in when
    the key is absent (``auth: {}``), the broker's rule is that they are refused unless allowed."""
    if "allow_anonymous" in auth:
        errors.add(("broker", "auth", "allow_anonymous"),
                   "the auth: section spells it allow-anonymous (allow_anonymous is the plugins: spelling)")
    allow = auth.setdefault("allow-anonymous", False)
    if not isinstance(allow, bool):
        errors.add(("broker", "auth", "allow-anonymous"), f"must be true or false, not {jsontext.given(allow)}")


def parse_broker_section(raw: Any, errors: ErrorSink) -> BrokerSettings:
    """Build :class:`BrokerSettings` from the ``broker:`` mapping, recording every problem.

    :param raw: the parsed YAML (``None`` when the section is absent).
    :param errors: where problems go, each with its key path.
    """
    from gateway.broker.amqtt_adapter import check_config, entry_point_plugins  # amqtt: loaded when a config is read

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.add(("broker",), f"must be a mapping, not {jsontext.given(raw)}")
        return BrokerSettings()
    # amqtt's configuration, its plugins' settings among them, is handed on as written: a NUL
    # is refused in every key and string of it (other control characters are the plugins' affair)
    for where, problem in nul_problems(raw, ("broker",)):
        errors.refuse_text(where, problem)
    config = copy.deepcopy(raw)
    _underscored(config, DASHED_KEYS, ("broker",), errors)
    _underscored(config, {"topic_check": "topic-check"}, ("broker",), errors)  # (else amqtt's alone: no ACL)
    for key in [key for key in config if key not in BROKER_KEYS]:
        errors.add(("broker", str(key)), f"unknown key (known: {', '.join(sorted(BROKER_KEYS))})")
        del config[key]  # (not a second time by amqtt's check, under plain broker:)
    max_packet = config.pop("max_packet_size", None)
    if isinstance(max_packet, int) and not isinstance(max_packet, bool) and max_packet > MAX_PACKET_SIZE:
        errors.add(("broker", "max_packet_size"),
                   f"must be at most {MAX_PACKET_SIZE}, not {max_packet!r}: the journal stores a message in one "
                   f"record of at most {MAX_BODY} bytes, topic and headers included (MQTT's own limit, "
                   f"{MQTT_MAX_PACKET_SIZE}, is above it)")
        max_packet = None
    max_packet = _whole_number(max_packet, ("broker", "max_packet_size"), errors,
                               MIN_PACKET_SIZE, MAX_PACKET_SIZE, BrokerSettings.max_packet_size)
    connect_timeout = _positive_number(config.pop("connect_timeout", None), ("broker", "connect_timeout"),
                                       errors, BrokerSettings.connect_timeout)
    limits: dict[str, Any] = {}
    max_inflight = config.pop("max_inflight_messages", None)
    if max_inflight is not None:  # each in flight holds one of a client's 65535 packet identifiers (§2.3.1)
        limits["max_inflight_messages"] = _whole_number(max_inflight, ("broker", "max_inflight_messages"), errors, 1,
                                                        MAX_INFLIGHT_MESSAGES, BrokerSettings.max_inflight_messages)
    for key in ("max_queued_messages", "max_queued_bytes"):
        value = config.pop(key, None)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            errors.add(("broker", key), f"must be a positive whole number, not {jsontext.given(value)}")
        elif value is not None and value < 1:
            errors.add(("broker", key), f"must be a positive whole number, not {value}")
        elif value is not None:
            limits[key] = value
    max_total = config.pop("max_queued_bytes_total", None)
    if max_total is not None:  # (0: no total bound)
        limits["max_queued_bytes_total"] = _whole_number(max_total, ("broker", "max_queued_bytes_total"), errors, 0,
                                                         None, DEFAULT_MAX_QUEUED_TOTAL)
    max_inflight_bytes = config.pop("max_inflight_bytes", None)
    if max_inflight_bytes is not None:  # (mosquitto's key: 0 is no limit there too)
        limits["max_inflight_bytes"] = _whole_number(max_inflight_bytes, ("broker", "max_inflight_bytes"), errors,
                                                     0, None, BrokerSettings.max_inflight_bytes)
    overflow = config.pop("queue_overflow", None)
    if overflow is not None and overflow not in OVERFLOW_POLICIES:
        shown = repr(overflow) if isinstance(overflow, str) else jsontext.given(overflow)
        errors.add(("broker", "queue_overflow"), f"must be one of {', '.join(OVERFLOW_POLICIES)}, not {shown}")
    elif overflow is not None:
        limits["queue_overflow"] = overflow
    for key in AMQTT_SECONDS:  # each under its own key, all at once (amqtt's check names only the first)
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            errors.add(("broker", key), f"must be a whole number of seconds, not {jsontext.given(value)}")
            del config[key]
    for key in ("auth", "topic-check"):  # (amqtt's check words it with the repr of a generator)
        if config.get(key) is not None and not isinstance(config[key], dict):
            errors.add(("broker", key), f"must be a mapping, not {jsontext.given(config[key])}")
            del config[key]
    expiration = config.pop("persistent_client_expiration", None)
    if expiration is None and config.get("session_expiry_interval") is not None:
        expiration = config["session_expiry_interval"]  # amqtt's name for it
        expiration_key = "session_expiry_interval"
    else:
        expiration_key = "persistent_client_expiration"
    if expiration is not None:
        try:
            limits["persistent_client_expiration"] = parse_duration(expiration)
        except ValueError as exc:
            errors.add(("broker", expiration_key), str(exc))
    max_offline = config.pop("max_offline_sessions", None)
    if max_offline is not None:
        limits["max_offline_sessions"] = _whole_number(max_offline, ("broker", "max_offline_sessions"), errors, 1,
                                                       None, DEFAULT_MAX_OFFLINE)
    max_levels = config.pop("max_topic_levels", None)
    if max_levels is not None:
        limits["max_topic_levels"] = levels = _whole_number(max_levels, ("broker", "max_topic_levels"), errors, 0,
                                                            MAX_TOPIC_LEVELS, DEFAULT_MAX_TOPIC_LEVELS)
        if 0 < levels < MIN_TOPIC_LEVELS:
            errors.add(("broker", "max_topic_levels"),
                       f"must be 0 (any) or at least {MIN_TOPIC_LEVELS}, the levels of the gateway's own topics"
                       f" (a command's reply, command//<device>/res/<req-id>/<status>, has {MIN_TOPIC_LEVELS}),"
                       f" not {levels}")
            limits["max_topic_levels"] = DEFAULT_MAX_TOPIC_LEVELS
    max_subscriptions = config.pop("max_subscriptions", None)
    if max_subscriptions is not None:
        limits["max_subscriptions"] = _whole_number(max_subscriptions, ("broker", "max_subscriptions"), errors, 0,
                                                    None, DEFAULT_MAX_SUBSCRIPTIONS)
    for key, default in (("max_retained_messages", DEFAULT_MAX_RETAINED_MESSAGES),
                         ("max_retained_bytes", DEFAULT_MAX_RETAINED_BYTES)):
        value = config.pop(key, None)
        if value is not None:  # (0: no limit, as EMQX's max_retained_messages)
            limits[key] = _whole_number(value, ("broker", key), errors, 0, None, default)
    raw_listeners = config.get("listeners") or {"default": {"endpoint": DEFAULT_ENDPOINT}}
    if not isinstance(raw_listeners, dict):
        errors.add(("broker", "listeners"),
                   f"must be a mapping of listener names to listeners, not {jsontext.given(raw_listeners)}")
        raw_listeners = {}
    ours: list[ListenerSettings] = []
    keys_written: dict[str, str] = {}  # listener name -> "bind" or "endpoint", as written
    amqtt_listeners: dict[str, Any] = {}
    for name, listener in raw_listeners.items():
        path = ("broker", "listeners", str(name))
        name_problem = key_problem(str(name))
        if name_problem is not None:  # the gateway's name for it, in its log lines: no control character
            errors.refuse_text(path, name_problem)
            continue
        if not isinstance(listener, dict):
            errors.add(path, f"must be a mapping, not {jsontext.given(listener)}")
            continue
        for key, value in listener.items():  # the gateway's socket, files and address: one line each
            value_problem = text_problem(value) if isinstance(value, str) else None
            if value_problem is not None:
                errors.refuse_text(path + (str(key),), value_problem)
        listener = dict(listener)
        _underscored(listener, DASHED_LISTENER_KEYS, path, errors)
        for key in [key for key in listener if key not in LISTENER_KEYS]:
            errors.add(path + (str(key),), f"unknown key (known: {', '.join(sorted(LISTENER_KEYS))})")
            del listener[key]  # (not a second time by amqtt's check, under plain broker:)
        max_connections = _whole_number(listener.get("max_connections"), path + ("max_connections",), errors,
                                        0, None, 0)
        endpoint = listener.pop("endpoint", None)
        require = listener.pop("require_client_cert", False)
        websocket = listener.get("type", "tcp") == "ws"
        allowed_origins = _allowed_origins(listener.pop("allowed_origins", None), websocket, path, errors)
        if websocket and endpoint is None and "bind" not in listener:
            errors.add(path + ("bind",), "a websocket listener needs bind (host:port) or endpoint")
            continue
        if listener.get("type", "tcp") == "external":
            errors.add(path + ("type",), "external (amqtt's listener fed by another server through its API) has no "
                                         "equivalent here: every listener is a socket the gateway serves; make it "
                                         "tcp or ws with bind or endpoint, or remove it")
            continue
        if listener.get("type", "tcp") not in ("tcp", "ws"):
            errors.add(path + ("type",), f"must be tcp or ws, not {listener.get('type')!r}")
            continue
        bad_files = [key for key in LISTENER_FILE_KEYS
                     if listener.get(key) is not None and not _is_path(listener[key])]
        for key in bad_files:
            value = listener[key]
            errors.add(path + (key,), f"must be a path (a non-empty string), not {jsontext.given(value)}")
        tls_fits = not bad_files and _tls_keys_fit(listener, endpoint, path, errors)
        if not isinstance(require, bool):
            errors.add(path + ("require_client_cert",), f"must be true or false, not {jsontext.given(require)}")
            require = False
        written = "bind" if endpoint is None else "endpoint"
        if endpoint is None:
            try:  # (its address is checked beside the problems of its TLS keys: every problem at once)
                endpoint = _endpoint_from_bind(listener if tls_fits else {**listener, "ssl": False})
            except EndpointError as exc:
                errors.add(path + ("bind",), str(exc))
                tls_fits = False
        if not tls_fits:  # its CA file is checked all the same, on its own
            if "cafile" not in bad_files:
                _check_cafile(listener.get("cafile"), path, errors)
            continue
        if not isinstance(endpoint, str) or not endpoint:
            errors.add(path + ("endpoint",), f"must be a Twisted endpoint string, not {jsontext.given(endpoint)}")
            continue
        cafile = listener.get("cafile")
        if require and split_description(endpoint)[0][:1] != ["ssl"]:
            errors.add(path + ("require_client_cert",), "only a TLS listener (an ssl: endpoint, or ssl: true) has "
                                                        "client certificates to require: this one would let every "
                                                        "client in without one")
        if require and not cafile and "caCertsDir=" not in endpoint and "cafile=" not in endpoint:
            errors.add(path + ("require_client_cert",), "needs cafile (the CA client certificates chain to)")
        ours.append(ListenerSettings(str(name), endpoint, str(cafile) if cafile else None, require, max_connections,
                                     websocket, allowed_origins))
        keys_written[str(name)] = written
        # (the TLS files are checked by _check_endpoint, under the keys written: amqtt's check
        # would name a missing one a second time, under plain ``broker:``)
        amqtt_listener = {k: v for k, v in listener.items()
                          if k not in ("ssl", "certfile", "keyfile", "cafile") + IGNORED_LISTENER_KEYS}
        amqtt_listener["type"] = "external"
        if "max_connections" in amqtt_listener:  # checked above: a refused value is not amqtt's second error
            amqtt_listener["max_connections"] = max_connections
        amqtt_listeners[str(name)] = amqtt_listener
    if "default" not in amqtt_listeners:
        # amqtt requires a listener named "default"; one without a socket costs nothing.
        amqtt_listeners["default"] = {"type": "external"}
    config["listeners"] = amqtt_listeners
    if "plugins" not in config and "auth" not in config:
        if "topic-check" in config:
            config["auth"] = copy.deepcopy(DEFAULT_AUTH)
        else:
            config["plugins"] = copy.deepcopy(DEFAULT_PLUGINS)
    if "plugins" not in config and isinstance(config.get("auth"), dict):
        _refuse_anonymous_by_default(config["auth"], errors)
    _check_plugins(config.get("plugins"), errors)
    if not isinstance(config.get("plugins"), (dict, list, type(None))):
        del config["plugins"]  # refused above: not a second time by amqtt's check, under plain broker:
    if config.get("plugins") is not None:  # amqtt then ignores the deprecated sections: their ACL too
        for key in ("auth", "topic-check"):
            if isinstance(config.get(key), dict):
                errors.add(("broker", key), "ignored beside plugins: (amqtt reads the deprecated auth: and "
                                            "topic-check: sections only without it): configure their plugins under "
                                            "plugins: (FileAuthPlugin, TopicAccessControlListPlugin...), or remove "
                                            "plugins:")
    _check_auth_files(config.get("auth"), errors)
    _check_plugin_names(config, entry_point_plugins(), errors)
    try:
        check_config(config)
    except Exception as exc:  # amqtt/dacite raise many kinds; each is a config error here
        errors.add(("broker",), f"not a valid amqtt broker config: {exc}")
    for listener_settings in ours:
        _check_endpoint(listener_settings, keys_written[listener_settings.name], errors)
    return BrokerSettings(tuple(ours), config, int(max_packet), float(connect_timeout), **limits)


def _check_endpoint(listener: ListenerSettings, written: str, errors: ErrorSink) -> None:
    """Report an endpoint string that Twisted cannot parse, or TLS files that are missing, under
    the key the user wrote: ``endpoint``, or for an amqtt listener (``written`` is ``bind``) its
    ``bind``, ``certfile``, ``keyfile``; a listener's own ``cafile`` under ``cafile``."""
    path = ("broker", "listeners", listener.name)
    try:
        parse_endpoint(listener)
        if listener.cafile and split_description(listener.endpoint)[0][:1] != ["ssl"]:
            # Unused without TLS, but read all the same, as amqtt's check does on any listener.
            load_ca_certificates(listener.cafile, None)
        return
    except EndpointError as exc:
        if exc.keyword == "cafile" and listener.cafile:
            errors.add(path + ("cafile",), str(exc))
            return
        key = BIND_KEYS.get(exc.keyword or "", "bind") if written == "bind" else "endpoint"
        errors.add(path + (key,), str(exc))
        if key == "keyfile":  # the certificate is read after the key: it may not be readable either
            try:
                read_tls_file(split_description(listener.endpoint)[1]["certKey"], "certificate", "certKey")
            except EndpointError as cert_exc:
                errors.add(path + ("certfile",), str(cert_exc))
    except Exception as exc:  # Twisted's parsers and pyOpenSSL raise many kinds; each is the config's
        errors.add(path + (written,), f"cannot be used: {type(exc).__name__}: {exc}")
    # the failure above came first: check the CA file on its own (amqtt's check does not)
    _check_cafile(listener.cafile, path, errors)


def _check_cafile(cafile: Any, path: tuple[str, ...], errors: ErrorSink) -> None:
    """Report a listener's ``cafile`` (under ``path``) that cannot be read or holds no PEM
    certificate, when it has one; checked on its own when its endpoint is refused."""
    if cafile:
        try:
            load_ca_certificates(str(cafile), None)
        except EndpointError as exc:
            errors.add(path + ("cafile",), str(exc))
