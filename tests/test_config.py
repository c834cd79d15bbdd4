"""Configuration: YAML + conf.d drop-ins into frozen objects, every error reported at once."""

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.broker.settings import DEFAULT_ENDPOINT
from gateway.errors import ConfigError


class ConfigTests(SynchronousTestCase):
    """What ``gateway.config.load`` accepts, merges and refuses."""

    def write(self, text: str, name: str = "gateway.yaml") -> Path:
        """Write a config file in a fresh directory (or beside the last one for drop-ins)."""
        if not hasattr(self, "dir"):
            self.dir = Path(self.mktemp())
            (self.dir / "conf.d").mkdir(parents=True)
        path = self.dir / name
        path.write_text(text)
        return path

    def errors(self, path: Path) -> list[str]:
        """The error lines ``load`` raises for ``path``."""
        return self.assertRaises(ConfigError, config.load, path).errors

    def test_embedded_default_runs_as_is(self) -> None:
        """conf/gateway.yaml loads: broker on 127.0.0.1:1883, state under ./var, anonymous allowed."""
        loaded = config.load()
        self.assertEqual(loaded.gateway.state_dir, "./var")
        self.assertEqual([l.endpoint for l in loaded.broker.listeners], [DEFAULT_ENDPOINT])
        plugins = loaded.broker.amqtt["plugins"]
        self.assertTrue(plugins["amqtt.plugins.authentication.AnonymousAuthPlugin"]["allow_anonymous"])

    def test_empty_file_gets_safe_defaults(self) -> None:
        """An empty file means localhost only and anonymous refused."""
        loaded = config.load(self.write(""))
        self.assertEqual(loaded.broker.listeners[0].endpoint, DEFAULT_ENDPOINT)
        self.assertFalse(loaded.broker.amqtt["plugins"]["amqtt.plugins.authentication.AnonymousAuthPlugin"]
                         ["allow_anonymous"])

    def test_settings_are_frozen(self) -> None:
        """Sections are immutable once loaded."""
        loaded = config.load(self.write(""))
        with self.assertRaises(Exception):
            loaded.gateway.state_dir = "/tmp"  # type: ignore[misc]

    def test_every_error_reported_together(self) -> None:
        """Unknown key, wrong type, out of range, unknown section: all in one report, with paths."""
        path = self.write("gateway:\n  state_dirr: x\n  shutdown_timeout: 1000\n  log_level: loud\n"
                          "  device_id: [1]\nbogus: {}\n")
        lines = self.errors(path)
        joined = "\n".join(lines)
        self.assertEqual(len(lines), 5, joined)
        self.assertIn(f"{path}: gateway.state_dirr: unknown key", joined)
        self.assertIn(f"{path}: gateway.shutdown_timeout: must be at most 60.0", joined)
        self.assertIn(f"{path}: gateway.log_level: must be one of", joined)
        self.assertIn(f"{path}: gateway.device_id: must be a string", joined)
        self.assertIn(f"{path}: bogus: unknown section", joined)

    def test_missing_file(self) -> None:
        """A config file that is not there is named in the error."""
        lines = self.errors(Path(self.mktemp()) / "nope.yaml")
        self.assertIn("cannot read", lines[0])

    def test_yaml_syntax_error(self) -> None:
        """Broken YAML is reported with its line."""
        lines = self.errors(self.write("gateway: [\n"))
        self.assertIn("not valid YAML", lines[0])
        self.assertIn("line", lines[0])

    def test_not_a_mapping(self) -> None:
        """A list at the top, or a scalar for a section, is refused."""
        self.assertIn("must be a mapping of sections", self.errors(self.write("- a\n"))[0])
        self.assertIn("gateway: must be a mapping", self.errors(self.write("gateway: 3\n"))[0])

    def test_dropins_merge_in_lexical_order(self) -> None:
        """conf.d/*.yaml merge deeply over the main file, later files winning."""
        main = self.write("gateway:\n  device_id: main\n  tenant_id: t0\n")
        self.write("gateway:\n  device_id: first\n", "conf.d/10-a.yaml")
        self.write("gateway:\n  device_id: second\n", "conf.d/20-b.yaml")
        self.write("gateway:\n  device_id: ignored\n", "conf.d/30-c.yml.disabled")
        loaded = config.load(main)
        self.assertEqual((loaded.gateway.device_id, loaded.gateway.tenant_id), ("second", "t0"))

    def test_dropin_errors_name_the_dropin(self) -> None:
        """An error in a drop-in names that file, not the main one."""
        main = self.write("gateway: {}\n")
        dropin = self.write("gateway:\n  nope: 1\n", "conf.d/50-x.yaml")
        self.assertEqual(self.errors(main), [f"{dropin}: gateway.nope: unknown key (known: device_id, log_level,"
                                              " shutdown_timeout, state_dir, tenant_id)"])

    def test_amqtt_config_passes_through(self) -> None:
        """An amqtt/hbmqtt broker config is accepted as is; tcp listeners become endpoints."""
        loaded = config.load(self.write(
            "broker:\n"
            "  listeners:\n"
            "    default:\n      type: tcp\n      bind: 127.0.0.1:1884\n      max_connections: 50\n"
            "    ws-1:\n      type: ws\n      bind: 127.0.0.1:8080\n"
            "  sys_interval: 10\n"
            "  timeout_disconnect_delay: 2\n"
            "  auth:\n    allow-anonymous: true\n    plugins: [auth_anonymous]\n"
            "  topic-check:\n    enabled: false\n"
        ))
        self.assertEqual([(l.name, l.endpoint) for l in loaded.broker.listeners],
                         [("default", "tcp:1884:interface=127.0.0.1")])
        amqtt = loaded.broker.amqtt
        self.assertEqual(amqtt["listeners"]["default"], {"type": "external", "bind": "127.0.0.1:1884",
                                                         "max_connections": 50})
        self.assertEqual(amqtt["listeners"]["ws-1"]["type"], "ws")
        self.assertEqual(amqtt["auth"]["allow-anonymous"], True)
        self.assertNotIn("plugins", amqtt)

    def test_amqtt_errors_reported(self) -> None:
        """amqtt's own validation (unknown listener key, missing cert file, bad plugin) is reported."""
        lines = self.errors(self.write(
            "broker:\n"
            "  listeners:\n"
            "    default:\n      endpoint: 'tcp:1883'\n      colour: blue\n"
            "    tls:\n      endpoint: 'ssl:8883:privateKey=/nonexistent/key.pem'\n"
            "    weird:\n      type: carrier-pigeon\n"
            "  max_packet_size: -5\n"
            "  plugins:\n    no.such.Plugin: {}\n"
        ))
        joined = "\n".join(lines)
        self.assertIn("broker.max_packet_size: must be a positive number", joined)
        self.assertIn("broker.listeners.weird.type: must be tcp, external or ws", joined)
        self.assertIn("broker.plugins.no.such.Plugin: cannot import plugin", joined)
        self.assertIn("colour", joined)
        self.assertIn("broker.listeners.tls.endpoint: cannot read private key '/nonexistent/key.pem'", joined)

    def test_bad_endpoint_string(self) -> None:
        """An endpoint string Twisted cannot parse is an error at load time."""
        joined = "\n".join(self.errors(self.write(
            "broker:\n  listeners:\n    default:\n      endpoint: 'tcp:notaport'\n")))
        self.assertIn("broker.listeners.default.endpoint: not a Twisted server endpoint", joined)

    def test_required_client_cert_needs_ca(self) -> None:
        """Requiring client certificates without a CA to check them against is refused."""
        joined = "\n".join(self.errors(self.write(
            "broker:\n  listeners:\n    default:\n      endpoint: 'tcp:1883'\n      require_client_cert: true\n")))
        self.assertIn("require_client_cert: needs cafile", joined)


class SectionTests(SynchronousTestCase):
    """Service sections come through the same loader; helpers derived from config."""

    def test_yaml_booleans_for_true_false_choices(self) -> None:
        """``autorestart: true`` (a YAML boolean) is accepted for supervisord's "true"|"false"|"unexpected"."""
        path = Path(self.mktemp())
        path.write_text("apps:\n  programs:\n    p:\n      command: /bin/true\n      autorestart: true\n"
                        "    q:\n      command: /bin/true\n      autorestart: false\n")
        programs = config.load(path).sections["apps"].programs
        self.assertEqual((programs["p"].autorestart, programs["q"].autorestart), ("true", "false"))

    def test_client_address_of_listeners(self) -> None:
        """Apps are told how to reach the broker as a URL."""
        from gateway.broker.settings import ListenerSettings, client_address

        self.assertEqual(client_address(ListenerSettings("a", "tcp:1883:interface=127.0.0.1")),
                         "mqtt://127.0.0.1:1883")
        self.assertEqual(client_address(ListenerSettings("a", "ssl:8883:interface=0.0.0.0:privateKey=k")),
                         "mqtts://127.0.0.1:8883")
        self.assertEqual(client_address(ListenerSettings("a", "unix:/run/gateway/mqtt.sock:mode=660")),
                         "unix:///run/gateway/mqtt.sock")
