"""The configuration's keys checked as a user of the docs checks them, through the loader: each
range a docs table states, at its edges and just past them; every number finite; a value of
the wrong kind named in YAML's words (docs/configuration.md), in every section, ``broker:``
too, whose keys the gateway parses itself.

Each test loads a few configurations that set many keys at once (every problem is reported
at once, under its key), not one configuration per key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import yaml
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.broker.settings import AMQTT_SECONDS, BROKER_KEYS, BrokerSettings
from gateway.errors import ConfigError
from tests.test_docs_config import DOCS, TABLES, _row_keys, documented_bounds, table_rows

#: The name given to an entry of a mapping of named settings (``links.links.<name>``).
ENTRY = "x1"


def _inner(tp: Any) -> Any:
    """``tp`` without its ``| None``."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _nested(tp: Any) -> Any:
    """The settings dataclass a field of type ``tp`` holds (itself, a mapping's or a list's
    items), or ``None`` when it holds values."""
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is dict and dataclasses.is_dataclass(args[1]):
        return args[1]
    if typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def _fields(tp: Any, prefix: str) -> Iterator[tuple[str, Any, bool]]:
    """``(key path, type, whether it takes null)`` of every key under the dataclass ``tp``, a
    group of settings (``updates.download``) before its keys; an entry of a mapping of settings
    is ``<name>``, an item of a list ``<n>``."""
    hints = typing.get_type_hints(tp)
    for f in dataclasses.fields(tp):
        if not f.init:
            continue
        field_type = _inner(hints[f.name])
        yield f"{prefix}{f.name}", field_type, field_type is not hints[f.name]
        nested = _nested(field_type)
        if nested is not None:
            origin = typing.get_origin(field_type)
            step = ".<name>." if origin is dict else ".<n>." if origin is tuple else "."
            yield from _fields(nested, f"{prefix}{f.name}{step}")


def _leaves(tp: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(key path, type)`` of every key under the dataclass ``tp`` that holds a value (not
    settings)."""
    return ((key, kind) for key, kind, _ in _fields(tp, prefix) if _nested(kind) is None)


def leaves() -> dict[str, Any]:
    """Every key of the configuration that holds a value -> its type: the dataclass sections',
    and the ``broker:`` keys the gateway reads (amqtt's seconds among them)."""
    found: dict[str, Any] = {}
    for name, builder in config.SECTIONS.items():
        if dataclasses.is_dataclass(builder):
            found.update(_leaves(builder, f"{name}."))
    hints = typing.get_type_hints(BrokerSettings)
    found.update({f"broker.{f.name}": hints[f.name] for f in dataclasses.fields(BrokerSettings)
                  if f.name not in ("listeners", "amqtt")})
    found.update({f"broker.{key}": int for key in AMQTT_SECONDS})
    found["broker.listeners.<name>.max_connections"] = int
    return found


def _put(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set the key ``path`` of ``tree`` to ``value`` (``<name>`` is the entry :data:`ENTRY`,
    ``<n>`` the first item of a list)."""
    parts = path.split(".")
    node: Any = tree
    for part, after in zip(parts, parts[1:] + [None]):
        part = ENTRY if part == "<name>" else part
        if after == "<n>":
            node = node.setdefault(part, [{}])[0]
        elif part == "<n>":
            continue
        elif after is None:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _shown(path: str) -> str:
    """The key path as an error line names it."""
    return path.replace("<name>", ENTRY).replace(".<n>.", ".0.")


class EdgeTestCase(SynchronousTestCase):
    """Loads a configuration of many keys at once."""

    def problems(self, values: dict[str, Any]) -> dict[str, list[str]]:
        """Load a configuration setting each key path of ``values`` (beside a state directory
        of the test's own) and return its problems by key path as the lines name it."""
        directory = Path(self.mktemp())
        directory.mkdir()
        tree: dict[str, Any] = {"gateway": {"state_dir": str(directory / "state")}}
        for path, value in values.items():
            _put(tree, path, value)
        (directory / "gateway.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        found: dict[str, list[str]] = {}
        try:
            config.load(directory / "gateway.yaml")
        except ConfigError as error:
            for line in error.errors:
                key, _, message = line.split(": ", 1)[1].partition(": ")
                found.setdefault(key, []).append(message)
        return found


class DocumentedRangeTests(EdgeTestCase):
    """A range a docs table states for a number is the one the loader takes, at both ends."""

    def bounds(self) -> list[tuple[str, Any, float | None, float | None]]:
        """``(key path, int or float, low, high)`` of every number key a docs table gives a range."""
        types_ = leaves()
        return [(key, types_[key], low, high) for key, _, low, high in documented_bounds()
                if types_.get(key) in (int, float)]

    def test_edges_are_taken(self) -> None:
        """The least and the most a row states are taken (each set beside the others: an
        ``apps.backoff_max`` at its least is not below an ``apps.backoff_initial`` at its own)."""
        for end in (0, 1):  # the least, the most
            values = {key: kind(bounds[end]) for key, kind, *bounds in self.bounds() if bounds[end] is not None}
            self.assertGreater(len(values), 20)
            problems = self.problems(values)
            self.assertEqual({key: problems[_shown(key)] for key in values if _shown(key) in problems}, {})

    def test_past_the_edges_is_refused(self) -> None:
        """A whole number one past either end, and a number the next float past it, is an
        error under its key (``broker.max_topic_levels: 32769``, ``gateway.shutdown_timeout:
        60.00000000000001``)."""
        for end, step in ((0, -1), (1, 1)):  # below the least, above the most
            values = {key: int(bounds[end]) + step if kind is int else math.nextafter(bounds[end], step * math.inf)
                      for key, kind, *bounds in self.bounds() if bounds[end] is not None}
            problems = self.problems(values)
            self.assertEqual(sorted(key for key in values if _shown(key) not in problems), [])

    def test_zero_is_no_limit_where_a_row_says_so(self) -> None:
        """A row saying ```0`: no limit`` (or ``0: never``, ``0: any``...) takes 0, and refuses
        -1: ``broker.max_inflight_bytes``, ``broker.persistent_client_expiration``..."""
        keys = set()
        for (doc, heading, index), prefixes in TABLES.items():
            for cells in table_rows(doc, heading, index):
                row_keys = _row_keys(cells[0])
                if len(row_keys) == 1 and len(cells) >= 3 and re.search(r"\(`?0`?: |[;,] `?0`?: ", cells[2]):
                    keys |= {f"{prefix}.{row_keys[0]}" for prefix in prefixes}
        self.assertIn("broker.max_subscriptions", keys)
        problems = self.problems({key: 0 for key in keys})
        self.assertEqual({key: problems[_shown(key)] for key in keys if _shown(key) in problems}, {})
        problems = self.problems({key: -1 for key in keys})
        self.assertEqual(sorted(key for key in keys if _shown(key) not in problems), [])


class NumberKindTests(EdgeTestCase):
    """Every key that takes a number takes a finite one, and a value of another kind is named
    as YAML read it (docs/configuration.md)."""

    def number_keys(self) -> list[str]:
        """Every key that takes a number (whole or not)."""
        return sorted(key for key, kind in leaves().items() if kind in (int, float))

    def test_every_number_is_finite(self) -> None:
        """YAML's ``.nan``, ``.inf`` and ``-.inf`` are refused under every key that takes a
        number, durations included (``broker.connect_timeout: .inf`` was taken: a connection
        that never sent its CONNECT was never closed)."""
        keys = self.number_keys()
        self.assertIn("broker.connect_timeout", keys)
        self.assertIn("broker.persistent_client_expiration", keys)
        for value in (math.nan, math.inf, -math.inf):
            problems = self.problems({key: value for key in keys})
            self.assertEqual([key for key in keys if _shown(key) not in problems], [], value)

    def test_wrong_kinds_are_named_in_yamls_words(self) -> None:
        """A list, a boolean or a quoted number where a key takes another kind of value is named
        as YAML read it: ``a list``, ``the boolean true``, ``the text '7'`` (``broker.max_packet_size:
        must be a whole number from 64 to 66977792, not the text '1024'``; the ``broker:`` keys
        said ``not '1024'`` and ``not True``, and a choice such as ``gateway.log_level`` ``not
        [1]``)."""
        kinds = leaves()
        for value, words in (([1], "a list"), (True, "the boolean true"), ("7", "the text '7'")):
            keys = [key for key, kind in kinds.items() if self.takes_another_kind(kind, value)]
            problems = self.problems({key: value for key in keys})
            wrong = {key: problems.get(_shown(key)) for key in keys
                     if not any(message.endswith(words) or f"{words}:" in message
                                for message in problems.get(_shown(key), []))}
            self.assertEqual(wrong, {}, value)

    @staticmethod
    def takes_another_kind(kind: Any, value: Any) -> bool:
        """Whether ``value`` is of a kind a key of type ``kind`` does not take: a list where a
        list or mapping goes is left out (it may be one), a boolean where a boolean or a choice
        that YAML's ``true`` names goes, and a text where text goes."""
        origin = typing.get_origin(kind)
        if kind is Any or origin in (tuple, dict):
            return False
        if isinstance(value, bool):
            return kind is not bool and not (origin is Literal and "true" in typing.get_args(kind))
        if isinstance(value, str):
            return kind in (int, float)
        return True


class BrokerKeyTests(EdgeTestCase):
    """The ``broker:`` section refuses what every section refuses, under the same key paths."""

    def test_unknown_keys_each_under_its_own_path(self) -> None:
        """Each unknown key of the section is one error under its own path, naming the keys it
        takes, as in every section (amqtt's check said ``broker: not a valid amqtt broker config:
        can not match "flavour", "colour" to any data class field``)."""
        problems = self.problems({"broker.colour": "red", "broker.flavour": 1, "broker.max-qos": 1})
        self.assertEqual(sorted(problems), ["broker.colour", "broker.flavour", "broker.max-qos"])
        for messages in problems.values():
            self.assertEqual(len(messages), 1, messages)
            self.assertTrue(messages[0].startswith("unknown key (known: auth, connect_timeout, listeners, "), messages)
            self.assertIn("topic-check", messages[0])

    def test_every_amqtt_key_is_known(self) -> None:
        """Every key of amqtt's ``BrokerConfig`` is one the section takes (an amqtt upgrade that
        adds one must say what becomes of it, not see it refused as unknown)."""
        from amqtt.contexts import BrokerConfig

        fields = {f.name.replace("topic_check", "topic-check") for f in dataclasses.fields(BrokerConfig)}
        self.assertEqual(sorted(fields - set(BROKER_KEYS)), [])

    def test_a_key_given_twice_is_named_as_in_every_section(self) -> None:
        """Both spellings of a key in one mapping: ``given twice, as 'a' and 'b'``, as written,
        under the second, as the dataclass sections say it."""
        problems = self.problems({"broker.max_packet_size": 100, "broker.max-packet-size": 200,
                                  "updates.script_timeout": 5, "updates.script-timeout": 6})
        self.assertEqual(problems, {
            "broker.max-packet-size": ["given twice, as 'max_packet_size' and 'max-packet-size'"],
            "updates.script-timeout": ["given twice, as 'script_timeout' and 'script-timeout'"]})

    def test_deprecated_sections_name_amqtts_plugins(self) -> None:
        """The ``plugins`` of the deprecated ``auth:`` and ``topic-check:`` sections are amqtt's
        plugin names: another is an error under its key (amqtt skipped it: a misspelt
        ``topic_acl`` let every client use every topic), and so is a text (amqtt matched its
        substrings). Beside a ``plugins:`` section amqtt ignores them, ACL and all: each is an
        error then (the configuration loaded, and every client could use every topic)."""
        problems = self.problems({"broker.auth": {"plugins": ["auth_anonymous", "auth_fiel"]},
                                  "broker.topic-check": {"enabled": True, "plugins": "topic_acl"}})
        self.assertEqual(sorted(problems), ["broker.auth.plugins.1", "broker.topic-check.plugins"])
        self.assertTrue(problems["broker.auth.plugins.1"][0].startswith(
            "no amqtt plugin 'auth_fiel' (known: auth_anonymous, auth_file, "), problems)
        self.assertEqual(problems["broker.topic-check.plugins"],
                         ["must be a list of amqtt plugin names, not the text 'topic_acl'"])
        self.assertEqual(self.problems({"broker.auth": {"plugins": ["auth_anonymous", "auth_file"]},
                                        "broker.topic-check": {"enabled": True, "plugins": ["topic_acl"]}}), {})
        problems = self.problems({"broker.plugins": ["amqtt.plugins.authentication.AnonymousAuthPlugin"],
                                  "broker.auth": {"plugins": ["nosuch"]},
                                  "broker.topic-check": {"enabled": True, "acl": {"anonymous": ["a/#"]}}})
        self.assertEqual(sorted(problems), ["broker.auth", "broker.topic-check"])
        for messages in problems.values():
            self.assertEqual(len(messages), 1)
            self.assertTrue(messages[0].startswith("ignored beside plugins: (amqtt reads the deprecated auth: and "
                                                   "topic-check: sections only without it)"), messages)

    def test_topic_check_spelt_as_amqtts_field(self) -> None:
        """``topic_check`` is read as ``topic-check``: alone (no ``auth:``) amqtt dropped its ACL
        without a word; both spellings are a key given twice."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "gateway.yaml").write_text(
            f"gateway: {{state_dir: {directory / 'state'}}}\n"
            "broker: {topic_check: {enabled: true, acl: {alice: ['a/#']}}}\n")
        amqtt = config.load(directory / "gateway.yaml").broker.amqtt
        self.assertEqual(amqtt["topic-check"], {"enabled": True, "acl": {"alice": ["a/#"]}})
        self.assertNotIn("topic_check", amqtt)
        self.assertEqual(amqtt["auth"], {"plugins": ["auth_anonymous"], "allow-anonymous": False})
        problems = self.problems({"broker.topic_check": {"enabled": True}, "broker.topic-check": {"enabled": True}})
        self.assertEqual(problems, {"broker.topic-check": ["given twice, as 'topic_check' and 'topic-check'"]})


class NullTests(EdgeTestCase):
    """YAML's null (a key with nothing after its colon) as docs/configuration.md says: a group
    of settings back to its defaults, a value only where the key says what none means."""

    def test_null_where_a_key_takes_it(self) -> None:
        """A group of settings (``updates.download``), a key whose type takes none
        (``gateway.proxy.url``, a link's ``loss_topic``) and every ``broker:`` key take null;
        every other key refuses it, named ``empty (null)``, as the page's examples say."""
        groups: dict[int, list[str]] = {}
        values = [key for key in leaves() if key.startswith("broker.")]
        refused: dict[bool, list[str]] = {True: [], False: []}  # in an entry, or not
        for name, builder in config.SECTIONS.items():
            if not dataclasses.is_dataclass(builder):
                continue
            for key, kind, takes_none in _fields(builder, f"{name}."):
                if "<n>" in key:  # (an item's keys: its list is refused null, as every list)
                    continue
                if dataclasses.is_dataclass(kind):  # each depth in a file of its own: not beside its own keys
                    groups.setdefault(key.count("."), []).append(key)
                else:
                    (values if takes_none else refused["<name>" in key]).append(key)
        self.assertIn("gateway.proxy.url", values)
        self.assertIn("links.links.<name>.loss_topic", values)
        self.assertIn("updates.download", groups[1])
        for keys in [values, *groups.values()]:
            problems = self.problems({key: None for key in keys})
            self.assertEqual({key: problems[_shown(key)] for key in keys if _shown(key) in problems}, {})
        for keys in refused.values():
            problems = self.problems({key: None for key in keys})
            self.assertEqual({key: problems.get(_shown(key)) for key in keys
                              if not any(m.endswith("not empty (null)") for m in problems.get(_shown(key), []))}, {})
        lines = {"gateway.state_dir": "must be a path (a non-empty string), not empty (null)",
                 "links.links": "must be a mapping, not empty (null)"}
        self.assertEqual(self.problems(dict.fromkeys(lines)), {key: [line] for key, line in lines.items()})
        page = " ".join((DOCS / "configuration.md").read_text().split())
        for key, line in lines.items():  # (the page said a key with nothing after its colon was back to its default)
            self.assertIn(f"`{key}: {line}`", page)


    def test_a_named_entry_at_null_in_a_file_is_a_warning(self) -> None:
        """docs/configuration.md: a link (MQTT or HTTP) set to null in a drop-in, over the one the
        main file sets, is kept with every default: the configuration loads, and its warnings
        (``--check-config``, ``gatewayctl check-config``, the start) name the key and say what
        it does and how to remove it."""
        directory = Path(self.mktemp())
        (directory / "conf.d").mkdir(parents=True)
        main = directory / "gateway.yaml"
        main.write_text(yaml.safe_dump({"gateway": {"state_dir": str(directory / "state")},
                                        "links": {"links": {"eu": {"endpoint": "tcp:host=127.0.0.1:port=30101"}}}}))
        dropin = directory / "conf.d" / "50-off.yaml"
        dropin.write_text("links:\n  links:\n    eu:\nhttp_links:\n  links:\n    h: ~\n")
        loaded = config.load(main)
        self.assertEqual(loaded.links.links["eu"].endpoint, "tcp:host=127.0.0.1:port=1883")
        tail = " (null does not remove an entry): to remove it, delete its key from every file that sets it"
        self.assertEqual(loaded.warnings(), [
            "links.links.eu: set to null in a file, which keeps it as an MQTT link with every default (to"
            f" tcp:host=127.0.0.1:port=1883, which may be the gateway's own broker){tail}",
            "http_links.links.h: set to null in a file, which keeps it as an HTTP link with every default"
            f" (an Exosite link to https://localhost){tail}"])
        page = " ".join((DOCS / "configuration.md").read_text().split())
        self.assertIn("`warning: links.links.eu: set to null in a file, which keeps it as an MQTT link with every"
                      " default", page)


class OffServiceTests(EdgeTestCase):
    """An ingest or fleet that is off has its keys checked for kind and range, and what only
    its service would use once it is on (docs/configuration.md)."""

    def test_an_off_service_is_checked_but_for_what_only_it_uses(self) -> None:
        """Off: a range is checked, the ingest's endpoint and the fleet's server, token and CA
        file are not; turned on, each is."""
        keys = {"ingest.endpoint": "tcp:8090:interface=::1", "ingest.max_body": 0,
                "fleet.base_url": "https://user:secret@hawkbit.example", "fleet.tenant": "..",
                "fleet.token_file": "/nonexistent/token", "fleet.ca_file": "/nonexistent/ca.pem",
                "fleet.request_timeout": 0}
        only_when_on = ["fleet.base_url", "fleet.ca_file", "fleet.tenant", "fleet.token_file", "ingest.endpoint"]
        problems = self.problems({**keys, "ingest.enabled": False, "fleet.enabled": False})
        self.assertEqual(sorted(problems), ["fleet.request_timeout", "ingest.max_body"])
        problems = self.problems({**keys, "ingest.enabled": True, "fleet.enabled": True})
        self.assertEqual(sorted(problems), sorted(only_when_on + ["fleet.request_timeout", "ingest.max_body"]))
        page = " ".join((DOCS / "configuration.md").read_text().split())
        self.assertIn("not the ingest's `endpoint`, nor the fleet's `base_url`, `tenant`, `controller_id`, "
                      "`token_file` and `ca_file`, which are checked once `enabled` is true", page)


#: Each problem line docs/configuration.md quotes (``key.path: what is wrong``; ``...`` elides)
#: -> a drop-in that gets it from the loader.
QUOTED_LINES: dict[str, str] = {
    "gateway.state_dir: must be a path (a non-empty string), not empty (null)": "gateway:\n  state_dir:\n",
    "links.links: must be a mapping, not empty (null)": "links:\n  links:\n",
    "gateway.shutdown_timeout: must be a number, not the text '7'": "gateway:\n  shutdown_timeout: '7'\n",
    "journal.streams: must be a mapping, not the boolean true": "journal:\n  streams: yes\n",
    "links.links.hono.password: must not hold a NUL character: <redacted>":
        "links:\n  links:\n    hono:\n      endpoint: 'tcp:host=127.0.0.1:port=1'\n      username: u\n"
        "      password: \"a\\0b\"\n",
    "gateway.state_dir: must not hold a control character ('\\t'): 'var\\tx'": "gateway:\n  state_dir: \"var\\tx\"\n",
    "gateway.state_dir: '...' cannot be used: File name too long": f"gateway:\n  state_dir: /tmp/{'L' * 256}/x\n",
    "broker.colour: unknown key (known: auth, connect_timeout, ...)": "broker:\n  colour: blue\n",
    "broker.topic-check.plugins.0: no amqtt plugin 'topic_acll' (known: ...)":
        "broker:\n  auth: {plugins: [auth_anonymous]}\n  topic-check: {enabled: true, plugins: [topic_acll]}\n",
    "broker.topic-check: ignored beside plugins: ...":
        "broker:\n  plugins: [amqtt.plugins.authentication.AnonymousAuthPlugin]\n  topic-check: {enabled: true}\n",
    "gateway.tenant_id: must name this gateway's tenant, not '..': ...": "gateway:\n  tenant_id: '..'\n",
    "broker.listeners.ws.allowed_origins.0: must be scheme://host[:port] ...":
        "broker:\n  listeners:\n    ws:\n      type: ws\n      bind: 127.0.0.1:0\n"
        "      allowed_origins: ['http://dash.example/']\n",
    "broker.listeners.default.colour: unknown key (known: ...)":
        "broker:\n  listeners:\n    default:\n      endpoint: 'tcp:1883'\n      colour: blue\n",
}
#: Quoted lines only another setting shows: the locale's (run under LC_ALL=C, PYTHONUTF8=0).
ELSEWHERE = ("gateway.state_dir: holds 'é': this system cannot pass it on",)


class QuotedLineTests(SynchronousTestCase):
    """Each problem line the page quotes is the loader's, word for word."""

    def test_each_quoted_line_is_the_loaders(self) -> None:
        """Every ``key.path: message`` the page quotes is in :data:`QUOTED_LINES`, and the
        configuration there gets that line (``...`` standing for what the page leaves out)."""
        page = " ".join((DOCS / "configuration.md").read_text().split())
        quoted = [line for line in re.findall(r"`([a-z_]+\.[a-z0-9_.<>-]+: [^`]+)`", page)
                  if not line.startswith(ELSEWHERE)]
        self.assertEqual(sorted(set(quoted)), sorted(QUOTED_LINES))
        for line, text in QUOTED_LINES.items():
            directory = Path(self.mktemp())
            (directory / "conf.d").mkdir(parents=True)
            (directory / "gateway.yaml").write_text(f"gateway:\n  state_dir: {directory / 'state'}\n")
            (directory / "conf.d" / "50-x.yaml").write_text(text)
            with self.assertRaises(ConfigError) as raised:
                config.load(directory / "gateway.yaml")
            pattern = ".*".join(re.escape(part) for part in line.split("..."))
            got = [found.split(": ", 1)[1] for found in raised.exception.errors]
            self.assertTrue(any(re.fullmatch(pattern, found) for found in got), (line, got))


class ServerEndpointTests(EdgeTestCase):
    """The ingest's and /metrics' endpoints are refused at load for what Twisted would refuse
    only when listening, as a broker listener's are (docs/configuration.md)."""

    def test_what_listen_would_refuse_is_refused_at_load(self) -> None:
        """An interface that is no IP address (``nosuch.invalid``: the check passed and the
        gateway then failed to start, ``metrics endpoint ...: cannot listen: Couldn't listen on
        nosuch.invalid:0``), ``unix:`` without a path, and ``systemd:``, whose sockets exist only
        under systemd (``telemetry: cannot be checked: IndexError``, under no key), are each one
        error under the key; the forms the pages show are taken."""
        refused = {"tcp:0:interface=nosuch.invalid": "interface must be an IP address, not 'nosuch.invalid'",
                   "tcp6:0:interface=nosuch": "interface must be an IP address, not 'nosuch'",
                   "unix:": "unix endpoint needs a path",
                   "systemd:domain=INET:index=0": "socket activation (systemd:) is for the broker's listeners only"}
        keys = ("ingest.endpoint", "telemetry.metrics_endpoint")
        for endpoint, says in refused.items():
            problems = self.problems(dict.fromkeys(keys, endpoint))
            self.assertEqual(sorted(problems), list(keys), endpoint)
            for key in keys:
                self.assertIn(says, problems[key][0])
        for endpoint in ("tcp:0:interface=127.0.0.1", "tcp:0:interface=\\:\\:1", "unix:/run/gateway/gmq.sock"):
            self.assertEqual(self.problems(dict.fromkeys(keys, endpoint)), {}, endpoint)
        self.assertEqual(self.problems({"broker.listeners.default.endpoint": "systemd:domain=INET:index=0"}), {})
        self.assertEqual(self.problems({"broker.listeners.default.endpoint": "tcp6:70000"}), {
            "broker.listeners.default.endpoint": ["'tcp6:70000': the port must be from 0 to 65535, not '70000'"]})
