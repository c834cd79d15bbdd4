"""docs/links.md and docs/exosite.md, checked as a reader takes them: the default contract's
table is what a link without ``routes`` or ``downlink`` does, the topic examples of the text
go up as they say, and the settings the text writes inline (a route, a downlink entry, an
endpoint or URL) load, or are refused, as the text says."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator

import yaml
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.errors import ConfigError
from gateway.ingest.settings import IngestSettings
from gateway.links.http_settings import HTTPLinkSettings
from gateway.links.router import Router, Rule
from gateway.links.settings import KANTO_DOWNLINK, KANTO_ROUTES, LinkSettings

DOCS = Path(__file__).resolve().parent.parent / "docs"
#: What the table's placeholders stand for in the examples made of it.
TENANT, DEVICE = "acme", "gw1"
SAMPLES = {"<tenant>": TENANT, "<device>": DEVICE, "<dev>": "sensor7", "<id>": "42", "<status>": "200",
           "<name>": "ping"}


def section(doc: str, heading: str) -> str:
    """The text of ``doc`` under ``heading`` (any level), up to the next heading."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ |\Z)", text, re.S | re.M)
    assert match is not None, f"{doc}: no heading {heading!r}"
    return match.group(1)


def table_rows(text: str) -> Iterator[list[str]]:
    """The cells of each row of the first table in ``text`` (header and rule left out)."""
    rows = [line for line in text.splitlines() if line.startswith("|")]
    for line in rows[2:]:
        yield [cell.strip() for cell in line.strip("|").split("|")]


def codes(cell: str) -> list[str]:
    """The backticked texts of a cell."""
    return re.findall(r"`([^`]+)`", cell)


def example(pattern: str, rest: str = "room1/temp") -> str:
    """A topic the table's ``pattern`` stands for: its placeholders filled in, and ``#`` or
    ``...`` as a trailing level replaced by ``rest``."""
    for placeholder, value in SAMPLES.items():
        pattern = pattern.replace(placeholder, value)
    return re.sub(r"(^|/)(#|\.\.\.)$", lambda m: m.group(1) + rest, pattern)


def contract() -> Iterator[tuple[str, str, str]]:
    """(direction, local topic, cloud topic) of every example the default contract's table
    gives: ``up`` for what goes to the cloud, ``down`` for a cloud command."""
    for local_cell, cloud_cell in table_rows(section("links.md", "The default contract (Kanto / Hono)")):
        local, cloud = codes(local_cell), codes(cloud_cell)
        if local_cell.startswith("cloud "):  # the downlink row: the cloud topic is the local cell's
            cloud_topic = example(local[0].replace("+", "<dev>"), "42/ping")
            yield "down", cloud_topic, cloud_topic
            continue
        patterns = [p for p in local if "/" in p]
        names = [p for p in local if "/" not in p]  # `edge/gateway/reports/<name>` for `a`, `b`...
        for pattern in patterns:
            if pattern.startswith(".../"):  # `edge/gateway/uploads/lastUpload`, `.../autoUpload`
                pattern = patterns[0].rsplit("/", 1)[0] + pattern[3:]
            for name in names or [""]:
                topic = example(pattern.replace("<name>", name) if name else pattern)
                rest = topic.rsplit("/", 1)[1] if cloud[0].endswith("/...") and "#" not in pattern else "room1/temp"
                yield "up", topic, example(cloud[0].replace("<name>", name) if name else cloud[0], rest)


class DefaultContractTests(SynchronousTestCase):
    """links.md's "The default contract" is what a link without ``routes`` or ``downlink`` does."""

    def setUp(self) -> None:
        self.up = Router([Rule.compile("hono", r.filter, r.topic, r.qos) for r in KANTO_ROUTES], TENANT, DEVICE)
        self.down = Router([Rule.compile("hono", d.filter, d.topic, d.qos) for d in KANTO_DOWNLINK], TENANT, DEVICE,
                           every_rule=True)

    def test_every_row_goes_where_the_table_says(self) -> None:
        """Each local topic of the table goes up on the cloud topic beside it, once, at QoS 1."""
        examples = [(local, cloud) for direction, local, cloud in contract() if direction == "up"]
        self.assertGreaterEqual(len(examples), len(KANTO_ROUTES))
        for local, cloud in examples:
            self.assertEqual([(d.topic, d.qos) for d in self.up.route(local)], [(cloud, 1)], local)

    def test_every_default_route_is_in_the_table(self) -> None:
        """No default route goes unmentioned: each one takes one of the table's examples."""
        examples = [local for direction, local, _ in contract() if direction == "up"]
        for route in KANTO_ROUTES:
            rule = Router([Rule.compile("hono", route.filter, route.topic, route.qos)], TENANT, DEVICE)
            self.assertTrue(any(rule.route(local) for local in examples), route.filter)

    def test_a_cloud_command_comes_down_unchanged_and_in_its_short_form(self) -> None:
        """A cloud command is published locally on its own topic and on ``c//<dev>/q/<id>/<name>``."""
        [(_, cloud, _)] = [row for row in contract() if row[0] == "down"]
        self.assertEqual(sorted(d.topic for d in self.down.route(cloud)),
                         sorted([cloud, "c//sensor7/q/42/ping"]))

    def test_the_examples_of_the_text(self) -> None:
        """The text's own examples: the levels after ``telemetry/`` are kept under the
        gateway's tenant and device, and the bare ``telemetry``, ``t``, ``event``, ``e`` go up
        as ``telemetry/<tenant>/<device>`` or ``event/<tenant>/<device>``."""
        text = section("links.md", "The default contract (Kanto / Hono)")
        self.assertIn("(`telemetry/room1/temp` goes up as `telemetry/<tenant>/<device>/room1/temp`)", text)
        self.assertEqual([d.topic for d in self.up.route("telemetry/room1/temp")], ["telemetry/acme/gw1/room1/temp"])
        for bare, kind in (("telemetry", "telemetry"), ("t", "telemetry"), ("event", "event"), ("e", "event")):
            self.assertEqual([d.topic for d in self.up.route(bare)], [f"{kind}/acme/gw1"], bare)

    def test_the_child_device_route_of_the_text(self) -> None:
        """The route the text gives for an app sending for a child device (Kanto's
        ``t/<tenant>/<child>``) loads and sends it as ``telemetry/<tenant>/<child>``."""
        text = section("links.md", "The default contract (Kanto / Hono)")
        [route] = [r for r in inline_mappings(text) if r.get("filter") == "t/+/+/#"]
        link = load_link({"routes": [route]})
        router = Router([Rule.compile("hono", r.filter, r.topic, r.qos) for r in link.routes], TENANT, DEVICE)
        self.assertEqual([d.topic for d in router.route("t/other/child")], ["telemetry/other/child"])
        self.assertEqual([d.topic for d in router.route("t/other/child/temp")], ["telemetry/other/child/temp"])


def inline_mappings(text: str) -> list[dict[str, Any]]:
    """Every ``{key: value, ...}`` flow mapping the text writes in backticks."""
    return [yaml.safe_load(code) for code in re.findall(r"`(\{[a-z_]+: [^`]*\})`", text)]


def load(data: dict[str, Any], directory: Path) -> config.Config:
    """The configuration ``data`` (with a state directory in ``directory``), loaded."""
    path = directory / "gateway.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"gateway": {"state_dir": str(directory / "state")}, **data}))
    return config.load(path)


def load_link(extra: dict[str, Any]) -> Any:
    """An MQTT link ``hono`` with ``extra`` keys, loaded (raises ConfigError when refused)."""
    directory = Path(SynchronousTestCase().mktemp())
    link = {"endpoint": "tcp:host=127.0.0.1:port=1883", **extra}
    return load({"links": {"links": {"hono": link}}}, directory).links.links["hono"]


class InlineSettingsTests(SynchronousTestCase):
    """The settings the pages write inline load as they say, and those they call errors are."""

    def test_every_inline_route_or_downlink_of_links_md_loads(self) -> None:
        """Each ``{filter: ..., topic: ...}`` of links.md is a valid route and downlink mapping."""
        mappings = inline_mappings((DOCS / "links.md").read_text(encoding="utf-8"))
        self.assertTrue(mappings)
        for mapping in mappings:
            load_link({"routes": [mapping], "downlink": [mapping]})

    def test_every_inline_downlink_entry_of_exosite_md_loads(self) -> None:
        """Each ``{alias: ...}`` of exosite.md is a valid downlink entry of an HTTP link."""
        mappings = [m for m in inline_mappings((DOCS / "exosite.md").read_text(encoding="utf-8")) if "alias" in m]
        self.assertTrue(mappings)
        link = {"url": "http://127.0.0.1:1", "vendor": "v", "model": "m", "downlink": mappings}
        load({"http_links": {"links": {"murano": link}}}, Path(self.mktemp()))

    def test_ipv6_endpoints(self) -> None:
        """links.md: an IPv6 address has its colons escaped (``tcp:host=\\:\\:1:port=1883`` or
        ``tcp:\\:\\:1:1883``); written as in a URL it is an error that says so."""
        text = (DOCS / "links.md").read_text(encoding="utf-8")
        for good in (r"tcp:host=\:\:1:port=1883", r"tcp:\:\:1:1883"):
            self.assertIn(f"`{good}`", text)
            load_link({"endpoint": good})
        for bad in ("host=::1", "host=[::1]"):
            self.assertIn(f"`{bad}`", text)
            with self.assertRaises(ConfigError) as raised:
                load_link({"endpoint": f"tcp:{bad}:port=1883"})
            self.assertIn("escaped", str(raised.exception))

    def test_an_ipv6_url_of_an_http_link(self) -> None:
        """exosite.md: an HTTP link's URL takes an IPv6 address in brackets."""
        self.assertIn("`https://[fd00::1]:8443`", (DOCS / "exosite.md").read_text(encoding="utf-8"))
        link = {"url": "https://[fd00::1]:8443", "vendor": "v", "model": "m"}
        load({"http_links": {"links": {"murano": link}}}, Path(self.mktemp()))


def key_rows(text: str) -> dict[str, str]:
    """The meaning cell of each key of the reference tables in ``text``, by key (a row of
    several keys, ```a`, `b``, gives each the same cell)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            for key in re.findall(r"`([a-z_]+)`", cells[0]):
                rows.setdefault(key, cells[2])
    return rows


def number(value: float) -> str:
    """``value`` as the docs write it (``1000``, not ``1000.0``)."""
    return str(int(value)) if float(value).is_integer() else str(value)


class BoundsTests(SynchronousTestCase):
    """Every setting with both a least and a largest value says its range where the page
    describes it: a value out of it is refused at load, which a reader must be able to foresee."""

    def test_ranges_are_documented(self) -> None:
        """``<least>–<largest>`` (or ``at most <largest>``, when the least is 1) in the key's row."""
        for settings, doc, heading in ((LinkSettings, "links.md", "Keys"),
                                       (HTTPLinkSettings, "exosite.md", "The HTTP link"),
                                       (IngestSettings, "exosite.md", "Configuration: `ingest:`")):
            rows = key_rows(section(doc, heading))
            for field in dataclasses.fields(settings):
                least, largest = field.metadata.get("min"), field.metadata.get("max")
                if least is None or largest is None:
                    continue
                row = rows.get(field.name, "")
                forms = [f"{number(least)}–{number(largest)}"] + ([f"at most {number(largest)}"] if least <= 1 else [])
                self.assertTrue(any(form in row for form in forms), f"{doc}: {field.name}: {forms[0]} not in {row!r}")
