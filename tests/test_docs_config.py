"""The docs are the configuration's contract: every key the code reads is documented, with
the default the code has, and every key the docs' reference tables list is one the code reads.

The code side is the dataclass tree under :class:`gateway.config.Config` (the ``broker:``
section, which passes an amqtt configuration through, has its gateway keys listed in
:data:`BROKER_KEYS`). Key paths are dotted; an entry of a mapping of named settings is
``<name>`` (``links.links.<name>.endpoint``), an item of a list of settings ``<n>``.

The docs document keys in two ways, each parsed as such:

- reference tables, ``| key | default | meaning |``, found by the heading above them
  (:data:`TABLES`). A key cell may hold several keys (```a`, `b``), where a later key without
  a dot takes the first one's parent (```download.retry_initial_delay` / `retry_max_delay``),
  and its default cell as many values (or one for all). The fields of a list's items are
  named in the list's row as ```{filter, topic, qos}```;
- YAML reference blocks (:data:`YAML_BLOCKS`): the first ``yaml`` block under a heading,
  whose keys are keys and, where the doc says so, whose values are the defaults.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

import yaml
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.settings import BrokerSettings
from gateway.config import Config

DOCS = Path(__file__).resolve().parent.parent / "docs"

#: A key with no default: it must be given (a listener's endpoint).
REQUIRED = object()

#: The reference tables: (doc, the heading above the table, which table under that heading
#: counting from 0) -> the key prefixes its rows are under.
TABLES: dict[tuple[str, str, int], tuple[str, ...]] = {
    ("configuration.md", "`gateway:`", 0): ("gateway",),
    ("configuration.md", "`broker:`", 0): ("broker",),
    ("broker.md", "The local broker: authentication, durable state, queues and session lifetime", 0): ("broker",),
    ("configuration.md", "`commands:`", 0): ("commands",),
    ("journal.md", "Configuration (`journal:` section)", 0): ("journal",),
    ("journal.md", "Configuration (`journal:` section)", 1): ("journal.defaults", "journal.streams.<name>"),
    ("links.md", "Keys", 0): ("links",),
    ("links.md", "Keys", 1): ("links.links.<name>",),
    ("exosite.md", "Configuration: `ingest:`", 0): ("ingest",),
    ("exosite.md", "The HTTP link", 0): ("http_links.links.<name>",),
    ("apps.md", "Settings (`apps:` in gateway.yaml)", 0): ("apps",),
    ("apps.md", "Programs declared in the gateway config", 0): ("apps.programs.<name>",),
    ("containers.md", "Setting up podman on a gateway", 0): ("containers",),
    ("updates.md", "Configuration (`updates:`)", 0): ("updates",),
    ("fleet.md", "Joining a fleet", 0): ("fleet",),
    ("admin.md", "Configuration (`admin:`)", 0): ("admin",),
    ("telemetry.md", "Configuration (`telemetry:`)", 0): ("telemetry",),
    ("uploads.md", "Configuration (`uploads:`)", 0): ("uploads",),
}

#: The YAML reference blocks: (doc, heading) -> (the key prefix of the block's top level,
#: whether its values are the defaults).
YAML_BLOCKS: dict[tuple[str, str], tuple[str, bool]] = {
    ("twin.md", "Configuration"): ("", True),
    # the HTTP link's example: its keys (http_links.links, downlink items); defaults are in the table
    ("exosite.md", "The HTTP link"): ("", False),
    # a container description: every key, with example values (a comment gives the default)
    ("containers.md", "The container description"): ("containers.containers.<name>", False),
}

#: The ``broker:`` keys the gateway reads itself (the rest is amqtt's configuration, see
#: docs/broker.md "What remains of amqtt"), with their defaults.
BROKER_KEYS: dict[str, Any] = {
    **{f"broker.{f.name}": f.default for f in dataclasses.fields(BrokerSettings)
       if f.name not in ("listeners", "amqtt")},
    "broker.listeners.<name>.endpoint": REQUIRED,
    "broker.listeners.<name>.require_client_cert": False,
}

#: Defaults the docs describe in words rather than as a value, each with why.
DESCRIBED_DEFAULTS: dict[str, str] = {
    # a mapping whose own keys have their rows in the next table
    "journal.defaults": "(below)",
    # the default routes and downlink are long lists: the rows name them, the contract table shows them
    "links.links.<name>.routes": "the Kanto/Hono contract (below)",
    "links.links.<name>.downlink": "`command//+/req/#` unchanged and as `c//{1}/q/{#}`",
    "http_links.links.<name>.routes": "`telemetry/#` -> `{#}`, and the reports `edge/gateway/reports/<name>` -> `<name>`",
}

_UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "days": 86400, "d": 86400}


def _walk(tp: Any, prefix: str) -> Iterator[tuple[str, Any, str, Mapping[str, Any]]]:
    """``(key path, default, kind, metadata)`` of every field under the dataclass ``tp``; kind is
    ``value``, ``section`` (a nested dataclass: its keys are documented, not it),
    ``named`` (a mapping of named settings) or ``list`` (a list of settings)."""
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        if not f.init or (tp is Config and f.name in ("path", "written", "dropins")):
            continue
        key = f"{prefix}{f.name}"
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = REQUIRED
        inner = hints[f.name]
        if typing.get_origin(inner) in (Union, types.UnionType):
            inner = next(a for a in typing.get_args(inner) if a is not type(None))
        args = typing.get_args(inner)
        if tp is Config and f.name == "broker":
            for broker_key, broker_default in BROKER_KEYS.items():
                yield broker_key, broker_default, "value", {}
        elif dataclasses.is_dataclass(inner):
            yield key, default, "section", f.metadata
            yield from _walk(inner, key + ".")
        elif typing.get_origin(inner) is dict and dataclasses.is_dataclass(args[1]):
            yield key, default, "named", f.metadata
            yield from _walk(args[1], key + ".<name>.")
        elif typing.get_origin(inner) is tuple and dataclasses.is_dataclass(args[0]):
            yield key, default, "list", f.metadata
            yield from _walk(args[0], key + ".<n>.")
        else:
            yield key, default, "value", f.metadata


def code_keys() -> dict[str, tuple[Any, str]]:
    """Every key path of the configuration -> (its default, its kind, see :func:`_walk`)."""
    return {key: (default, kind) for key, default, kind, _ in _walk(Config, "")}


def code_bounds() -> dict[str, tuple[Any, Any]]:
    """The ``(min, max)`` metadata of every key that has one (``None`` for no bound)."""
    return {key: (meta.get("min"), meta.get("max")) for key, _, _, meta in _walk(Config, "")
            if "min" in meta or "max" in meta}


def _section(doc: str, heading: str) -> list[str]:
    """The lines of ``doc`` from the heading whose text is ``heading`` to the next heading."""
    lines = (DOCS / doc).read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"#+ " + re.escape(heading), line)]
    if len(starts) != 1:
        raise AssertionError(f"{doc}: {len(starts)} headings {heading!r}")
    end = next((i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith("#")
                and not _in_fence(lines, i)), len(lines))
    return lines[starts[0] + 1:end]


def _in_fence(lines: list[str], index: int) -> bool:
    """Whether line ``index`` is inside a fenced code block."""
    return sum(1 for line in lines[:index] if line.startswith("```")) % 2 == 1


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``|`` inside backticks does not split)."""
    cells, current, quoted = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            quoted = not quoted
        if char == "|" and not quoted:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    return cells + [current.strip()]


def table_rows(doc: str, heading: str, index: int) -> list[list[str]]:
    """The rows (cells) of the ``index``-th ``| key | default | meaning |`` table under ``heading``."""
    lines = _section(doc, heading)
    tables: list[list[list[str]]] = []
    for i, line in enumerate(lines):
        if line.startswith("| key | default |") and not _in_fence(lines, i):
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(_cells(row))
            tables.append(rows)
    if index >= len(tables):
        raise AssertionError(f"{doc}: no key table {index} under {heading!r}")
    return tables[index]


def _row_keys(cell: str) -> list[str]:
    """The keys a key cell names: ```a`, `b``; ```x.a` / `b``` is ``x.a`` and ``x.b``."""
    keys = re.findall(r"`([^`]+)`", cell)
    parent = keys[0].rpartition(".")[0] if keys else ""
    return [keys[0]] + [k if "." in k or not parent else f"{parent}.{k}" for k in keys[1:]] if keys else []


def _row_defaults(cell: str, count: int) -> list[str]:
    """The default cell split into one text per key (one value given for several keys is each's)."""
    if count == 1:
        return [cell]
    for parts in (re.findall(r"`[^`]*`", cell), re.split(r"\s*(?:,|\s/)\s+", cell)):
        if len(parts) == count:
            return parts
    return [cell] * count


def documented() -> tuple[dict[str, list[tuple[str, str | None]]], list[str]]:
    """What the docs document: key path -> [(where, the default as written, or None when
    the doc gives no default there)], and the problems met while reading the docs."""
    found: dict[str, list[tuple[str, str | None]]] = {}
    problems: list[str] = []
    schema = code_keys()
    for (doc, heading, index), prefixes in TABLES.items():
        try:
            rows = table_rows(doc, heading, index)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        for cells in rows:
            if len(cells) < 3:
                problems.append(f"{doc}: row {cells!r} under {heading!r} has no default or meaning")
                continue
            keys = _row_keys(cells[0])
            if not keys:
                problems.append(f"{doc}: row {cells[0]!r} under {heading!r} names no key")
            for key, default in zip(keys, _row_defaults(cells[1], len(keys))):
                for prefix in prefixes:
                    found.setdefault(f"{prefix}.{key}", []).append((f"{doc} ({heading})", default))
                    if schema.get(f"{prefix}.{key}", (None, ""))[1] != "list":
                        continue
                    for item in _item_fields(cells[2]):
                        found.setdefault(f"{prefix}.{key}.<n>.{item}", []).append((f"{doc} ({heading})", None))
    for (doc, heading), (prefix, with_defaults) in YAML_BLOCKS.items():
        try:
            lines = _section(doc, heading)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        start = lines.index("```yaml")
        block = yaml.safe_load("\n".join(lines[start + 1:lines.index("```", start)]))
        for key, value in _yaml_keys(block, prefix, schema):
            # (a section's default is its keys': each is compared on its own)
            written: str | None = None
            if with_defaults and schema.get(key, (None, ""))[1] != "section":
                written = yaml.safe_dump(value, default_flow_style=True).removesuffix("...\n").strip()
            found.setdefault(key, []).append((f"{doc} ({heading}, YAML)", written))
    return found, problems


def documented_bounds() -> Iterator[tuple[str, str, float | None, float | None]]:
    """``(key path, where, min, max)`` of every table row for one key whose meaning states a
    range: ``1–16``, ``(0-255)``, ``from 64 to 66977792``, ```0` to `32768```, ``at least 1``,
    ``at most 8``."""
    for (doc, heading, index), prefixes in TABLES.items():
        for cells in table_rows(doc, heading, index):
            keys = _row_keys(cells[0])
            if len(keys) != 1 or len(cells) < 3:
                continue
            number = r"(\d+(?:\.\d+)?)"
            both = (re.search(rf"{number} ?– ?{number}", cells[2]) or re.search(rf"\({number}-{number}\)", cells[2])
                    or re.search(rf"from {number} to {number}", cells[2]) or re.search(rf"`{number}` to `{number}`",
                                                                                         cells[2]))
            low = re.search(rf"at least {number}", cells[2])
            high = re.search(rf"at most {number}", cells[2])
            if not (both or low or high):
                continue
            bounds = ((float(both.group(1)), float(both.group(2))) if both else
                      (float(low.group(1)) if low else None, float(high.group(1)) if high else None))
            for prefix in prefixes:
                yield f"{prefix}.{keys[0]}", f"{doc} ({heading})", bounds[0], bounds[1]


def _item_fields(meaning: str) -> list[str]:
    """The item fields a list's row names: ```{filter, topic, qos}```."""
    match = re.search(r"`\{([a-z_, ]+)\}`", meaning)
    return [name.strip() for name in match.group(1).split(",")] if match else []


def _yaml_keys(value: Any, prefix: str, schema: dict[str, tuple[Any, str]]) -> Iterator[tuple[str, Any]]:
    """The key paths of a YAML block (entries of named settings as ``<name>``, items of
    lists of settings as ``<n>``), each with its value."""
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        yield path, item
        kind = schema.get(path, (None, "value"))[1]
        if kind == "named" and isinstance(item, dict):
            for entry in item.values():
                yield from _yaml_keys(entry, f"{path}.<name>", schema)
        elif kind == "list" and isinstance(item, list):
            for entry in item:
                yield from _yaml_keys(entry, f"{path}.<n>", schema)
        elif kind == "section":
            yield from _yaml_keys(item, path, schema)


def _normal(value: Any) -> Any:
    """A value in one spelling: tuples as lists, dataclasses as mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _normal(dataclasses.asdict(value))
    if isinstance(value, (tuple, list)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    return value


def default_matches(code_default: Any, written: str) -> bool:
    """Whether the default a doc writes (a table cell, or a YAML value dumped back) is the
    code's: ```true``` is True, ``none`` or ```null``` None, ``600`` 600.0, ``16 MiB``
    16777216, ``7 days`` or ```7d``` 604800, ```[a, b]``` the list; a string is as written
    (quotes around it are YAML's, not the string's)."""
    text = written.strip()
    literal = text[1:-1] if re.fullmatch(r"`[^`]*`", text) else text
    if code_default is REQUIRED:
        return literal in ("", "—")
    if literal.lower() in ("none", "null", "~"):
        return code_default is None
    if isinstance(code_default, str):
        if re.fullmatch(r"\"[^\"]*\"|'[^']*'", literal):
            literal = literal[1:-1]
        return literal == code_default
    match = re.fullmatch(r"(\d+(?:\.\d+)?) ?(KiB|MiB|GiB|days|d)", literal)
    if match and isinstance(code_default, (int, float)) and not isinstance(code_default, bool):
        return float(match.group(1)) * _UNITS[match.group(2)] == code_default
    try:
        value = yaml.safe_load(literal)
    except yaml.YAMLError:
        return False
    if isinstance(code_default, bool) or isinstance(value, bool):
        return value is code_default
    return bool(_normal(value) == _normal(code_default))


class DocumentedKeysTests(SynchronousTestCase):
    """docs/*.md and the configuration's dataclasses name the same keys, with the same defaults."""

    maxDiff = None

    def test_every_key_is_documented(self) -> None:
        """Every key of the code is in the docs (a nested section through its own keys)."""
        found, problems = documented()
        missing = sorted(key for key, (_, kind) in code_keys().items()
                         if kind != "section" and key not in found)
        self.assertEqual(problems + missing, [])

    def test_every_documented_key_exists(self) -> None:
        """Every key a docs table or reference block names is one the code reads."""
        found, _ = documented()
        keys = code_keys()
        unknown = sorted(f"{key} ({where})" for key, places in found.items() if key not in keys
                         for where, _ in places)
        self.assertEqual(unknown, [])

    def test_documented_defaults_are_the_code_defaults(self) -> None:
        """Every default the docs state is the code's (or a described one of DESCRIBED_DEFAULTS)."""
        found, _ = documented()
        wrong = []
        for key, (default, _) in sorted(code_keys().items()):
            for where, written in found.get(key, []):
                if written is None or DESCRIBED_DEFAULTS.get(key) == written.strip():
                    continue
                if not default_matches(default, written):
                    wrong.append(f"{key}: {where} says {written!r}, the code {default!r}")
        self.assertEqual(wrong, [])

    def test_documented_bounds_are_the_code_bounds(self) -> None:
        """A range a key's row states is the range the code checks (its ``min``/``max``); a key
        the code bounds in its own parser (``broker:``) or checks (``exitcodes``) is left out."""
        bounds = code_bounds()
        wrong = []
        for key, where, low, high in documented_bounds():
            if key not in bounds:
                continue
            code_low, code_high = bounds[key]
            if (low is not None and low != code_low) or (high is not None and high != code_high):
                wrong.append(f"{key}: {where} says {low}..{high}, the code {code_low}..{code_high}")
        self.assertEqual(wrong, [])

    def test_described_defaults_are_still_there(self) -> None:
        """An entry of DESCRIBED_DEFAULTS is a key some doc gives that description for."""
        found, _ = documented()
        stale = [key for key, text in DESCRIBED_DEFAULTS.items()
                 if text not in [(w or "").strip() for _, w in found.get(key, [])]]
        self.assertEqual(stale, [])


class AmqttKeysTests(SynchronousTestCase):
    """The ``broker:`` section passes amqtt's configuration through: the docs say what
    becomes of each of its keys (used, or accepted and ignored)."""

    def test_every_amqtt_key_is_documented(self) -> None:
        """Every key of amqtt's broker and listener configuration is named in configuration.md
        or broker.md, as ```key``` or ```key: value``` (an amqtt upgrade that adds one needs a
        word on it)."""
        from amqtt.contexts import BrokerConfig, ListenerConfig

        text = (DOCS / "configuration.md").read_text() + (DOCS / "broker.md").read_text()
        # amqtt reads topic_check from the YAML key topic-check
        keys = {f.name.replace("topic_check", "topic-check") for f in dataclasses.fields(BrokerConfig)}
        keys |= {f.name for f in dataclasses.fields(ListenerConfig)}
        self.assertEqual(sorted(key for key in keys if f"`{key}`" not in text and f"`{key}: " not in text), [])


class ParsingTests(SynchronousTestCase):
    """The readers of the docs' conventions read what they are meant to."""

    def test_row_keys(self) -> None:
        """Several keys in one cell; a later one without a dot shares the first one's parent."""
        self.assertEqual(_row_keys("`vendor`, `model`, `serial`"), ["vendor", "model", "serial"])
        self.assertEqual(_row_keys("`download.retry_initial_delay` / `retry_max_delay`"),
                         ["download.retry_initial_delay", "download.retry_max_delay"])
        self.assertEqual(_row_defaults("`1` / `300`", 2), ["`1`", "`300`"])
        self.assertEqual(_row_defaults("none", 2), ["none", "none"])
        self.assertEqual(_row_defaults("none, `false`", 2), ["none", "`false`"])

    def test_default_spellings(self) -> None:
        """YAML and prose spellings of a default compare equal to the code's, wrong ones do not."""
        for code_default, written in [(True, "`true`"), (None, "none"), (600.0, "`600`"), (16 * 2**20, "16 MiB"),
                                      (604800.0, "`7d`"), (604800.0, "7 days"), ((), "`[]`"), ({}, "`{}`"),
                                      (("dpkg", "-i"), "`[dpkg, -i]`"), ("", '`""`'), ("0660", '`"0660"`'),
                                      ("{device}", "`{device}`"), (REQUIRED, ""), (268435456, "268435456")]:
            self.assertTrue(default_matches(code_default, written), (code_default, written))
        for code_default, written in [(True, "`1`"), (1, "`true`"), ("", "—"), (None, '`""`'), (600.0, "`60`"),
                                      (2**20, "1 GiB"), ("x", "`y`")]:
            self.assertFalse(default_matches(code_default, written), (code_default, written))
