"""SIGKILL a process running the update service mid-download and mid-install: it resumes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from tests.updates.realservers import Nginx, nginx_available

ROOT = Path(__file__).resolve().parents[2]
SIZE = 6 * 2**20


class RestartTests(TestCase):
    """A stand-in gateway (``tests/updates/oprunner.py``) is killed and started again."""

    timeout = 90

    def setUp(self) -> None:
        if not nginx_available():
            raise SkipTest("nginx is not installed (make test-deps)")
        www = Path(self.mktemp())
        www.mkdir()
        self.data = os.urandom(SIZE)
        (www / "app.tar.gz").write_bytes(self.data)
        (www / "gateway.deb").write_bytes(self.data[:1000])
        self.nginx = Nginx(www, Path(self.mktemp()), rate="2m")
        self.addCleanup(self.nginx.stop)
        self.state = Path(self.mktemp()).absolute()
        self.state.mkdir()
        self.runs = 0

    def request(self, filename: str, body: bytes) -> Path:
        path = self.state.parent / "request.json"
        path.write_text(json.dumps({"correlationId": "op-7", "softwareModules": [{
            "softwareModule": {"name": "thing", "version": "7"},
            "artifacts": [{"filename": filename, "size": len(body),
                           "download": {"HTTP": {"url": f"http://127.0.0.1:{self.nginx.port}/{filename}"}},
                           "checksums": {"SHA256": hashlib.sha256(body).hexdigest()}}]}]}))
        return path

    def start(self, *args: Path) -> subprocess.Popen[bytes]:
        self.runs += 1
        log = (self.state.parent / f"run{self.runs}.log").open("wb")
        self.addCleanup(log.close)
        process = subprocess.Popen([sys.executable, "-m", "tests.updates.oprunner", str(self.state), *map(str, args)],
                                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        return process

    def statuses(self) -> list[dict[str, Any]]:
        path = self.state / "statuses.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for(self, what: str, condition: Callable[[], bool], seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}; statuses: {self.statuses()}")
            time.sleep(0.05)

    def finish(self) -> str:
        """Start the runner again and wait for it to end; return its log."""
        process = self.start()
        self.assertEqual(process.wait(60), 0, (self.state.parent / f"run{self.runs}.log").read_text())
        return (self.state.parent / f"run{self.runs}.log").read_text()

    def test_sigkill_mid_download_resumes_the_download(self) -> None:
        """Killed at a third of the download, the next run resumes from the durable part and installs."""
        first = self.start(self.request("app.tar.gz", self.data))
        self.wait_for("progress", lambda: any(s.get("progress", 0) >= 25 for s in self.statuses()))
        first.kill()
        first.wait()
        log = self.finish()
        self.assertIn("resuming", log)
        self.assertIn("resuming operation op-7 at DOWNLOADING", log)
        self.assertEqual((self.state / "installed").read_bytes(), self.data)
        self.assertEqual(self.statuses()[-1]["status"], "FINISHED_SUCCESS")

    def test_sigkill_mid_gateway_install_reports_after_restart(self) -> None:
        """Killed while the detached .deb installer runs, the next run reports its result."""
        first = self.start(self.request("gateway.deb", self.data[:1000]))
        self.wait_for("INSTALLING", lambda: any(s["status"] == "INSTALLING" for s in self.statuses()))
        first.kill()
        first.wait()
        log = self.finish()
        self.assertIn("resuming operation op-7 at INSTALLING", log)
        last = self.statuses()[-2:]
        self.assertEqual([s["status"] for s in last], ["INSTALLED", "FINISHED_SUCCESS"])
        self.assertIn("gateway package 7 installed", last[0]["message"])
