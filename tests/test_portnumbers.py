"""A port is told in one wording everywhere: ASCII digits, 1 to 65535 to connect to, 0 to 65535 to listen on."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.errors import ConfigError
from gateway.portnumbers import port_problem, url_port_problem

ARABIC_8080 = "\u0668\u0660\u0668\u0660"


class PortWordingTests(SynchronousTestCase):
    """The servers' URLs gave Python's words (``http://h:99999``: "Port out of range 0-65535",
    though 0 is refused too; ``:٨٠٨٠``: "Port could not be cast to integer value"), the proxy's
    "with a port from 1 to 65535", a link's "port '²' is not a number" or "port 99999 is not
    from 1 to 65535", a broker bind "needs host:port with a port from 0 to 65535"."""

    def test_the_rule_and_its_words(self) -> None:
        """ASCII digits from 1 (a port to connect to) or 0 (one to listen on) to 65535."""
        self.assertIsNone(port_problem("1"))
        self.assertIsNone(port_problem("0", lowest=0))
        self.assertIsNone(port_problem("65535"))
        for written in ("0", "65536", ARABIC_8080, "\u00b2", "8_080", "+80", " 80", ""):
            self.assertEqual(port_problem(written), f"the port must be from 1 to 65535, not {written!r}")
        self.assertEqual(port_problem("70000", lowest=0), "the port must be from 0 to 65535, not '70000'")

    def test_a_url_port_is_read_after_its_host(self) -> None:
        """After a bracketed IPv6 address too, past the user information; a URL that writes none
        (or an empty one, as urlsplit reads it) has no problem."""
        self.assertIsNone(url_port_problem("h"))
        self.assertIsNone(url_port_problem("h:"))
        self.assertIsNone(url_port_problem("u:p@[fd00::1]:8443"))
        self.assertEqual(url_port_problem("u:p@[fd00::1]:0"), "the port must be from 1 to 65535, not '0'")
        self.assertEqual(url_port_problem("h:80:90"), "the port must be from 1 to 65535, not '80:90'")

    def errors(self, text: str) -> list[str]:
        path = Path(self.mktemp())
        path.write_text(text, encoding="utf-8")
        with self.assertRaises(ConfigError) as raised:
            config.load(path)
        return [line.removeprefix(f"{path}: ") for line in raised.exception.errors]

    def test_every_key_that_takes_a_port_says_it_alike(self) -> None:
        """Each server URL, the proxy's URL, a link's endpoint and a listener's: one sentence
        each (a URL's port is 1 to 65535), quoting the port as written."""
        self.assertEqual(self.errors(
            f"http_links:\n  links:\n    j: {{mode: json, url: 'http://h:{ARABIC_8080}/in'}}\n"
            "    k: {mode: json, url: 'http://h:99999/in'}\n"
            "fleet:\n  enabled: true\n  auth: none\n  base_url: 'https://h:0'\n"
            "uploads:\n  aws_endpoint: 'https://s3.local:65536'\n"
            "gateway:\n  proxy: {url: 'http://u:pw@proxy:99999'}\n"
            "links:\n  links:\n    c: {endpoint: 'tcp:host=h:port=99999'}\n"
            "ingest:\n  endpoint: 'tcp:70000:interface=127.0.0.1'\n"), [
            "gateway.proxy.url: the port must be from 1 to 65535, not '99999' (http://[user:password@]host:port)",
            "links.links.c.endpoint: 'tcp:host=h:port=99999': the port must be from 1 to 65535, not '99999'",
            "fleet.base_url: 'https://h:0': the port must be from 1 to 65535, not '0'",
            "ingest.endpoint: 'tcp:70000:interface=127.0.0.1': the port must be from 0 to 65535, not '70000'",
            f"http_links.links.j.url: 'http://h:{ARABIC_8080}/in': the port must be from 1 to 65535, not "
            f"'{ARABIC_8080}'",
            "http_links.links.k.url: 'http://h:99999/in': the port must be from 1 to 65535, not '99999'",
            "uploads.aws_endpoint: 'https://s3.local:65536': the port must be from 1 to 65535, not '65536'"])
