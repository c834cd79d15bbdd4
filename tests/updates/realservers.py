"""Real peers for integration tests: nginx on 127.0.0.1 and a TCP proxy that cuts connections."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater

from gateway.updates.httpclient import close_connections
from tests.ports import free_port, listened_by

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    {access_log}
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        limit_rate {rate};
    }}
}}
"""

#: One access-log line per request: status, the Range asked for, body bytes sent.
ACCESS_LOG = """log_format ranges '$status "$http_range" $body_bytes_sent';
    access_log {path} ranges;"""


class Nginx:
    """nginx serving ``root`` on 127.0.0.1 with a throw-away config.

    :param root: the directory served.
    :param workdir: where the config, pid and logs go.
    :param rate: nginx's ``limit_rate`` per connection (``0`` for none, ``2m`` for 2 MB/s).
    :param access_log: log each request to ``workdir/access.log`` (see :meth:`requests`).
    """

    def __init__(self, root: Path, workdir: Path, rate: str = "0", access_log: bool = False) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.access_log = workdir.absolute() / "access.log"
        log = ACCESS_LOG.format(path=self.access_log) if access_log else "access_log off;"
        conf = workdir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=workdir.absolute(), port=self.port, root=root.absolute(), rate=rate,
                                          access_log=log))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen([binary, "-c", str(conf.absolute()), "-p", str(workdir.absolute())],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listened_by(self.process.pid, self.port):  # (another run's server may hold the port)
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError((workdir / "error.log").read_text() if (workdir / "error.log").exists() else "")
            time.sleep(0.05)

    def requests(self) -> list[tuple[int, str, int]]:
        """The requests logged so far (with ``access_log=True``): status, Range header
        (``""`` when none) and body bytes sent, oldest first. A request is logged when it
        ends, also when the client went away mid-body."""
        if not self.access_log.exists():
            return []
        entries = []
        for line in self.access_log.read_text().splitlines():
            status, rest = line.split(" ", 1)
            asked, sent = rest.rsplit(" ", 1)
            asked = asked.strip('"')
            entries.append((int(status), "" if asked == "-" else asked, int(sent)))  # nginx logs "-" for none
        return entries

    def stop(self) -> None:
        """Stop nginx and wait for it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def nginx_available() -> bool:
    """True when an nginx binary is installed."""
    return bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))


class _Upstream(protocol.Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.downstream.from_upstream(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.downstream.transport.loseConnection()


class _Downstream(protocol.Protocol):
    factory: CuttingProxy

    def connectionMade(self) -> None:
        self.upstream: _Upstream | None = None
        self.buffered: list[bytes] = []
        self.transport.pauseProducing()
        client = protocol.ClientCreator(self.factory.reactor, _Upstream, self)
        client.connectTCP("127.0.0.1", self.factory.target_port).addErrback(lambda _: self.transport.loseConnection())

    def upstream_ready(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        proxy = self.factory
        if proxy.cuts and proxy.forwarded + len(data) >= proxy.cuts[0]:
            keep = proxy.cuts.pop(0) - proxy.forwarded
            self.transport.write(data[:keep])
            proxy.forwarded += keep
            self.transport.loseConnection()
            assert self.upstream is not None
            self.upstream.transport.loseConnection()
            return
        proxy.forwarded += len(data)
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


class CuttingProxy(protocol.ServerFactory):
    """Forwards 127.0.0.1 connections to ``target_port``; closes the connection each time the
    bytes forwarded to clients (all connections together) reach the next offset in ``cuts``.

    :param reactor: the reactor.
    :param target_port: the server's port.
    :param cuts: ascending byte offsets at which to cut.
    """

    protocol = _Downstream

    def __init__(self, reactor: Any, target_port: int, cuts: list[int]) -> None:
        self.reactor = reactor
        self.target_port = target_port
        self.cuts = list(cuts)
        self.forwarded = 0
        self.port: IListeningPort | None = None

    def listen(self) -> int:
        """Start listening on 127.0.0.1; return the port."""
        self.port = self.reactor.listenTCP(0, self, interface="127.0.0.1")
        return int(self.port.getHost().port)


def close_pool(http: Any) -> Any:
    """Close a ``make_http_client`` client's cached connections, after the reactor turn in
    which finished responses hand their connections back to the pool.

    :param http: the ``treq`` client.
    :return: a Deferred that fires when the connections are closed.
    """
    from twisted.internet import reactor  # imported late: the bench installs its reactor first

    return deferLater(reactor, 0.01, lambda: None).addCallback(lambda _: close_connections(http))
