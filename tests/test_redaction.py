"""What :mod:`gateway.redaction` hides of a string under any key: a URL's password and secret
query parameters, a connection string's secret parts."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.redaction import hide_inline_secrets, redact, redact_error


class URLSecretsTests(SynchronousTestCase):
    """The parts of a URL that are secrets, wherever configuration is shown (config.get, the
    diagnostics bundle, configuration errors: docs/commands.md)."""

    def test_secret_query_parameters_are_redacted(self) -> None:
        """Parameters named like a secret (``X-Amz-Signature``, ``access_token``, ``api_key``, spelt
        with percent escapes too) and ``sig``, ``code``, ``auth``, ``pwd`` (any case) lose their
        values; others, empty values and the fragment stay."""
        self.assertEqual(
            hide_inline_secrets("https://h/p?X-Amz-Signature=a&X-Amz-Date=20270101&access_token=b;api_key=c"),
            "https://h/p?X-Amz-Signature=<redacted>&X-Amz-Date=20270101&access_token=<redacted>;api_key=<redacted>")
        self.assertEqual(hide_inline_secrets("https://h/?Sig=a&CODE=b&auth=c&pwd=d&codec=h264&sig=&x#token=f"),
                         "https://h/?Sig=<redacted>&CODE=<redacted>&auth=<redacted>&pwd=<redacted>&codec=h264&sig=&x"
                         "#token=f")
        self.assertEqual(hide_inline_secrets("https://h/?%74oken=a"), "https://h/?%74oken=<redacted>")

    def test_password_and_query_together_in_text(self) -> None:
        """In a sentence, each URL loses its password and its secret parameters; text that is no
        URL is left as it is."""
        self.assertEqual(hide_inline_secrets("bad 'http://u:pw@h:1/x?password=p&q=1': no ?token=t"),
                         "bad 'http://u:<redacted>@h:1/x?password=<redacted>&q=1': no ?token=t")

    def test_everywhere_configuration_is_shown(self) -> None:
        """redact (config.get, the bundle) and redact_error (the errors of a change) hide them
        under any key (an app's environment, a json link's url)."""
        self.assertEqual(redact({"env": {"DB_URL": "postgres://u:pw@db/x?sslpassword=p"}, "url": "https://h/?sig=s"}),
                         {"env": {"DB_URL": "postgres://u:<redacted>@db/x?sslpassword=<redacted>"},
                          "url": "https://h/?sig=<redacted>"})
        self.assertEqual(redact_error("f.yaml: http_links.links.j.url: must not end in a space: 'https://h/?code=c '"),
                         "f.yaml: http_links.links.j.url: must not end in a space: 'https://h/?code=<redacted> '")


class ConnectionStringTests(SynchronousTestCase):
    """A connection string in an app's environment, under a key that looks like no secret
    (``IOTHUB_CONNECTION_STRING``), showed its key whole in config.get and the diagnostics
    bundle."""

    def test_secret_parts_are_redacted(self) -> None:
        """Parts named like a secret (``SharedAccessKey``, ``AccountKey``, ``Password``, ``Pwd``)
        lose their values; the others stay; text without ``;`` is no connection string."""
        self.assertEqual(hide_inline_secrets("HostName=hub.azure-devices.net;DeviceId=d1;SharedAccessKey=c2VjcmV0=="),
                         "HostName=hub.azure-devices.net;DeviceId=d1;SharedAccessKey=<redacted>")
        self.assertEqual(hide_inline_secrets("Server=db;User Id=u; Password=p w;Pwd=q"),
                         "Server=db;User Id=u; Password=<redacted>;Pwd=<redacted>")
        self.assertEqual(hide_inline_secrets("AccountKey=k"), "AccountKey=k")
        self.assertEqual(hide_inline_secrets("a=1; b=2; sh -c 'x; y'"), "a=1; b=2; sh -c 'x; y'")

    def test_in_configuration_shown(self) -> None:
        """redact reaches it under any key; redact_error in what an error quotes."""
        self.assertEqual(redact({"environment": {"IOTHUB_CONNECTION_STRING": "HostName=h;SharedAccessKey=k"}}),
                         {"environment": {"IOTHUB_CONNECTION_STRING": "HostName=h;SharedAccessKey=<redacted>"}})
        self.assertEqual(redact_error("f.yaml: apps.programs.p.environment.CONN: must not hold a NUL character:"
                                      " 'HostName=h;SharedAccessKey=k\\x00'"),
                         "f.yaml: apps.programs.p.environment.CONN: must not hold a NUL character:"
                         " 'HostName=h;SharedAccessKey=<redacted>'")
