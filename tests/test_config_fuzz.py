"""Any configuration a user can write is accepted or refused line by line: the embedded default
with one entry of each kind (a program, links, a container, fleet attributes, upload globs),
mutated (values of every other type, keys deleted, unknown keys, sections given again in a
drop-in), either loads or raises :class:`ConfigError` whose every line names a file; what loads
holds no text the gateway cannot hand on (a NUL, a control character where its key takes
none) and builds a service tree (hypothesis, derandomized)."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.broker.settings import BrokerSettings
from gateway.configtext import nul_problems, text_problem
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

#: An entry of each kind the embedded default has none of, so that mutations reach their keys
#: (a program's command, a downlink alias, a container's image, fleet attributes, globs...).
ENTRIES: dict[str, Any] = {
    "apps": {"programs": {"p": {"command": "/bin/true", "environment": {"A": "b"}, "autostart": False}}},
    "links": {"links": {"c": {"endpoint": "tcp:host=127.0.0.1:port=1", "username": "u", "password": "p",
                              "will_topic": "w/{device}", "will_payload": "gone"}}},
    "http_links": {"links": {"h": {"url": "https://127.0.0.1:1", "headers": {"X-A": "b"},
                                   "downlink": [{"alias": "cmd"}]}}},
    "containers": {"containers": {"k": {"image": "registry.local/img:1", "command": ["run"], "env": {"E": "v"},
                                        "mounts": [{"source": "/a", "destination": "/b"}]}}},
    "fleet": {"attributes": {"hw": "x"}},
    "uploads": {"files": ["/tmp/*.log"]},
}

#: The embedded default, with :data:`ENTRIES`, as data: every mutation starts from it.
DEFAULT: dict[str, Any] = config.merge(yaml.safe_load(config.DEFAULT_CONFIG.read_text()), ENTRIES)


def key_paths(data: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every key path in ``data`` (a list's items by their index), parents before children."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    paths: list[tuple[str | int, ...]] = []
    for key, value in items:
        paths.append(prefix + (key,))
        paths.extend(key_paths(value, prefix + (key,)))
    return paths


#: Every key path of the default, to mutate.
PATHS = key_paths(DEFAULT)

#: Scalars of every type YAML reads, the awkward ones among them.
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, -1, -(2**63), 2**63, 10**30, 1, 65536, 0.5, -0.0, 1e308, float("inf"),
                     float("-inf"), float("nan")]),
    st.integers(), st.floats(),
    st.sampled_from(["", " ", "x" * 10240, "a\0b", "\x01\x1f\x7f", "tab\there", "line\nbreak", "\u2028",
                     "{device}", "{", "/", "#", "+", "tcp:", "tcp:0", "unix:", "ssl:1", ":", "~", "../x",
                     "\ud7ff\ue000\U0010ffff", "0660", "1h", "-1", "nan"]),
    st.text(max_size=20),
    st.sampled_from([datetime.date(2020, 1, 1), datetime.datetime(2020, 1, 1, 12, 0), b"\0bytes", {"a", "b"}]),
)

#: Any value: scalars, lists and mappings of them, nested.
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


def text_problems(value: Any, path: tuple[str, ...] = (), controls: bool = False) -> list[str]:
    """The key paths in a loaded configuration (its dataclasses, walked whole) of every string
    that holds a NUL, or a control character where its field's ``controls`` metadata allows
    none, and of every such mapping key; amqtt's configuration, handed on as written, is held
    to the NUL rule only."""
    if isinstance(value, BrokerSettings):
        found = [".".join(where) for where, _ in nul_problems(value.amqtt, path + ("amqtt",))]
        return found + text_problems(value.listeners, path + ("listeners",))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [problem for f in dataclasses.fields(value) if f.name not in ("path", "written", "dropins")
                for problem in text_problems(getattr(value, f.name), path + (f.name,),
                                             bool(f.metadata.get("controls")))]
    if isinstance(value, tuple):
        return [p for i, item in enumerate(value) for p in text_problems(item, path + (str(i),), controls)]
    if isinstance(value, dict):
        return [p for key, item in value.items()
                for p in ([".".join(path + (str(key),))] if text_problem(str(key)) else [])
                + text_problems(item, path + (str(key),), controls)]
    if isinstance(value, str) and text_problem(value, controls) is not None:
        return [".".join(path)]
    return []


def deeply_nested(depth: int) -> Any:
    """A list nested ``depth`` times."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


#: NUL and control characters (C0, DEL, C1) a value or key may be given by mistake.
CONTROLS = st.sampled_from(["\0", "\n", "\r", "\t", "\x1b", "\x7f", "\x85"])

#: One change to the configuration: ``(op, path index, value)``.
MUTATION = st.one_of(
    st.tuples(st.just("replace"), st.integers(0, len(PATHS) - 1), st.one_of(VALUES, st.builds(deeply_nested, st.integers(50, 200)))),
    st.tuples(st.just("delete"), st.integers(0, len(PATHS) - 1), st.none()),
    st.tuples(st.just("unknown"), st.integers(0, len(PATHS) - 1), VALUES),
    st.tuples(st.just("dropin"), st.integers(0, len(PATHS) - 1), VALUES),
    # a character put into a string value as written (the rest of it still right), or else into its key
    st.tuples(st.just("text"), st.integers(0, len(PATHS) - 1), CONTROLS),
)


def _at(data: dict[str, Any], path: tuple[str | int, ...]) -> tuple[Any, str | int] | None:
    """The mapping or list holding the last key of ``path`` in ``data``, and that key
    (``None`` when an earlier mutation took the way there)."""
    node: Any = data
    for key in path:
        holder = node
        if isinstance(node, dict) and isinstance(key, str) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    return holder, path[-1]


def mutate(mutations: list[tuple[str, int, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The default changed by ``mutations``: the main file's data and the drop-ins' data."""
    data: dict[str, Any] = copy.deepcopy(DEFAULT)
    dropins: list[dict[str, Any]] = []
    for op, index, value in mutations:
        path = PATHS[index]
        if op == "dropin":  # the key's section again, the key (or the section) changed
            keys = list(itertools.takewhile(lambda key: isinstance(key, str), path))  # (a list: whole)
            section: dict[str, Any] = {}
            node = section
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = value
            dropins.append(section)
            continue
        found = _at(data, path)
        if found is None:
            continue
        holder, key = found
        if op == "replace":
            holder[key] = value
        elif op == "text" and isinstance(holder[key], str):
            middle = len(holder[key]) // 2
            holder[key] = holder[key][:middle] + value + holder[key][middle:]
        elif op == "text" and isinstance(holder, dict):
            holder[f"{key[:1]}{value}{key[1:]}"] = holder.pop(key)
        elif op == "text":
            continue  # (a list's item that is no string)
        elif op == "delete":
            holder.pop(key)
        elif isinstance(holder[key], dict):
            holder[key]["no_such_key"] = value
        elif isinstance(holder, dict):
            holder["no_such_key"] = value
    return data, dropins


#: libyaml's emitter where PyYAML has it: the same YAML as its pure-Python one, in a
#: fraction of the time (500 examples are written here).
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def write_config(directory: Path, data: dict[str, Any], dropins: list[dict[str, Any]]) -> Path:
    """Write the main file and its drop-ins in ``directory``; return the main file's path."""
    path = directory / "gateway.yaml"
    path.write_text(yaml.dump(data, Dumper=DUMPER, allow_unicode=False))
    (directory / "conf.d").mkdir()
    for number, dropin in enumerate(dropins):
        (directory / "conf.d" / f"{number:02d}.yaml").write_text(yaml.dump(dropin, Dumper=DUMPER, allow_unicode=False))
    return path


def free_ports(data: dict[str, Any], state: Path) -> dict[str, Any]:
    """``data`` with the state dir in ``state`` and its servers off the default ports (where
    they are still the default's), so a tree built from it takes nothing another gateway uses."""
    data = copy.deepcopy(data)
    gateway = data.get("gateway")
    if isinstance(gateway, dict) and isinstance(gateway.get("state_dir"), str) and gateway["state_dir"][:1] in "/~":
        gateway["state_dir"] = DEFAULT["gateway"]["state_dir"]  # never state in / or a home directory
    sections = {"gateway": ("state_dir", str(state)), "ingest": ("endpoint", "tcp:0:interface=127.0.0.1"),
                "telemetry": ("metrics_endpoint", "tcp:0:interface=127.0.0.1")}
    for section, (key, value) in sections.items():
        if isinstance(data.get(section), dict) and data[section].get(key) == DEFAULT[section][key]:
            data[section][key] = value
    return data


#: Builds the tree (without starting it) for each config path in argv[1:], on the asyncio
#: reactor, each from the directory it is in (a relative state dir is taken from there), and
#: prints one JSON line: the paths whose build raised, with the traceback.
BUILD = """
import json, os, sys, traceback
from gateway import config as gateway_config
from gateway.tap import install_reactor
reactor, loop = install_reactor()
from gateway.tree import build_service
failed = {}
for path in sys.argv[1:]:
    os.chdir(os.path.dirname(path))
    try:
        build_service(gateway_config.load(path), reactor, loop=loop)
    except Exception:
        failed[path] = traceback.format_exc()
print(json.dumps(failed))
"""


class MutatedConfigTests(SynchronousTestCase):
    """The default configuration, mutated."""

    def setUp(self) -> None:
        self.accepted: list[Path] = []
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir(parents=True)

    @settings(max_examples=500, deadline=None, derandomize=True, database=None)
    @given(st.lists(MUTATION, min_size=1, max_size=4))
    def check_load(self, mutations: list[tuple[str, int, Any]]) -> None:
        """Load a mutated config: accepted, or every error line names a file."""
        directory = Path(tempfile.mkdtemp(dir=self.work))
        data, dropins = mutate(mutations)
        path = write_config(directory, free_ports(data, directory / "state"), dropins)
        names = [str(path)] + [str(p) for p in sorted((directory / "conf.d").glob("*.yaml"))]
        try:
            loaded = config.load(path)
        except ConfigError as exc:
            self.assertTrue(exc.errors)
            for line in exc.errors:
                self.assertTrue(any(line.startswith(f"{name}: ") for name in names), line)
                self.assertNotIn("\n", line)
                self.assertNotIn("Traceback", line)
        else:
            self.assertEqual(text_problems(loaded), [], path.read_text())
            self.accepted.append(path)

    def test_mutated_default_loads_or_lists_its_problems(self) -> None:
        """Whatever the mutation, ``config.load`` returns or raises ConfigError with one line per
        problem, each starting with the file that set it; and every configuration it accepts
        holds no NUL, and no control character where its key takes none, and builds its
        service tree without an error."""
        self.check_load()
        self.assertTrue(self.accepted)  # some mutations are harmless
        out = subprocess.run([sys.executable, "-c", BUILD, *map(str, self.accepted)], check=True,
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        failed = json.loads(out.stdout.strip().splitlines()[-1])
        self.assertEqual(failed, {}, "\n".join(Path(p).read_text() + t for p, t in failed.items()))
