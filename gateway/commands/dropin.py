"""The remote drop-in ``conf.d/90-remote.yaml``: dotted key changes merged into it, the
whole resulting configuration checked by the loader, key paths read from a loaded config.

These functions read and write small files and block: run them off the reactor thread.
"""

from __future__ import annotations

import dataclasses
import enum
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from gateway import config as gateway_config
from gateway.asciidigits import ascii_digits
from gateway.atomic import remove_durably, write_atomically
from gateway.errors import ConfigCheckError, ConfigError, ConfigKeyError
from gateway import yamlfile
from gateway.shown import KEY_PATH_CHARS, shown_key_path, shown_repr

#: The drop-in the gateway owns; it sorts after an operator's ``50-site.yaml``.
DROPIN_NAME = "90-remote.yaml"
#: Keys that cannot change while the gateway runs: the pending change is kept under the
#: state directory, and a journal opened in another directory would leave every record the
#: old one holds behind, never sent.
FIXED_KEYS = ("gateway.state_dir", "journal.directory")
#: The longest key path a change may name, in characters (what keeps a refusal and its report,
#: which leaves the gateway, from carrying a client's megabyte back): the longest an error
#: repeats whole.
MAX_KEY_PATH = KEY_PATH_CHARS
HEADER = ("# Written by the gateway (remote or admin configuration changes); replaced as a whole\n"
          "# on every change. Your own changes belong in another drop-in.\n")


def dropin_path(main: Path) -> Path:
    """Where the remote drop-in of the configuration ``main`` lives.

    :param main: the main configuration file.
    """
    return main.parent / "conf.d" / DROPIN_NAME


def split_path(path: str) -> tuple[str, ...]:
    """``"links.links.cloud.endpoint"`` -> its keys.

    :raises ConfigKeyError: for an empty path or an empty key in it, or a path longer than
        :data:`MAX_KEY_PATH` characters.
    """
    if isinstance(path, str) and len(path) > MAX_KEY_PATH:
        raise ConfigKeyError(f"{shown_repr(path)}: a key path is at most {MAX_KEY_PATH} characters")
    keys = tuple(path.split(".")) if isinstance(path, str) else ()
    if not keys or any(not k for k in keys):
        raise ConfigKeyError(f"{shown_repr(path)}: not a dotted key path (section.key.subkey)")
    return keys


def changes_to_tree(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted key paths and their values as one nested mapping (the shape of a drop-in).

    :param changes: e.g. ``{"links.links.cloud.endpoint": "tcp:host=h:port=1883"}``.
    :raises ConfigError: listing every malformed path, every path that another one is inside
        of, and every key that cannot change while the gateway runs (one request's problems
        all at once, as a configuration's).
    """
    tree: dict[str, Any] = {}
    made = {id(tree)}  # the mappings made here (a change's own mapping value is set whole)
    problems: list[str] = []
    for path, value in changes.items():
        try:
            keys = split_path(path)
        except ConfigKeyError as exc:
            problems.append(str(exc))
            continue
        node = tree
        for key in keys[:-1]:
            child: Any = node.get(key)
            if key not in node:  # (a change's null at it is one: a key under it would undo it)
                child = node[key] = {}
                made.add(id(child))
            elif id(child) not in made:
                problems.append(f"{shown_key_path(path)}: another change sets {shown_key_path(key)} as a whole")
                break
            node = child
        else:
            if keys[-1] in node:
                problems.append(f"{shown_key_path(path)}: set twice (or inside another change)")
            else:
                node[keys[-1]] = value
    for fixed in FIXED_KEYS:
        found: Any = tree
        for key in fixed.split("."):
            found = found.get(key) if isinstance(found, dict) else None
        if found is not None:
            problems.append(f"{fixed}: cannot be changed while the gateway runs")
    if problems:
        raise ConfigError(problems)
    return tree


def read_dropin(main: Path) -> str | None:
    """The remote drop-in's text, or ``None`` when there is none.

    :raises ConfigError: when it is no file the loader takes (edited by hand since the
        gateway started: not UTF-8 or not YAML, a key given twice, not a mapping, cannot be
        read), every problem worded as ``--check-config`` words it.
    """
    path = dropin_path(main)
    if not path.exists():
        return None
    problems: list[str] = []
    text = yamlfile.read_text(path, problems)
    if text is not None:
        yamlfile.parse_mapping(text, path, problems)
    if problems:
        raise ConfigError(problems)
    return text


def dropin_text(changes: Mapping[str, Any], current: str | None) -> str:
    """The new drop-in: the ``current`` drop-in's keys with each of ``changes`` set, a
    mapping as a whole (what earlier changes set under it goes; see :func:`kept_keys` for
    what the other configuration files set there); a null at a named entry removes it
    (:func:`names_an_entry`).

    :raises ConfigError: for malformed key paths or keys that cannot change (every one,
        :func:`changes_to_tree`), or when the current drop-in is not a YAML mapping.
    """
    changes_to_tree(changes)
    data: Any = yamlfile.load(current) if current else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{DROPIN_NAME}: <top>: must be a mapping of sections"])
    for path, value in changes.items():
        keys = split_path(path)
        if value is None and names_an_entry(keys):
            _remove_path(data, keys)
        else:
            _set_path(data, keys, value)
    return HEADER + yaml.safe_dump(data, default_flow_style=False, sort_keys=True)


def _set_path(data: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    """Set ``value`` at ``keys`` in the drop-in's ``data``, as a whole: a mapping replaces the
    one an earlier change set there, it is not merged with it."""
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def names_an_entry(keys: tuple[str, ...]) -> bool:
    """Whether ``keys`` name one entry of a mapping of named settings (a link
    ``links.links.eu``, a program ``apps.programs.q``, a stream's ``journal.streams.x``, a
    listener ``broker.listeners.ws``),
    which a change's null removes: null is back to the defaults for a group of settings, but
    an entry with every default (a link to 127.0.0.1:1883, a program without a command) is
    never what removing one means."""
    tp: Any = gateway_config.Config
    for key in keys[:-1]:
        if dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(key.replace("-", "_"))
        elif typing.get_origin(tp) is dict:
            tp = typing.get_args(tp)[1]
        else:
            return False
    if typing.get_origin(tp) is dict:
        return dataclasses.is_dataclass(typing.get_args(tp)[1])
    # a list of named settings, written as a mapping by name (the broker's listeners)
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else None
    return dataclasses.is_dataclass(item) and "name" in {f.name for f in dataclasses.fields(item)}


def _at(data: Any, keys: tuple[str, ...]) -> Any:
    """What YAML ``data`` holds at ``keys`` (``None`` where it has nothing there)."""
    node = data
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _remove_path(data: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Remove the entry at ``keys`` from the drop-in's ``data`` (nothing when it has none)."""
    node = _at(data, keys[:-1])
    if isinstance(node, dict):
        node.pop(keys[-1], None)


def kept_keys(main: Path, changes: Mapping[str, Any]) -> list[str]:
    """An error for each mapping in ``changes`` that would not be what the configuration
    holds at its key: the loader merges the drop-in's mapping with what the main file and
    the other drop-ins set there, so their keys missing from the new mapping would stay; and
    for each null removing an entry (:func:`names_an_entry`) that those files set.

    :param main: the main configuration file.
    :param changes: dotted key paths and their values, checked by :func:`changes_to_tree`.
    """
    keys_of = {path: split_path(path) for path in changes}
    mappings = [(path, value) for path, value in changes.items() if isinstance(value, dict)]
    removed = [path for path, value in changes.items() if value is None and names_an_entry(keys_of[path])]
    if not mappings and not removed:
        return []
    files = [main, *(path for path in gateway_config.dropin_files(main, []) if path.name != DROPIN_NAME)]
    errors = []
    for file in files:
        data = yamlfile.read_yaml(file, [])  # (a file that cannot be read is the loader's error)
        for path, value in mappings:
            node = _at(data, keys_of[path])
            missing = _missing(node, value, path) if isinstance(node, dict) else []
            if missing:
                errors.append(f"{path}: {file} sets {', '.join(missing)}, which would stay (a change is"
                              " merged over the configuration files and cannot remove what they set):"
                              " remove it there, or change single keys")
        for path in removed:
            node = _at(data, keys_of[path][:-1])
            if isinstance(node, dict) and keys_of[path][-1] in node:
                errors.append(f"{path}: {file} sets it, which would stay (a change is merged over the"
                              " configuration files and cannot remove what they set): remove it there")
    return errors


def _missing(base: dict[str, Any], value: dict[str, Any], path: str) -> list[str]:
    """The key paths under ``path`` that ``base`` sets and ``value`` does not."""
    missing = []
    for key, below in base.items():
        if key not in value:
            missing.append(f"{path}.{key}")
        elif isinstance(below, dict) and isinstance(value[key], dict):
            missing.extend(_missing(below, value[key], f"{path}.{key}"))
    return missing


def overridden_keys(main: Path, changes: Mapping[str, Any]) -> list[str]:
    """An error for each change that a drop-in sorting after :data:`DROPIN_NAME` overrides
    (``conf.d/95-site.yaml`` setting the key to another value, or a mapping above it to null
    or to a value): the loader merges that drop-in last, so the change would be written and
    every service restarted while the value runs unchanged.

    Keys are compared as written: the other spelling of a key (``-`` for ``_``) in another
    file is an error of its own (:func:`check`).

    :param main: the main configuration file.
    :param changes: dotted key paths and their values, checked by :func:`changes_to_tree`.
    """
    later = [path for path in gateway_config.dropin_files(main, []) if path.name > DROPIN_NAME]
    datas = [(path, yamlfile.read_yaml(path, [])) for path in later]  # (what cannot be read is the loader's error)
    errors = []
    for path, value in changes.items():
        keys = split_path(path)
        winners = [str(file) for file, data in datas if _overrides(data, keys, value)]
        if winners:
            errors.append(f"{path}: {winners[-1]} sets it too, and that drop-in sorts after {DROPIN_NAME},"
                          f" so it wins and the change would do nothing: change it there, or remove it"
                          f" from there")
    return errors


def _overrides(data: Any, keys: tuple[str, ...], value: Any) -> bool:
    """Whether the drop-in ``data``, merged over one that sets ``value`` at ``keys``, leaves
    something else there (``gateway.config.merge``: mappings merge, anything else replaces)."""
    node = data
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
        if not isinstance(node, dict):
            return True  # null (back to the defaults) or a value, in place of the mapping
    if not isinstance(node, dict) or keys[-1] not in node:
        return False
    later = node[keys[-1]]
    if isinstance(value, dict) and isinstance(later, dict):
        return bool(gateway_config.merge(value, later) != value)
    return bool(later != value)


def check(main: Path, text: str | None) -> tuple[list[str], gateway_config.Config | None]:
    """Every error of the configuration ``main`` would give with ``text`` as its remote
    drop-in (``None``: without one), exactly as ``--check-config`` words them.

    The loader reads a copy (the main file and the other drop-ins) in a temporary
    directory, so nothing the running gateway reads changes; errors name the real files.

    :param main: the main configuration file.
    :param text: the candidate drop-in.
    :return: the errors, empty when the configuration is valid; and then the configuration
        loaded (else ``None``).
    :raises ConfigCheckError: when the copy cannot be made (a full or read-only temporary
        directory, a file that cannot be read), naming the file and why.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="gateway-config-", ignore_cleanup_errors=True) as temp:
            copy = Path(temp) / main.name
            shutil.copyfile(main, copy)
            (Path(temp) / "conf.d").mkdir()
            unreadable: list[str] = []
            for dropin in gateway_config.dropin_files(main, unreadable):
                if dropin.name != DROPIN_NAME:
                    shutil.copyfile(dropin, Path(temp) / "conf.d" / dropin.name)
            if unreadable:  # (the copy would be checked without the drop-ins)
                raise ConfigCheckError(f"the configuration cannot be checked: {unreadable[0]}")
            if text is not None:
                (Path(temp) / "conf.d" / DROPIN_NAME).write_text(text, encoding="utf-8")
            try:
                return [], gateway_config.load(copy)
            except ConfigError as exc:
                return [line.replace(str(Path(temp)), str(main.parent)) for line in exc.errors], None
    except OSError as exc:
        where = exc.filename or tempfile.gettempdir()
        raise ConfigCheckError(f"the configuration cannot be checked (its trial copy in a temporary directory):"
                               f" {where}: {exc.strerror or exc}") from exc


def fixed_keys_moved(running: gateway_config.Config, candidate: gateway_config.Config) -> list[str]:
    """An error for each of :data:`FIXED_KEYS` whose value ``candidate`` changes: a change
    that names one is refused by :func:`dropin_text`, but one that sets a mapping above it to
    null (``{"gateway": null}``: back to the defaults) moves it all the same.

    :param running: the configuration running now.
    :param candidate: the configuration the change makes, loaded.
    """
    errors = []
    for fixed in FIXED_KEYS:
        now, new = get_value(running, fixed), get_value(candidate, fixed)
        if new != now:
            errors.append(f"{fixed}: cannot be changed while the gateway runs, and the change would make it"
                          f" {shown_repr(new)} (it is {shown_repr(now)}): a section or key set to null is"
                          f" back to its defaults")
    return errors


def write_dropin(main: Path, text: str | None) -> None:
    """Replace the remote drop-in with ``text`` atomically and durably (``None``: remove it).

    Mode 0640: the values set may be secrets (a link's password, a CIK), and ``conf.d`` is
    world-readable; the gateway's group still reads it (``gatewayctl check-config``)."""
    path = dropin_path(main)
    if text is None:
        remove_durably(path)
    else:
        write_atomically(path, text.encode("utf-8"), mode=0o640)


def jsonable(value: Any) -> Any:
    """A loaded configuration value as JSON-ready data (dataclasses as mappings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def get_value(config: gateway_config.Config, path: str) -> Any:
    """The value at a dotted key path of a loaded configuration, defaults included.

    An item of a list of named settings is found by its name, the key the config file and
    :func:`changes_to_tree` use (``broker.listeners.default.endpoint``); list items are also
    numbered from 0 (``broker.listeners.0.endpoint``, ``ingest.ciks.0``), a name first.

    The ``broker:`` section's keys that the gateway hands to amqtt (``auth``, ``plugins``, a
    listener's ``bind`` or ``type``) are read as the files write them, amqtt's own defaults
    not filled in.

    :raises ConfigKeyError: when the path names nothing.
    """
    try:
        return _typed_value(config, path)
    except ConfigKeyError:
        keys = split_path(path)
        if keys[0] != "broker":
            raise
        node: Any = config.written
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                raise
            node = node[key]
        return jsonable(node)


def _typed_value(config: gateway_config.Config, path: str) -> Any:
    """The value at ``path`` in the typed sections (:func:`get_value`)."""
    keys = split_path(path)
    sections = _sections(config)
    if keys[0] not in sections:
        raise ConfigKeyError(f"{shown_key_path(path)}: no section {shown_repr(keys[0])}"
                             f" (known: {', '.join(sorted(sections))})")
    node: Any = sections[keys[0]]
    for depth, key in enumerate(keys[1:], start=1):
        node = _step(node, key, path, ".".join(keys[:depth]))
    return jsonable(node)


def _sections(config: gateway_config.Config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in gateway_config.SECTIONS}


def _names(items: Sequence[Any]) -> list[str | None]:
    """The name of each item of a list of named settings (``None`` for an item without one)."""
    return [getattr(item, "name", None) if dataclasses.is_dataclass(item) else None for item in items]


def _step(node: Any, key: str, path: str, where: str) -> Any:
    """The item ``key`` of ``node``, the value at ``where`` of ``path``: a setting, a mapping's
    key, a list's item by its name or its number.

    :raises ConfigKeyError: when there is none.
    """
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        name = key.replace("-", "_")
        if name not in {f.name for f in dataclasses.fields(node)}:
            raise ConfigKeyError(f"{shown_key_path(path)}: {shown_key_path(where)} has no key {shown_repr(key)}")
        return getattr(node, name)
    if isinstance(node, Mapping):
        if key not in node:
            raise ConfigKeyError(f"{shown_key_path(path)}: {shown_key_path(where)} has no key {shown_repr(key)}")
        return node[key]
    if isinstance(node, (list, tuple)):
        names = _names(node)
        if key in names:
            return node[names.index(key)]
        if ascii_digits(key) and int(key) < len(node):
            return node[int(key)]
        known = ", ".join(repr(name) for name in names if isinstance(name, str))
        raise ConfigKeyError(f"{shown_key_path(path)}: {shown_key_path(where)} has {len(node)} items,"
                             f" no item {shown_repr(key)}"
                             + (f" (by name: {known}; or by number from 0)" if known else ""))
    raise ConfigKeyError(f"{shown_key_path(path)}: {shown_key_path(where)} is a value, not a mapping")


def numbered_keys(config: gateway_config.Config, changes: Mapping[str, Any]) -> list[str]:
    """An error for each change whose path numbers an item of a list of the running
    configuration (``broker.listeners.1.endpoint``): :func:`get_value` reads that item, but
    in a drop-in the number is a key (a new listener named ``1``), and a list of unnamed items
    (a link's ``routes``) is only set as a whole.

    :param config: the running configuration.
    :param changes: dotted key paths and their values, checked by :func:`changes_to_tree`.
    """
    errors = []
    sections = _sections(config)
    for path in changes:
        keys = split_path(path)
        node: Any = sections.get(keys[0])
        for depth, key in enumerate(keys[1:], start=1):
            where = ".".join(keys[:depth])
            names = _names(node) if isinstance(node, (list, tuple)) else []
            if isinstance(node, (list, tuple)) and key not in names and ascii_digits(key):
                named = [name for name in names if isinstance(name, str)]
                how = f"an item of it by its name ({', '.join(named)})" if named else f"{where} as a whole"
                errors.append(f"{shown_key_path(path)}: {shown_key_path(where)} numbers its items from 0 only to read"
                              f" them (config.get): set {how}")
                break
            try:
                node = _step(node, key, path, where)
            except ConfigKeyError:
                break  # (a new key: the check of the whole configuration says whether it may be there)
    return errors


def hosted_names_taken(changes: Mapping[str, Any], hosted: Iterable[tuple[str, str, str]]) -> list[str]:
    """An error for each program that ``changes`` declare under ``apps.programs`` named like a
    program, or the app, of ``hosted``: the apps service would run the configuration's program
    and no longer load that app (its name is the configuration's), so the app would stop
    running while the change is reported applied.

    :param changes: dotted key paths and their values, checked by :func:`changes_to_tree`.
    :param hosted: ``(program, app, version)`` of each installed app's (and container app's)
        program running now, those the configuration declares left out.
    """
    names: set[str] = set()
    for path, value in changes.items():
        keys = split_path(path)
        if keys[0] != "apps":
            continue
        if len(keys) >= 3 and keys[1] == "programs":
            if len(keys) > 3 or value is not None:  # (a null removes the program: it takes no name)
                names.add(keys[2])
            continue
        programs = value.get("programs") if len(keys) == 1 and isinstance(value, dict) else \
            value if keys[1:] == ("programs",) else None
        if isinstance(programs, dict):
            names.update(str(name) for name in programs)
    hosted = list(hosted)
    errors = []
    for name in sorted(names):
        owner = next(((app, version) for program, app, version in hosted if name in (program, app)), None)
        if owner is not None:
            errors.append(f"apps.programs.{name}: {shown_repr(name)} is a program of the installed app"
                          f" {owner[0]} {owner[1]}: declared in the configuration it would take that app's"
                          f" place, and the app would no longer run: uninstall the app first, or give the"
                          f" program another name")
    return errors


@dataclasses.dataclass(frozen=True)
class CheckOutcome:
    """What checking a change found.

    :ivar errors: every error of the resulting configuration; empty when it is valid.
    :ivar warnings: when it is valid, what it asks for that it may not mean
        (:meth:`gateway.config.Config.warnings`, as ``--check-config`` prints them); else empty.
    """

    errors: list[str]
    warnings: list[str] = dataclasses.field(default_factory=list)


def whole_check(config: gateway_config.Config, text: str | None, changes: Mapping[str, Any],
                taken: Sequence[str] = ()) -> CheckOutcome:
    """Every error of ``changes`` to the running ``config``, ``text`` being the remote drop-in
    they make: :func:`check` (and :func:`fixed_keys_moved` when it finds none),
    :func:`kept_keys`, :func:`numbered_keys`, :func:`overridden_keys` and then ``taken``; with
    none, the resulting configuration's warnings. Blocking (it reads and loads files).

    :param taken: the names the change would take from hosted apps (:func:`hosted_names_taken`).
    :raises ConfigCheckError: when the check cannot be run (see :func:`check`).
    """
    errors, candidate = check(config.path, text)
    if candidate is not None:
        errors += fixed_keys_moved(config, candidate)
    errors += kept_keys(config.path, changes) + numbered_keys(config, changes) + overridden_keys(config.path, changes)
    errors += taken
    return CheckOutcome(errors, candidate.warnings() if candidate is not None and not errors else [])
