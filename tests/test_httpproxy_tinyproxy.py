"""The gateway's HTTP client through a real proxy: tinyproxy (Debian's ``tinyproxy``, installed
by ``make test-deps``) on 127.0.0.1, in front of an https server and a plain http one of the test."""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server

from gateway.httpproxy import ProxyError
from gateway.netfailures import describe
from gateway.operations.httpclient import close_connections, make_http_client
from gateway.proxysettings import ProxySettings
from tests.peerprocess import PeerProcess
from tests.ports import free_port
from tests.tlscerts import make_pki, make_server

reactor: Any = global_reactor


class Echo(resource.Resource):
    """Answers with the scheme it was reached by and the ``Via`` header it got (a forwarding proxy adds one)."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        via = request.getHeader(b"via") or b"-"
        auth = request.getHeader(b"proxy-authorization")
        return b"secure=%d via=%s proxy-auth=%s" % (request.isSecure(), via, b"yes" if auth else b"no")


class TinyproxyTests(TestCase):
    """Requests through tinyproxy: https:// in a CONNECT tunnel with the server verified
    end to end, http:// forwarded, credentials sent, refusals told as one line."""

    timeout = 20

    @inlineCallbacks
    def setUp(self) -> Any:
        executable = shutil.which("tinyproxy")
        if executable is None:
            raise SkipTest("tinyproxy is not installed (apt-get install tinyproxy; make test-deps does)")
        work = Path(self.mktemp()).resolve()
        self.pki = make_pki(work / "pki")
        site = server.Site(Echo())
        now = datetime.datetime.now(datetime.timezone.utc)
        expired = make_server(work / "expired", self.pki, "expired", now - datetime.timedelta(days=800),
                              now - datetime.timedelta(days=400))
        self.https_port, self.http_port, self.closed_port = free_port(), free_port(), free_port()
        self.expired_port = free_port()
        for description in (f"ssl:{self.https_port}:interface=127.0.0.1:privateKey={self.pki['server_key']}"
                            f":certKey={self.pki['server_cert']}", f"tcp:{self.http_port}:interface=127.0.0.1",
                            f"ssl:{self.expired_port}:interface=127.0.0.1:privateKey={expired['server_key']}"
                            f":certKey={expired['server_cert']}"):
            port = yield serverFromString(reactor, description).listen(site)
            self.addCleanup(port.stopListening)
        proxy_port = free_port()
        conf = work / "tinyproxy.conf"
        conf.write_text(f"Port {proxy_port}\nListen 127.0.0.1\nTimeout 10\nAllow 127.0.0.1\nMaxClients 20\n"
                        f"ConnectPort {self.https_port}\nConnectPort {self.expired_port}\nBasicAuth gw s3cr3t\nLogLevel Info\n")
        self.proxy = PeerProcess(reactor, proxy_port)
        self.proxy.spawn(executable, [executable, "-d", "-c", str(conf)])
        self.addCleanup(self.proxy.stop)
        yield self.proxy.wait_for_port("tinyproxy", 10, 0.05)
        self.url = f"http://gw:s3cr3t@127.0.0.1:{proxy_port}"

    def client(self, url: str, ca_file: str | None = None) -> Any:
        http = make_http_client(reactor, ca_file or self.pki["ca"], 2, proxy=ProxySettings(url=url))
        self.addCleanup(close_connections, http)
        return http

    @inlineCallbacks
    def body(self, http: Any, url: str) -> Any:
        response = yield http.get(url)
        body = yield response.content()
        return response.code, body

    @inlineCallbacks
    def test_through_tinyproxy(self) -> Any:
        http = self.client(self.url)
        # https: a tunnel (the server sees no Via, no credentials), TLS verified for localhost
        code, body = yield self.body(http, f"https://localhost:{self.https_port}/a")
        self.assertEqual((code, body), (200, b"secure=1 via=- proxy-auth=no"))
        # http: forwarded by the proxy (its Via), the credentials for the proxy only
        code, body = yield self.body(http, f"http://127.0.0.1:{self.http_port}/b")
        self.assertEqual(code, 200)
        self.assertRegex(body, rb"^secure=0 via=1.1 .*\(tinyproxy/[0-9.]+\) proxy-auth=no$")
        # TLS is the gateway's with the server: without the CA that signed it, it is refused
        untrusting = self.client(self.url, ca_file=self.pki["client_cert"])
        error = yield self.assertFailure(untrusting.get(f"https://localhost:{self.https_port}/"), Exception)
        self.assertIn("certificate verify failed", repr(error))
        # a server certificate expired by the clock: said so, through the tunnel too
        error = yield self.assertFailure(http.get(f"https://localhost:{self.expired_port}/"), Exception)
        self.assertIn("the certificate of the server (CN=localhost) has expired by the gateway's clock: it is "
                      "valid from ", describe(error))
        # a wrong password: the proxy's 401 (tinyproxy's answer to a CONNECT; squid's is 407), one line naming the proxy without the password
        wrong = self.client(self.url.replace("s3cr3t", "nope"))
        error = yield self.assertFailure(wrong.get(f"https://localhost:{self.https_port}/"), ProxyError)
        self.assertRegex(str(error), rf"^the proxy http://127\.0\.0\.1:\d+ refused the tunnel to localhost:"
                                     rf"{self.https_port}: HTTP 401: .*check them in gateway\.proxy\.url\)$")
        self.assertNotIn("nope", str(error))
        # a port the proxy does not tunnel to (its ConnectPort): refused, said so
        error = yield self.assertFailure(http.get(f"https://localhost:{self.http_port}/"), ProxyError)
        self.assertIn(f"refused the tunnel to localhost:{self.http_port}: HTTP 403: ", str(error))
        # the proxy gone: named as such
        yield self.proxy.stop()
        error = yield self.assertFailure(self.client(self.url).get(f"https://localhost:{self.https_port}/"),
                                         ProxyError)
        self.assertRegex(str(error), r"^the proxy http://127\.0\.0\.1:\d+ cannot be reached: the server refused")
