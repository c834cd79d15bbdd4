"""The gateway's configuration: YAML (+ ``conf.d/*.yaml`` drop-ins) into frozen typed objects.

Each service owns a frozen dataclass for its section (``gateway/<pkg>/settings.py``); this
module reads the files, merges the drop-ins in lexical order, builds every section and
reports *all* errors together, each as ``file: key.path: what is wrong``. Unknown keys are
errors: a typo must never be silently ignored.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml

from gateway.apps.settings import AppsSettings
from gateway.broker.settings import BrokerSettings, parse_broker_section
from gateway.commands.settings import CommandsSettings
from gateway.containers.settings import ContainersSettings
from gateway.errors import ConfigError
from gateway.journal.settings import JournalSettings
from gateway.links.settings import LinksSettings
from gateway.updates.settings import UpdatesSettings

#: The embedded default configuration: conf/gateway.yaml in a checkout, or the copy the
#: package installs under ``sys.prefix`` (a venv, the .deb's /opt/venvs/gateway).
DEFAULT_CONFIG = next(
    (p for p in (Path(__file__).resolve().parent.parent / "conf" / "gateway.yaml",
                 Path(sys.prefix) / "conf" / "gateway.yaml") if p.exists()),
    Path(sys.prefix) / "conf" / "gateway.yaml",
)


@dataclass(frozen=True)
class GatewaySettings:
    """The ``gateway:`` section: what the process as a whole needs."""

    state_dir: str = field(default="./var", metadata={"doc": "where state lives (created on start)"})
    device_id: str = field(default="gateway", metadata={"doc": "this gateway's device id"})
    tenant_id: str = field(default="default", metadata={"doc": "tenant the device belongs to"})
    log_level: Literal["debug", "info", "warn", "error"] = field(
        default="info", metadata={"doc": "lowest level logged"}
    )
    shutdown_timeout: float = field(
        default=4.0, metadata={"min": 0.1, "max": 60.0, "doc": "seconds a service may take to stop"}
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration: one frozen object per section.

    :ivar path: the main file it was read from.
    :ivar sections: the other services' settings objects, by section name.
    """

    path: Path
    gateway: GatewaySettings
    broker: BrokerSettings
    sections: Mapping[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        """The state directory as an absolute path (a relative one is taken from the current
        directory, as a command-line user expects)."""
        return Path(self.gateway.state_dir).expanduser().resolve()


#: Section name -> settings dataclass, for the sections built generically (``broker`` has
#: its own parser because it passes an amqtt configuration through).
SECTIONS: dict[str, type] = {
    "gateway": GatewaySettings, "journal": JournalSettings, "links": LinksSettings, "apps": AppsSettings,
    "updates": UpdatesSettings, "commands": CommandsSettings,
    "containers": ContainersSettings,
}


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


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base``: mappings merge, anything else replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ErrorList:
    """Collects ``file: key.path: message`` lines while a configuration is built."""

    def __init__(self, origins: _Origins | None = None) -> None:
        self.lines: list[str] = []
        self._origins = origins or _Origins()

    def add(self, path: tuple[str, ...], message: str) -> None:
        """Record one problem at ``path``."""
        where = ".".join(path) if path else "<top>"
        self.lines.append(f"{self._origins.source(path)}: {where}: {message}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                "dict": "a mapping", "tuple": "a list"}.get(tp.__name__, tp.__name__)
    return str(tp).replace("typing.", "")


def build(tp: Any, value: Any, path: tuple[str, ...], errors: ErrorList, meta: Mapping[str, Any] | None = None) -> Any:
    """Convert parsed YAML ``value`` into type ``tp``, recording problems in ``errors``.

    Supports str, int, float, bool, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``,
    ``Literal[...]``, ``Any`` and nested frozen dataclasses; ``meta`` may carry ``min``/``max``.

    :return: the converted value, or ``None`` when it was wrong (the error is recorded).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return build(inner[0], value, path, errors, meta)
    if origin is Literal:
        if isinstance(value, bool) and str(value).lower() in args:
            value = str(value).lower()  # YAML's true/false for a "true"|"false"|... choice
        if value not in args:
            errors.add(path, f"must be one of {', '.join(repr(a) for a in args)}, not {value!r}")
            return None
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, errors)
    if origin is tuple:
        if not isinstance(value, list):
            errors.add(path, f"must be a list, not {type(value).__name__}")
            return None
        return tuple(build(args[0], item, path + (str(i),), errors) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.add(path, f"must be a mapping, not {type(value).__name__}")
            return None
        return {str(k): build(args[1], v, path + (str(k),), errors) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        errors.add(path, f"must be {_type_name(tp)}, not {type(value).__name__} {value!r}")
        return None
    meta = meta or {}
    if "min" in meta and value < meta["min"]:
        errors.add(path, f"must be at least {meta['min']}, not {value!r}")
    if "max" in meta and value > meta["max"]:
        errors.add(path, f"must be at most {meta['max']}, not {value!r}")
    return value


def build_dataclass(tp: Any, value: Any, path: tuple[str, ...], errors: ErrorList) -> Any:
    """Build the frozen dataclass ``tp`` from a mapping, every field defaulted when absent."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.add(path, f"must be a mapping, not {type(value).__name__}")
        return tp()
    hints = typing.get_type_hints(tp)
    known = {f.name: f for f in dataclasses.fields(tp) if f.init}
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        name = str(key).replace("-", "_")
        if name not in known:
            errors.add(path + (str(key),), f"unknown key (known: {', '.join(sorted(known))})")
            continue
        built = build(hints[name], item, path + (str(key),), errors, known[name].metadata)
        if built is not None or item is None:
            kwargs[name] = built
    try:
        return tp(**kwargs)
    except (TypeError, ValueError) as exc:
        errors.add(path, str(exc))
        return tp()


def _read_yaml(path: Path, errors: list[str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        errors.append(f"{path}: cannot read: {exc.strerror or exc}")
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        errors.append(f"{path}: {where}not valid YAML: {getattr(exc, 'problem', exc)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        errors.append(f"{path}: <top>: must be a mapping of sections, not {type(data).__name__}")
        return {}
    return data


def load(path: Path | str | None = None) -> Config:
    """Read, merge and validate the configuration.

    :param path: the main YAML file; the embedded default when ``None``. Drop-ins are read
        from ``conf.d/*.yaml`` beside it, in lexical order, each merged over the last.
    :raises ConfigError: listing every problem found, each with its file and key path.
    """
    main = Path(path) if path is not None else DEFAULT_CONFIG
    problems: list[str] = []
    origins = _Origins()
    data = _read_yaml(main, problems)
    origins.record(data, str(main))
    dropins = sorted((main.parent / "conf.d").glob("*.yaml")) if main.parent.joinpath("conf.d").is_dir() else []
    for dropin in dropins:
        extra = _read_yaml(dropin, problems)
        origins.record(extra, str(dropin))
        data = _merge(data, extra)
    errors = ErrorList(origins)
    errors.lines.extend(problems)

    known = set(SECTIONS) | {"broker"}
    for key in data:
        if key not in known:
            errors.add((str(key),), f"unknown section (known: {', '.join(sorted(known))})")
    sections = {
        name: build_dataclass(tp, data.get(name), (name,), errors)
        for name, tp in SECTIONS.items()
    }
    gateway_settings = sections.pop("gateway")
    broker = parse_broker_section(data.get("broker"), errors)
    if errors.lines:
        raise ConfigError(errors.lines)
    return Config(path=main, gateway=gateway_settings, broker=broker, sections=sections)

