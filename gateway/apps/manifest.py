"""Reads a package's description: a native ``app.yaml`` or a GWE ``supervisor.conf``."""

from __future__ import annotations

import dataclasses
import re
import shlex
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gateway import jsontext, yamlfile
from gateway.apps.errors import ManifestError
from gateway.apps.names import check_name, check_program_name
from gateway.apps.settings import ENVIRONMENT_PROBLEM, ProgramSettings, environment_entry_fits, exit_code_problem
from gateway.apps.supervisor_conf import parse_supervisor_conf
from gateway.config import ErrorList, build

# GWE's package file name: <name>.v<version>.tar.gz (name may itself hold dots, and ".v"):
# the version starts after the first ".v" a digit follows, else after the first ".v".
GWE_FILE = re.compile(r"^(?P<name>.+?)\.v(?P<version>[0-9][0-9A-Za-z_.+-]*"
                      r"|(?!.*\.v[0-9])[0-9A-Za-z][0-9A-Za-z_.+-]*)\.(tar\.gz|tgz)\Z")
_RESTART = {"always": "true", "never": "false", "unexpected": "unexpected"}
_PROGRAM_KEYS = {
    "exitcodes", "startsecs", "startretries", "stopsignal", "stopwaitsecs", "user",
    "redirect_stderr", "autostart",
}
_PROGRAM_TYPES = typing.get_type_hints(ProgramSettings)
_PROGRAM_LIMITS = {f.name: f.metadata for f in dataclasses.fields(ProgramSettings)}


@dataclass(frozen=True)
class HealthCheck:
    """A command that must exit 0 at the end of the health window.

    :param argv: the command.
    :param timeout: seconds it may run.
    """

    argv: tuple[str, ...]
    timeout: float = 10.0


@dataclass(frozen=True)
class AppManifest:
    """What a package holds: its programs, how to tell it is healthy, and its health window.

    :param name: the app's name.
    :param version: the app's version.
    :param programs: supervised programs by name (empty for a one-shot GWE package).
    :param health: an optional health-check command.
    :param health_window: seconds the new version must stay RUNNING (None: the default).
    """

    name: str
    version: str
    programs: dict[str, ProgramSettings] = field(default_factory=dict)
    health: HealthCheck | None = None
    health_window: float | None = None


def _argv(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            argv = tuple(shlex.split(value))
        except ValueError as exc:  # an unclosed quote: the package is bad, not the gateway
            raise ManifestError(f"app.yaml: {key}: not a command line: {exc}") from exc
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = tuple(value)
    else:
        raise ManifestError(f"app.yaml: {key}: a string or a list of strings")
    if not argv:
        raise ManifestError(f"app.yaml: {key}: empty command")
    return argv


def parse_app_yaml(text: str) -> AppManifest:
    """Parse a native manifest.

    ``name``, ``version`` and ``command`` are required; ``env``, ``directory``,
    ``restart`` (always|never|unexpected), ``logs`` (maxbytes, backups), ``health``
    (command, timeout, window) and supervisord's program keys are optional.

    :raises ManifestError: naming every wrong key it meets first.
    """
    try:
        doc = yamlfile.load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"app.yaml: {exc}") from exc
    if not isinstance(doc, dict):
        raise ManifestError("app.yaml: must be a mapping")
    try:
        return _described(doc, text)
    except ManifestError as exc:
        # (the install's result names the app and version when the app.yaml said them well)
        said = _named(doc, text)
        raise exc if said is None else exc.naming(*said)


def _named(doc: dict[Any, Any], text: str) -> tuple[str, str] | None:
    """The app and version an app.yaml names, when both are well given (else None)."""
    try:
        return (check_name("name", _identifier("name", doc["name"], text)),
                check_name("version", _identifier("version", doc["version"], text)))
    except (KeyError, ManifestError):
        return None


def _described(doc: dict[Any, Any], text: str) -> AppManifest:
    """The manifest an app.yaml's mapping ``doc`` (read from ``text``) describes (parse_app_yaml)."""
    known = {"name", "version", "command", "env", "directory", "restart", "logs", "health"}
    unknown = sorted(map(str, set(doc) - known - _PROGRAM_KEYS))  # (a key may be a number)
    if unknown:
        raise ManifestError(f"app.yaml: unknown keys: {', '.join(unknown)}")
    for key in ("name", "version", "command"):
        if key not in doc:
            raise ManifestError(f"app.yaml: {key} is required")
    name, version = (check_name(key, _identifier(key, doc[key], text)) for key in ("name", "version"))
    # ProgramSettings field -> (its key in app.yaml, the value given there)
    given: dict[str, tuple[tuple[str, ...], Any]] = {k: ((k,), doc[k]) for k in _PROGRAM_KEYS if k in doc}
    if "directory" in doc:
        given["directory"] = (("directory",), doc["directory"])
    if isinstance(doc.get("stopsignal"), str):  # with or without SIG, as in a supervisor.conf
        given["stopsignal"] = (("stopsignal",), doc["stopsignal"].strip().upper().removeprefix("SIG"))
    logs = _mapping(doc, "logs")
    if not isinstance(logs, dict) or set(logs) - {"maxbytes", "backups"}:
        raise ManifestError("app.yaml: logs: a mapping of maxbytes, backups")
    if "maxbytes" in logs:
        given["stdout_logfile_maxbytes"] = (("logs", "maxbytes"), logs["maxbytes"])
    if "backups" in logs:
        given["stdout_logfile_backups"] = (("logs", "backups"), logs["backups"])
    errors = ErrorList()
    fields: dict[str, Any] = {
        field_name: build(_PROGRAM_TYPES[field_name], value, key, errors, _PROGRAM_LIMITS[field_name])
        for field_name, (key, value) in given.items()}
    health, window = _health(doc.get("health"), errors)
    if errors.lines:
        # (each line is "<source>: <key>: <problem>"; the source is this app.yaml)
        raise ManifestError("app.yaml: " + "; ".join(line.split(": ", 1)[1] for line in errors.lines))
    for i, code in enumerate(fields.get("exitcodes", ())):
        problem = exit_code_problem(code)
        if problem is not None:  # (as a supervisor.conf and apps.programs refuse it)
            raise ManifestError(f"app.yaml: exitcodes.{i}: {problem}")
    fields["command"] = shlex.join(_argv(doc["command"], "command"))
    env = _mapping(doc, "env")
    if not isinstance(env, dict):
        raise ManifestError(f"app.yaml: env: must be a mapping, not {jsontext.kind(env, yaml=True)}")
    for key, value in env.items():
        if key is None or isinstance(key, bool):  # (it became the name 'None' or 'True')
            raise ManifestError(f"app.yaml: env: a name must be a string or a number, "
                                f"not {jsontext.kind(key, yaml=True)}")
        if value is None or isinstance(value, (bool, list, dict)):
            raise ManifestError(f"app.yaml: env.{key}: must be a string or a number, "
                                f"not {jsontext.kind(value, yaml=True)}")
    fields["environment"] = {str(k): str(v) for k, v in env.items()}
    for key, value in fields["environment"].items():
        if not environment_entry_fits(key, value):  # the program's start would fail at exec
            raise ManifestError(f"app.yaml: env.{key}: {ENVIRONMENT_PROBLEM}")
    restart = doc.get("restart", "unexpected")
    if not isinstance(restart, str) or restart not in _RESTART:
        raise ManifestError("app.yaml: restart: one of always, never, unexpected")
    fields["autorestart"] = _RESTART[restart]
    return AppManifest(name, version, {check_program_name(name): ProgramSettings(**fields)}, health, window)


def _mapping(doc: dict[Any, Any], key: str) -> Any:
    """``doc[key]``, an empty mapping when it is left out or null (``env:`` with nothing after
    it); any other value as it is, for the caller to refuse when it is no mapping."""
    value = doc.get(key)
    return {} if value is None else value


def _scalars_as_written(text: str) -> dict[str, str]:
    """The top-level scalar values of a YAML mapping (already loaded once) as written: a
    version ``1.10`` is the text ``1.10``, where YAML reads the number 1.1."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: value.value for key, value in node.value
            if isinstance(key, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode)}


def _identifier(key: str, value: Any, text: str) -> str:
    """``name`` or ``version`` as text: a string, or another scalar as written in ``text``
    (a number ``1.10`` stays ``1.10``, a date ``2026-12-05`` stays so); empty, ``~``, a
    boolean, a list or a mapping is refused."""
    if isinstance(value, str):
        return value
    written = _scalars_as_written(text) if value is not None and not isinstance(value, bool) else {}
    if key in written:
        return written[key]
    raise ManifestError(f"app.yaml: {key}: must be a string or a number, not {jsontext.kind(value, yaml=True)}")


def _health(value: Any, errors: ErrorList) -> tuple[HealthCheck | None, float | None]:
    """The health check and window of ``health:``; a timeout or window that is not a number
    is recorded in ``errors`` (and comes back as the default)."""
    if value is None:
        return None, None
    if not isinstance(value, dict) or set(value) - {"command", "timeout", "window"}:
        raise ManifestError("app.yaml: health: a mapping of command, timeout, window")
    # (a check given no time at all would always time out: the install would always roll back;
    # checked without a command too, as every other key is: a wrong value is never taken silently)
    timeout = build(float, value.get("timeout", 10.0), ("health", "timeout"), errors, {"min": 0.1})
    check = None
    if "command" in value:
        check = HealthCheck(_argv(value["command"], "health.command"),
                            10.0 if timeout is None else timeout)
    window = build(float, value["window"], ("health", "window"), errors, {"min": 0}) if "window" in value else None
    return check, window


def read_manifest(root: Path, name: str | None = None, version: str | None = None) -> AppManifest:
    """Describe the unpacked package at ``root``.

    ``app.yaml`` wins when present; otherwise it is a GWE package, named by its file
    name (``name``/``version``), supervised when it has a ``supervisor.conf``.

    :param root: the unpacked package (the version directory).
    :param name: the name from the GWE file name.
    :param version: the version from the GWE file name.
    :raises ManifestError: when nothing describes the package or a description is bad (or
        not UTF-8).
    """
    native = root / "app.yaml"
    if native.is_file():
        return parse_app_yaml(_read_text(native))
    if name is None or version is None:
        raise ManifestError("no app.yaml and not named <name>.v<version>.tar.gz")
    conf = root / "supervisor.conf"
    programs = {}
    if conf.is_file():
        programs = parse_supervisor_conf(_read_text(conf), str(root))
    return AppManifest(check_name("name", name), check_name("version", version), programs)


def _read_text(path: Path) -> str:
    """A package's description file, which must be UTF-8: its text after a byte order mark
    (Windows' Notepad writes one; configparser took it for text before the first section).

    :raises ManifestError: when it is not.
    """
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path.name}: not UTF-8: {exc}") from exc
