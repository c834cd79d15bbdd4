"""The YAML examples of the docs (README.md, docs/*.md) are what they claim to be: every
configuration block loads as a drop-in, every app manifest and container description parses,
and every ``make`` target they show is the Makefile's. The docs are the contract users copy
from; an example that does not load (or run) breaks it."""

from __future__ import annotations

import getpass
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway import config
from gateway.apps.manifest import parse_app_yaml
from gateway.containers.descfile import from_mapping
from gateway.errors import ConfigError, GatewayError
from gateway.updates.operation import parse_request
from tests.tlscerts import make_pki

ROOT = Path(__file__).resolve().parent.parent
#: The docs with examples (benchmarks.md only reports measurements).
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
#: The configuration's sections: a block whose top-level keys are among them is gateway config.
SECTIONS = frozenset({"gateway", "broker", "apps", "links", "http_links", "ingest", "journal", "containers",
                      "commands", "telemetry", "admin", "uploads", "updates", "fleet", "twin"})
#: Blocks that are another program's configuration (Prometheus'), by a top-level key.
FOREIGN = frozenset({"scrape_configs"})
#: The links the examples of one feature name without declaring them (journal.md's streams).
BASE = """\
gateway:
  state_dir: {state}
links:
  links:
    hono: {{endpoint: "tcp:host=127.0.0.1:port=1"}}
    aws: {{endpoint: "tcp:host=127.0.0.1:port=1"}}
containers:
  socket: /run/gateway-docs/podman.sock  # its default under the test's deep state_dir is too long
"""
AWS_CREDENTIALS = "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = secret\n"


def yaml_blocks() -> Iterator[tuple[str, str]]:
    """Every fenced ``yaml`` block of the docs, with where it is (``docs/x.md:LINE``)."""
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(r"^```yaml\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, match.start()) + 1
            yield f"{doc.relative_to(ROOT)}:{line}", match.group(1)


class DocConfigExamplesTests(SynchronousTestCase):
    """Each YAML example of the docs loads, or parses, as what it shows."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.pki = make_pki(self.dir / "pki")

    def with_files(self, where: str, text: str) -> str:
        """``text`` with each ``/etc/gateway/...`` file it names made under the test's
        directory (a certificate, key, CA, token or credentials file as its name says), and
        each ``user:`` the user running the test (the check wants an existing user)."""
        etc = self.dir / re.sub(r"\W", "_", where)
        etc.mkdir()
        for name in sorted(set(re.findall(r"/etc/gateway/[\w.-]+", text))):
            path = etc / name.rsplit("/", 1)[1]
            if name.endswith(".key"):
                content = Path(self.pki["client_key"]).read_text()
            elif "ca" in path.stem.lower() and name.endswith((".pem", ".crt")):
                content = Path(self.pki["ca"]).read_text()
            elif name.endswith((".pem", ".crt")):
                content = Path(self.pki["client_cert"]).read_text()
            elif "aws-credentials" in name:
                content = AWS_CREDENTIALS
            elif name.endswith(".json"):
                content = '{"auths": {}}\n'
            else:
                content = "a-token\n"
            path.write_text(content)
            text = text.replace(name, str(path))
        return re.sub(r"^(\s*)user: \S+", rf"\g<1>user: {getpass.getuser()}", text, flags=re.M)

    def load(self, where: str, block: dict[str, Any]) -> list[str]:
        """Load ``block`` as a drop-in over the base configuration.

        :return: the problems, each naming ``where``.
        """
        directory = self.dir / re.sub(r"\W", "_", where) / "conf"
        (directory / "conf.d").mkdir(parents=True)
        (directory / "gateway.yaml").write_text(BASE.format(state=directory / "state"))
        (directory / "conf.d" / "50-example.yaml").write_text(yaml.safe_dump(block))
        try:
            config.load(directory / "gateway.yaml")
        except ConfigError as error:
            return [f"{where}: {line}" for line in error.errors]
        return []

    def test_every_yaml_block_loads(self) -> None:
        """Every configuration block loads as a drop-in (an indented block, a link's keys,
        over the doc's block before it); every app manifest (``app.yaml``) and container
        description parses; no block is of a kind this test does not know."""
        checked, problems = 0, []
        previous: dict[str, Any] = {}
        for where, text in yaml_blocks():
            doc = where.split(":")[0]
            data = yaml.safe_load(self.with_files(where, text))
            if text.startswith(" "):
                # A link's keys (aws.md's variants), in place of those of the doc's last link.
                self.assertEqual(previous.get("doc"), doc, f"{where}: an indented block with no block before it")
                links = previous["block"]["links"]["links"]
                name = list(links)[-1]
                problems += self.load(where, config.merge(previous["block"], {"links": {"links": {name: data}}}))
            elif isinstance(data, dict) and set(data) <= SECTIONS:
                problems += self.load(where, data)
                previous = {"doc": doc, "block": data}
            elif isinstance(data, dict) and {"name", "version"} <= set(data):
                try:
                    parse_app_yaml(text)
                except GatewayError as error:
                    problems.append(f"{where}: {error}")
            elif isinstance(data, dict) and "image" in data:
                try:
                    from_mapping(data, where)
                except GatewayError as error:
                    problems.append(str(error))
            elif not (isinstance(data, dict) and set(data) & FOREIGN):
                problems.append(f"{where}: a block of unknown kind")
            checked += 1
        self.assertEqual(problems, [])
        self.assertGreater(checked, 10)


def json_blocks(doc: str) -> Iterator[tuple[str, Any]]:
    """Every fenced ``json`` block of ``doc`` (``docs/x.md``) that is one JSON value, with
    where it is."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    for match in re.finditer(r"^```json\n(.*?)^```", text, re.S | re.M):
        try:
            value = json.loads(match.group(1))
        except ValueError:
            continue  # several messages, or one shortened with "..."
        yield f"{doc}:{text.count(chr(10), 0, match.start()) + 1}", value


class DocUpdateRequestTests(SynchronousTestCase):
    """The update requests the docs show are requests the update service takes."""

    def test_update_requests_parse(self) -> None:
        """updates.md's request parses as it is; containers.md's once its digests, shown as
        ``...``, are filled in."""
        requests = [(where, value) for doc in ("docs/updates.md", "docs/containers.md")
                    for where, value in json_blocks(doc)
                    if isinstance(value, dict) and "softwareModules" in value and "status" not in value]
        self.assertEqual([where.split(":")[0] for where, _ in requests], ["docs/updates.md", "docs/containers.md"])
        for where, value in requests:
            text = json.dumps(value).replace('"SHA256": "..."', '"SHA256": "' + "0" * 64 + '"')
            operation = parse_request("install", json.loads(text))
            self.assertEqual(operation.correlation_id, value["correlationId"], where)


class DocMakeTargetsTests(SynchronousTestCase):
    """The ``make`` commands the docs show are the Makefile's."""

    def test_every_make_target_shown_exists(self) -> None:
        """Every ``make <target>`` of the docs, inline (`` `make tools-venv` ``) or on a line of
        a shell block (``DEB_BUILD_OPTIONS=nocheck make deb``), names a target of the Makefile."""
        makefile = ROOT / "Makefile"
        if not makefile.exists():
            raise SkipTest("no Makefile here (the .deb build runs the suite on a copy without it)")
        targets = set(re.findall(r"^([a-z][a-z-]*):", makefile.read_text(encoding="utf-8"), re.M))
        shown: set[tuple[str, str]] = set()
        for doc in DOCS:
            text = doc.read_text(encoding="utf-8")
            blocks = "\n".join(re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M))
            for target in re.findall(r"`make ([a-z][a-z-]*)", text) + re.findall(
                    r"^(?:\w+=\S+ )*make ([a-z][a-z-]*)", blocks, re.M):
                shown.add((str(doc.relative_to(ROOT)), target))
        self.assertEqual(sorted((doc, target) for doc, target in shown if target not in targets), [])
        self.assertGreater(len(shown), 4)


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub makes of a page's headings (outside fenced blocks): lower case, every
    character but letters, digits, ``-``, ``_`` and spaces dropped, spaces made ``-``; a
    repeated one gets ``-1``, ``-2``, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.*)$", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M), re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return anchors


class DocLinksTests(SynchronousTestCase):
    """The links between the pages lead somewhere."""

    def test_every_relative_link_and_anchor_resolves(self) -> None:
        """Every relative Markdown link of README.md and docs/*.md (``[x](links.md#keys)``,
        ``[x](#offline)``) names a file of the repository that exists and, with an anchor, a
        heading of that page. (Links out of the repository, to the team's DESIGN.md, are not
        looked at: a checkout alone does not have it.)"""
        pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        broken: list[str] = []
        checked = 0
        for page in pages:
            text = page.read_text(encoding="utf-8")
            for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)):
                if re.match(r"[a-z]+:", target):
                    continue  # (https:, mailto:)
                path, _, anchor = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                if ROOT not in linked.parents and linked != ROOT:
                    continue
                checked += 1
                where = f"{page.relative_to(ROOT)}: {target}"
                if not linked.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(
                        linked.read_text(encoding="utf-8")):
                    broken.append(f"{where} (no such heading)")
        self.assertEqual(broken, [])
        self.assertGreater(checked, 100)

    def test_anchors_are_githubs(self) -> None:
        """The anchors are made as GitHub makes them (code, dots, slashes and parentheses dropped;
        a second heading of the same words numbered)."""
        self.assertEqual(heading_anchors("## Links (`gateway/links/snapshot.py`), per link\n"
                                         "# The default contract (Kanto / Hono)\n## Keys\n### Keys\n"
                                         "```sh\n# not a heading\n```\n"),
                         {"links-gatewaylinkssnapshotpy-per-link", "the-default-contract-kanto--hono",
                          "keys", "keys-1"})


class IdleTimeoutDocsTests(SynchronousTestCase):
    """Each HTTP listener's page says after how long a connection on which nothing comes is
    closed, and says what the code sets: the admin API's and /metrics' 60 s (twisted.web's
    default, which they keep) were written nowhere, only the ingest's 75 s were."""

    def test_each_listeners_idle_timeout_is_the_one_its_page_gives(self) -> None:
        from twisted.internet.task import Clock

        from gateway.ingest.service import IDLE_TIMEOUT
        from gateway.telemetry.metricspage import MetricsFactory
        from tests.admin.test_api import Harness

        admin = Harness(self)
        listeners = {"admin.md": {admin.site(None).timeOut, admin.site(b"t0ken" * 4).timeOut},
                     "telemetry.md": {MetricsFactory(lambda accept: (b"", "text/plain"), Clock()).timeOut},
                     "exosite.md": {IDLE_TIMEOUT}}
        for page, timeouts in listeners.items():
            text = " ".join((ROOT / "docs" / page).read_text(encoding="utf-8").split())
            said = re.findall(r"A connection on which nothing comes for (\d+) s is closed", text)
            self.assertEqual((page, said), (page, [f"{t:g}" for t in timeouts]))
