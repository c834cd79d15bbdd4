"""Parses a GWE ``supervisor.conf`` (``[program:x]`` sections) into ProgramSettings."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import socket
from typing import Any

from twisted.logger import Logger

from gateway.apps.errors import ManifestError
from gateway.apps.names import check_program_name
from gateway.apps.settings import ProgramSettings, exit_code_problem
from gateway.asciidigits import ascii_digits

log = Logger()

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_SIZE = re.compile(r"^\s*(\d+)\s*(KB|MB|GB)?\s*\Z", re.IGNORECASE | re.ASCII)  # (ASCII: int() reads ٣ too)
_UNITS = {None: 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
# Keys supervisord knows that change nothing here (we log and go on, so a GWE app's
# supervisor.conf runs unchanged).
_IGNORED = {
    "priority", "process_name", "numprocs_start", "startretries_backoff", "umask",
    "serverurl", "stdout_capture_maxbytes", "stdout_events_enabled", "stdout_syslog",
    "stderr_capture_maxbytes", "stderr_events_enabled", "stderr_syslog",
    "stderr_logfile_maxbytes", "stderr_logfile_backups", "killasgroup", "stopasgroup",
}


def parse_bool(value: str, key: str) -> bool:
    """supervisord's boolean: true/false, yes/no, on/off, 1/0.

    :param value: the raw text.
    :param key: the key, for the error message.
    """
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ManifestError(f"{key}: not a boolean: {value!r}")


def parse_int(value: str, key: str) -> int:
    """supervisord's integer, in ASCII digits with an optional sign (``int()`` read ``٣``,
    ``1_0`` and ``３`` too).

    :param value: the raw text.
    :param key: the key, for the error message.
    """
    text = value.strip()
    if not ascii_digits(text[1:] if text[:1] in ("+", "-") else text):
        raise ManifestError(f"{key}: not an integer: {value!r}")
    return int(text)


def parse_size(value: str, key: str) -> int:
    """supervisord's byte size: ``1024``, ``50KB``, ``10MB``, ``1GB``.

    :param value: the raw text.
    :param key: the key, for the error message.
    """
    match = _SIZE.match(value)
    if match is None:
        raise ManifestError(f"{key}: not a size: {value!r}")
    unit = match.group(2).upper() if match.group(2) else None
    return int(match.group(1)) * _UNITS[unit]


def parse_environment(value: str, key: str = "environment") -> dict[str, str]:
    """supervisord's ``KEY="val",K2="v2"`` syntax, tokenised the way supervisord does.

    :param value: the raw text.
    :param key: the key, for the error message.
    :raises ManifestError: for an unclosed quote or a pair that is not ``KEY=value``.
    """
    lexer = shlex.shlex(value, posix=False)
    lexer.wordchars += "/.+-():"
    try:
        tokens = list(lexer)
    except ValueError as exc:  # an unclosed quote
        raise ManifestError(f"{key}: {exc} in {value!r}") from exc
    result: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        triple = tokens[index : index + 3]
        if len(triple) != 3 or triple[1] != "=":
            raise ManifestError(f"{key}: unexpected end of key/value pairs in {value!r}")
        result[triple[0]] = triple[2].strip("'\"")
        if index + 3 < len(tokens) and tokens[index + 3] != ",":
            raise ManifestError(f"{key}: expected ',' in {value!r}")
        index += 4
    return result


def _expand(value: str, names: dict[str, Any], key: str) -> str:
    """Python ``%``-expansion as supervisord does it (``%(here)s``, ``%(ENV_HOME)s``)."""
    try:
        return value % names
    except (KeyError, ValueError, TypeError) as exc:
        raise ManifestError(f"{key}: cannot expand {value!r}: {exc}") from exc


def _signal_name(value: str, key: str) -> str:
    name = value.strip().upper().removeprefix("SIG")
    if name not in {"TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2"}:
        raise ManifestError(f"{key}: unsupported signal {value!r}")
    return name


def _autorestart(value: str, key: str) -> str:
    text = value.strip().lower()
    if text == "unexpected":
        return text
    return "true" if parse_bool(text, key) else "false"


def _program(name: str, section: configparser.SectionProxy, here: str) -> ProgramSettings:
    names: dict[str, Any] = {f"ENV_{k}": v for k, v in os.environ.items()}
    names.update(
        here=here, program_name=name, process_num=0, group_name=name,
        host_node_name=socket.gethostname(), numprocs=1,
    )
    fields: dict[str, Any] = {}
    where = f"[program:{name}]"
    for key, raw in section.items():
        path = f"{where} {key}"
        value = _expand(raw, names, path)
        if key in ("command", "directory", "user", "stdout_logfile", "stderr_logfile"):
            fields[key] = value.strip()
            if key == "command":
                try:
                    shlex.split(value)
                except ValueError as exc:  # an unclosed quote: it could never be started
                    raise ManifestError(f"{path}: not a command line: {exc}") from exc
        elif key == "environment":
            fields[key] = parse_environment(value, path)
        elif key in ("autostart", "redirect_stderr"):
            fields[key] = parse_bool(value, path)
        elif key == "autorestart":
            fields[key] = _autorestart(value, path)
        elif key == "exitcodes":
            codes = [v.strip() for v in value.split(",") if v.strip()]
            if not all(ascii_digits(v.removeprefix("-")) for v in codes):
                raise ManifestError(f"{path}: not a list of integers: {value!r}")
            fields[key] = tuple(int(v) for v in codes)
            for code in fields[key]:  # (as app.yaml and apps.programs refuse it)
                problem = exit_code_problem(code)
                if problem is not None:
                    raise ManifestError(f"{path}: {problem}")
        elif key in ("startsecs", "startretries", "stopwaitsecs", "stdout_logfile_backups"):
            fields[key] = parse_int(value, path)
            if fields[key] < 0:  # (as app.yaml and apps.programs refuse it)
                raise ManifestError(f"{path}: must be at least 0, not {fields[key]}")
        elif key == "stdout_logfile_maxbytes":
            fields[key] = parse_size(value, path)
        elif key == "stopsignal":
            fields[key] = _signal_name(value, path)
        elif key == "numprocs":
            if value.strip() != "1":
                raise ManifestError(f"{path}: only numprocs=1 is supported")
        elif key in _IGNORED:
            log.info("apps: {where}: {key} is ignored", where=where, key=key)
        else:
            raise ManifestError(f"{path}: unknown key")
    if not fields.get("command"):
        raise ManifestError(f"{where}: command is required")
    return ProgramSettings(**fields)


def parse_supervisor_conf(text: str, here: str, source: str = "supervisor.conf") -> dict[
    str, ProgramSettings
]:
    """Every ``[program:x]`` section of a supervisord config, by program name.

    Other sections (``[supervisord]``, ``[group:x]`` ...) are ignored, as GWE does.

    :param text: the file's content.
    :param here: the directory ``%(here)s`` expands to (the app's version directory).
    :param source: the file's name, for error messages.
    :raises ManifestError: on any malformed section or value, or a program name that is not
        letters, digits and ``_.+-``.
    """
    parser = configparser.RawConfigParser(
        delimiters=("=", ":"), comment_prefixes=(";", "#"), inline_comment_prefixes=(" ;",),
        strict=True,
    )
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:  # (its words on up to three lines, each a log line's: one)
        raise ManifestError(f"{source}: " + "; ".join(line.strip() for line in str(exc).splitlines())) from exc
    programs: dict[str, ProgramSettings] = {}
    for section in parser.sections():
        if section.startswith("program:"):
            name = section.removeprefix("program:").strip()
            try:
                # The name becomes the program's log file names: one safe path component, and no
                # other's log.
                check_program_name(name)
                programs[name] = _program(name, parser[section], here)
            except ManifestError as exc:
                raise ManifestError(f"{source}: {exc}") from exc
    return programs
