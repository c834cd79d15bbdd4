"""Real storage servers for the upload tests: Azurite (npm), ministack (its own virtualenv),
a TCP proxy that cuts uploads mid-body, and a helper that waits for upload statuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from tests.ports import free_port, listened_by

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv-tools"
AZURITE = TOOLS / "node_modules" / ".bin" / "azurite-blob"
MINISTACK = TOOLS / "bin" / "ministack"
#: Azurite's well-known development account.
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class ServerProcess:
    """A server process on 127.0.0.1:``port``, started with :meth:`start` (waits until it accepts).

    :param argv: the command.
    :param port: the port it listens on.
    :param env: extra environment.
    :param log: where its output goes.
    """

    def __init__(self, argv: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.argv, self.port, self.env, self.log = argv, port, env, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, reactor: Any, timeout: float = 60.0) -> Deferred[None]:
        """Start it; fires once it listens on its port (fails after ``timeout``, or when it
        exits first: a port another run's server holds)."""
        out = open(self.log, "wb")
        self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env}, start_new_session=True)
        out.close()
        deadline = reactor.seconds() + timeout

        def poll() -> Any:
            assert self.process is not None
            if listened_by(self.process.pid, self.port):
                return None
            if self.process.poll() is not None or reactor.seconds() > deadline:
                self.stop()
                raise RuntimeError(f"{self.argv[0]} did not start: {self.log.read_text()[-2000:]}")
            return deferLater(reactor, 0.1, poll)

        return deferLater(reactor, 0, poll)

    def stop(self) -> None:
        """Stop it (its whole session) and wait."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def azurite(workdir: Path) -> ServerProcess:
    """Azurite's blob service (installed by ``make tools-venv``)."""
    if not AZURITE.exists():
        raise SkipTest(f"{AZURITE} is missing: run make tools-venv")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    return ServerProcess([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                          str(workdir), "--silent", "--skipApiVersionCheck"], port, {}, workdir / "azurite.log")


def ministack(workdir: Path, services: str = "s3") -> ServerProcess:
    """ministack's S3 with signature checks on (installed by ``make tools-venv``).

    Its root key (``test``) passes header signatures unchecked; an IAM user's key (``iam``
    in ``services``) has them checked.
    """
    if not MINISTACK.exists():
        raise SkipTest(f"{MINISTACK} is missing: run make tools-venv")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {"AUTH": "true", "GATEWAY_PORT": str(port), "BIND_HOST": "127.0.0.1", "MINISTACK_HOST": "127.0.0.1",
           "SERVICES": services, "S3_DATA_DIR": str(workdir / "s3"), "LOG_LEVEL": "WARNING"}
    return ServerProcess([str(MINISTACK)], port, env, workdir / "ministack.log")


class _Upstream(protocol.Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.downstream.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.downstream.transport.loseConnection()


class _Downstream(protocol.Protocol):
    factory: UploadCuttingProxy

    def connectionMade(self) -> None:
        self.upstream: _Upstream | None = None
        self.index = len(self.factory.sent)
        self.factory.sent.append(0)
        self.factory.open.append(self)
        self.transport.pauseProducing()
        client = protocol.ClientCreator(self.factory.reactor, _Upstream, self)
        client.connectTCP("127.0.0.1", self.factory.target_port).addErrback(lambda _: self.transport.loseConnection())

    def upstream_ready(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        proxy = self.factory
        assert self.upstream is not None
        if proxy.cut_after is not None and proxy.total + len(data) >= proxy.cut_after:
            keep = proxy.cut_after - proxy.total
            proxy.cut_after = None  # one cut
            self.upstream.transport.write(data[:keep])
            proxy.total += keep
            proxy.sent[self.index] += keep
            if proxy.hold:  # the client's connection stays open, nothing more taken from it
                self.transport.pauseProducing()
                proxy.held.callback(None)
                return
            self.transport.abortConnection()
            self.upstream.transport.abortConnection()
            return
        proxy.total += len(data)
        proxy.sent[self.index] += len(data)
        self.upstream.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.factory.open.count(self):
            self.factory.open.remove(self)
        if self.upstream is not None:
            self.upstream.transport.loseConnection()

    def abort(self) -> None:
        """Abort both sides (a held client's end of the connection is not read: its close
        went unnoticed, and the server would wait for the open upstream side)."""
        self.transport.abortConnection()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()


class UploadCuttingProxy(protocol.ServerFactory):
    """Forwards 127.0.0.1 connections to ``target_port``; aborts both sides once the bytes sent
    by clients (all connections together) reach ``cut_after``, once (or, with ``hold``, stops
    reading from that client there, its connection left open: an upload stalled); counts each
    connection's bytes in ``sent``.

    :param reactor: the reactor.
    :param target_port: the server's port.
    :param cut_after: the byte offset of the cut, or None.
    :param hold: stall the client at ``cut_after`` instead of cutting; ``held`` fires then.
    """

    protocol = _Downstream

    def __init__(self, reactor: Any, target_port: int, cut_after: int | None, hold: bool = False) -> None:
        self.reactor, self.target_port, self.cut_after, self.hold = reactor, target_port, cut_after, hold
        self.held: Deferred[None] = Deferred()
        self.total = 0
        self.sent: list[int] = []
        self.port: Any = None
        #: the connections still open
        self.open: list[_Downstream] = []

    def listen(self) -> int:
        """Start listening on 127.0.0.1; return the port."""
        self.port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return int(self.port.getHost().port)

    def close(self) -> Any:
        """Stop listening and abort the connections still open (both sides); fires once the
        port is closed."""
        for downstream in list(self.open):
            downstream.abort()
        return self.port.stopListening()


class StatusWatcher:
    """The service's ``publish``: keeps every message and fires waiters on final statuses and
    outbox requests.

    :param status_topic: the status topic.
    :param request_topic: the outbox topic.
    """

    def __init__(self, status_topic: str = "edge/gateway/uploads/lastUpload",
                 request_topic: str = "edge/gateway/uploads/request") -> None:
        self.status_topic, self.request_topic = status_topic, request_topic
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._final: dict[str, list[Deferred[dict[str, Any]]]] = {}
        self._requests: list[tuple[int, Deferred[list[dict[str, Any]]]]] = []

    def __call__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        value = json.loads(payload)
        self.messages.append((topic, value, retain))
        if topic == self.status_topic and value["state"] in ("SUCCESS", "FAILED", "CANCELED"):
            for d in self._final.pop(value["correlationId"], []):
                d.callback(value)
        if topic == self.request_topic:
            for count, d in list(self._requests):
                if len(self.requests()) >= count:
                    self._requests.remove((count, d))
                    d.callback(self.requests())

    def statuses(self) -> list[dict[str, Any]]:
        """Every status published, oldest first."""
        return [v for t, v, _ in self.messages if t == self.status_topic]

    def requests(self) -> list[dict[str, Any]]:
        """Every outbox request's value, oldest first."""
        return [v["value"] for t, v, _ in self.messages if t == self.request_topic]

    def final(self, cid: str) -> Deferred[dict[str, Any]]:
        """Fires with the next final status of ``cid``."""
        d: Deferred[dict[str, Any]] = Deferred()
        self._final.setdefault(cid, []).append(d)
        return d

    def wait_requests(self, count: int) -> Deferred[list[dict[str, Any]]]:
        """Fires once ``count`` requests were sent."""
        d: Deferred[list[dict[str, Any]]] = Deferred()
        if len(self.requests()) >= count:
            d.callback(self.requests())
        else:
            self._requests.append((count, d))
        return d
