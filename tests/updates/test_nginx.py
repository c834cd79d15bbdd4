"""The downloader against a real nginx on 127.0.0.1, through a proxy that cuts connections."""

from __future__ import annotations

import hashlib
import os
import random
from functools import partial
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, TestCase

from gateway.updates.downloader import Downloader
from gateway.updates.httpclient import make_http_client
from gateway.updates.settings import DownloadSettings
from tests.updates.realservers import CuttingProxy, Nginx, close_pool, nginx_available

SIZE = 50 * 10**6


class NginxDownloadTests(TestCase):
    """Resumes over a real HTTP server and real sockets."""

    timeout = 60

    def setUp(self) -> None:
        if not nginx_available():
            raise SkipTest("nginx is not installed (make test-deps)")
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.data = os.urandom(SIZE)
        (self.root / "big.bin").write_bytes(self.data)
        self.nginx = Nginx(self.root, Path(self.mktemp()))
        self.addCleanup(self.nginx.stop)
        self.pool = ThreadPool(1, 1, name="download-test")
        self.pool.start()
        self.addCleanup(self.pool.stop)

    def downloader(self) -> Downloader:
        settings = DownloadSettings(allow_http=True, idle_timeout=10.0)
        http = make_http_client(reactor, settings)
        self.addCleanup(close_pool, http)
        return Downloader(http, reactor, settings, partial(deferToThreadPool, reactor, self.pool), lambda n: 0.05)

    @inlineCallbacks
    def test_ten_cuts_during_50mb(self) -> None:
        """Ten cuts at random offsets: the file completes, SHA-256 matches, at most 1 MiB is fetched twice."""
        cuts = sorted(random.Random(7).sample(range(1, SIZE), 10))
        proxy = CuttingProxy(reactor, self.nginx.port, cuts)
        port = proxy.listen()
        self.addCleanup(proxy.port.stopListening)
        digest = hashlib.sha256(self.data).hexdigest()
        destination = Path(self.mktemp())
        download = self.downloader().download(
            f"http://127.0.0.1:{port}/big.bin", destination, size=SIZE, digests={"SHA256": digest}
        )
        path = yield download.result
        self.assertEqual(proxy.cuts, [])
        self.assertEqual(hashlib.sha256(path.read_bytes()).hexdigest(), digest)
        refetched = proxy.forwarded - SIZE
        self.assertLessEqual(refetched, 2**20)
