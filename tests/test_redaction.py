"""What :mod:`gateway.redaction` hides of a URL: its password and its secret query parameters."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.redaction import hide_url_password, redact, redact_error


class URLSecretsTests(SynchronousTestCase):
    """The parts of a URL that are secrets, wherever configuration is shown (config.get, the
    diagnostics bundle, configuration errors: docs/commands.md)."""

    def test_secret_query_parameters_are_redacted(self) -> None:
        """Parameters named like a secret (``X-Amz-Signature``, ``access_token``, ``api_key``, spelt
        with percent escapes too) and ``sig``, ``code``, ``auth``, ``pwd`` (any case) lose their
        values; others, empty values and the fragment stay."""
        self.assertEqual(
            hide_url_password("https://h/p?X-Amz-Signature=a&X-Amz-Date=20270101&access_token=b;api_key=c"),
            "https://h/p?X-Amz-Signature=<redacted>&X-Amz-Date=20270101&access_token=<redacted>;api_key=<redacted>")
        self.assertEqual(hide_url_password("https://h/?Sig=a&CODE=b&auth=c&pwd=d&codec=h264&sig=&x#token=f"),
                         "https://h/?Sig=<redacted>&CODE=<redacted>&auth=<redacted>&pwd=<redacted>&codec=h264&sig=&x"
                         "#token=f")
        self.assertEqual(hide_url_password("https://h/?%74oken=a"), "https://h/?%74oken=<redacted>")

    def test_password_and_query_together_in_text(self) -> None:
        """In a sentence, each URL loses its password and its secret parameters; text that is no
        URL is left as it is."""
        self.assertEqual(hide_url_password("bad 'http://u:pw@h:1/x?password=p&q=1': no ?token=t"),
                         "bad 'http://u:<redacted>@h:1/x?password=<redacted>&q=1': no ?token=t")

    def test_everywhere_configuration_is_shown(self) -> None:
        """redact (config.get, the bundle) and redact_error (the errors of a change) hide them
        under any key (an app's environment, a json link's url)."""
        self.assertEqual(redact({"env": {"DB_URL": "postgres://u:pw@db/x?sslpassword=p"}, "url": "https://h/?sig=s"}),
                         {"env": {"DB_URL": "postgres://u:<redacted>@db/x?sslpassword=<redacted>"},
                          "url": "https://h/?sig=<redacted>"})
        self.assertEqual(redact_error("f.yaml: http_links.links.j.url: must not end in a space: 'https://h/?code=c '"),
                         "f.yaml: http_links.links.j.url: must not end in a space: 'https://h/?code=<redacted> '")
