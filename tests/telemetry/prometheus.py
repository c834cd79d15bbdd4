"""A real Prometheus server on 127.0.0.1 scraping the gateway, for integration tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from twisted.internet import error
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from tests.peerprocess import PeerProcess

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class Prometheus(PeerProcess):
    """One Prometheus scraping ``target`` (host:port) every second, its storage in ``directory``.

    :param http: a treq-like client (``get``, ``json_content``) for its API.
    """

    def __init__(self, reactor: Any, directory: Path, port: int, target: str, http: Any) -> None:
        super().__init__(reactor, port)
        self.http = http
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: gateway\n    static_configs:\n"
            f"      - targets: ['{target}']\n")

    @property
    def url(self) -> str:
        """Its HTTP API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (its API answers a few seconds later: poll :meth:`targets`)."""
        args = [PROMETHEUS, f"--config.file={self.config}", f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.spawn(PROMETHEUS, args)

    @inlineCallbacks
    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``: its ``data`` (raises on a connection error or a failed query)."""
        query = f"?{urlencode(params)}" if params else ""
        response = yield self.http.get(f"{self.url}/api/v1/{path}{query}")
        body = yield response.content()
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise RuntimeError(f"prometheus {path}: {answer}")
        return answer["data"]

    @inlineCallbacks
    def wait_until(self, check: Any, timeout: float, what: str) -> Any:
        """Call ``check()`` (a Deferred or value) every 0.25 s until it is truthy; fail after ``timeout`` s."""
        tries = int(timeout / 0.25)
        last: Any = None
        for _ in range(tries):
            try:
                last = yield check()
            except (error.ConnectError, error.ConnectionRefusedError, RuntimeError, ValueError) as exc:
                last = exc
            else:
                if last:
                    return last
            yield deferLater(self.reactor, 0.25, lambda: None)
        output = self.proto.output.decode(errors="replace") if self.proto else ""
        raise AssertionError(f"{what} not within {timeout} s (last: {last!r}); prometheus said:\n{output}")
