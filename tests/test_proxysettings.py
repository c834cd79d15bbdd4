"""``gateway.proxy``: its URL read and checked, ``no_proxy`` matched, its password never shown
(:mod:`gateway.proxysettings`, :mod:`gateway.redaction`)."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.errors import ConfigError
from gateway.proxysettings import ProxySettings, bypasses, proxy_address
from gateway.redaction import redact, redact_at, redact_error


class AddressTests(SynchronousTestCase):
    """:func:`proxy_address`: ``http://[user:password@]host:port`` and nothing else."""

    def test_read(self) -> None:
        """Host, port, basic credentials (percent-decoded); errors name it without them."""
        proxy = proxy_address("http://gw%40site:p%3Ass@Proxy.Example:3128/")
        self.assertEqual((proxy.host, proxy.port, proxy.shown), ("proxy.example", 3128, "http://proxy.example:3128"))
        self.assertEqual(proxy.authorization, b"Basic Z3dAc2l0ZTpwOnNz")  # gw@site:p:ss
        self.assertIsNone(proxy_address("http://10.0.0.1:8888").authorization)
        self.assertEqual(proxy_address("HTTP://[::1]:8888").shown, "http://[::1]:8888")

    def test_refused(self) -> None:
        """What is not an http:// proxy URL with a host and a port is refused, saying why,
        never quoting the URL (it may hold a password)."""
        for url, words in [("proxy.example:3128", "must be a URL, http://[user:password@]host:port (with its scheme)"),
                           ("https://u:pw@proxy:3128", "must be an http:// URL"),
                           ("socks5://proxy:1080", "(a proxy of scheme 'socks5' is not supported)"),
                           ("http://u:pw@proxy", "must name the proxy's port"),
                           ("http://proxy:0", "the port must be from 1 to 65535, not '0'"),
                           ("http://u:pw@proxy:99999", "the port must be from 1 to 65535, not '99999' (http://"),
                           ("http://u:pw@proxy:31x8", "the port must be from 1 to 65535, not '31x8'"),
                           ("http://u:pw@:3128", "must name the proxy's host"),
                           ("http://u:pw@proxy:3128/path", "without a path, a query or a fragment"),
                           ("http://proxy:3128?x", "without a path, a query or a fragment")]:
            with self.subTest(url=url):
                message = str(self.assertRaises(ValueError, proxy_address, url))
                self.assertIn(words, message)
                self.assertNotIn("pw", message)


class NoProxyTests(SynchronousTestCase):
    """:func:`bypasses`: which targets skip the proxy."""

    def test_matching(self) -> None:
        entries = ("example.com", ".corp.lan", "10.0.0.0/8", "192.168.1.7", "::1", "fd00::/8")
        for host, direct in [("example.com", True), ("API.Example.com.", True), ("badexample.com", False),
                             ("corp.lan", False), ("git.corp.lan", True), ("10.20.30.40", True),
                             ("11.0.0.1", False), ("192.168.1.7", True), ("192.168.1.8", False),
                             ("[::1]", True), ("fd12::3", True), ("::2", False), ("cloud.example.net", False)]:
            with self.subTest(host=host):
                self.assertEqual(bypasses(entries, host), direct)
        self.assertTrue(bypasses(("*",), "anything.example"))
        self.assertFalse(bypasses((), "anything.example"))


class ConfigTests(SynchronousTestCase):
    """``gateway.proxy`` in a configuration file."""

    def load(self, text: str) -> config.Config:
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "gateway.yaml").write_text(text)
        self.path = directory / "gateway.yaml"
        return config.load(self.path)

    def test_default_is_no_proxy(self) -> None:
        loaded = self.load("")
        self.assertEqual(loaded.gateway.proxy, ProxySettings())
        self.assertIsNone(loaded.gateway.proxy.address())
        self.assertIsNone(self.load("gateway: {proxy: {url: ''}}").gateway.proxy.address())

    def test_accepted(self) -> None:
        loaded = self.load("gateway:\n  proxy:\n    url: http://gw:secret@proxy.corp:3128\n"
                           "    no_proxy: [localhost, 127.0.0.1, .corp, 10.0.0.0/8, '*']\n")
        self.assertEqual(loaded.gateway.proxy.no_proxy, ("localhost", "127.0.0.1", ".corp", "10.0.0.0/8", "*"))
        self.assertEqual(loaded.gateway.proxy.address().shown, "http://proxy.corp:3128")  # type: ignore[union-attr]

    def test_errors_name_the_key_and_hide_the_password(self) -> None:
        """Every problem is one line under its key path; the password is not in any of them,
        even where the value is quoted (a control character)."""
        errors = self.assertRaises(ConfigError, self.load,
                                   "gateway:\n  proxy:\n    url: https://gw:hunter2@proxy:3128\n"
                                   "    no_proxy: ['proxy.corp:8080', '', 'http://x', 'a b']\n").errors
        self.assertEqual([line.split(": ")[1] for line in errors],
                         ["gateway.proxy.url", "gateway.proxy.no_proxy.0", "gateway.proxy.no_proxy.1",
                          "gateway.proxy.no_proxy.2", "gateway.proxy.no_proxy.3"])
        self.assertIn("must be an http:// URL (http://[user:password@]host:port)", errors[0])  # (its form shown)
        self.assertIn("without a scheme or a port, not 'proxy.corp:8080'", errors[1])
        self.assertNotIn("hunter2", "\n".join(errors))
        errors = self.assertRaises(ConfigError, self.load,
                                   'gateway: {proxy: {url: "http://gw:hunter2\\t@proxy:3128"}}').errors
        self.assertEqual(len(errors), 1)
        self.assertIn("gateway.proxy.url: must not hold a control character", errors[0])
        self.assertNotIn("hunter2", errors[0])

    def test_password_redacted_where_config_is_shown(self) -> None:
        """``config.get`` (the key or its section) and the diagnostics bundle show the URL
        with ``<redacted>`` for its password; a remote change's errors too."""
        url = "http://gw:hunter2@proxy.corp:3128"
        self.assertEqual(redact_at(["gateway", "proxy", "url"], url), "http://gw:<redacted>@proxy.corp:3128")
        self.assertEqual(redact({"gateway": {"proxy": {"url": url, "no_proxy": ["a"]}}}),
                         {"gateway": {"proxy": {"url": "http://gw:<redacted>@proxy.corp:3128", "no_proxy": ["a"]}}})
        self.assertEqual(redact_error(f"90-remote.yaml: gateway.proxy.url: must not hold a control character: {url!r}"),
                         "90-remote.yaml: gateway.proxy.url: must not hold a control character:"
                         " 'http://gw:<redacted>@proxy.corp:3128'")
        self.assertEqual(redact("http://proxy.corp:3128"), "http://proxy.corp:3128")
