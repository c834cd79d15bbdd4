"""The status page in a real headless Chromium, served by a real gateway on its loopback TCP
endpoint with the bearer token: the DOM has every part, and a screenshot is taken."""

from __future__ import annotations

import os
import re
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.admin.test_gatewayctl import QUIET
from tests.gatewayprocess import spawn_gateway
from tests.mqttclient import TestClient
from tests.ports import closed_port, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1100,900"]


class Elements(HTMLParser):
    """Collects element ids, the text inside each table by id, and svg/polyline/meta tags."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: dict[str, str] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if "id" in values:
            self.ids.add(values["id"])
            if tag in ("table", "p"):
                self._open.append(values["id"])
                self.text[values["id"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("table", "p") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for name in self._open:
            self.text[name] += data + " "


class BrowserTests(TestCase):
    """What an operator's browser shows."""

    timeout = 120

    def chromium(self, *args: str) -> Any:
        profile = Path(self.mktemp()).resolve()
        profile.mkdir(parents=True)
        return getProcessOutputAndValue(CHROMIUM, [*FLAGS, f"--user-data-dir={profile}", *args],
                                        env={**os.environ, "HOME": str(profile)}, path=str(profile))

    @inlineCallbacks
    def test_status_page_in_chromium(self) -> Any:
        """Links (one down, with its backlog), a journal stream with its sparkline, a running
        app, operations, the refresh; a screenshot of it all."""
        if CHROMIUM is None:
            raise SkipTest("chromium is not installed (make test-deps installs it)")
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        broker, admin = free_port(), free_port()
        sock = Path(f"/tmp/gwpage-{os.getpid()}-{admin}.sock")  # short enough for sun_path
        for leftover in (sock, Path(f"{sock}.lock")):  # the gateway is killed at the end
            self.addCleanup(leftover.unlink, True)
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: '{work / 'state'}'\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={closed_port(self)}'\n"
            f"apps:\n  programs:\n    sleeper:\n      command: /bin/sleep 600\n      startsecs: 0\n"
            f"ingest:\n  endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            f"admin:\n  socket: '{sock}'\n"
            f"  tcp: 'tcp:{admin}:interface=127.0.0.1'\n  history_interval: 1.0\n  page_refresh: 3\n{QUIET}")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        self.assertEqual((yield client.connect(broker)), 0)
        for i in range(3):
            yield client.publish(f"telemetry/room{i}", b"21.5", 1)  # journaled: the link is down
        token = (work / "state" / "admin" / "token").read_text().strip()
        url = f"http://127.0.0.1:{admin}/?token={token}"

        out, err, code = yield self.chromium("--dump-dom", url)
        if code != 0 and b"<html" not in out:
            raise SkipTest(f"chromium cannot run here (exit {code}): {err.decode()[-300:]}")
        page = Elements()
        page.feed(out.decode())
        self.assertTrue({"summary", "links", "streams", "apps", "operations"} <= page.ids, page.ids)
        self.assertIn(("meta", {"http-equiv": "refresh", "content": "3"}), page.tags)
        backlog = re.search(r"cloud\s+down\s+(\d+)\b", page.text["links"])
        self.assertIsNotNone(backlog, page.text["links"])
        self.assertGreaterEqual(int(backlog.group(1)), 3)  # ours, and the gateway's own reports if any
        self.assertIn("link-cloud", page.text["streams"])
        self.assertTrue(any(tag == "svg" and attrs.get("class") == "spark" for tag, attrs in page.tags))
        self.assertTrue(any(tag == "polyline" for tag, _ in page.tags), "a sparkline has samples")
        self.assertRegex(page.text["apps"], r"sleeper\s+sleeper\s+config\s+RUNNING")
        self.assertIn("no operations running", page.text["operations"])
        self.assertFalse(any(tag == "script" for tag, _ in page.tags))
        for tag, attrs in page.tags:  # self-contained: nothing fetched from elsewhere
            self.assertFalse(attrs.get("src") or (tag == "link" and attrs.get("href")), (tag, attrs))

        shot = work / "status.png"
        out, err, code = yield self.chromium(f"--screenshot={shot}", url)
        self.assertEqual(code, 0, err.decode()[-500:])
        data = shot.read_bytes()
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(struct.unpack(">II", data[16:24]), (1100, 900))
        self.assertGreater(len(data), 10_000, "a page with content, not a blank one")

        out, err, code = yield self.chromium("--dump-dom", f"http://127.0.0.1:{admin}/")
        self.assertIn(b"a valid bearer token is needed", out)
