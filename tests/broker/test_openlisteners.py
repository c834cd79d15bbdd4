"""A listener that takes anonymous clients beyond loopback is a warning at load and at start
(docs/configuration.md, Listeners): the default config allows anonymous clients because its one
listener is on 127.0.0.1, and the WebSocket example on 0.0.0.0 pasted over it kept that rule
without a word."""

from __future__ import annotations

import importlib
import io
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import config as gateway_config
from gateway.admin.cli import check_config
from gateway.broker.openlisteners import ANONYMOUS_PLUGIN, open_listener_warnings
from gateway.broker.settings import DEFAULT_AUTH, DEFAULT_PLUGINS, BrokerSettings, ListenerSettings
from gateway.tap import Options
from gateway.tree import build_service
from tests.logevents import capture_log_events

#: conf/gateway.yaml's broker section, as far as these tests need it.
DEFAULT_BROKER = """\
broker:
  listeners:
    default:
      endpoint: "tcp:1883:interface=127.0.0.1"
  plugins:
    amqtt.plugins.authentication.AnonymousAuthPlugin:
      allow_anonymous: true
"""
#: docs/configuration.md's WebSocket example, as a drop-in.
WS_EXAMPLE = """\
broker:
  listeners:
    ws:
      type: ws
      bind: 0.0.0.0:9001
      allowed_origins: ["https://dashboard.example", "http://10.0.0.5:8080"]
"""
WS_WARNING = (
    "broker.listeners.ws: takes anonymous clients (amqtt.plugins.authentication.AnonymousAuthPlugin:"
    " allow_anonymous: true) on 0.0.0.0, not on loopback only: anything that reaches its port may publish and"
    " subscribe; let only known clients in (a password file, client certificates: docs/broker.md) or bind it"
    " to 127.0.0.1")
#: An argon2 hash (of ``s3cret``), a password file's line as amqtt reads it.
HASHED = "$argon2id$v=19$m=65536,t=3,p=4$NUAQb+sAkpsvKPn93/CYlw$lVybfd5Z5zh4qHc3TlE1cNmwbw713okHoMZKX01mxUU"
ANONYMOUS = {"plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}


#: What the user-name warning says of a listener ``lan`` on 0.0.0.0 with the broker's default plugins.
USER_NAME_WARNING = (
    "broker.listeners.lan: takes any client that sends a user name, with any password or none"
    " (amqtt.plugins.authentication.AnonymousAuthPlugin: allow_anonymous: false, and no other auth plugin:"
    " AnonymousAuthPlugin checks only that one is sent) on 0.0.0.0, not on loopback only: anything that reaches"
    " its port may publish and subscribe; let only known clients in (a password file, client certificates:"
    " docs/broker.md) or bind it to 127.0.0.1")
#: The broker's plugins when the section lists none, as the settings hold them.
USER_NAME_ONLY = {"plugins": DEFAULT_PLUGINS}


def broker(*endpoints: str, amqtt: dict[str, object] | None = None) -> BrokerSettings:
    """Broker settings with listeners ``l0``, ``l1``... on ``endpoints``."""
    listeners = tuple(ListenerSettings(f"l{n}", endpoint) for n, endpoint in enumerate(endpoints))
    return BrokerSettings(listeners, dict(ANONYMOUS if amqtt is None else amqtt))


class OpenListenerTests(SynchronousTestCase):
    """Which listeners are told, and where the line shows."""

    def write_config(self) -> Path:
        """The default broker section with the WebSocket example as a drop-in."""
        work = Path(self.mktemp())
        (work / "conf.d").mkdir(parents=True)
        path = work / "gateway.yaml"
        path.write_text(f"gateway:\n  state_dir: {work / 'state'}\n" + DEFAULT_BROKER)
        (work / "conf.d" / "50-ws.yaml").write_text(WS_EXAMPLE)
        return path

    def test_the_websocket_example_over_the_default_is_a_warning_and_passes(self) -> None:
        """``--check-config`` and ``gatewayctl check-config`` print the warning and exit 0."""
        path = self.write_config()
        self.assertEqual(gateway_config.load(path).warnings(), [WS_WARNING])
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as exited:
            Options().parseOptions(["--config", str(path), "--check-config"])
        self.assertEqual((exited.exception.code, err.getvalue()), (0, f"gateway: warning: {WS_WARNING}\n"))
        self.assertEqual(check_config(str(path)), 0)
        self.assertEqual(err.getvalue().splitlines()[1:], [f"warning: {WS_WARNING}"])

    def test_the_start_logs_it(self) -> None:
        """Building the services logs the warning once, as the other configuration warnings."""
        events = capture_log_events(self)
        root = build_service(gateway_config.load(self.write_config()), reactor)
        self.addCleanup(root.state.stopService)  # (releases the lock build_service took)
        said = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([line for line in said if "broker.listeners" in line], [WS_WARNING])

    def test_loopback_unix_and_systemd_listeners_are_not_told(self) -> None:
        """The default listener, ``::1``, a unix socket and a socket systemd hands over are
        quiet; ``tcp:`` without an interface, a LAN address and ``tcp6:`` on ``::`` are told."""
        quiet = broker("tcp:1883:interface=127.0.0.1", "tcp:1884:interface=\\:\\:1",
                       "unix:/run/gateway/mqtt.sock", "systemd:domain=INET:index=0",
                       "ssl:8883:interface=127.0.0.5:privateKey=k.pem")
        self.assertEqual(open_listener_warnings(quiet), [])
        told = open_listener_warnings(broker("tcp:1883", "tcp:1884:interface=192.168.1.5", "tcp6:1885"))
        self.assertEqual([line.split(" takes")[0] for line in told],
                         ["broker.listeners.l0:", "broker.listeners.l1:", "broker.listeners.l2:"])
        self.assertEqual([line.split(") on ")[1].split(",")[0] for line in told], ["0.0.0.0", "192.168.1.5", "::"])

    def test_no_anonymous_clients_no_warning(self) -> None:
        """Anonymous clients refused and every user name checked (a password file alone, the
        deprecated ``auth:`` section listing every entry-point plugin, ``auth_file`` among them,
        no auth plugin at all): nothing is told."""
        for amqtt in ({"plugins": {"amqtt.plugins.authentication.FileAuthPlugin": {"password_file": "p"}}},
                      {"auth": {"allow-anonymous": False}}, {"plugins": {}}):
            self.assertEqual(open_listener_warnings(broker("tcp:1883", amqtt=amqtt)), [], amqtt)
        told = open_listener_warnings(broker("tcp:1883", amqtt={"auth": {"allow-anonymous": True}}))
        self.assertEqual(len(told), 1)

    def test_every_spelling_of_anonymous_clients_allowed_is_told(self) -> None:
        """amqtt lets anonymous clients in with ``AnonymousAuthPlugin`` listed without
        ``allow_anonymous`` (its default is true: ``{}``, ``null``, a list of plugin names) and in
        the list form of ``plugins:``; these were silent, as if they refused them."""
        for plugins in ({ANONYMOUS_PLUGIN: {}}, {ANONYMOUS_PLUGIN: None}, [ANONYMOUS_PLUGIN],
                        [{ANONYMOUS_PLUGIN: {"allow_anonymous": True}}],
                        ["amqtt.plugins.sys.broker.BrokerSysPlugin", {ANONYMOUS_PLUGIN: None}]):
            told = open_listener_warnings(broker("tcp:1883", amqtt={"plugins": plugins}))
            self.assertEqual(len(told), 1, plugins)

    def test_a_plugin_that_refuses_them_keeps_it_quiet(self) -> None:
        """Every auth plugin must agree: beside ``ClientCertificateAuthPlugin`` (no to a client
        without a verified certificate) anonymous clients are refused, as they are by the
        deprecated ``auth:`` section listing only ``auth_file`` (no plugin answers for them);
        both were told that anything reaching the port may publish."""
        for amqtt in ({"plugins": {ANONYMOUS_PLUGIN: {"allow_anonymous": True},
                                   "gateway.broker.auth.ClientCertificateAuthPlugin": {}}},
                      {"plugins": [ANONYMOUS_PLUGIN, "gateway.broker.auth.ClientCertificateAuthPlugin"]},
                      {"auth": {"plugins": ["auth_file"], "allow-anonymous": True, "password-file": "p"}}):
            self.assertEqual(open_listener_warnings(broker("tcp:1883", amqtt=amqtt)), [], amqtt)
        told = open_listener_warnings(broker("tcp:1883", amqtt={"auth": {"plugins": ["auth_anonymous", "auth_file"],
                                                                          "allow-anonymous": True}}))
        self.assertEqual(len(told), 1)

    def test_loopback_only_listeners_of_other_forms_are_not_told(self) -> None:
        """A ``tcp6:`` listener on the IPv4-mapped loopback address (``::ffff:127.0.0.1``: only
        127.0.0.1's connections), and a TLS listener that requires a verified client certificate
        (only certificate holders get to CONNECT) are quiet; both were told that anything reaching
        the port may publish."""
        mapped = broker("tcp6:1883:interface=\\:\\:ffff\\:127.0.0.1")
        certified = BrokerSettings((ListenerSettings("tls", "ssl:8883:privateKey=k.pem", cafile="ca.pem",
                                                     require_client_cert=True),), dict(ANONYMOUS))
        in_endpoint = broker("ssl:8883:privateKey=k.pem:caCertsDir=ca:requireClientCert=yes")
        self.assertEqual(open_listener_warnings(mapped) + open_listener_warnings(certified)
                         + open_listener_warnings(in_endpoint), [])
        told = open_listener_warnings(broker("tcp6:1883:interface=\\:\\:ffff\\:10.0.0.5"))
        self.assertEqual(len(told), 1)

    def test_the_line_names_the_setting_as_written(self) -> None:
        """The warning names what lets anonymous clients in as the configuration says it: the
        deprecated ``auth:`` section's ``allow-anonymous: true``, or the plugin without
        ``allow_anonymous`` (amqtt's default); it named ``allow_anonymous: true`` under the plugin
        for both, a key the file did not hold."""
        said = {}
        for name, amqtt in (("auth", {"auth": {"allow-anonymous": True}}),
                            ("unset", {"plugins": {ANONYMOUS_PLUGIN: {}}}), ("set", ANONYMOUS)):
            [line] = open_listener_warnings(broker("tcp:1883", amqtt=amqtt))
            said[name] = line.split(" takes anonymous clients (")[1].split(") on ")[0]
        self.assertEqual(said, {
            "auth": "broker.auth: allow-anonymous: true",
            "unset": f"{ANONYMOUS_PLUGIN} without allow_anonymous, which is true then",
            "set": f"{ANONYMOUS_PLUGIN}: allow_anonymous: true"})


class UserNameOnlyTests(SynchronousTestCase):
    """amqtt's ``AnonymousAuthPlugin`` with ``allow_anonymous: false`` accepts any client that
    sends a user name, checking no password; alone (the broker's default when the section lists
    no plugin) it is as open as anonymous clients on a listener beyond loopback, and was silent."""

    def test_the_default_plugins_beyond_loopback_are_told(self) -> None:
        """The broker's default plugins, on a listener on 0.0.0.0: the line says who gets in
        and names the setting."""
        self.assertEqual(open_listener_warnings(BrokerSettings((ListenerSettings("lan", "tcp:1883"),),
                                                               dict(USER_NAME_ONLY))), [USER_NAME_WARNING])

    def test_every_form_of_the_user_name_rule_is_told(self) -> None:
        """Written out in the mapping or the list form of ``plugins:``, beside plugins that
        authenticate no one (a topic ACL, amqtt's ``$SYS`` plugin), and the deprecated ``auth:``
        section's ``auth_anonymous`` without ``allow-anonymous: true`` (which the broker makes
        false), alone, beside ``topic_acl``, or as the broker's default beside a ``topic-check:``
        section alone."""
        importlib.import_module("amqtt.plugins.sys.broker")  # (reading a config that lists them imports them)
        importlib.import_module("amqtt.plugins.topic_checking")

        false = {"allow_anonymous": False}
        for amqtt in ({"plugins": {ANONYMOUS_PLUGIN: false}}, {"plugins": [{ANONYMOUS_PLUGIN: false}]},
                      {"plugins": {ANONYMOUS_PLUGIN: false,
                                   "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {"acl": {}}}},
                      {"plugins": ["amqtt.plugins.sys.broker.BrokerSysPlugin", {ANONYMOUS_PLUGIN: false}]},
                      {"auth": {"plugins": ["auth_anonymous"], "allow-anonymous": False}},
                      {"auth": {"plugins": ["auth_anonymous", "topic_acl"], "allow-anonymous": False}},
                      {"auth": DEFAULT_AUTH, "topic-check": {"enabled": True, "plugins": ["topic_taboo"]}}):
            told = open_listener_warnings(broker("tcp:1883", amqtt=amqtt))
            self.assertEqual(len(told), 1, amqtt)
            self.assertIn("takes any client that sends a user name, with any password or none (", told[0])
        [legacy] = open_listener_warnings(broker("tcp:1883", amqtt={"auth": DEFAULT_AUTH}))
        self.assertIn("(broker.auth: auth_anonymous without allow-anonymous: true, and no other auth plugin:"
                      " AnonymousAuthPlugin checks only that one is sent)", legacy)

    def test_a_plugin_that_checks_credentials_keeps_it_quiet(self) -> None:
        """Every auth plugin must agree: beside a password file, ``ClientCertificateAuthPlugin``,
        a user's own auth plugin, or a plugin not known to authenticate no one (a module not
        imported: nothing is imported to find out), a made-up user name is not enough, or may not
        be; the deprecated ``auth:`` section with ``auth_file`` too (listed, or no list)."""
        importlib.import_module("tests.broker.userplugins")  # (reading a config that lists it imports it)

        false = {"allow_anonymous": False}
        for amqtt in ({"plugins": {ANONYMOUS_PLUGIN: false,
                                   "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": "p"}}},
                      {"plugins": {ANONYMOUS_PLUGIN: false, "gateway.broker.auth.ClientCertificateAuthPlugin": {}}},
                      {"plugins": {ANONYMOUS_PLUGIN: false, "tests.broker.userplugins.PasswordPrefixAuth": {}}},
                      {"plugins": [{ANONYMOUS_PLUGIN: false}, "not.imported.here.Plugin"]},
                      {"auth": {"plugins": ["auth_anonymous", "auth_file"], "allow-anonymous": False}},
                      {"auth": {"allow-anonymous": False, "password-file": "p"}}):
            self.assertEqual(open_listener_warnings(broker("tcp:1883", amqtt=amqtt)), [], amqtt)

    def test_loopback_and_certificate_listeners_are_not_told(self) -> None:
        """On 127.0.0.1 (the default listener), ``::1``, a unix socket, or a TLS listener that
        requires a verified client certificate, the default plugins are quiet."""
        listeners = (ListenerSettings("default", "tcp:1883:interface=127.0.0.1"),
                     ListenerSettings("v6", "tcp6:1884:interface=\\:\\:1"),
                     ListenerSettings("unix", "unix:/run/gateway/mqtt.sock"),
                     ListenerSettings("tls", "ssl:8883:privateKey=k.pem", cafile="ca.pem", require_client_cert=True))
        self.assertEqual(open_listener_warnings(BrokerSettings(listeners, dict(USER_NAME_ONLY))), [])

    def test_check_config_tells_it_for_a_section_without_plugins(self) -> None:
        """Through the real path: a broker section that lists no plugin, with a listener on
        0.0.0.0, is a warning of ``--check-config`` and ``gatewayctl check-config`` (exit 0);
        with a password file beside it, nothing is told."""
        work = Path(self.mktemp())
        work.mkdir()
        path = work / "gateway.yaml"
        path.write_text(f"gateway:\n  state_dir: {work / 'state'}\n"
                        "broker:\n  listeners:\n    lan:\n      bind: 0.0.0.0:1883\n")
        self.assertEqual(gateway_config.load(path).warnings(), [USER_NAME_WARNING])
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as exited:
            Options().parseOptions(["--config", str(path), "--check-config"])
        self.assertEqual((exited.exception.code, err.getvalue()), (0, f"gateway: warning: {USER_NAME_WARNING}\n"))
        self.assertEqual(check_config(str(path)), 0)
        self.assertEqual(err.getvalue().splitlines()[1:], [f"warning: {USER_NAME_WARNING}"])
        (work / "passwd").write_text(f"alice:{HASHED}\n")
        path.write_text(path.read_text() + "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin:"
                        " {allow_anonymous: false}\n    amqtt.plugins.authentication.FileAuthPlugin:"
                        f" {{password_file: {work / 'passwd'}}}\n")
        self.assertEqual(gateway_config.load(path).warnings(), [])
