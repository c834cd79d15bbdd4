"""The gateway's configuration: YAML (+ ``conf.d/*.yaml`` drop-ins) into frozen typed objects.

Each service owns a frozen dataclass for its section (``gateway/<pkg>/settings.py``); this
module reads the files, merges the drop-ins in lexical order, builds every section and
reports *all* errors together, each as ``file: key.path: what is wrong``. Unknown keys are
errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Protocol, Union

from gateway import jsontext
from gateway.admin.settings import AdminSettings
from gateway.apps.settings import AppsSettings, program_name_problem
from gateway.broker.openlisteners import open_listener_warnings
from gateway.broker.settings import BrokerSettings, parse_broker_section
from gateway.commands.settings import CommandsSettings
from gateway.configdirectory import directory_problem
from gateway.configkeys import normal_key_path, written_at
from gateway.configtext import key_problem, text_problem
from gateway.containers.settings import ContainersSettings, container_name_problem, podman_socket, socket_path_problem
from gateway.errors import ConfigError
from gateway.redaction import redact_quoted
from gateway.shown import shown_key_path
from gateway.fleet.settings import FleetSettings
from gateway.ingest.settings import IngestSettings
from gateway.journal.settings import JournalSettings
from gateway.links.cikplace import cik_path, volatile_cik_warnings
from gateway.links.http_settings import HTTPLinksSettings, cik_file_problem
from gateway.links.settings import DEFAULT_DEVICE_ID, LinksSettings, link_name_problem
from gateway.links.sharedsessions import shared_sessions
from gateway.nullentries import null_entry_warnings
from gateway.proxysettings import ProxySettings
from gateway.telemetry.settings import TelemetrySettings
from gateway.twin import shadows
from gateway.twin.settings import TwinSettings, shadow_link_problem
from gateway.updates.settings import UpdatesSettings
from gateway.uploads.settings import UploadsSettings
from gateway.yamlfile import WrittenFloat, WrittenInt, read_yaml, written_text

#: The embedded default configuration: conf/gateway.yaml in a checkout, or the copy the
#: package installs under ``sys.prefix`` (a venv, the .deb's /opt/venvs/gateway).
DEFAULT_CONFIG = next(
    (p for p in (Path(__file__).resolve().parent.parent / "conf" / "gateway.yaml",
                 Path(sys.prefix) / "conf" / "gateway.yaml") if p.exists()),
    Path(sys.prefix) / "conf" / "gateway.yaml",
)

#: What a settings class's ``config_problems()`` yields: a key path relative to the object
#: (``("routes", "0", "filter")``; ``()`` for the object itself) and what is wrong there.
Problem = tuple[tuple[str, ...], str]


class ChecksItself(Protocol):
    """A settings dataclass with checks beyond each field's type and range.

    :func:`build_dataclass` calls ``config_problems()`` on every object it builds (a
    section, or one nested in it, such as one link or one route), so a section is fully
    checked at load: files that must exist, templates, values that depend on each other.
    Problems under a field whose value was already refused are not reported twice.
    """

    def config_problems(self) -> Iterable[Problem]:
        """Every problem of this object, each as (relative key path, message)."""


def mqtt_level_problem(value: str) -> str | None:
    """Why ``value`` cannot be one level of an MQTT topic (``None`` when it can).

    Identities (device, tenant) are put into topics as one level each (a NUL, which no
    configuration value holds, is refused before: :mod:`gateway.configtext`).
    """
    if not value.strip():
        return "must not be empty"
    bad = sorted({c for c in value if c in "/+#"})
    if bad:
        return f"must be usable as one MQTT topic level, without {', '.join(repr(c) for c in bad)}"
    return None


#: Why ``gateway.device_id`` and ``gateway.tenant_id`` may not be ``.`` or ``..``, each in its
#: own words (the tenant is in no controller id).
_DOT_NAMES = {
    "device_id": ("this gateway", "it is also a segment of URL paths (the fleet's controller id {device}) and file"
                                  " names, where '.' and '..' name another"),
    "tenant_id": ("this gateway's tenant", "it is also a level of the cloud topics ({tenant}), which clouds such"
                                           " as Hono read as URL paths (telemetry/<tenant>/<device>), where '.' and"
                                           " '..' name another"),
}


@dataclass(frozen=True)
class GatewaySettings:
    """The ``gateway:`` section: what the process as a whole needs."""

    state_dir: str = field(default="./var", metadata={"path": True, "doc": "where state lives (created on start)"})
    device_id: str = field(default=DEFAULT_DEVICE_ID, metadata={"doc": "this gateway's device id"})
    tenant_id: str = field(default="default", metadata={"doc": "tenant the device belongs to"})
    log_level: Literal["debug", "info", "warn", "error"] = field(
        default="info", metadata={"doc": "lowest level logged"}
    )
    shutdown_timeout: float = field(
        default=4.0, metadata={"min": 0.1, "max": 60.0, "doc": "seconds a service may take to stop"}
    )
    proxy: ProxySettings = field(default_factory=ProxySettings, metadata={"doc": "the HTTP proxy of HTTP(S) clients"})

    def config_problems(self) -> Iterable[Problem]:
        """The identity goes into topics one level each; the state dir must be a directory."""
        for key in ("device_id", "tenant_id"):
            problem = mqtt_level_problem(getattr(self, key))
            if problem:
                yield (key,), problem
            elif getattr(self, key) in (".", ".."):  # (a topic level, but a path segment that names another)
                what, why = _DOT_NAMES[key]
                yield (key,), f"must name {what}, not {getattr(self, key)!r}: {why}"
        problem = directory_problem(Path(self.state_dir).expanduser())
        if problem is not None:
            yield ("state_dir",), problem


@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen, typed object per section.

    Each attribute but ``path`` and ``written`` is a section named in :data:`SECTIONS`.

    :ivar path: the main file it was read from.
    :ivar written: the files' data merged, as written: ``config.get`` reads there the keys the
        ``broker:`` section hands to amqtt as they are (``auth``, a listener's ``bind``).
    :ivar dropins: the drop-ins merged over the main file, in the order merged
        (:func:`dropin_files`).
    """

    path: Path
    written: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    dropins: tuple[Path, ...] = field(default=(), compare=False, repr=False)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    journal: JournalSettings = field(default_factory=JournalSettings)
    links: LinksSettings = field(default_factory=LinksSettings)
    apps: AppsSettings = field(default_factory=AppsSettings)
    updates: UpdatesSettings = field(default_factory=UpdatesSettings)
    commands: CommandsSettings = field(default_factory=CommandsSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    http_links: HTTPLinksSettings = field(default_factory=HTTPLinksSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    containers: ContainersSettings = field(default_factory=ContainersSettings)
    twin: TwinSettings = field(default_factory=TwinSettings)
    uploads: UploadsSettings = field(default_factory=UploadsSettings)

    def files_read(self) -> str:
        """The files this configuration was read from, as ``--check-config`` names them: the
        main file, and, when drop-ins were merged over it, ``+`` and each of them beside it, in
        the order merged (``conf/gateway.yaml + conf.d/50-site.yaml, conf.d/90-remote.yaml``);
        the main file alone when there are none. A drop-in is named by its path from the main
        file's directory, where the gateway looks for ``conf.d``, or whole when it is elsewhere."""
        names = []
        for dropin in self.dropins:
            try:
                names.append(str(dropin.relative_to(self.path.parent)))
            except ValueError:  # (not beside it: named whole)
                names.append(str(dropin))
        return f"{self.path} + {', '.join(names)}" if names else str(self.path)

    @property
    def state_dir(self) -> Path:
        """The state directory as an absolute path (a relative one is taken from the current
        directory, as a command-line user expects)."""
        return Path(self.gateway.state_dir).expanduser().resolve()

    def warnings(self) -> list[str]:
        """What the configuration asks for that it may not mean, one line each, without refusing it
        (``--check-config`` prints them; the services concerned log them as they start): MQTT links
        that share one cloud session (:mod:`gateway.links.sharedsessions`), Exosite links whose CIK
        file a reboot loses (:mod:`gateway.links.cikplace`), named entries a file sets to null
        (:mod:`gateway.nullentries`), broker listeners that take anonymous clients beyond
        loopback (:mod:`gateway.broker.openlisteners`)."""
        return ([shared.text for shared in shared_sessions(self.links.links, self.gateway.tenant_id,
                                                           self.gateway.device_id)]
                + volatile_cik_warnings(self.http_links.links, self.state_dir) + null_entry_warnings(self.written)
                + open_listener_warnings(self.broker))


#: A section with its own parser: ``(raw YAML or None, errors) -> settings``.
SectionParser = Callable[[Any, "ErrorList"], Any]

#: Every section: its YAML key, which is also its :class:`Config` attribute, -> its settings
#: dataclass (built field by field by :func:`build_dataclass`, unknown keys refused, then
#: its ``config_problems()`` run, see :class:`ChecksItself`) or a :data:`SectionParser`
#: (``broker`` has its own, because it passes an amqtt configuration through).
#:
#: Adding a section takes two lines: its entry here, and a typed attribute with a default
#: on :class:`Config` (``telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)``).
#: Checks that need more than a field's type and ``min``/``max``/``path`` metadata go in the
#: settings class as ``config_problems()``; tests/test_config.py checks the two lists agree.
SECTIONS: dict[str, type | SectionParser] = {
    "gateway": GatewaySettings,
    "broker": parse_broker_section,
    "journal": JournalSettings,
    "links": LinksSettings,
    "apps": AppsSettings,
    "updates": UpdatesSettings,
    "commands": CommandsSettings,
    "fleet": FleetSettings,
    "ingest": IngestSettings,
    "http_links": HTTPLinksSettings,
    "telemetry": TelemetrySettings,
    "admin": AdminSettings,
    "containers": ContainersSettings,
    "twin": TwinSettings,
    "uploads": UploadsSettings,
}

#: Unknown top-level keys from which a file where they are most of its keys counts as no
#: configuration (:func:`_foreign_keys`): fewer are mistyped sections, each named.
FOREIGN_KEYS = 3


class _Origins:
    """Remembers which file set each key path, so an error names the right file."""

    def __init__(self) -> None:
        self._by_path: dict[tuple[str, ...], str] = {}

    def record(self, data: Any, source: str, prefix: tuple[str, ...] = ()) -> None:
        """Note that ``source`` set every key path in ``data``."""
        self._by_path[prefix] = source
        if isinstance(data, dict):
            for key, value in data.items():
                self.record(value, source, prefix + (str(key),))

    def source(self, path: tuple[str, ...]) -> str:
        """The file that set ``path`` (or its nearest recorded parent)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self._by_path:
                return self._by_path[path[:end]]
        return "<defaults>"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``: mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


#: Control characters as a line of the report shows them (``\\n``, ``\\x00``): a key or value
#: quoted in it, or an error's text, must not break it or hide in it.
_ESCAPES = {code: repr(chr(code))[1:-1] for code in (*range(0x20), *range(0x7F, 0xA0))}


class ErrorList:
    """Collects ``file: key.path: message`` lines while a configuration is built."""

    def __init__(self, origins: _Origins | None = None, written: Any = None) -> None:
        """:param written: the configuration as its files wrote it (merged), whose values at
            secret-looking keys the lines must not quote (:func:`redact_quoted`)."""
        self.lines: list[str] = []
        self.paths: list[tuple[str, ...]] = []  # the key path of each problem recorded by add()
        self._origins = origins or _Origins()
        self._written = written
        self._bad_text: list[tuple[str, ...]] = []  # (normal) paths refused by refuse_text()

    def add(self, path: tuple[str, ...], message: str) -> None:
        """Record one problem at ``path``; its line is left out when ``path`` is at or under a
        key refused by :meth:`refuse_text` (what else fails there follows from that text). A
        value at a secret-looking key is not quoted: the lines are printed by ``--check-config``
        and at every start (into journald under systemd)."""
        self.paths.append(path)
        normal = normal_key_path(path)
        if any(normal[:len(bad)] == bad for bad in self._bad_text):
            return
        # (a YAML key may be a megabyte: a path is whole up to the longest real one, else cut)
        where = shown_key_path(".".join(path)) if path else "<top>"
        message = redact_quoted(path, written_at(self._written, normal), message)
        # one line per problem, whatever it quotes (a key, a value or an error's text with a
        # newline or a NUL)
        self.lines.append(f"{self._origins.source(path)}: {where}: {message}".translate(_ESCAPES))

    def refuse_text(self, path: tuple[str, ...], message: str) -> None:
        """Record that the key or value at ``path`` holds text no configuration may
        (:mod:`gateway.configtext`): one line, and nothing more at or under ``path``."""
        self.add(path, message)
        self._bad_text.append(normal_key_path(path))


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false",
                "dict": "a mapping", "tuple": "a list"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def build(tp: Any, value: Any, path: tuple[str, ...], errors: ErrorList, meta: Mapping[str, Any] | None = None) -> Any:
    """Convert parsed YAML ``value`` into type ``tp``, recording problems in ``errors``.

    Supports str, int, float, bool, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``,
    ``Literal[...]``, ``Any`` and nested frozen dataclasses; ``meta`` may carry ``min``/``max``,
    ``path`` (a string naming a file or directory: not empty, never a number turned into a
    string; with ``empty_is_default``, ``""`` is accepted too and means the default) and
    ``controls`` (its strings, a list's words or a mapping's values, may hold control
    characters). Every string, and every key of a mapping, is refused under its key when it
    holds a NUL, or a control character where ``controls`` does not allow one
    (:mod:`gateway.configtext`).

    :return: the converted value, or ``None`` when it was wrong (the error is recorded).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    controls = bool(meta and meta.get("controls"))
    if isinstance(value, str):
        problem = text_problem(value, controls)
        if problem is not None:
            errors.refuse_text(path, problem)
            return None
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return build(inner[0], value, path, errors, meta)
    if origin is Literal:
        if isinstance(value, bool):
            # YAML 1.1 reads true/yes/on and false/no/off as booleans: for a "true"|"false"|...
            # or a "no"|"always"|... choice, the one word of the choice they stand for
            words = [w for w in (("true", "yes", "on") if value else ("false", "no", "off")) if w in args]
            if len(words) == 1:
                value = words[0]
        if value not in args:  # (another word as written; another kind of value in YAML's words)
            given = repr(value) if isinstance(value, str) else jsontext.given(value)
            errors.add(path, f"must be one of {', '.join(repr(a) for a in args)}, not {given}")
            return None
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, errors)
    if origin is tuple:
        if not isinstance(value, list):
            errors.add(path, f"must be a list, not {jsontext.given(value)}")
            return None
        item_meta = {"controls": controls}  # (a list of words: each word as the list)
        return tuple(build(args[0], item, path + (str(i),), errors, item_meta) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.add(path, f"must be a mapping, not {jsontext.given(value)}")
            return None
        built: dict[str, Any] = {}
        for key, item in value.items():
            problem = key_problem(str(key))  # a name, whatever its values may hold
            if problem is not None:
                errors.refuse_text(path + (str(key),), problem)
            else:
                built[str(key)] = build(args[1], item, path + (str(key),), errors, {"controls": controls})
        return built
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            errors.add(path, f"must be {_type_name(tp)}, not an integer too large for one")
            return None
    meta = meta or {}
    if meta.get("path"):
        empty_is_default = meta.get("empty_is_default", False)
        what = "a string; empty: the default" if empty_is_default else "a non-empty string"
        if not isinstance(value, str) or not (value.strip() or (empty_is_default and not value)):
            errors.add(path, f"must be a path ({what}), not {jsontext.given(value)}")
            return None
        return value
    if meta.get("octal") and isinstance(value, int) and not isinstance(value, bool):
        # YAML reads an unquoted 0660 as the octal number 432 (and 660 as decimal 660): which
        # one the user wrote is lost, so ask for the string rather than guess
        errors.add(path, f"must be a quoted octal string like \"0660\", not the number {value!r}"
                         " (YAML reads an unquoted 0660 as 432)")
        return None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        # (as written: YAML reads an unquoted 0123 as 83 and 1.10 as 1.1, another device id, a
        # wrong password)
        value = written_text(value) or str(value)
    elif type(value) in (WrittenInt, WrittenFloat):
        value = float(value) if isinstance(value, float) else int(value)  # (the plain number)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        errors.add(path, f"must be {_type_name(tp)}, not {jsontext.given(value)}")
        return None
    if isinstance(value, float) and math.isnan(value):
        # YAML's .nan compares false with everything: it would pass every min and max
        errors.add(path, f"must be {_type_name(tp)}, not nan")
        return None
    if isinstance(value, float) and math.isinf(value):
        # YAML's .inf passes every min: no key counts seconds, bytes or cores to infinity (a
        # retention check every .inf seconds never runs, an age limit of .inf is no limit)
        errors.add(path, f"must be a finite number, not {value!r}")
        return None
    if "min" in meta and value < meta["min"]:
        errors.add(path, f"must be at least {meta['min']}, not {value!r}")
    if "max" in meta and value > meta["max"]:
        errors.add(path, f"must be at most {meta['max']}, not {value!r}")
    return value


def build_dataclass(tp: Any, value: Any, path: tuple[str, ...], errors: ErrorList) -> Any:
    """Build the frozen dataclass ``tp`` from a mapping, every field defaulted when absent,
    then record the object's own ``config_problems()`` (see :class:`ChecksItself`)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.add(path, f"must be a mapping, not {jsontext.given(value)}")
        return tp()
    hints = typing.get_type_hints(tp)
    known = {f.name: f for f in dataclasses.fields(tp) if f.init}
    kwargs: dict[str, Any] = {}
    spelt: dict[str, str] = {}  # field name -> the key that gave it (hbmqtt's dashes are read as _)
    first_error = len(errors.paths)
    for key, item in value.items():
        name = str(key).replace("-", "_")
        if name not in known:
            errors.add(path + (str(key),), f"unknown key (known: {', '.join(sorted(known))})")
            continue
        if name in spelt:
            errors.add(path + (str(key),), f"given twice, as {spelt[name]!r} and {str(key)!r}")
            continue
        spelt[name] = str(key)
        built = build(hints[name], item, path + (str(key),), errors, known[name].metadata)
        if built is not None or item is None:
            kwargs[name] = built
    try:
        built_object = tp(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.add(path, str(exc))
        return tp()
    _check_object(built_object, path, errors, errors.paths[first_error:])
    return built_object


def _check_object(obj: Any, path: tuple[str, ...], errors: ErrorList, found: list[tuple[str, ...]]) -> None:
    """Record ``obj.config_problems()``, but not where ``found`` (the errors already
    recorded inside ``obj``) says a value was refused: a check would only repeat it."""
    check = getattr(obj, "config_problems", None)
    if check is None:
        return

    def related(where: tuple[str, ...]) -> bool:
        return any(e[:len(where)] == where or where[:len(e)] == e for e in found)

    try:
        for where, message in check():
            if not related(path + tuple(where)):
                errors.add(path + tuple(where), message)
    except Exception as exc:  # a check that breaks must still end in a one-line error
        if not found:  # else it tripped over a value already refused
            errors.add(path, f"cannot be checked: {type(exc).__name__}: {exc}")


def dropin_files(main: Path, errors: list[str]) -> list[Path]:
    """The drop-ins of the configuration file ``main``: ``conf.d/*.yaml`` beside it, in
    lexical order. As the shell reads ``*.yaml``, hidden files are not among them (an
    editor's lock file ``.#50-site.yaml`` is no drop-in).

    :param errors: a ``conf.d`` that cannot be looked into (a folder the gateway's user may
        not enter) is appended as one line, and no drop-in is returned.
    """
    conf_d = main.parent / "conf.d"
    try:
        if not conf_d.is_dir():
            return []
        return sorted(path for path in conf_d.glob("*.yaml") if not path.name.startswith("."))
    except OSError as exc:
        errors.append(f"{conf_d}: cannot read: {exc.strerror or exc}")
        return []


def _foreign_keys(path: Path, data: dict[str, Any], problems: list[str], foreign: set[Any]) -> None:
    """When most of the top-level keys of ``path`` (``data``) are no section, and at least
    :data:`FOREIGN_KEYS` are, the file is most likely another one named by mistake (secrets in
    ``key: value`` form): one line says so, its keys not shown (a ``--check-config`` and every
    start print the lines), and its unknown keys are added to ``foreign``, to get no line of
    their own. A key or two mistyped in a configuration is named, as ever."""
    unknown = [key for key in data if key not in SECTIONS]
    if len(unknown) >= FOREIGN_KEYS and 2 * len(unknown) > len(data):
        problems.append(f"{path}: <top>: this does not look like the gateway's configuration ({len(unknown)} of its"
                        f" {len(data)} top-level keys are no section, not shown; the sections are"
                        f" {', '.join(sorted(SECTIONS))})")
        foreign.update(unknown)


def load(path: Path | str | None = None) -> Config:
    """Read, merge and validate the configuration.

    :param path: the main YAML file; the embedded default when ``None``. Drop-ins are read
        from ``conf.d/*.yaml`` beside it, in lexical order, each merged over the last.
    :raises ConfigError: listing every problem found, each with its file and key path.
    """
    main = Path(path) if path is not None else DEFAULT_CONFIG
    problems: list[str] = []
    origins = _Origins()
    data = read_yaml(main, problems)
    origins.record(data, str(main))
    foreign: set[Any] = set()  # the unknown keys of files that are not configurations
    _foreign_keys(main, data, problems, foreign)
    dropins = dropin_files(main, problems)
    for dropin in dropins:
        extra = read_yaml(dropin, problems)
        origins.record(extra, str(dropin))
        _foreign_keys(dropin, extra, problems, foreign)
        data = merge(data, extra)
    errors = ErrorList(origins, data)
    errors.lines.extend(problems)

    for key in data:
        if key not in SECTIONS and key not in foreign:
            errors.add((str(key),), f"unknown section (known: {', '.join(sorted(SECTIONS))})")
    sections: dict[str, Any] = {}
    for name, builder in SECTIONS.items():
        if dataclasses.is_dataclass(builder):
            sections[name] = build_dataclass(builder, data.get(name), (name,), errors)
        else:
            sections[name] = builder(data.get(name), errors)
    if not problems:  # every file was read: the sections are what the files say
        failed = {path[0] for path in errors.paths if path}
        _check_across_sections(sections, data, errors, failed)
        _check_entry_names(sections, data, errors, failed)
        _check_stream_names(sections, data, errors, failed)
    if errors.lines:
        raise ConfigError(errors.lines)
    return Config(path=main, written=data, dropins=tuple(dropins), **sections)


def _entry_names(sections: dict[str, Any], data: dict[str, Any], section: str, key: str,
                 failed: set[str]) -> list[str] | None:
    """The names in the ``key`` mapping of ``section`` (``links.links``, ``apps.programs``,
    ``containers.containers`` ...), in their order: those it was built with, or, when the
    section has problems of its own, the names its mapping gives (an entry with a bad value
    still has its name); ``None`` when not even that mapping is there."""
    if section not in failed:
        return list(getattr(sections[section], key))
    raw = data.get(section)
    entries = raw.get(key, {}) if isinstance(raw, dict) else None
    return [str(name) for name in entries] if isinstance(entries, dict) else None


def _names(sections: dict[str, Any], data: dict[str, Any], section: str, key: str,
           failed: set[str]) -> set[str] | None:
    """The names of :func:`_entry_names`, as a set."""
    names = _entry_names(sections, data, section, key, failed)
    return set(names) if names is not None else None


#: The mappings whose keys name something (a journal stream, log files, an app): ``(section,
#: key, why a name cannot be used or None)``, checked by :func:`_check_entry_names`.
ENTRY_NAMES: tuple[tuple[str, str, Callable[[str], str | None]], ...] = (
    ("links", "links", link_name_problem),
    ("http_links", "links", link_name_problem),  # the streams link-<name> are shared
    ("apps", "programs", program_name_problem),
    ("containers", "containers", container_name_problem),
)


def _check_entry_names(sections: dict[str, Any], data: dict[str, Any], errors: ErrorList,
                       failed: set[str]) -> None:
    """The names of links (MQTT and HTTP), config programs and declared containers, checked
    beside the entries' own problems (an entry with a bad value still has its name), as
    their names are known as long as the mappings are.

    :param data: the merged configuration as read.
    :param failed: the sections that have problems of their own.
    """
    for section, key, name_problem in ENTRY_NAMES:
        for name in _entry_names(sections, data, section, key, failed) or ():
            problem = name_problem(name)
            if problem is not None:
                errors.add((section, key, name), problem)


def _refused(errors: ErrorList, path: tuple[str, ...]) -> bool:
    """Whether a problem was found at the key ``path`` or at a mapping holding it (keys
    compared as sections read them, ``-`` as ``_``): the value built there is then a default,
    not what the files say, and a check across sections that reads it is left out."""
    target = tuple(key.replace("-", "_") for key in path)
    return any(tuple(key.replace("-", "_") for key in where) == target[:len(where)] for where in errors.paths)


def _check_stream_names(sections: dict[str, Any], data: dict[str, Any], errors: ErrorList, failed: set[str]) -> None:
    """Settings for a journal stream nothing writes to (a misspelt link name would leave its
    stream on the defaults without a word), checked beside every other problem: the link
    names are known as long as the links' mappings are, the stream names as long as
    ``journal.streams`` is a mapping, and ``shadow-<link>`` names as long as
    ``twin.shadow_link`` was taken.

    :param data: the merged configuration as read.
    :param failed: the sections that have problems of their own.
    """
    mqtt_links, http_links = (_names(sections, data, s, "links", failed) for s in ("links", "http_links"))
    if _refused(errors, ("journal", "streams")) or mqtt_links is None or http_links is None:
        return
    streams = {f"link-{name}" for name in mqtt_links | http_links}
    shadow_known = not _refused(errors, ("twin", "shadow_link"))  # else a shadow-<link> stream may be right
    shadow_link = sections["twin"].shadow_link
    if shadow_known and shadow_link is not None:
        streams.add(f"shadow-{shadow_link}")
    for name in sections["journal"].streams:
        if (not shadow_known and name.startswith("shadow-")) or ("journal", "streams", name) in errors.paths:
            continue  # (a name no stream can have is told so already)
        if name not in streams and name != "broker-state":  # the broker's state log (gateway.broker.statelog)
            known = ", ".join(sorted(streams)) or "none: no link is configured"
            shadow = ("; a shadow-<link> stream is the twin's shadow sync's, while twin.shadow_link names that link"
                      if name.startswith("shadow-") else "")
            errors.add(("journal", "streams", name),
                       f"no such stream (streams are broker-state and link-<name> of a link: {known}){shadow}")


def _check_across_sections(sections: dict[str, Any], data: dict[str, Any], errors: ErrorList,
                           failed: set[str]) -> None:
    """Checks that need two sections: a declared container named like a config program (one
    name, one log file, for two apps); podman's default socket too long under the state directory;
    a journal directory that cannot be one (relative: under the state directory); a relative
    ``cik_file`` (under the state directory) where the CIK could not be saved; a link name in
    both link sections; a shadow link that is no MQTT link.

    :param data: the merged configuration as read (the names in a section with problems of its
        own: links, programs, containers).
    :param failed: the sections that have problems of their own; a check that reads a value
        one of them refused is left out (a value that could not be built is its default:
        false reports).
    """
    state_dir = (None if _refused(errors, ("gateway", "state_dir"))
                 else Path(sections["gateway"].state_dir).expanduser().resolve())
    programs = _names(sections, data, "apps", "programs", failed)
    containers = _names(sections, data, "containers", "containers", failed)
    if programs is not None and containers is not None:
        for name in sorted(containers & programs):
            errors.add(("containers", "containers", name),
                       "the name of a program in apps.programs (a container app's name is not a hosted program's)")
    containers_settings = sections["containers"]
    if (state_dir is not None and containers_settings.enabled and not containers_settings.socket
            and not _refused(errors, ("containers",))):
        # podman's service could never bind the default socket under a deep state directory
        socket = podman_socket(containers_settings, state_dir)
        if (problem := socket_path_problem(socket)) is not None:
            errors.add(("containers", "socket"), f"empty: its default {str(socket)!r} is too long ({problem}): "
                                                 "set a shorter containers.socket or gateway.state_dir")
    if state_dir is not None and not _refused(errors, ("journal", "directory")):
        # (relative: under the state directory, as the start takes it)
        journal = state_dir / sections["journal"].directory
        if (problem := directory_problem(journal)) is not None:
            errors.add(("journal", "directory"), problem)
    if state_dir is not None and not _refused(errors, ("http_links",)):
        for name, link in sections["http_links"].links.items():
            # (an absolute one is checked with its link; a relative one is under the state directory)
            if link.mode == "exosite" and link.cik_file and not Path(link.cik_file).is_absolute():
                if (problem := cik_file_problem(str(cik_path(name, link, state_dir)))) is not None:
                    errors.add(("http_links", "links", name, "cik_file"), problem)
    mqtt_links, http_links = (_names(sections, data, s, "links", failed) for s in ("links", "http_links"))
    if mqtt_links is None or http_links is None:
        return
    for name in sorted(mqtt_links & http_links):
        errors.add(("http_links", "links", name), "a link of this name is in links: too (link names are shared)")
    if _refused(errors, ("twin", "shadow_link")):
        return
    shadow_link = sections["twin"].shadow_link
    if shadow_link is not None and shadow_link not in mqtt_links:
        known = ", ".join(sorted(mqtt_links)) or "none is configured"
        errors.add(("twin", "shadow_link"), f"no MQTT link {shadow_link!r} in links.links ({known})")
    elif shadow_link is not None and (problem := shadow_link_problem(shadow_link)):
        errors.add(("twin", "shadow_link"), problem)
    elif shadow_link is not None:  # the AWS thing is a level of every shadow topic
        identity = sections["gateway"]
        thing = sections["twin"].shadow_thing
        source = ""
        # the thing as written, or the link's client id, made of values that were taken
        made_of = [("gateway", "tenant_id"), ("gateway", "device_id"), ("links", "links", shadow_link, "client_id")]
        if _refused(errors, ("twin", "shadow_thing")) or (not thing and any(_refused(errors, p) for p in made_of)):
            return
        if not thing:
            thing = sections["links"].links[shadow_link].client_id_for(identity.tenant_id, identity.device_id)
            source = " (the link's client id)"
        problem = mqtt_level_problem(thing) or shadows.thing_name_problem(thing)
        if problem:
            errors.add(("twin", "shadow_thing"), f"the AWS thing {thing!r}{source} {problem}")
