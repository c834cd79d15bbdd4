"""docs/architecture.md's service tree is the tree ``gateway/tree.py`` builds: the same
services, under the names ``gatewayctl status`` shows, in the order they start."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from gateway import config as gateway_config
from gateway.tree import build_service

ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def documented_services() -> list[str]:
    """The service names of the table under "## The service tree", in its order."""
    text = ARCHITECTURE.read_text(encoding="utf-8").split("## The service tree", 1)[1].split("\n## ", 1)[0]
    return [match.group(1) for match in re.finditer(r"^\| `([a-z-]+)`", text, re.M)]


class ServiceTreeDocTests(SynchronousTestCase):
    """The table of docs/architecture.md lists the tree's children."""

    def test_the_table_is_the_tree_with_everything_on(self) -> None:
        """With every optional service configured, the tree's children are the table's rows,
        in order (the per-app accounting too, which is there where it is off as well)."""
        work = Path(self.mktemp())
        work.mkdir()
        (work / "token").write_text("a-token\n")
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway: {{state_dir: {work / 'state'}}}\n"
            "telemetry: {metrics_endpoint: ''}\n"
            "links:\n  links:\n    aws: {endpoint: 'tcp:host=127.0.0.1:port=1'}\n"
            "twin: {shadow_link: aws}\n"
            "containers: {enabled: true, socket: /run/gateway-test/podman.sock}\n"  # (the default is too deep here)
            f"fleet: {{enabled: true, base_url: 'http://127.0.0.1:1', allow_http: true, token_file: {work / 'token'}}}\n")
        root = build_service(gateway_config.load(path), reactor)
        self.addCleanup(root.getServiceNamed("state").stopService)  # (the state directory's lock)
        self.assertEqual(documented_services(), [service.name for service in root])


class SourcePathsTests(SynchronousTestCase):
    """The source files the pages name are there: a reader sent to ``gateway/journal/x.py``
    after a module was renamed or split finds nothing."""

    def test_every_named_source_file_exists(self) -> None:
        """Each ``gateway/...``, ``tests/...``, ``bench/...``, ``debian/...``, ``conf/...`` or
        ``twisted/...`` path a page of the docs (README.md, docs/*.md; not benchmarks.md, whose
        sessions tell of modules since gone, nor ``bench/results/``, which benchmarks write) writes
        in backticks exists, and so does each file named after one in the same cell
        (``gateway/admin/token.py``, ``settings.py``: ``gateway/admin/settings.py``)."""
        root = ARCHITECTURE.parent.parent
        if not (root / "gateway").is_dir():
            raise SkipTest("no sources here (the .deb build runs the suite on a copy of tests/ and docs/"
                           " without them)")
        pages = [root / "README.md",
                 *sorted(page for page in ARCHITECTURE.parent.glob("*.md") if page.name != "benchmarks.md")]
        missing, named = [], 0
        for page in pages:
            text = page.read_text(encoding="utf-8")
            for group in re.finditer(r"`((?:gateway|tests|bench|debian|conf|twisted)/[\w./-]+)`((?:, `[\w.]+\.py`)*)",
                                     text):
                path = group.group(1)
                siblings = [str(Path(path).parent / name) for name in re.findall(r"`([\w.]+\.py)`", group.group(2))]
                for each in [path, *siblings]:
                    if each.startswith("bench/results/"):
                        continue
                    named += 1
                    if not (root / each).exists():
                        missing.append(f"{page.name}: {each}")
        self.assertGreater(named, 150)
        self.assertEqual(missing, [])
