"""Configuration: YAML + conf.d drop-ins into frozen objects, every error reported at once."""

import socket
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.broker.settings import DEFAULT_ENDPOINT
from gateway.commands import dropin
from gateway.errors import ConfigCheckError, ConfigError
from gateway.redaction import WITHHELD, redact_quoted


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

    def test_a_file_of_other_keys_is_told_by_their_count_not_quoted(self) -> None:
        """A YAML mapping that is no configuration (secrets in ``key: value`` form, named by
        mistake as the configuration or dropped in conf.d) is one line counting its unknown
        keys, none quoted: each was quoted as an "unknown section", into the log at every start.
        A configuration with a mistyped section or two still names each."""
        secrets = "".join(f"db_password_{n}: hunter{n}\n" for n in range(5))
        path = self.write(secrets + "gateway:\n  device_id: gw-1\n")
        lines = self.errors(path)
        self.assertEqual(lines, [f"{path}: <top>: this does not look like the gateway's configuration (5 of its 6"
                                 f" top-level keys are no section, not shown; the sections are"
                                 f" {', '.join(sorted(config.SECTIONS))})"])
        self.write("gateway:\n  device_id: gw-1\n")
        self.write(secrets, "conf.d/50-secrets.yaml")
        [line] = self.errors(path)
        self.assertTrue(line.startswith(f"{self.dir / 'conf.d' / '50-secrets.yaml'}: <top>: this does not look like"
                                        " the gateway's configuration (5 of its 5 top-level keys"), line)
        self.assertNotIn("db_password", line)
        (self.dir / "conf.d" / "50-secrets.yaml").unlink()
        self.write("gateway:\n  device_id: gw-1\nbrokr: {}\nlnks: {}\n")
        self.assertEqual([line.split(" (known")[0] for line in self.errors(path)],
                         [f"{path}: brokr: unknown section", f"{path}: lnks: unknown section"])

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

    def test_an_empty_section_in_a_dropin_puts_it_back_to_its_defaults(self) -> None:
        """A section (or key) written with nothing after its colon is YAML's null, which
        replaces as any scalar does: the section is back to its defaults, whatever the main
        file set in it (docs/configuration.md); ``{}`` merges nothing."""
        main = self.write("updates:\n  script_timeout: 60\n  download:\n    concurrency: 3\n")
        self.write("updates:\n  download: {}\n", "conf.d/10-a.yaml")
        loaded = config.load(main)
        self.assertEqual((loaded.updates.script_timeout, loaded.updates.download.concurrency), (60.0, 3))
        self.write("updates:\n#  script_timeout: 30\n", "conf.d/20-b.yaml")
        loaded = config.load(main)
        self.assertEqual((loaded.updates.script_timeout, loaded.updates.download.concurrency), (600.0, 2))

    def test_hidden_files_are_no_dropins(self) -> None:
        """``conf.d/*.yaml`` as the shell reads it: a hidden file is not a drop-in. Emacs keeps
        a dangling symlink ``.#<name>`` while a file is edited; it made every check (and the
        unit's ExecStartPre) fail with 'cannot read'."""
        main = self.write("gateway:\n  device_id: main\n")
        self.write("gateway:\n  device_id: hidden\n", "conf.d/.99-hidden.yaml")
        (self.dir / "conf.d" / ".#50-site.yaml").symlink_to("root@host.1234:1700000000")
        self.assertEqual(config.load(main).gateway.device_id, "main")

    def test_the_files_read_name_the_dropins_merged_in_order(self) -> None:
        """``files_read()`` (``--check-config``'s OK line) names the main file and then the
        drop-ins merged, in their order, each from the main file's directory; the main file
        alone, as before, when none was merged (no ``conf.d``, or one with no drop-in)."""
        main = self.write("gateway: {}\n")
        self.assertEqual((config.load(main).files_read(), config.load(main).dropins), (str(main), ()))
        self.write("gateway: {}\n", "conf.d/90-remote.yaml")
        self.write("gateway: {}\n", "conf.d/50-site.yaml")
        self.write("gateway:\n  device_id: hidden\n", "conf.d/.60-hidden.yaml")
        self.write("gateway: {}\n", "conf.d/70-old.yaml~")
        loaded = config.load(main)
        self.assertEqual(loaded.dropins, (self.dir / "conf.d/50-site.yaml", self.dir / "conf.d/90-remote.yaml"))
        self.assertEqual(loaded.files_read(), f"{main} + conf.d/50-site.yaml, conf.d/90-remote.yaml")

    def test_the_files_read_name_a_dropin_elsewhere_whole(self) -> None:
        """A drop-in that is not beside the main file (no caller gives one today) is named whole."""
        self.assertEqual(config.Config(path=Path("a/gateway.yaml"), dropins=(Path("/b/conf.d/1.yaml"),)).files_read(),
                         "a/gateway.yaml + /b/conf.d/1.yaml")

    def test_a_value_a_dropin_sets_is_refused_naming_the_dropin(self) -> None:
        """A key the main file sets well and a drop-in sets wrong: the error names the drop-in."""
        main = self.write("gateway:\n  shutdown_timeout: 7\n")
        dropin = self.write("gateway:\n  shutdown_timeout: '8'\n", "conf.d/50-site.yaml")
        self.assertEqual(self.errors(main), [f"{dropin}: gateway.shutdown_timeout: must be a number, not the text '8'"])

    def test_a_conf_d_that_cannot_be_looked_into_is_one_error(self) -> None:
        """A ``conf.d`` the gateway's user may not enter (made by root, mode 0700) is one error
        naming it, as a file that cannot be read is; it was a PermissionError's traceback from
        twistd. (Injected: the suite runs as root, for whom the mode changes nothing.)"""
        main = self.unreadable_conf_d()
        self.assertEqual(self.errors(main), [f"{self.dir / 'conf.d'}: cannot read: Permission denied"])

    def test_a_remote_change_is_not_checked_without_the_dropins(self) -> None:
        """A remote change's check (a copy of the configuration) refuses to go on without the
        drop-ins it cannot list, naming the folder: checked without them, the copy would pass
        what the gateway's next start refuses."""
        main = self.unreadable_conf_d()
        with self.assertRaises(ConfigCheckError) as caught:
            dropin.check(main, "gateway: {}\n")
        self.assertIn(f"{self.dir / 'conf.d'}: cannot read: Permission denied", str(caught.exception))

    def unreadable_conf_d(self) -> Path:
        """A main file and a ``conf.d`` whose listing is refused (as root cannot be, injected);
        the main file's path."""
        main = self.write("gateway: {}\n")
        self.write("gateway: {}\n", "conf.d/10-a.yaml")
        conf_d = self.dir / "conf.d"
        real_is_dir = Path.is_dir

        def is_dir(path: Path) -> bool:
            if path == conf_d:
                raise PermissionError(13, "Permission denied", str(path))
            return real_is_dir(path)

        self.patch(Path, "is_dir", is_dir)
        return main

    def test_dropin_errors_name_the_dropin(self) -> None:
        """An error in a drop-in names that file, not the main one."""
        main = self.write("gateway: {}\n")
        dropin = self.write("gateway:\n  nope: 1\n", "conf.d/50-x.yaml")
        self.assertEqual(self.errors(main), [f"{dropin}: gateway.nope: unknown key (known: device_id, log_level,"
                                              " proxy, shutdown_timeout, state_dir, tenant_id)"])

    def test_amqtt_config_passes_through(self) -> None:
        """An amqtt/hbmqtt broker config is accepted as is; tcp and ws listeners become endpoints."""
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
        self.assertEqual([(l.name, l.endpoint, l.websocket) for l in loaded.broker.listeners],
                         [("default", "tcp:1884:interface=127.0.0.1", False),
                          ("ws-1", "tcp:8080:interface=127.0.0.1", True)])
        amqtt = loaded.broker.amqtt
        self.assertEqual(amqtt["listeners"]["default"], {"type": "external", "bind": "127.0.0.1:1884",
                                                         "max_connections": 50})
        self.assertEqual(amqtt["listeners"]["ws-1"]["type"], "external")
        self.assertEqual(amqtt["auth"]["allow-anonymous"], True)
        self.assertNotIn("plugins", amqtt)

    def test_ignored_amqtt_listener_keys_are_not_checked(self) -> None:
        """The listener keys the broker ignores (docs/broker.md: ``capath``, ``cadata``, ``reader``,
        ``writer``) load as written and are not handed to amqtt, whose check refused a ``capath``
        that does not exist although nothing reads it."""
        loaded = config.load(self.write(
            "broker:\n  listeners:\n    default:\n      bind: 127.0.0.1:1884\n"
            "      capath: /nonexistent/ca-dir\n      cadata: x\n      reader: {}\n      writer: {}\n"
        ))
        self.assertEqual(loaded.broker.amqtt["listeners"]["default"], {"type": "external", "bind": "127.0.0.1:1884"})
        self.assertEqual([l.endpoint for l in loaded.broker.listeners], ["tcp:1884:interface=127.0.0.1"])

    def test_external_listener_is_refused(self) -> None:
        """amqtt's ``type: external`` (connections handed in by another server through amqtt's API)
        has no equivalent here; it was served as a TCP listener on 127.0.0.1:1883 instead."""
        path = self.write("broker:\n  listeners:\n    default:\n      type: external\n")
        self.assertEqual(self.errors(path), [
            f"{path}: broker.listeners.default.type: external (amqtt's listener fed by another server through its "
            "API) has no equivalent here: every listener is a socket the gateway serves; make it tcp or ws with "
            "bind or endpoint, or remove it"])

    def test_an_encrypted_listener_key_is_refused_without_a_prompt(self) -> None:
        """A listener's private key with a pass phrase is refused, saying so, under the key
        written (``keyfile``, or ``endpoint``): OpenSSL asked for the pass phrase on the terminal
        (a check-config run in a shell waited for it) and then reported a list of its errors."""
        from cryptography.hazmat.primitives import serialization

        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        key = serialization.load_pem_private_key(Path(pki["server_key"]).read_bytes(), password=None)
        encrypted = Path(self.mktemp())
        encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"secret")))
        path = self.write(
            "broker:\n  listeners:\n"
            f"    a:\n      bind: 127.0.0.1:8883\n      ssl: true\n      certfile: {pki['server_cert']}\n"
            f"      keyfile: {encrypted}\n"
            f"    b:\n      endpoint: 'ssl:8884:privateKey={encrypted}:certKey={pki['server_cert']}'\n")
        says = f"the private key in {str(encrypted)!r} is encrypted: give the listener one without a pass phrase"
        self.assertEqual(self.errors(path), [f"{path}: broker.listeners.a.keyfile: {says}",
                                             f"{path}: broker.listeners.b.endpoint: {says}"])

    def test_amqtt_tls_listener_keys_checked_as_amqtt_would(self) -> None:
        """amqtt's listener rules for ``ssl``, ``certfile`` and ``keyfile`` (which the gateway turns
        into the endpoint) still hold: ``ssl`` is true or false (the string 'no' turned TLS on),
        and certfile and keyfile go together (a missing one was reported as a file named 'None')."""
        cert = self.write("not read: the errors come first", "cert.pem")
        path = self.write("broker:\n  listeners:\n"
                          "    a:\n      bind: 127.0.0.1:8883\n      ssl: 'no'\n"
                          f"    b:\n      bind: 127.0.0.1:8884\n      ssl: true\n      certfile: {cert}\n"
                          "    c:\n      bind: 127.0.0.1:8885\n      ssl: true\n")
        self.assertEqual(self.errors(path), [
            f"{path}: broker.listeners.a.ssl: must be true or false, not the text 'no'",
            f"{path}: broker.listeners.b.keyfile: needed too: certfile and keyfile go together (amqtt requires both)",
            f"{path}: broker.listeners.c.certfile: an ssl listener needs certfile and keyfile",
        ])

    def test_hbmqtt_spellings(self) -> None:
        """hbmqtt's ``max-connections`` and ``timeout-disconnect-delay`` (amqtt's own docs still spell
        them so) are accepted as amqtt's ``max_connections`` and ``timeout_disconnect_delay``; amqtt
        0.12's check refused them, so an hbmqtt config was not accepted as it is. Both spellings of
        one key are an error."""
        loaded = config.load(self.write(
            "broker:\n"
            "  listeners:\n"
            "    default:\n      type: tcp\n      bind: 127.0.0.1:1884\n      max-connections: 50\n"
            "  timeout-disconnect-delay: 2\n"
            "  auth:\n    allow-anonymous: true\n    plugins: [auth_anonymous]\n"
        ))
        [listener] = loaded.broker.listeners
        self.assertEqual(listener.max_connections, 50)
        self.assertEqual(loaded.broker.amqtt["listeners"]["default"]["max_connections"], 50)
        self.assertEqual(loaded.broker.amqtt["timeout_disconnect_delay"], 2)
        path = self.write("broker:\n  listeners:\n    default:\n      bind: 127.0.0.1:1884\n"
                          "      max-connections: 5\n      max_connections: 6\n"
                          "  timeout-disconnect-delay: 2\n  timeout_disconnect_delay: 3\n", "twice.yaml")
        self.assertEqual(self.errors(path), [
            f"{path}: broker.timeout_disconnect_delay: given twice, as 'timeout-disconnect-delay' and "
            "'timeout_disconnect_delay'",
            f"{path}: broker.listeners.default.max_connections: given twice, as 'max-connections' and "
            "'max_connections'",
        ])

    def test_a_dash_in_a_broker_key_is_read_as_underscore(self) -> None:
        """A ``-`` in a key is read as ``_`` in every section (docs/configuration.md), the
        ``broker:`` section and its listeners too: ``max-queued-messages`` and
        ``require-client-cert`` were refused (amqtt's check: "can not match ... to any data
        class field"), though only ``max-connections`` and ``timeout-disconnect-delay`` were."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        loaded = config.load(self.write(
            "broker:\n  max-queued-messages: 5\n  queue-overflow: drop_oldest\n"
            "  persistent-client-expiration: 1h\n  connect-timeout: 3\n  session-expiry-interval: 60\n"
            "  listeners:\n    default:\n"
            f"      endpoint: 'ssl:8883:privateKey={pki['server_key']}:certKey={pki['server_cert']}'\n"
            f"      cafile: {pki['ca']}\n      require-client-cert: true\n"))
        broker = loaded.broker
        self.assertEqual((broker.max_queued_messages, broker.queue_overflow, broker.persistent_client_expiration,
                          broker.connect_timeout), (5, "drop_oldest", 3600, 3))
        self.assertTrue(broker.listeners[0].require_client_cert)
        path = self.write("broker:\n  max-queued-messages: 5\n  max_queued_messages: 6\n", "twice.yaml")
        self.assertEqual(self.errors(path), [f"{path}: broker.max_queued_messages: given twice, as "
                                             "'max-queued-messages' and 'max_queued_messages'"])

    def test_amqtt_ipv6_bind(self) -> None:
        """An amqtt listener bound to an IPv6 address becomes a well-formed endpoint string (its
        colons escaped; it was refused as a malformed string) and apps get a URL with brackets."""
        from gateway.broker.settings import client_address

        loaded = config.load(self.write("broker:\n  listeners:\n    default:\n      type: tcp\n"
                                        "      bind: '[::1]:1884'\n"))
        [listener] = loaded.broker.listeners
        self.assertEqual(listener.endpoint, "tcp:1884:interface=\\:\\:1")
        self.assertEqual(client_address(listener), "mqtt://[::1]:1884")

    def test_amqtt_bind_host_name(self) -> None:
        """An amqtt listener's ``bind`` may name a host of /etc/hosts, as with amqtt: it listens on
        the name's first IPv4 address there (``localhost`` is 127.0.0.1); it was refused because the
        interface must be an IP address. A name that is not there is an error under ``bind``."""
        loaded = config.load(self.write("broker:\n  listeners:\n    default:\n      bind: localhost:1884\n"
                                        "    ws:\n      type: ws\n      bind: localhost:8080\n"))
        self.assertEqual([listener.endpoint for listener in loaded.broker.listeners],
                         ["tcp:1884:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"])
        path = self.write("broker:\n  listeners:\n    default:\n      bind: no-such-host.invalid:1884\n")
        lines = self.errors(path)
        self.assertEqual(lines, [f"{path}: broker.listeners.default.bind: 'no-such-host.invalid' is neither an IP"
                                 " address nor a name in /etc/hosts: a listener's address is not looked up in DNS"
                                 " (write the address)"])

    def test_amqtt_bind_no_lookup(self) -> None:
        """A ``bind`` host name is read from the hosts file, never looked up (getaddrinfo waited
        on DNS, for as long as a DNS server that does not answer takes, in the loading of every
        configuration change): the first IPv4 address of the name (any case), else its first IPv6
        one; ``localhost`` is 127.0.0.1 when the file does not name it."""
        from gateway.broker import settings

        def getaddrinfo(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"looked up {args}")

        self.patch(socket, "getaddrinfo", getaddrinfo)
        hosts = Path(self.mktemp())
        hosts.write_text("# 10.9.9.9 gw01\n::1 gw01 v6only\n10.0.0.5\tGW01 gw01.local # the gateway\n"
                         "not-an-address other\n", encoding="utf-8")
        self.patch(settings, "HOSTS_FILE", str(hosts))
        loaded = config.load(self.write(
            "broker:\n  listeners:\n    default:\n      bind: gw01:1884\n"
            "    six:\n      bind: v6only:1885\n    local:\n      bind: localhost:1886\n"))
        self.assertEqual([listener.endpoint for listener in loaded.broker.listeners],
                         ["tcp:1884:interface=10.0.0.5", "tcp:1885:interface=\\:\\:1",
                          "tcp:1886:interface=127.0.0.1"])
        path = self.write("broker:\n  listeners:\n    default:\n      bind: other:1884\n")
        self.assertEqual(self.errors(path), [f"{path}: broker.listeners.default.bind: 'other' is neither an IP"
                                             f" address nor a name in {hosts}: a listener's address is not looked"
                                             " up in DNS (write the address)"])
        hosts.unlink()
        self.assertIn(f"({hosts} cannot be read: No such file or directory)", self.errors(path)[0])

    def test_link_bind_address_is_an_ip_address(self) -> None:
        """A link's ``bindAddress=`` takes an IP address: a name was accepted, and looked up at each
        connection on the reactor thread (Twisted binds the socket there), which a DNS server that
        does not answer stalled; it is an error under ``endpoint``."""
        path = self.write("links:\n  links:\n    a:\n"
                          "      endpoint: 'tcp:host=127.0.0.1:port=1883:bindAddress=gw.example'\n")
        self.assertEqual(self.errors(path), [f"{path}: links.links.a.endpoint: bindAddress= takes an IP address of"
                                             " the gateway, not 'gw.example'"])
        loaded = config.load(self.write("links:\n  links:\n    a:\n"
                                        "      endpoint: 'tcp:host=127.0.0.1:port=1883:bindAddress=127.0.0.1'\n"))
        self.assertIn("bindAddress=127.0.0.1", loaded.links.links["a"].endpoint)

    def test_amqtt_listener_errors_under_the_keys_written(self) -> None:
        """The problems of an amqtt listener (``bind``, ``ssl``, ``certfile``, ``keyfile``, ``cafile``)
        are reported under the key the user wrote, not under ``endpoint``, a key they did not
        write: a bad port under ``bind``, an unreadable key or certificate under ``keyfile`` or
        ``certfile``, an unreadable CA file under ``cafile`` (on an endpoint listener too)."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        path = self.write(
            "broker:\n  listeners:\n"
            "    a:\n      bind: 127.0.0.1:99999\n"
            "    b:\n      bind: 127.0.0.1:8883\n      ssl: true\n"
            f"      certfile: {pki['server_cert']}\n      keyfile: /nonexistent/key.pem\n"
            "    c:\n      bind: 127.0.0.1:8884\n      ssl: true\n"
            f"      certfile: /nonexistent/cert.pem\n      keyfile: {pki['server_key']}\n"
            "    d:\n      bind: 127.0.0.1:8885\n      ssl: true\n"
            f"      certfile: {pki['server_cert']}\n      keyfile: {pki['server_key']}\n      cafile: /nonexistent/ca.pem\n"
            f"    e:\n      endpoint: 'ssl:8886:privateKey={pki['server_key']}:certKey={pki['server_cert']}'\n"
            "      cafile: /nonexistent/ca.pem\n"
            "    f:\n      type: ws\n      bind: 127.0.0.1:x\n")
        lines = self.errors(path)
        joined = "\n".join(lines)
        for where, says in (("a.bind", "needs host:port, '127.0.0.1:99999': the port must be from 0 to 65535, not '99999'"),
                            ("b.keyfile", "cannot read private key '/nonexistent/key.pem'"),
                            ("c.certfile", "cannot read certificate '/nonexistent/cert.pem'"),
                            ("d.cafile", "cannot read CA file '/nonexistent/ca.pem'"),
                            ("e.cafile", "cannot read CA file '/nonexistent/ca.pem'"),
                            ("f.bind", "needs host:port, '127.0.0.1:x': the port must be from 0 to 65535, not 'x'")):
            self.assertIn(f"{path}: broker.listeners.{where}: {says}", joined)
        self.assertEqual(len([line for line in lines if ": broker.listeners." in line]), 6, joined)

    def test_a_bad_bind_port_quotes_the_bind_written(self) -> None:
        """A bad port in ``bind`` is reported with the ``bind`` as written, not the endpoint
        string it is translated to ('tcp:99999:interface=\\:\\:1')."""
        path = self.write("broker:\n  listeners:\n    default:\n      bind: '[::1]:99999'\n"
                          "    tls:\n      bind: '[::1]:'\n      ssl: true\n      certfile: c.pem\n      keyfile: k.pem\n")
        lines = [line for line in self.errors(path) if ".bind:" in line]
        self.assertEqual(lines, [
            f"{path}: broker.listeners.default.bind: needs host:port, '[::1]:99999': the port must be from 0 to 65535, not '99999'",
            f"{path}: broker.listeners.tls.bind: needs host:port, '[::1]:': the port must be from 0 to 65535, not ''"])

    def test_a_missing_listener_cafile_is_reported_once(self) -> None:
        """A listener's ``cafile`` that does not exist is one error, under the listener's key
        (an amqtt listener's or an endpoint listener's). amqtt's own check reported it a
        second time under plain ``broker:`` ("'cafile' does not exist")."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        path = self.write(
            "broker:\n  listeners:\n"
            "    d:\n      bind: 127.0.0.1:8885\n      ssl: true\n"
            f"      certfile: {pki['server_cert']}\n      keyfile: {pki['server_key']}\n      cafile: /nonexistent/ca.pem\n"
            f"    e:\n      endpoint: 'ssl:8886:privateKey={pki['server_key']}:certKey={pki['server_cert']}'\n"
            "      cafile: /nonexistent/ca.pem\n")
        lines = self.errors(path)
        self.assertEqual([line.split(": ")[1] for line in lines if "ca.pem" in line],
                         ["broker.listeners.d.cafile", "broker.listeners.e.cafile"], lines)

    def test_an_unreadable_cafile_on_a_plain_listener_is_an_error(self) -> None:
        """A ``cafile`` on a listener without TLS (``bind`` without ``ssl``, a ``tcp:`` endpoint)
        is read too: one that cannot be read, or holds no certificate, is an error under its key
        (amqtt's check refuses a missing one there as well), not silently ignored."""
        text = Path(self.mktemp())
        text.write_text("not a certificate\n")
        path = self.write(
            "broker:\n  listeners:\n"
            "    a:\n      bind: 127.0.0.1:8885\n      cafile: /nonexistent/ca.pem\n"
            "    b:\n      endpoint: 'tcp:8886:interface=127.0.0.1'\n      cafile: /nonexistent/ca.pem\n"
            f"    c:\n      endpoint: 'tcp:8887:interface=127.0.0.1'\n      cafile: {text}\n")
        self.assertEqual([line.split(": ", 2)[1:] for line in self.errors(path)][:2], [
            ["broker.listeners.a.cafile", "cannot read CA file '/nonexistent/ca.pem': No such file or directory"],
            ["broker.listeners.b.cafile", "cannot read CA file '/nonexistent/ca.pem': No such file or directory"]])
        self.assertTrue(self.errors(path)[2].startswith(f"{path}: broker.listeners.c.cafile: no PEM certificate in "
                                                        f"{str(text)!r}"))
        self.assertEqual(len(self.errors(path)), 3)

    def test_every_problem_of_an_amqtt_listener_at_once(self) -> None:
        """Every problem at once (docs/configuration.md): an amqtt listener's unreadable
        ``cafile`` is reported beside a bad ``bind`` port or a ``certfile`` without its
        ``keyfile`` (whose ``bind`` is checked too), and an unreadable ``certfile`` beside an
        unreadable ``keyfile``; each waited for the one before it to be fixed."""
        path = self.write(
            "broker:\n  listeners:\n"
            "    a:\n      bind: 127.0.0.1:99999\n      cafile: /nonexistent/ca.pem\n"
            "    b:\n      bind: 127.0.0.1:99998\n      ssl: true\n      certfile: /nonexistent/cert.pem\n"
            "      cafile: /nonexistent/ca.pem\n"
            "    c:\n      bind: 127.0.0.1:8883\n      ssl: true\n      certfile: /nonexistent/cert.pem\n"
            "      keyfile: /nonexistent/key.pem\n      cafile: /nonexistent/ca.pem\n")
        no_ca = "cannot read CA file '/nonexistent/ca.pem': No such file or directory"
        self.assertEqual([line.split(": ", 1)[1] for line in self.errors(path)], [
            "broker.listeners.a.bind: needs host:port, '127.0.0.1:99999': the port must be from 0 to 65535, not '99999'",
            f"broker.listeners.a.cafile: {no_ca}",
            "broker.listeners.b.keyfile: needed too: certfile and keyfile go together (amqtt requires both)",
            "broker.listeners.b.bind: needs host:port, '127.0.0.1:99998': the port must be from 0 to 65535, not '99998'",
            f"broker.listeners.b.cafile: {no_ca}",
            "broker.listeners.c.keyfile: cannot read private key '/nonexistent/key.pem': No such file or directory",
            "broker.listeners.c.certfile: cannot read certificate '/nonexistent/cert.pem': No such file or directory",
            f"broker.listeners.c.cafile: {no_ca}"])

    def test_amqtt_seconds_each_under_its_key(self) -> None:
        """Every problem at once: amqtt's whole-second keys (``sys_interval``,
        ``timeout_disconnect_delay``, ``session_expiry_interval``), accepted though ignored or
        read as the session expiry, are each reported under their own key; amqtt's check named
        only the first under plain ``broker:``, and a ``session_expiry_interval`` that was no
        duration twice. So are the deprecated ``auth:`` and ``topic-check:`` sections that are
        no mappings (amqtt's check quoted a generator instead of the value), and ``plugins``
        that is neither a mapping nor a list is reported once (amqtt's check repeated it)."""
        path = self.write("broker:\n  sys_interval: abc\n  timeout_disconnect_delay: 1.5\n"
                          "  session_expiry_interval: xyz\n")
        self.assertEqual(self.errors(path), [
            f"{path}: broker.sys_interval: must be a whole number of seconds, not the text 'abc'",
            f"{path}: broker.timeout_disconnect_delay: must be a whole number of seconds, not the number 1.5",
            f"{path}: broker.session_expiry_interval: must be a whole number of seconds, not the text 'xyz'"])
        path = self.write("broker:\n  auth: yes please\n  topic-check: [acl]\n  plugins: 5\n", "types.yaml")
        self.assertEqual(self.errors(path), [f"{path}: broker.auth: must be a mapping, not the text 'yes please'",
                                             f"{path}: broker.topic-check: must be a mapping, not a list",
                                             f"{path}: broker.plugins: must be a mapping of plugins (dotted path:"
                                             " settings) or a list of them, not the number 5"])
        loaded = config.load(self.write("broker:\n  sys_interval: 10\n  timeout_disconnect_delay: 2\n"
                                        "  session_expiry_interval: 7200\n", "good.yaml"))
        self.assertEqual(loaded.broker.persistent_client_expiration, 7200)

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
        self.assertIn("broker.max_packet_size: must be a whole number from 64 to 66977792, not -5", joined)
        self.assertIn("broker.listeners.weird.type: must be tcp or ws", joined)
        self.assertIn("broker.plugins.no.such.Plugin: cannot import plugin", joined)
        self.assertIn("broker.listeners.default.colour: unknown key", joined)
        self.assertIn("broker.listeners.tls.endpoint: cannot read private key '/nonexistent/key.pem'", joined)

    def test_unknown_listener_key_names_its_listener(self) -> None:
        """An unknown key of a listener is one error under its own key path, naming the keys a
        listener takes (amqtt's check said only "broker: ... can not match "colour" to any data
        class field", not which listener), on both kinds of listener; hbmqtt's max-connections
        is known."""
        path = self.write("broker:\n  listeners:\n"
                          "    default:\n      endpoint: 'tcp:1883'\n      colour: blue\n"
                          "    other:\n      bind: 127.0.0.1:1884\n      max-connections: 5\n      bnid: x\n")
        self.assertEqual(self.errors(path), [
            f"{path}: broker.listeners.default.colour: unknown key (known: "
            "allowed_origins, bind, cadata, cafile, capath, certfile, endpoint, keyfile, max_connections, reader, "
            "require_client_cert, ssl, type, writer)",
            f"{path}: broker.listeners.other.bnid: unknown key (known: "
            "allowed_origins, bind, cadata, cafile, capath, certfile, endpoint, keyfile, max_connections, reader, "
            "require_client_cert, ssl, type, writer)"])

    def test_allowed_origins_of_a_websocket_listener(self) -> None:
        """A ``type: ws`` listener takes ``allowed_origins`` (``allowed-origins`` too): a list of
        ``scheme://host[:port]``, ``*`` or ``null``; each wrong entry is an error under its index
        (a path, a missing scheme, a bad port, a newline, a number), a value that is not a list is
        one, and so is the key on a listener that is not a WebSocket one (no browser sends it an
        Origin)."""
        loaded = config.load(self.write(
            "broker:\n  listeners:\n    ws:\n      type: ws\n      bind: 127.0.0.1:9001\n"
            "      allowed_origins: ['https://dash.example', 'http://[::1]:8080', 'null']\n"
            "    any:\n      type: ws\n      bind: 127.0.0.1:9002\n      allowed-origins: ['*']\n"))
        self.assertEqual([listener.allowed_origins for listener in loaded.broker.listeners],
                         [("https://dash.example", "http://[::1]:8080", "null"), ("*",)])
        path = self.write(
            "broker:\n  listeners:\n    ws:\n      type: ws\n      bind: 127.0.0.1:9001\n"
            "      allowed_origins: ['http://dash.example/', 'dash.example', 'http://a:99999', \"http://a\\nb\", 8080,"
            " 'ftp://a', 'http://dash.example:8080']\n"
            "    other:\n      type: ws\n      bind: 127.0.0.1:9002\n      allowed_origins: '*'\n"
            "    default:\n      bind: 127.0.0.1:1883\n      allowed_origins: ['*']\n")
        errors = self.errors(path)
        where = f"{path}: broker.listeners"
        self.assertEqual([line.split(": must")[0].split(": only")[0] for line in errors],
                         [f"{where}.ws.allowed_origins.{index}" for index in range(6)]
                         + [f"{where}.other.allowed_origins", f"{where}.default.allowed_origins"])
        self.assertTrue(errors[0].endswith("(pages opened from files), not the text 'http://dash.example/'"), errors[0])
        self.assertIn("must be a list of origins (scheme://host[:port]), or ['*'] for any, not the text '*'", errors[6])
        self.assertIn("only a websocket listener (type: ws) checks the Origin of browser pages", errors[7])

    def test_allowed_origins_port_zero_and_an_empty_list(self) -> None:
        """An entry with port 0 (``http://dash.example:0``: no browser sends it) is an error
        under its index, as another bad port is; it was taken, matching nothing. An empty list
        is no error and loads as no ``allowed_origins`` at all (the default: the listener's own
        host and clients without an Origin, docs/configuration.md)."""
        path = self.write("broker:\n  listeners:\n    ws:\n      type: ws\n      bind: 127.0.0.1:9001\n"
                          "      allowed_origins: ['http://dash.example:8080', 'http://dash.example:0',"
                          " 'https://[::1]:0']\n")
        errors = self.errors(path)
        self.assertEqual([line.split(": must")[0] for line in errors],
                         [f"{path}: broker.listeners.ws.allowed_origins.{index}" for index in (1, 2)])
        self.assertIn("a port from 1 to 65535", errors[0])
        self.assertTrue(errors[0].endswith("not the text 'http://dash.example:0'"), errors[0])
        loaded = config.load(self.write("broker:\n  listeners:\n    ws:\n      type: ws\n"
                                        "      bind: 127.0.0.1:9001\n      allowed_origins: []\n"))
        self.assertEqual([listener.allowed_origins for listener in loaded.broker.listeners], [()])

    def test_bad_endpoint_string(self) -> None:
        """An endpoint string Twisted cannot parse is an error at load time."""
        joined = "\n".join(self.errors(self.write(
            "broker:\n  listeners:\n    default:\n      endpoint: 'tcp:1883:colour=blue'\n")))
        self.assertIn("broker.listeners.default.endpoint: not a Twisted server endpoint", joined)

    def test_endpoint_strings_listen_would_refuse(self) -> None:
        """What Twisted's parser lets through but listening refuses is caught at load: a port
        out of range, an interface that is not an IP address, an empty unix path, a backlog
        that is not a number, a missing dhParameters file or one that holds no DH parameters,
        an ssl keyword the gateway does not use, a systemd string without index."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        tls = f"privateKey={pki['server_key']}:certKey={pki['server_cert']}"
        endpoints = {"a": "tcp:99999", "b": "tcp:1883:interface=notanip", "c": "unix:",
                     "d": f"ssl:8883:backlog=abc:{tls}", "e": f"ssl:8883:dhParameters=/nonexistent:{tls}",
                     "f": "systemd:domain=INET", "g": f"ssl:8883:dhParameters={pki['ca']}:{tls}",
                     "h": f"ssl:8883:sslmethod=TLSv1_2_METHOD:{tls}"}
        text = "broker:\n  listeners:\n" + "".join(
            f"    {name}:\n      endpoint: '{endpoint}'\n" for name, endpoint in endpoints.items())
        lines = self.errors(self.write(text))
        joined = "\n".join(lines)
        for name, says in (("a", "'tcp:99999': the port must be from 0 to 65535, not '99999'"),
                           ("b", "interface must be an IP address"),
                           ("c", "unix endpoint needs a path"), ("d", "backlog must be a whole number"),
                           ("e", "cannot read DH parameters file '/nonexistent'"),
                           ("f", "systemd endpoint needs index=NUMBER or name=NAME"),
                           ("g", "TLS settings unusable"), ("h", "ssl endpoint does not take sslmethod")):
            self.assertIn(f"broker.listeners.{name}.endpoint: {says}", joined)
        self.assertEqual(len(lines), 8, joined)

    def test_server_endpoints_holding_a_nul_are_refused(self) -> None:
        """A server endpoint string holding a NUL (``"unix:a\\0b"`` in YAML: no socket's path
        holds one) is refused under its key, on a broker listener and on the ingest and
        ``/metrics``: it passed the check, and the gateway then failed to start
        (``symlink: embedded null character``). It is refused once, for the NUL."""
        path = self.write('broker:\n  listeners:\n    default:\n      endpoint: "unix:a\\0b"\n'
                          'ingest:\n  endpoint: "unix:i\\0"\ntelemetry:\n  metrics_endpoint: "unix:m\\0"\n')
        self.assertEqual(self.errors(path), [
            f"{path}: broker.listeners.default.endpoint: must not hold a NUL character: 'unix:a\\x00b'",
            f"{path}: ingest.endpoint: must not hold a NUL character: 'unix:i\\x00'",
            f"{path}: telemetry.metrics_endpoint: must not hold a NUL character: 'unix:m\\x00'"])

    def test_systemd_endpoint_checks_without_systemd(self) -> None:
        """A socket-activated listener passes the check outside systemd (its sockets exist only
        when systemd starts the gateway); it was an IndexError traceback."""
        loaded = config.load(self.write("broker:\n  listeners:\n    default:\n"
                                        "      endpoint: 'systemd:domain=INET:index=0'\n"))
        self.assertEqual(loaded.broker.listeners[0].endpoint, "systemd:domain=INET:index=0")

    def test_required_client_cert_needs_ca(self) -> None:
        """Requiring client certificates without a CA to check them against is refused."""
        joined = "\n".join(self.errors(self.write(
            "broker:\n  listeners:\n    default:\n      endpoint: 'tcp:1883'\n      require_client_cert: true\n")))
        self.assertIn("require_client_cert: needs cafile", joined)
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        for ca in (f"cafile={pki['ca']}", f"caCertsDir={Path(pki['ca']).parent}"):  # the CA in the endpoint
            endpoint = f"ssl:8883:privateKey={pki['server_key']}:certKey={pki['server_cert']}:{ca}"
            loaded = config.load(self.write(f"broker:\n  listeners:\n    default:\n      endpoint: '{endpoint}'\n"
                                            "      require_client_cert: true\n"))
            self.assertTrue(loaded.broker.listeners[0].require_client_cert, ca)

    def test_ca_certs_dir_without_certificates(self) -> None:
        """A ``caCertsDir=`` holding no ``*.pem`` or ``*.crt`` file is an error naming it (with it,
        optional client certificates were silently left unchecked)."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        empty = Path(self.mktemp())
        empty.mkdir()
        (empty / "README").write_text("certificates go here\n")
        path = self.write(f"broker:\n  listeners:\n    default:\n      endpoint: 'ssl:8883:privateKey="
                          f"{pki['server_key']}:certKey={pki['server_cert']}:caCertsDir={empty}'\n")
        lines = self.errors(path)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"{path}: broker.listeners.default.endpoint: no CA certificates in "
                                            f"{str(empty)!r}"), lines)

    def test_required_client_cert_needs_tls(self) -> None:
        """require_client_cert on a listener without TLS (tcp:, unix:, systemd:, an amqtt
        listener without ssl) is refused: it has no client certificates to require, and every
        client got in without one (docs/configuration.md: with require_client_cert: true they
        are required); an ssl: listener, or an amqtt one with ssl: true, takes it."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        for lines in ("endpoint: 'tcp:1883:interface=127.0.0.1'", "endpoint: 'unix:/tmp/gw-mqtt.sock'",
                      "bind: 127.0.0.1:1883", "type: ws\n      bind: 127.0.0.1:8080"):
            errors = self.errors(self.write(f"broker:\n  listeners:\n    default:\n      {lines}\n"
                                            f"      cafile: {pki['ca']}\n      require_client_cert: true\n"))
            self.assertEqual(len(errors), 1, errors)
            self.assertIn("broker.listeners.default.require_client_cert: only a TLS listener", errors[0])
        for lines in (f"endpoint: 'ssl:8883:privateKey={pki['server_key']}:certKey={pki['server_cert']}'",
                      f"bind: 127.0.0.1:8883\n      ssl: true\n      certfile: {pki['server_cert']}\n"
                      f"      keyfile: {pki['server_key']}",
                      f"type: ws\n      bind: 127.0.0.1:8443\n      ssl: true\n      certfile: {pki['server_cert']}\n"
                      f"      keyfile: {pki['server_key']}"):
            loaded = config.load(self.write(f"broker:\n  listeners:\n    default:\n      {lines}\n"
                                            f"      cafile: {pki['ca']}\n      require_client_cert: true\n"))
            self.assertTrue(loaded.broker.listeners[0].require_client_cert, lines)

    def test_listener_files_are_non_empty_paths(self) -> None:
        """A listener's ``cafile``, ``certfile`` and ``keyfile`` name paths: an empty string or a
        number is refused under its own key (an empty ``cafile`` silently turned client
        certificate checks off; a number was read as a file named after it)."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        tls = f"privateKey={pki['server_key']}:certKey={pki['server_cert']}"
        path = self.write("broker:\n  listeners:\n"
                          f"    a:\n      endpoint: 'ssl:8883:{tls}'\n      cafile: ''\n"
                          "    b:\n      endpoint: 'tcp:1883'\n      cafile: 123\n"
                          f"    c:\n      bind: 127.0.0.1:8884\n      ssl: true\n      certfile: 5\n"
                          f"      keyfile: {pki['server_key']}\n"
                          f"    d:\n      bind: 127.0.0.1:8885\n      ssl: true\n      certfile: {pki['server_cert']}\n"
                          "      keyfile: ' '\n")
        lines = self.errors(path)
        joined = "\n".join(lines)
        for where, value in (("a.cafile", "the text ''"), ("b.cafile", "the number 123"), ("c.certfile", "the number 5"),
                             ("d.keyfile", "the text ' '")):
            self.assertIn(f"{path}: broker.listeners.{where}: must be a path (a non-empty string), not {value}",
                          joined)
        self.assertEqual(len(lines), 4, joined)


class SectionTests(SynchronousTestCase):
    """Service sections come through the same loader; helpers derived from config."""

    def test_yaml_booleans_for_true_false_choices(self) -> None:
        """``autorestart: true`` (a YAML boolean) is accepted for supervisord's "true"|"false"|"unexpected"."""
        path = Path(self.mktemp())
        path.write_text("apps:\n  programs:\n    p:\n      command: /bin/true\n      autorestart: true\n"
                        "    q:\n      command: /bin/true\n      autorestart: false\n")
        programs = config.load(path).apps.programs
        self.assertEqual((programs["p"].autorestart, programs["q"].autorestart), ("true", "false"))

    def test_yaml_no_and_off_for_such_choices(self) -> None:
        """``telemetry.app_accounting: off`` (conf/gateway.yaml: ``auto | off``) and
        ``restart_policy: {type: no}`` (docs/containers.md): YAML reads the bare ``off`` and
        ``no`` as false, which stands for that word of the choice (both were refused as False)."""
        path = Path(self.mktemp())
        path.write_text("telemetry:\n  app_accounting: off\n"
                        "containers:\n  containers:\n    c:\n      image: registry.local:5000/c:1\n"
                        "      restart_policy: {type: no}\n")
        loaded = config.load(path)
        self.assertEqual(loaded.telemetry.app_accounting, "off")
        self.assertEqual(loaded.containers.containers["c"].restart_policy.type, "no")

    def test_client_address_of_listeners(self) -> None:
        """Apps are told how to reach the broker as a URL."""
        from gateway.broker.settings import ListenerSettings, client_address

        self.assertEqual(client_address(ListenerSettings("a", "tcp:1883:interface=127.0.0.1")),
                         "mqtt://127.0.0.1:1883")
        self.assertEqual(client_address(ListenerSettings("a", "ssl:8883:interface=0.0.0.0:privateKey=k")),
                         "mqtts://127.0.0.1:8883")
        self.assertEqual(client_address(ListenerSettings("a", "unix:/run/gateway/mqtt.sock:mode=660")),
                         "unix:///run/gateway/mqtt.sock")
        # the keyword forms Twisted takes as well (they were handed over as the endpoint string)
        self.assertEqual(client_address(ListenerSettings("a", "tcp:port=1884:interface=127.0.0.2")),
                         "mqtt://127.0.0.2:1884")
        self.assertEqual(client_address(ListenerSettings("a", "unix:address=/run/m.sock")), "unix:///run/m.sock")
        self.assertEqual(client_address(ListenerSettings("a", "tcp:port=8080", websocket=True)),
                         "ws://127.0.0.1:8080")

    def test_client_address_of_ipv6_listeners(self) -> None:
        """A ``tcp6:`` listener (Twisted's IPv6 TCP endpoint, which the config takes) is a URL too,
        as docs/apps.md promises of every listener but a ``systemd:`` one: apps were handed the
        endpoint string as it is (``tcp6:1883:interface=\\:\\:1``), which no MQTT client takes.
        Its loopback is ``::1``: ``::`` or no interface at all is every IPv6 address."""
        from gateway.broker.settings import ListenerSettings, client_address

        self.assertEqual(client_address(ListenerSettings("a", "tcp6:1883:interface=\\:\\:1")),
                         "mqtt://[::1]:1883")
        self.assertEqual(client_address(ListenerSettings("a", "tcp6:port=1883")), "mqtt://[::1]:1883")
        self.assertEqual(client_address(ListenerSettings("a", "tcp6:1883:interface=\\:\\:")), "mqtt://[::1]:1883")
        self.assertEqual(client_address(ListenerSettings("a", "tcp6:8080:interface=fd00\\:\\:5", websocket=True)),
                         "ws://[fd00::5]:8080")
        self.assertEqual(client_address(ListenerSettings("a", "systemd:domain=INET6:index=0")),
                         "systemd:domain=INET6:index=0")

    def test_client_address_of_a_tcp_listener_on_every_ipv6_address(self) -> None:
        """A ``tcp:`` listener on ``::`` (``interface=\\:\\:``, or amqtt's ``bind: '[::]:1883'``)
        is reached on ``[::1]``, which it always takes: apps were handed ``127.0.0.1``, which
        such a socket takes only where the kernel lets IPv6 sockets take IPv4 clients
        (``net.ipv6.bindv6only`` 0); and ``ssl:`` alike."""
        from gateway.broker.settings import ListenerSettings, client_address

        self.assertEqual(client_address(ListenerSettings("a", "tcp:1883:interface=\\:\\:")), "mqtt://[::1]:1883")
        self.assertEqual(client_address(ListenerSettings("a", "ssl:8883:interface=\\:\\:")), "mqtts://[::1]:8883")
        self.assertEqual(client_address(ListenerSettings("a", "tcp:1883:interface=0.0.0.0")), "mqtt://127.0.0.1:1883")


class LoadCheckTests(SynchronousTestCase):
    """Everything that would fail or misbehave at start is refused at load, with its key path
    and file, every problem of a file in one report."""

    def write(self, text: str | bytes) -> Path:
        """A config file in a fresh directory."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "gateway.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    def dropin_errors(self, path: Path, name: str, text: str) -> tuple[Path, list[str]]:
        """Add the drop-in ``name`` holding ``text`` beside config ``path``; return its path and
        the error lines ``load`` raises."""
        (path.parent / "conf.d").mkdir()
        dropin = path.parent / "conf.d" / name
        dropin.write_text(text)
        return dropin, self.assertRaises(ConfigError, config.load, path).errors

    def errors(self, text: str | bytes) -> tuple[Path, list[str]]:
        """The config's path and the error lines ``load`` raises for it."""
        path = self.write(text)
        return path, self.assertRaises(ConfigError, config.load, path).errors

    def assertOneError(self, text: str, where: str, says: str) -> None:
        """``text`` is refused with exactly one line, naming the file, ``where`` and ``says``."""
        path, lines = self.errors(text)
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"{path}: {where}: "), lines)
        self.assertIn(says, lines[0])

    def test_not_utf8_is_one_line(self) -> None:
        """A file that is not UTF-8 is one error naming the file, the line and the byte."""
        path, lines = self.errors(b"gateway:\n  device_id: caf\xe9\n")
        self.assertEqual(lines, [f"{path}: line 2: not valid UTF-8 (byte 0xe9 at offset 25); save the file as UTF-8"])

    def test_half_a_surrogate_pair_is_refused(self) -> None:
        """A ``\\uD800`` escape (half of a UTF-16 surrogate pair: YAML reads ``\\u`` escapes one
        by one) in a value or a key is one error at its line: it is no text, and a device id
        with one was taken and broke the reports; a character beyond U+FFFF written as ``\\U``
        is read."""
        for text, column in (('gateway:\n  device_id: "a\\uD83D\\uDE00"\n', 14),
                             ('gateway:\n  "k\\udc00": 1\n', 3)):
            path, lines = self.errors(text)
            self.assertEqual(len(lines), 1, lines)
            self.assertTrue(lines[0].startswith(f"{path}: line 2, column {column}: not valid YAML: \\u"), lines)
            self.assertIn("half of a UTF-16 surrogate pair", lines[0])
        loaded = config.load(self.write('gateway:\n  device_id: "a\\U0001F600"\n'))
        self.assertEqual(loaded.gateway.device_id, "a\U0001F600")

    def test_duplicate_key_is_refused(self) -> None:
        """A key given twice in one mapping is an error (YAML would keep the last one silently);
        keys brought in by a merge may still be overridden."""
        path, lines = self.errors("gateway:\n  device_id: a\n  device_id: b\n")
        self.assertEqual(lines, [f"{path}: line 3, column 3: not valid YAML: duplicate key 'device_id',"
                                 " given first on line 2 (YAML would keep only the last)"])
        loaded = config.load(self.write("gateway:\n  <<: {device_id: a, tenant_id: t}\n  device_id: b\n"))
        self.assertEqual((loaded.gateway.device_id, loaded.gateway.tenant_id), ("b", "t"))

    def test_keys_are_read_as_the_text_written(self) -> None:
        """A key is the text written: ``ON`` is an environment variable named ``ON`` (YAML 1.1
        alone would read it as the boolean true, named ``True`` once made text), ``true`` and
        ``True`` are two keys, ``01`` stays ``01``, in merges too; values are typed as usual."""
        program = "apps:\n  programs:\n    p:\n      command: /bin/true\n      environment:\n"
        loaded = config.load(self.write(program + "        ON: a\n        true: b\n        True: c\n"
                                        "        01: d\n        ~: e\n        yes: 'yes'\n"))
        self.assertEqual(loaded.apps.programs["p"].environment,
                         {"ON": "a", "true": "b", "True": "c", "01": "d", "~": "e", "yes": "yes"})
        merged = config.load(self.write("apps:\n  programs:\n    p:\n      command: /bin/true\n"
                                        "      environment:\n        <<: {off: a, 'no': b}\n        off: c\n"))
        self.assertEqual(merged.apps.programs["p"].environment, {"off": "c", "no": "b"})
        loaded = config.load(self.write("ingest:\n  enabled: off\n"))
        self.assertFalse(loaded.ingest.enabled)

    def test_one_key_written_twice_is_refused(self) -> None:
        """The same key text twice in one mapping, quoted or not, is an error naming the file, the
        line and both keys, in the main file and in a drop-in; no value is dropped silently."""
        program = "apps:\n  programs:\n    p:\n      command: /bin/true\n      environment:\n"
        cases = [("true: a\n        true: b\n", "'true', given first on line 6 (YAML would keep only the last)"),
                 ('"True": a\n        True: b\n', "'True': the same key as '\"True\"' on line 6"
                  " (YAML would keep only the last)"),
                 ("1: a\n        '1': b\n", "\"'1'\": the same key as '1' on line 6 (YAML would keep only the last)")]
        for keys, says in cases:
            path, lines = self.errors(program + "        " + keys)
            self.assertEqual(lines, [f"{path}: line 7, column 9: not valid YAML: duplicate key {says}"])
        path = self.write("gateway:\n  device_id: a\n")
        dropin, lines = self.dropin_errors(path, "50-site.yaml", "journal:\n  streams: {On: {}, 'On': {}}\n")
        self.assertEqual(lines, [f"{dropin}: line 2, column 21: not valid YAML: duplicate key \"'On'\": the same"
                                 " key as 'On' on line 2 (YAML would keep only the last)"])

    def test_a_dash_in_a_key_is_read_as_an_underscore(self) -> None:
        """In every section a key's ``-`` is ``_`` (hbmqtt's spelling, docs/configuration.md);
        names the user chooses keep theirs."""
        path = self.write("updates:\n  script-timeout: 5\n  download:\n    idle-timeout: 3\n"
                          "apps:\n  programs:\n    my-prog:\n      command: /bin/true\n"
                          "      environment:\n        A-B: x\n")
        loaded = config.load(path)
        self.assertEqual((loaded.updates.script_timeout, loaded.updates.download.idle_timeout), (5.0, 3.0))
        self.assertEqual(loaded.apps.programs["my-prog"].environment, {"A-B": "x"})
        dropin, lines = self.dropin_errors(path, "90-remote.yaml", "updates:\n  script_timeout: 7\n")
        self.assertEqual(lines, [f"{dropin}: updates.script_timeout: given twice, as 'script-timeout' and"
                                 " 'script_timeout'"])

    def test_a_key_given_twice_with_a_dash(self) -> None:
        """``device-id`` is read as ``device_id``: both in one mapping is a key given twice,
        an error, not the last one silently kept."""
        path, lines = self.errors("gateway:\n  device_id: a\n  device-id: b\n")
        self.assertEqual(lines, [f"{path}: gateway.device-id: given twice, as 'device_id' and 'device-id'"])

    def test_huge_numbers_are_one_line(self) -> None:
        """A number too large for a float where seconds are expected, and an integer longer
        than Python converts (4300 digits), are each one error line, never a traceback."""
        huge = "9" * 400
        path, lines = self.errors(f"gateway:\n  shutdown_timeout: {huge}\n")
        self.assertEqual(lines, [f"{path}: gateway.shutdown_timeout: must be a number, not an integer"
                                 " too large for one"])
        path, lines = self.errors(f"broker:\n  connect_timeout: {huge}\n  persistent_client_expiration: {huge}\n")
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith(f"{path}: broker.connect_timeout: must be a positive number"), lines)
        self.assertTrue(lines[1].startswith(f"{path}: broker.persistent_client_expiration: not a duration"), lines)
        path, lines = self.errors("gateway:\n  device_id: " + "9" * 5000 + "\n")
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"{path}: line 2, column 14: not valid YAML: an integer of 5000 digits"),
                        lines)

    def test_a_newline_in_a_value_stays_in_one_line(self) -> None:
        """A value with a newline (a block scalar keeps its last one) is quoted in one line,
        as '\\n', by messages that quote it; a key that takes no control character refuses it
        (an endpoint string: Twisted's parser read the newline into the port or host)."""
        path, lines = self.errors("ingest:\n  endpoint: |\n    tpc:8090\n"
                                  "links:\n  links:\n    c:\n      endpoint: |\n        tpc:host=h\n"
                                  "broker:\n  sys_interval: |\n    ten\n")
        self.assertEqual(len(lines), 3, lines)
        for line in lines:
            self.assertNotIn("\n", line)
            self.assertIn("\\n", line)
        self.assertEqual(lines[0], f"{path}: broker.sys_interval: must be a whole number of seconds, not the text"
                                   " 'ten\\n'")
        self.assertEqual(lines[1:], [
            f"{path}: links.links.c.endpoint: must not hold a control character ('\\n'): 'tpc:host=h\\n'",
            f"{path}: ingest.endpoint: must not hold a control character ('\\n'): 'tpc:8090\\n'"])

    def test_huge_file_is_one_line_at_once(self) -> None:
        """A file over 4 MiB is refused before it is parsed: one line, at once (a 13 MB list
        of a million values took a minute to parse before the value count refused it)."""
        path, lines = self.errors("uploads:\n  files:\n" + "  - a\n" * (4 * 2**20 // 6 + 1))
        self.assertEqual(lines, [f"{path}: larger than 4194304 bytes: not read (a configuration is far smaller)"])
        self.assertEqual(config.load(self.write("uploads:\n  files:\n" + "  - /a\n" * 1000)).uploads.files,
                         ("/a",) * 1000)

    def test_hostile_yaml_is_one_line(self) -> None:
        """Nesting too deep, aliases that expand to millions of values and a NUL character are
        each one error line, quickly, not a traceback or a hang."""
        _, lines = self.errors("gateway: " + "[" * 5000 + "]" * 5000 + "\n")
        self.assertEqual(len(lines), 1)
        self.assertIn("nested too deeply", lines[0])
        bomb = "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
            f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 7))
        _, lines = self.errors(bomb)
        self.assertEqual(len(lines), 1)
        self.assertIn("more than 1000000 values once its aliases are expanded", lines[0])
        path, lines = self.errors(b"gateway:\n  device_id: a\x00b\n")
        self.assertEqual(lines, [f"{path}: line 2: not valid YAML: the character U+0000 is not allowed in YAML text"])

    def test_program_without_command(self) -> None:
        """A configured program needs a command (else it was only logged at start)."""
        self.assertOneError("apps:\n  programs:\n    logger:\n      autorestart: true\n",
                            "apps.programs.logger.command", "required")

    def test_program_command_that_does_not_split(self) -> None:
        """A command line with an unclosed quote is refused."""
        self.assertOneError("apps:\n  programs:\n    p:\n      command: \"run 'this\"\n",
                            "apps.programs.p.command", "quotation")

    def test_program_unknown_user_and_bad_name(self) -> None:
        """A program running as a user that does not exist, or with a name that is not one
        path component, is refused."""
        path, lines = self.errors("apps:\n  programs:\n    ../up:\n      command: /bin/true\n"
                                  "    ok:\n      command: /bin/true\n      user: no-such-user-xyz\n"
                                  "      exitcodes: [0, 300]\n      environment: {'A=B': x}\n")
        joined = "\n".join(lines)
        self.assertEqual(len(lines), 4, joined)
        self.assertIn(f"{path}: apps.programs.ok.environment.A=B: an environment variable's name needs no '='", joined)
        self.assertIn(f"{path}: apps.programs.../up: bad program name", joined)
        self.assertIn(f"{path}: apps.programs.ok.user: no user 'no-such-user-xyz'", joined)
        self.assertIn(f"{path}: apps.programs.ok.exitcodes.1: must be from 0 to 255", joined)

    def test_a_program_named_like_a_file_the_apps_keep_is_refused(self) -> None:
        """A program is an app: one named ``desired.json`` had its state directory made at
        ``apps/desired.json/data``, and the apps service could not start once the wishes were
        written (NotADirectoryError)."""
        for name in ("desired.json", "processes.json", "installing.json"):
            self.assertOneError(f"apps:\n  programs:\n    {name}:\n      command: /bin/true\n",
                                f"apps.programs.{name}", "is a file the gateway keeps in apps/")

    def test_max_packet_size_not_whole(self) -> None:
        """``max_packet_size: 1.5`` is refused, not rounded down to 1."""
        self.assertOneError("broker:\n  max_packet_size: 1.5\n", "broker.max_packet_size", "whole number")

    def test_max_packet_size_over_mqtt_limit(self) -> None:
        """Above MQTT's largest remaining length (268,435,455) is refused."""
        self.assertOneError("broker:\n  max_packet_size: 300000000\n", "broker.max_packet_size", "268435455")

    def test_max_packet_size_over_journal_limit(self) -> None:
        """Above what one journal record holds (64 MiB less 128 KiB for topic and headers) is
        refused, naming both limits: such a PUBLISH could never be stored, so never acknowledged."""
        path, lines = self.errors("broker:\n  max_packet_size: 100000000\n")
        self.assertEqual(lines, [f"{path}: broker.max_packet_size: must be at most 66977792, not 100000000: "
                                 "the journal stores a message in one record of at most 67108864 bytes, topic "
                                 "and headers included (MQTT's own limit, 268435455, is above it)"])

    def test_max_packet_size_journal_limit_accepted(self) -> None:
        """The largest accepted ``max_packet_size`` (66977792) loads, and a PUBLISH that size
        fits one journal record: routed to a 64 KiB topic, or logged by the broker's state log
        with a 64 KiB client id."""
        from gateway.journal.record import Record, encode

        loaded = config.load(self.write("broker:\n  max_packet_size: 66977792\n"))
        self.assertEqual(loaded.broker.max_packet_size, 66977792)
        payload = b"x" * (66977792 - 2 - 1)  # QoS 0: topic length and a one-byte topic
        encode(Record("t" * 65535, payload, 0), 1)
        encode(Record("t", payload, 0, False, 0.0,
                      (("op", "queue"), ("n", str(2**63)), ("client", "c" * 65535))), 1)

    def test_ingest_max_body_over_journal_limit(self) -> None:
        """The HTTP ingest's ``max_body`` is bounded as the broker's packets are: a value
        within a larger body could not be stored in one journal record (the write raised
        instead of answering); the largest accepted loads."""
        self.assertOneError("ingest:\n  max_body: 100000000\n", "ingest.max_body", "must be at most 66977792")
        self.assertEqual(config.load(self.write("ingest:\n  max_body: 66977792\n")).ingest.max_body, 66977792)

    def test_ingest_ciks_are_ciks(self) -> None:
        """An ``ingest.ciks`` entry that is not 40 hexadecimal characters was taken, and no request
        could ever use it (a CIK that is not one gets 401 before it is looked up); 40 hex
        characters, in either case, load."""
        path, lines = self.errors("ingest:\n  auth: known\n  ciks: ['0123', '" + "g" * 40 + "']\n")
        self.assertEqual(lines, [f"{path}: ingest.ciks.0: a CIK is 40 hexadecimal characters, not <redacted>",
                                 f"{path}: ingest.ciks.1: a CIK is 40 hexadecimal characters, not <redacted>"])
        cik = "0123456789abcdefABCDEF0123456789abcdef01"
        self.assertEqual(config.load(self.write(f"ingest:\n  ciks: ['{cik}']\n")).ingest.ciks, (cik,))

    def test_errors_do_not_quote_secrets(self) -> None:
        """An error at a secret-looking key (the rule ``config.get`` redacts by) says what is
        wrong without the value: ``--check-config`` and every start print these lines, into
        journald under systemd, and a link password holding a NUL or a malformed CIK was
        quoted whole. A value the words would still show is withheld; a key naming a file
        keeps its path (the file holds the secret: ``test_fleet_token_file``)."""
        path, lines = self.errors(
            "links:\n  links:\n    c:\n      endpoint: 'tcp:127.0.0.1:1'\n      username: u\n"
            "      password: \"Nul\\0Pass-s3cret\"\n"
            "ingest:\n  ciks: ['s3cret-cik']\n")
        self.assertNotIn("s3cret", "\n".join(lines))
        self.assertEqual(lines, [
            f"{path}: links.links.c.password: must not hold a NUL character: <redacted>",
            f"{path}: ingest.ciks.0: a CIK is 40 hexadecimal characters, not <redacted>"])
        self.assertEqual(redact_quoted(("links", "c", "password"), "t", "must not hold 't' or t"), WITHHELD)

    def test_errors_do_not_quote_a_character_of_a_secret(self) -> None:
        """A secret's character quoted alone is redacted too: a password with an ``é`` under a
        locale that cannot pass it on was told ``holds 'é': ...`` (run under ``LC_ALL=C
        PYTHONUTF8=0``), and a CIK with a tab ``must not hold a control character ('\\t')``:
        what is wrong is still said."""
        locale = "holds 'é': this system cannot pass it on: Python's file system encoding is ascii"
        self.assertEqual(redact_quoted(("links", "links", "c", "password"), "pé-s3cret", locale),
                         "holds <redacted>: this system cannot pass it on: Python's file system encoding is ascii")
        self.assertEqual(redact_quoted(("gateway", "state_dir"), "é", locale), locale)
        path, lines = self.errors("ingest:\n  ciks: [\"0123456789abcdef\\t0123456789abcdef012345\"]\n")
        self.assertEqual(lines, [f"{path}: ingest.ciks.0: must not hold a control character (<redacted>): <redacted>"])

    def test_a_number_where_text_is_meant_is_read_as_written(self) -> None:
        """``gateway.device_id: 0123`` (YAML 1.1's octal 83) was the device ``83``, in its
        topics, client id and Exosite serial, and ``password: 1.10`` the password ``1.1``: a key
        that takes text reads a number as it was written. A number key still gets the number;
        a YAML boolean (``yes``, ``on``) is refused by a text key."""
        loaded = config.load(self.write(
            "gateway:\n  device_id: 0123\n  tenant_id: 1_000\n  shutdown_timeout: 0x10\n"
            "links:\n  links:\n    c:\n      endpoint: 'tcp:127.0.0.1:1'\n      client_id: 1.10\n"
            "      username: 5\n      password: 00012\n      keepalive: 030\n"
            "fleet:\n  tenant: 7.0\n  controller_id: 1e3\n"
            "twin:\n  thing_id: 12:30\n"
            "apps:\n  programs:\n    p:\n      command: /bin/true\n      environment: {PORT: 08080}\n"))
        self.assertEqual((loaded.gateway.device_id, loaded.gateway.tenant_id), ("0123", "1_000"))
        link = loaded.links.links["c"]
        self.assertEqual((link.client_id, link.username, link.password), ("1.10", "5", "00012"))
        self.assertEqual((loaded.fleet.tenant, loaded.fleet.controller_id), ("7.0", "1e3"))
        self.assertEqual(loaded.twin.thing_id, "12:30")  # (YAML 1.1: the number 750)
        self.assertEqual(loaded.apps.programs["p"].environment, {"PORT": "08080"})
        # number keys: the plain number YAML read
        self.assertEqual((loaded.gateway.shutdown_timeout, link.keepalive), (16.0, 24))
        self.assertIs(type(link.keepalive), int)
        self.assertIs(type(loaded.gateway.shutdown_timeout), float)
        path, lines = self.errors("gateway:\n  tenant_id: yes\n")
        self.assertEqual(lines, [f"{path}: gateway.tenant_id: must be a string, not the boolean true"])

    def test_errors_do_not_quote_secrets_yaml_read_as_dates(self) -> None:
        """A secret-looking key whose value YAML reads as a date (an unquoted ``2026-12-05``)
        is redacted as text and numbers are: the error named the value, ``not the date
        2026-12-05``, the configuration's words for a value of the wrong kind."""
        path, lines = self.errors(
            "links:\n  links:\n    c:\n      endpoint: 'tcp:127.0.0.1:1'\n      username: u\n"
            "      password: 2026-12-05\n"
            "apps:\n  programs:\n    p:\n      command: /bin/true\n"
            "      environment: {DB_PASS: 2026-01-02 10:20:30}\n")
        self.assertNotIn("2026", "\n".join(lines))
        self.assertEqual(lines, [
            f"{path}: links.links.c.password: must be a string, not the date <redacted>",
            f"{path}: apps.programs.p.environment.DB_PASS: must be a string, not the date and time <redacted>"])

    def test_a_cik_file_where_the_cik_cannot_be_saved_is_refused(self) -> None:
        """An exosite link's ``cik_file`` in a directory the gateway cannot write (read-only, as
        /etc is under the .deb's unit) is refused: it loaded, and the CIK the platform issues
        once per serial was kept in memory only, lost at the next start. A directory still to
        be made under a writable one, and a json link (which keeps no CIK), load."""
        from tests.tmpfs import mount_tmpfs, remount_read_only

        readonly = Path(self.mktemp()).absolute()
        mount_tmpfs(self, readonly, "1m")
        (readonly / "sub").mkdir()
        remount_read_only(readonly)
        link = "http_links:\n  links:\n    m:\n      url: 'https://h'\n      mode: {mode}\n      cik_file: {path}\n"
        for cik_file, directory in ((readonly / "murano.cik", readonly),
                                    (readonly / "sub" / "new" / "murano.cik", readonly / "sub")):
            self.assertOneError(link.format(mode="exosite", path=cik_file), "http_links.links.m.cik_file",
                                f"the gateway cannot write in {directory}, so the CIK activated for this link"
                                " (once per serial) could not be saved")
        a_file = Path(self.write("")).absolute()
        self.assertOneError(link.format(mode="exosite", path=a_file / "x.cik"), "http_links.links.m.cik_file",
                            f"{str(a_file)!r} exists and is not a directory: the CIK activated for this link")
        writable = Path(self.mktemp()).absolute() / "new" / "murano.cik"
        config.load(self.write(link.format(mode="exosite", path=writable)))
        config.load(self.write(link.format(mode="json", path=readonly / "murano.cik")))

    def test_a_cik_file_under_a_loop_of_links_or_a_file_is_refused(self) -> None:
        """A ``cik_file`` under a symbolic link pointing at itself (ELOOP), deeper under a regular
        file (ENOTDIR), under a name longer than the file system takes (ENAMETOOLONG), or in or under
        a symbolic link to nothing (the save's ``mkdir`` does not follow it) is refused
        in the words of the directory keys (gateway.configdirectory): the check took such a path
        as not there yet and looked at the directory above, so a loop passed (the link then
        could not save the CIK the platform issues once per serial) and a file on the way was
        named instead of the path."""
        base = Path(self.mktemp()).absolute()
        base.mkdir()
        (base / "loop").symlink_to("loop")
        (base / "file").write_text("")
        (base / "gone").symlink_to("nowhere")
        link = "http_links:\n  links:\n    m:\n      url: 'https://h'\n      mode: exosite\n      cik_file: {path}\n"
        dangling = "it is a symbolic link to 'nowhere', which does not exist"
        for directory, named, why in ((base / "loop", base / "loop", "Too many levels of symbolic links"),
                                      (base / "loop" / "a", base / "loop" / "a", "Too many levels of symbolic links"),
                                      (base / "file" / "sub", base / "file" / "sub", "Not a directory"),
                                      (base / ("x" * 300), base / ("x" * 300), "File name too long"),
                                      (base / "gone", base / "gone", dangling),
                                      (base / "gone" / "sub", base / "gone", dangling)):
            self.assertOneError(link.format(path=directory / "murano.cik"), "http_links.links.m.cik_file",
                                f"{str(named)!r} cannot be used: {why}: the CIK activated for this link"
                                " (once per serial) could not be saved")

    def test_a_relative_cik_file_is_checked_where_the_link_keeps_it(self) -> None:
        """A relative ``cik_file`` is under the state directory, where the link writes it: it is
        checked there (it was checked from the current directory, so one in a state directory the
        gateway cannot write passed, and one in a writable state directory was refused when the
        current directory was not)."""
        from tests.tmpfs import mount_tmpfs, remount_read_only

        readonly = Path(self.mktemp()).absolute()
        mount_tmpfs(self, readonly, "1m")
        remount_read_only(readonly)
        link = "http_links:\n  links:\n    m:\n      url: 'https://h'\n      cik_file: {path}\n"
        self.assertOneError(f"gateway:\n  state_dir: '{readonly}'\n" + link.format(path="murano.cik"),
                            "http_links.links.m.cik_file",
                            f"the gateway cannot write in {readonly}, so the CIK activated for this link")
        writable = Path(self.mktemp()).absolute()
        config.load(self.write(f"gateway:\n  state_dir: '{writable}'\n" + link.format(path="links/murano.cik")))

    def test_a_cik_file_the_gateway_cannot_look_at_is_refused(self) -> None:
        """A ``cik_file`` under a directory the gateway may not look into (EACCES, as a user other
        than root meets under another user's 0700 directory) is refused with a line saying so: the
        check raised, so a relative one stopped the load with a traceback and an absolute one read
        ``cannot be checked: PermissionError``."""
        import errno
        import os

        state = Path(self.mktemp()).absolute()
        closed = state / "closed"
        closed.mkdir(parents=True)
        real_stat = os.stat

        def stat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
            if str(path).startswith(f"{closed}/"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_stat(path, *args, **kwargs)

        self.patch(os, "stat", stat)
        link = "http_links:\n  links:\n    m:\n      url: 'https://h'\n      cik_file: {path}\n"
        for text in (link.format(path=closed / "new" / "murano.cik"),
                     f"gateway:\n  state_dir: '{state}'\n" + link.format(path="closed/new/murano.cik")):
            self.assertOneError(text, "http_links.links.m.cik_file",
                                f"the gateway cannot look at {closed / 'new'} or the directories above it, so"
                                " the CIK activated for this link (once per serial) could not be saved")

    def test_a_cik_file_on_a_virtual_file_system_is_refused(self) -> None:
        """An exosite link's ``cik_file`` under /proc or /sys (or any of the kernel's virtual file
        systems) is refused, naming it: run as root, the gateway passed the writability check
        there, and the CIK the platform issues once per serial could never be saved."""
        link = "http_links:\n  links:\n    m:\n      url: 'https://h'\n      mode: exosite\n      cik_file: {path}\n"
        for cik_file, directory, kind in (("/proc/gateway/murano.cik", "/proc", "proc"),
                                          ("/sys/kernel/murano.cik", "/sys/kernel", "sysfs")):
            self.assertOneError(link.format(path=cik_file), "http_links.links.m.cik_file",
                                f"{directory} is on {kind} (mounted on /{directory.split('/')[1]}), one of the"
                                " kernel's virtual file systems, which keeps no file: the CIK activated for this"
                                " link (once per serial) could not be saved")
        # (a directory to be made under a symbolic link into /sys: found by its device, not its name)
        into_sys = Path(self.mktemp()).absolute()
        into_sys.parent.mkdir(parents=True, exist_ok=True)
        into_sys.symlink_to("/sys/kernel")
        self.assertOneError(link.format(path=f"'{into_sys}/new/murano.cik'"), "http_links.links.m.cik_file",
                            f"{into_sys} is on sysfs (mounted on /sys), one of the kernel's virtual file systems")

    def test_server_ports_out_of_range(self) -> None:
        """A port over 65535 on the ingest, the admin API or /metrics is refused at load, as on
        a broker listener (Twisted parses any number; the service then started without
        listening)."""
        path, lines = self.errors("ingest:\n  endpoint: 'tcp:70000:interface=127.0.0.1'\n"
                                  "admin:\n  tcp: 'tcp:port=70001:interface=127.0.0.1'\n"
                                  "telemetry:\n  metrics_endpoint: 'tcp:70002:interface=127.0.0.1'\n")
        self.assertEqual(sorted(line.split(": ")[1] for line in lines),
                         ["admin.tcp", "ingest.endpoint", "telemetry.metrics_endpoint"], lines)
        self.assertIn("the port must be from 0 to 65535, not '70000'", "\n".join(lines))

    def test_endpoint_numbers_in_ascii_digits_only(self) -> None:
        """A port, a backlog or a socket index written in another script's digits or as a
        superscript is refused at load, quoted as written, in every section that takes an
        endpoint string: Twisted's parser read ``٩٨٨٣`` (Arabic-Indic) as 9883 and listened or
        connected there, and failed on ``²`` (a digit to ``str.isdigit``) with ``invalid
        literal for int()``."""
        arabic = "\u0669\u0668\u0668\u0663"  # 9883
        path, lines = self.errors(
            "broker:\n  listeners:\n"
            f"    a:\n      endpoint: 'tcp:{arabic}:interface=127.0.0.1'\n"
            "    b:\n      endpoint: 'tcp:\u00b2:interface=127.0.0.1'\n"
            "    c:\n      endpoint: 'tcp:1883:interface=127.0.0.1:backlog=\u0663'\n"
            "    d:\n      endpoint: 'systemd:domain=INET:index=\u0660'\n"
            "links:\n  links:\n"
            f"    e:\n      endpoint: 'tcp:host=127.0.0.1:port={arabic}'\n"
            "    f:\n      endpoint: 'tls:host=h:port=\u00b2'\n"
            "    g:\n      endpoint: 'tcp:h:\uff18\uff18\uff18\uff13'\n"  # (fullwidth)
            "ingest:\n  endpoint: 'tcp:\u00b2:interface=127.0.0.1'\n"
            f"telemetry:\n  metrics_endpoint: 'tcp:{arabic}:interface=127.0.0.1'\n"
            f"admin:\n  tcp: 'tcp:port={arabic}:interface=127.0.0.1'\n")
        self.assertEqual(lines, [
            f"{path}: broker.listeners.a.endpoint: 'tcp:{arabic}:interface=127.0.0.1': "
            f"the port must be from 0 to 65535, not '{arabic}'",
            f"{path}: broker.listeners.b.endpoint: 'tcp:\u00b2:interface=127.0.0.1': "
            "the port must be from 0 to 65535, not '\u00b2'",
            f"{path}: broker.listeners.c.endpoint: backlog must be a whole number, not '\u0663': "
            "'tcp:1883:interface=127.0.0.1:backlog=\u0663'",
            f"{path}: broker.listeners.d.endpoint: systemd endpoint needs index=NUMBER or name=NAME: "
            "'systemd:domain=INET:index=\u0660'",
            f"{path}: links.links.e.endpoint: 'tcp:host=127.0.0.1:port={arabic}': the port must be from 1 to 65535, not '{arabic}'",
            f"{path}: links.links.f.endpoint: 'tls:host=h:port=\u00b2': the port must be from 1 to 65535, not '\u00b2'",
            f"{path}: links.links.g.endpoint: 'tcp:h:\uff18\uff18\uff18\uff13': "
            "the port must be from 1 to 65535, not '\uff18\uff18\uff18\uff13'",
            f"{path}: ingest.endpoint: 'tcp:\u00b2:interface=127.0.0.1': the port must be from 0 to 65535, not '\u00b2'",
            f"{path}: telemetry.metrics_endpoint: 'tcp:{arabic}:interface=127.0.0.1': "
            f"the port must be from 0 to 65535, not '{arabic}'",
            f"{path}: admin.tcp: 'tcp:port={arabic}:interface=127.0.0.1': "
            f"the port must be from 0 to 65535, not '{arabic}'"])

    def test_tcp6_port_out_of_range_and_missing_ssl_files(self) -> None:
        """A ``tcp6:`` port over 65535 is refused at load as a ``tcp:`` one is (it passed, and
        the gateway then failed to start: ``cannot listen: bind(): port must be 0-65535``);
        an ``ssl:`` endpoint whose certificate cannot be read is an error under its key, not
        ``telemetry: cannot be checked: FileNotFoundError: ...``."""
        path, lines = self.errors("telemetry:\n  metrics_endpoint: 'tcp6:70000'\n")
        self.assertEqual(lines, [f"{path}: telemetry.metrics_endpoint: 'tcp6:70000': "
                                 "the port must be from 0 to 65535, not '70000'"])
        path, lines = self.errors("telemetry:\n  metrics_endpoint: 'ssl:9883:privateKey=/nonexistent/k.pem'\n")
        self.assertEqual(lines, [f"{path}: telemetry.metrics_endpoint: 'ssl:9883:privateKey=/nonexistent/k.pem': "
                                 "No such file or directory: '/nonexistent/k.pem'"])

    def test_ipv6_addresses_written_as_in_a_url(self) -> None:
        """An IPv6 address in an endpoint string with bare colons or in brackets is refused with
        the form to write, on broker listeners, links, the ingest, /metrics and the admin API's
        TCP endpoint (which said only that it must be a loopback one): a link's
        ``tcp:host=::1:port=1883`` passed the check and connected to port 1 of no host, and
        the others said ``_parseTCP() got multiple values for argument 'interface'``,
        ``ssl endpoint does not take , 1`` or ``invalid literal for int()``."""
        text = ("broker:\n  listeners:\n    a:\n      endpoint: '{}'\n    b:\n      endpoint: '{}'\n"
                "links:\n  links:\n    c:\n      endpoint: '{}'\n    d:\n      endpoint: '{}'\n"
                "    e:\n      endpoint: '{}'\n"
                "ingest:\n  endpoint: '{}'\ntelemetry:\n  metrics_endpoint: '{}'\nadmin:\n  tcp: '{}'\n")
        wrong = {  # key: (the endpoint as written, the form the error shows)
            "broker.listeners.a.endpoint": ("tcp:1883:interface=::1", r"interface=\:\:1"),
            "broker.listeners.b.endpoint": (r"ssl:8883:interface=[\:\:1]:privateKey=k:certKey=c", r"interface=\:\:1"),
            "links.links.c.endpoint": ("tcp:host=::1:port=1883", r"host=\:\:1"),
            "links.links.d.endpoint": ("tls:host=[::1]:port=8883", r"host=\:\:1"),
            "links.links.e.endpoint": ("tcp:fd00::5:1883", r"tcp:\:\:1:PORT"),
            "ingest.endpoint": ("tcp:8090:interface=::1", r"interface=\:\:1"),
            "telemetry.metrics_endpoint": ("tcp:9883:interface=[::1]", r"interface=\:\:1"),
            "admin.tcp": ("tcp:8780:interface=::1", r"interface=\:\:1")}
        path, lines = self.errors(text.format(*(endpoint for endpoint, _ in wrong.values())))
        self.assertEqual(sorted(lines), sorted(
            f"{path}: {key}: {endpoint!r}: an IPv6 address in an endpoint string is written with its colons "
            f"escaped and without brackets ({form} for ::1)" for key, (endpoint, form) in wrong.items()))
        config.load(self.write(text.format(
            r"tcp:1883:interface=\:\:1", r"tcp:8883:interface=\:\:1", r"tcp:host=\:\:1:port=1883",
            r"tls:host=\:\:1:port=8883", r"tcp:fd00\:\:5:1883", r"tcp:8090:interface=\:\:1",
            r"tcp:9883:interface=\:\:1", r"tcp:8780:interface=\:\:1")))

    def test_max_connections_negative(self) -> None:
        """``max_connections: -1`` is refused (0 means no limit)."""
        self.assertOneError("broker:\n  listeners:\n    default:\n      endpoint: 'tcp:1883'\n"
                            "      max_connections: -1\n",
                            "broker.listeners.default.max_connections", "whole number from 0")

    def test_max_connections_not_whole_is_one_error(self) -> None:
        """``max_connections: 10.5`` (or a string) is one clear error, ours, not ours and amqtt's."""
        for value, shown in (("10.5", "the number 10.5"), ("lots", "the text 'lots'")):
            self.assertOneError("broker:\n  listeners:\n    default:\n      endpoint: 'tcp:1883'\n"
                                f"      max_connections: {value}\n",
                                "broker.listeners.default.max_connections", f"whole number from 0 up, not {shown}")

    def test_plugin_settings_checked_as_amqtt_will(self) -> None:
        """A plugin's settings are checked against its Config at load (amqtt did it only when
        the broker started, which then failed), and a file it names must be readable."""
        path, lines = self.errors(
            "broker:\n  plugins:\n"
            "    amqtt.plugins.authentication.FileAuthPlugin: {password_file: /nonexistent/passwd}\n"
            "    amqtt.plugins.topic_checking.TopicAccessControlListPlugin: {acl: 5}\n"
            "    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymus: true}\n")
        joined = "\n".join(lines)
        self.assertIn(f"{path}: broker.plugins.amqtt.plugins.authentication.FileAuthPlugin.password_file:"
                      " cannot read '/nonexistent/passwd'", joined)
        self.assertIn(f"{path}: broker.plugins.amqtt.plugins.topic_checking.TopicAccessControlListPlugin:"
                      " not a valid configuration of this plugin", joined)
        self.assertIn(f"{path}: broker.plugins.amqtt.plugins.authentication.AnonymousAuthPlugin:"
                      " not a valid configuration of this plugin", joined)
        self.assertIn("allow_anonymus", joined)
        self.assertEqual(len(lines), 3, joined)

    def test_deprecated_auth_section_files_checked(self) -> None:
        """The deprecated ``auth:`` section's files (hbmqtt's ``password-file``) must be readable, as a
        plugin's ``password_file`` must: it loaded, and the broker then refused every user."""
        self.assertOneError("broker:\n  auth:\n    plugins: [auth_file]\n    password-file: /nonexistent/passwd\n",
                            "broker.auth.password-file", "cannot read '/nonexistent/passwd'")

    def test_password_file_lines_amqtt_cannot_use_are_named_not_quoted(self) -> None:
        """A password file's line without ``user:`` or with a password in clear is an error naming
        its line (and user), never its text: amqtt logged the first whole at every start (``Malformed
        line in password file: ...``) and failed every connection of the second with a traceback.
        Hashed lines, comments and empty lines pass; so does the deprecated ``auth:`` section's file."""
        hashed = "$argon2id$v=19$m=65536,t=3,p=4$NUAQb+sAkpsvKPn93/CYlw$lVybfd5Z5zh4qHc3TlE1cNmwbw713okHoMZKX01mxUU"
        passwd = Path(self.mktemp())
        passwd.write_text(f"# users\n\nalice:{hashed}\nSECRET-alone\nbob:SECRET-clear\n")
        path, lines = self.errors("broker:\n  plugins:\n"
                                  f"    amqtt.plugins.authentication.FileAuthPlugin: {{password_file: {passwd}}}\n")
        where = f"{path}: broker.plugins.amqtt.plugins.authentication.FileAuthPlugin.password_file: {str(passwd)!r}:"
        self.assertEqual(lines, [f"{where} line 4 is not user:hash (it is not shown: it may be a password)",
                                 f"{where} line 5 (user 'bob'): not an argon2 (or sha512-crypt) hash, which is all"
                                 " amqtt verifies (a password written in clear?); it is not shown"])
        path, lines = self.errors(f"broker:\n  auth:\n    plugins: [auth_file]\n    password-file: {passwd}\n")
        self.assertEqual([line.split(" line ")[0] for line in lines],
                         [f"{path}: broker.auth.password-file: {str(passwd)!r}:"] * 2)
        self.assertNotIn("SECRET", "\n".join(lines))
        passwd.write_text(f"alice:{hashed}\n")
        config.load(self.write("broker:\n  plugins:\n"
                               f"    amqtt.plugins.authentication.FileAuthPlugin: {{password_file: {passwd}}}\n"))

    def test_broker_files_holding_a_nul_are_refused(self) -> None:
        """A listener's ``cafile``, a plugin's ``*_file`` and the ``auth:`` section's
        ``password-file`` holding a NUL (``"a\\0b"`` in YAML) are each one error under their key,
        for the NUL (not a second one for the file it cannot name): the check let Python's
        ValueError out, a traceback from ``--check-config``."""
        self.assertOneError('broker:\n  listeners:\n    default:\n      endpoint: "tcp:0"\n      cafile: "ca\\0"\n',
                            "broker.listeners.default.cafile", "must not hold a NUL character: 'ca\\x00'")
        self.assertOneError('broker:\n  plugins:\n    amqtt.plugins.authentication.FileAuthPlugin:\n'
                            '      password_file: "p\\0"\n',
                            "broker.plugins.amqtt.plugins.authentication.FileAuthPlugin.password_file",
                            "must not hold a NUL character: 'p\\x00'")
        self.assertOneError('broker:\n  auth:\n    plugins: [auth_file]\n    password-file: "a\\0"\n',
                            "broker.auth.password-file", "must not hold a NUL character: 'a\\x00'")

    def test_deprecated_auth_section_allow_anonymous_checked(self) -> None:
        """The deprecated ``auth:`` section's ``allow-anonymous`` is true or false (a string such as
        ``"false"`` let anonymous clients in), and its plugins: spelling is named as wrong there
        (amqtt ignores it, and anonymous clients would be refused against the user's intent)."""
        self.assertOneError("broker:\n  auth:\n    allow-anonymous: 'false'\n",
                            "broker.auth.allow-anonymous", "must be true or false, not the text 'false'")
        self.assertOneError("broker:\n  auth:\n    allow_anonymous: true\n",
                            "broker.auth.allow_anonymous", "spells it allow-anonymous")

    def test_plugins_not_a_mapping_or_list(self) -> None:
        """``plugins:`` given one plugin's name as a string is one error under ``broker.plugins`` (its
        characters were each reported as a plugin that cannot be imported)."""
        path, lines = self.errors("broker:\n  plugins: amqtt.plugins.authentication.AnonymousAuthPlugin\n")
        ours = [line for line in lines if line.startswith(f"{path}: broker.plugins")]
        self.assertEqual(ours, [f"{path}: broker.plugins: must be a mapping of plugins (dotted path: settings) or a"
                                " list of them, not the text 'amqtt.plugins.authentication.AnonymousAuthPlugin'"])

    def test_state_dir_number(self) -> None:
        """``state_dir: 123`` is a mistake, not the directory ./123."""
        self.assertOneError("gateway:\n  state_dir: 123\n", "gateway.state_dir", "must be a path")

    def test_state_dir_with_a_name_too_long(self) -> None:
        """A state_dir with a name over the file system's 255 bytes is one error under its key,
        in words (``File name too long``); looking at it raised ENAMETOOLONG, and the whole
        section came out as ``gateway: cannot be checked: OSError: [Errno 36] ...``, the
        device id's and tenant id's checks left out."""
        path, lines = self.errors(f"gateway:\n  state_dir: /tmp/{'L' * 300}\n  device_id: a/b\n")
        self.assertEqual(lines, [f"{path}: gateway.device_id: must be usable as one MQTT topic level, without '/'",
                                 f"{path}: gateway.state_dir: '/tmp/{'L' * 300}' cannot be used: File name too long"])

    def test_state_dir_the_system_refuses_to_look_at(self) -> None:
        """A state_dir that is a loop of symbolic links, or lies under a file, is one error under
        its key in words: both passed the check (``Path.exists`` called them absent), and the
        start then ended in a ``RuntimeError: Symlink loop`` traceback, or could not make it."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        (work / "a").symlink_to(work / "b")
        (work / "b").symlink_to(work / "a")
        (work / "file").write_text("")
        (work / "gone").symlink_to(work / "nowhere")  # (mkdir does not follow it: File exists)
        for state, why in ((work / "a", "Too many levels of symbolic links"), (work / "file" / "sub", "Not a directory"),
                           (work / "gone", f"it is a symbolic link to {str(work / 'nowhere')!r}, which does not exist")):
            path, lines = self.errors(f"gateway:\n  state_dir: '{state}'\n")
            self.assertEqual(lines, [f"{path}: gateway.state_dir: '{state}' cannot be used: {why}"])
        fresh = config.load(self.write(f"gateway:\n  state_dir: '{work / 'new' / 'sub'}'\n"))  # (made at start)
        self.assertEqual(fresh.state_dir, work / "new" / "sub")

    def test_journal_directory_the_system_refuses_to_look_at(self) -> None:
        """A journal.directory that is a loop of symbolic links, lies under a file, or is a
        symbolic link to nothing is one error under its key, as the state_dir is (through the
        same check; a relative one is under the state directory): each passed the check, and the
        start then said only "the journal directory cannot be made: [Errno 17] File exists"."""
        work = Path(self.mktemp()).resolve()
        (work / "state").mkdir(parents=True)
        (work / "a").symlink_to(work / "b")
        (work / "b").symlink_to(work / "a")
        (work / "file").write_text("")
        (work / "state" / "gone").symlink_to(work / "nowhere")
        (work / "state" / "loop").symlink_to(work / "a")
        for directory, shown, why in (
                (work / "a", work / "a", "cannot be used: Too many levels of symbolic links"),
                (work / "file" / "sub", work / "file" / "sub", "cannot be used: Not a directory"),
                ("loop", work / "state" / "loop", "cannot be used: Too many levels of symbolic links"),
                ("gone", work / "state" / "gone",
                 f"cannot be used: it is a symbolic link to {str(work / 'nowhere')!r}, which does not exist"),
                (work / "file", work / "file", "exists and is not a directory")):
            path, lines = self.errors(f"gateway:\n  state_dir: '{work / 'state'}'\njournal:\n  directory: '{directory}'\n")
            self.assertEqual(lines, [f"{path}: journal.directory: '{shown}' {why}"])
        fresh = config.load(self.write(f"gateway:\n  state_dir: '{work / 'state'}'\njournal:\n  directory: new/sub\n"))
        self.assertEqual(fresh.journal.directory, "new/sub")  # (made at start)
        path, lines = self.errors(f"gateway:\n  state_dir: '{work / 'a'}'\njournal:\n  directory: sub\n")
        self.assertEqual(lines, [f"{path}: gateway.state_dir: '{work / 'a'}' cannot be used: Too many levels of"
                                 " symbolic links"])  # (its journal is not looked for under it)

    def test_a_value_of_the_wrong_kind_is_named_in_yamls_words(self) -> None:
        """A value of the wrong kind is named as the YAML was written (the text, the number,
        empty, a list, a date), never by Python's type names (``str``, ``int``, ``NoneType``,
        ``list``, ``date``), which a user who wrote YAML does not know."""
        path, lines = self.errors("gateway:\n  device_id: [a]\n  shutdown_timeout: '7'\n  state_dir:\n"
                                  "journal:\n  defaults:\n    segment_bytes: 2026-12-05\n  streams: yes\n"
                                  "containers:\n  podman_command: {a: 1}\n")
        self.assertEqual(lines, [
            f"{path}: gateway.device_id: must be a string, not a list",
            f"{path}: gateway.shutdown_timeout: must be a number, not the text '7'",
            f"{path}: gateway.state_dir: must be a path (a non-empty string), not empty (null)",
            f"{path}: journal.defaults.segment_bytes: must be a whole number, not the date 2026-12-05",
            f"{path}: journal.streams: must be a mapping, not the boolean true",
            f"{path}: containers.podman_command: must be a list, not a mapping"])
        for text, given in (("- gateway\n", "a list"), ("7\n", "the number 7"),
                            ("gateway\n", "text (7 characters, not shown: is it the configuration file?)")):
            path, lines = self.errors(text)
            self.assertEqual(lines, [f"{path}: <top>: must be a mapping of sections, not {given}"])

    def test_a_file_of_text_alone_is_not_quoted(self) -> None:
        """A file that is one text, such as a private key or a token file named as the
        configuration by mistake, is told by its length: its first 100 characters were quoted,
        into journald under the unit's ``ExecStartPre``."""
        key = ("-----BEGIN PRIVATE KEY-----\nMIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQDS\n"
               "-----END PRIVATE KEY-----\n")  # (YAML reads it as one text, its line breaks as spaces)
        path, lines = self.errors(key)
        self.assertEqual(lines, [f"{path}: <top>: must be a mapping of sections, not text (106 characters, not"
                                 " shown: is it the configuration file?)"])
        self.assertNotIn("MIIE", "".join(lines))

    def test_state_dir_is_a_file(self) -> None:
        """A state directory that is an existing file is refused."""
        self.assertOneError(f"gateway:\n  state_dir: {__file__}\n", "gateway.state_dir", "not a directory")

    def test_not_a_number_is_out_of_every_range(self) -> None:
        """``.nan`` is no number of seconds (0.1-60) or of anything else: comparisons with it are
        all false, so it slipped past every range check; refused for every float key."""
        path, lines = self.errors("gateway:\n  shutdown_timeout: .nan\ncommands:\n  confirm_window: .NaN\n"
                                  "journal:\n  defaults:\n    max_age_s: .nan\n")
        self.assertEqual(lines, [f"{path}: gateway.shutdown_timeout: must be a number, not nan",
                                 f"{path}: journal.defaults.max_age_s: must be a number, not nan",
                                 f"{path}: commands.confirm_window: must be a number, not nan"])
        path, lines = self.errors("broker:\n  connect_timeout: .nan\n  persistent_client_expiration: .nan\n")
        self.assertEqual(lines, [f"{path}: broker.connect_timeout: must be a positive number, not nan",
                                 f"{path}: broker.persistent_client_expiration: must be a finite number of seconds"
                                 " (0: no expiry), not nan"])

    def test_infinity_is_refused_for_every_number(self) -> None:
        """``.inf`` (or ``-.inf``) is no number of seconds, bytes or anything else: it passed every
        ``min`` (``retention_check_s: .inf`` made the journal's timer fail at start); refused for every
        float key, in a container's description too, each with one clear line."""
        path, lines = self.errors("journal:\n  retention_check_s: .inf\n  defaults:\n    max_age_s: .inf\n"
                                  "gateway:\n  shutdown_timeout: -.inf\n"
                                  "apps:\n  health_window: .Inf\n"
                                  "containers:\n  containers:\n    web:\n      image: r/web:1\n"
                                  "      stop_timeout: .inf\n")
        self.assertEqual(lines, [f"{path}: gateway.shutdown_timeout: must be a finite number, not -inf",
                                 f"{path}: journal.retention_check_s: must be a finite number, not inf",
                                 f"{path}: journal.defaults.max_age_s: must be a finite number, not inf",
                                 f"{path}: apps.health_window: must be a finite number, not inf",
                                 f"{path}: containers.containers.web.stop_timeout: must be a finite number, not inf"])

    def test_server_endpoints_are_parsed_at_load(self) -> None:
        """The ingest's endpoint and the admin API's TCP endpoint are parsed at load, as the
        metrics endpoint is: a string Twisted cannot parse passed --check-config, then the
        ingest stopped the start (exit 1) and the admin API failed to listen."""
        path, lines = self.errors("ingest:\n  endpoint: 'tpc:8090:interface=127.0.0.1'\n"
                                  "admin:\n  tcp: 'tcp:port=8780:interface=127.0.0.1:colour=blue'\n")
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith(f"{path}: ingest.endpoint: not a Twisted server endpoint:"
                                            " 'tpc:8090:interface=127.0.0.1'"), lines)
        self.assertTrue(lines[1].startswith(f"{path}: admin.tcp: not a Twisted server endpoint:"), lines)
        loaded = config.load(self.write("ingest:\n  enabled: false\n  endpoint: ''\n"
                                        "admin:\n  tcp: 'tcp:8780:interface=127.0.0.1'\n"))
        self.assertEqual((loaded.ingest.enabled, loaded.admin.tcp), (False, "tcp:8780:interface=127.0.0.1"))

    def test_path_keys_refuse_numbers(self) -> None:
        """Every key that names a path takes a string, never a number turned into the file
        '123'; those whose empty default means a file under the state dir still take ``""``."""
        path, lines = self.errors("admin:\n  socket: 123\n  token_file: 0\n"
                                  "containers:\n  socket: 1.5\n  credentials_file: 7\n"
                                  "uploads:\n  ca_file: 42\n"
                                  "http_links:\n  links:\n    h:\n      url: 'https://h'\n      cik_file: 9\n")
        self.assertEqual(lines, [
            f"{path}: http_links.links.h.cik_file: must be a path (a string; empty: the default), not the number 9",
            f"{path}: admin.socket: must be a path (a string; empty: the default), not the number 123",
            f"{path}: admin.token_file: must be a path (a string; empty: the default), not the number 0",
            f"{path}: containers.socket: must be a path (a string; empty: the default), not the number 1.5",
            f"{path}: containers.credentials_file: must be a path (a string; empty: the default), not the number 7",
            f"{path}: uploads.ca_file: must be a path (a non-empty string), not the number 42"])
        loaded = config.load(self.write("admin:\n  socket: ''\n  token_file: ''\ncontainers:\n  socket: ''\n"))
        self.assertEqual((loaded.admin.socket, loaded.admin.token_file, loaded.containers.socket), ("", "", ""))

    def test_path_keys_refuse_a_nul(self) -> None:
        """No file name holds a NUL: a key that names a path and holds one (``"a\\0b"`` in YAML)
        is refused under its key. It was taken, and the gateway then failed to start with a
        traceback (``state_dir``), or with ``embedded null byte`` (``journal.directory``,
        ``admin.socket``, ``admin.token_file``), or could not run a container
        (``containers.credentials_file``)."""
        path, lines = self.errors('gateway:\n  state_dir: "var\\0x"\njournal:\n  directory: "j\\0"\n'
                                  'admin:\n  socket: "s\\0"\n  token_file: "t\\0"\n'
                                  'containers:\n  credentials_file: "c\\0"\n')
        self.assertEqual(lines, [
            f"{path}: gateway.state_dir: must not hold a NUL character: 'var\\x00x'",
            f"{path}: journal.directory: must not hold a NUL character: 'j\\x00'",
            f"{path}: admin.socket: must not hold a NUL character: 's\\x00'",
            f"{path}: admin.token_file: must not hold a NUL character: 't\\x00'",
            f"{path}: containers.credentials_file: must not hold a NUL character: 'c\\x00'"])

    def test_empty_device_id(self) -> None:
        """``device_id: ""`` is refused, and an id that would break topics too."""
        self.assertOneError("gateway:\n  device_id: ''\n", "gateway.device_id", "must not be empty")
        self.assertOneError("gateway:\n  tenant_id: 'a/b'\n", "gateway.tenant_id", "one MQTT topic level")

    def test_route_lists_every_problem(self) -> None:
        """A route with a bad filter and a bad template: both named, with their paths, at load."""
        path, lines = self.errors("links:\n  links:\n    cloud:\n      routes:\n"
                                  "        - {filter: 'bad/#/filter', topic: 'up/{nonsense}'}\n"
                                  "      downlink:\n        - {filter: 'c/+', topic: 'down/{2}/+'}\n")
        joined = "\n".join(lines)
        self.assertEqual(len(lines), 4, joined)
        self.assertIn(f"{path}: links.links.cloud.routes.0.filter: not a valid MQTT topic filter", joined)
        self.assertIn(f"{path}: links.links.cloud.routes.0.topic: unknown placeholder {{nonsense}}", joined)
        self.assertIn(f"{path}: links.links.cloud.downlink.0.topic: {{2}} but 'c/+' has 1 '+' wildcard", joined)
        self.assertIn(f"{path}: links.links.cloud.downlink.0.topic: '+' or '#' outside a placeholder", joined)

    def test_link_ca_file_missing(self) -> None:
        """A link whose ca_file does not exist is refused at load, not at connect."""
        self.assertOneError("links:\n  links:\n    cloud:\n      endpoint: 'tls:host=example.com:port=8883'\n"
                            "      ca_file: /nonexistent/ca.pem\n",
                            "links.links.cloud.ca_file", "cannot read '/nonexistent/ca.pem'")

    def test_link_hostname_that_is_no_host_name(self) -> None:
        """A ``hostname`` that is no host name (a space in it) is refused under its own key:
        it was refused under ``endpoint``, which the user had not touched."""
        self.assertOneError("links:\n  links:\n    cloud:\n      endpoint: 'tls:host=example.com:port=8883'\n"
                            "      hostname: 'bad host'\n",
                            "links.links.cloud.hostname", "'bad host'")

    def test_link_tls_files(self) -> None:
        """Client certificate and key are loaded at load time: garbage, a key without a
        certificate, TLS files on a plain endpoint, and a bad endpoint string are refused."""
        from tests.tlscerts import make_pki

        pki = make_pki(Path(self.mktemp()))
        garbage = Path(self.mktemp())
        garbage.write_text("not a certificate\n")
        path, lines = self.errors(
            "links:\n  links:\n"
            f"    a:\n      endpoint: 'tls:host=h:port=8883'\n      cert_file: {garbage}\n"
            f"      key_file: {pki['client_key']}\n"
            f"    b:\n      endpoint: 'tls:host=h'\n      key_file: {pki['client_key']}\n"
            f"    c:\n      endpoint: 'tcp:host=h:port=1883'\n      ca_file: {pki['ca']}\n"
            "    d:\n      endpoint: 'tcp:host=h:port=notaport'\n"
            "    e:\n      endpoint: 'tls:host=h:colour=blue'\n"
            "    f:\n      endpoint: 'tcp:host=h:port=1'\n      password: secret\n      client_id: '{devise}'\n")
        joined = "\n".join(lines)
        self.assertIn(f"{path}: links.links.a.cert_file: ", joined)
        self.assertIn(f"{path}: links.links.b.key_file: needs cert_file", joined)
        self.assertIn(f"{path}: links.links.c.ca_file: only a tls: endpoint uses it", joined)
        self.assertIn(f"{path}: links.links.d.endpoint: 'tcp:host=h:port=notaport': the port must be from 1 to 65535, not 'notaport'", joined)
        self.assertIn(f"{path}: links.links.e.endpoint: ", joined)
        self.assertIn(f"{path}: links.links.f.password: needs username", joined)
        self.assertIn(f"{path}: links.links.f.client_id: unknown placeholder {{devise}}", joined)
        self.assertEqual(len(lines), 7, joined)
        loaded = config.load(self.write(
            f"links:\n  links:\n    ok:\n      endpoint: 'tls:host=localhost:port=8883'\n      ca_file: {pki['ca']}\n"
            f"      cert_file: {pki['client_cert']}\n      key_file: {pki['client_key']}\n"))
        self.assertEqual(loaded.links.links["ok"].ca_file, pki["ca"])

    def test_link_cert_and_key_unreadable_are_both_said(self) -> None:
        """A client certificate and key the gateway's user may not read (root's, mode 0600,
        under the packaged gateway's user ``gateway``) were refused one after the other: the
        key was read only once the certificate was, so fixing one showed the other. Both are
        said at once, as every problem of a configuration is."""
        from tests.tlscerts import make_pki
        from tests.unreadable import refuse_reading

        pki = make_pki(Path(self.mktemp()))
        refuse_reading(self, Path(pki["client_cert"]))
        refuse_reading(self, Path(pki["client_key"]))
        path, lines = self.errors(
            "links:\n  links:\n    a:\n      endpoint: 'tls:host=h:port=8883'\n"
            f"      cert_file: {pki['client_cert']}\n      key_file: {pki['client_key']}\n")
        self.assertEqual(lines, [
            f"{path}: links.links.a.cert_file: cannot read '{pki['client_cert']}': Permission denied",
            f"{path}: links.links.a.key_file: cannot read '{pki['client_key']}': Permission denied"])

    def test_links_topics(self) -> None:
        """The local topics of the links section and a link's will and loss topics must be topics."""
        path, lines = self.errors("links:\n  status_topic: 'edge/+/status'\n  links:\n    x:\n"
                                  "      will_topic: 'a/#'\n      loss_topic: 'e/{tenant}/{nope}'\n")
        joined = "\n".join(lines)
        self.assertIn(f"{path}: links.status_topic: not a valid topic name", joined)
        self.assertIn(f"{path}: links.links.x.will_topic: not a valid topic name", joined)
        self.assertIn(f"{path}: links.links.x.loss_topic: unknown placeholder {{nope}}", joined)
        self.assertEqual(len(lines), 3, joined)

    def test_a_dollar_thing_request_topic_is_refused(self) -> None:
        """Identity requests on a ``$`` filter could never arrive (the broker drops what clients
        publish to ``$`` topics): a configuration error, as telemetry's request_topic."""
        path, lines = self.errors("links:\n  thing_request_topic: '$edge/thing/+'\n")
        self.assertEqual(lines, [f"{path}: links.thing_request_topic: '$edge/thing/+' is a $ topic: the broker"
                                 " drops what clients publish there, so no request would ever arrive"])

    def test_will_topic_placeholders(self) -> None:
        """A link's will_topic takes {tenant} and {device}, as its client_id and loss_topic do;
        another placeholder is an error naming the key."""
        path, lines = self.errors("links:\n  links:\n    x:\n      will_topic: 'event/{tenant}/{topic}/gone'\n")
        self.assertEqual(lines, [f"{path}: links.links.x.will_topic: unknown placeholder {{topic}} (known: tenant, device)"])
        loaded = config.load(self.write("links:\n  links:\n    x:\n      will_topic: 'event/{tenant}/{device}/gone'\n"))
        self.assertEqual(loaded.links.links["x"].will_topic, "event/{tenant}/{device}/gone")

    def test_link_names(self) -> None:
        """A link's name names its journal stream link-<name>: 1-95 of A-Z a-z 0-9 _ . -; an
        empty name, a longer one or another character is refused with its key path."""
        endpoint = "      endpoint: 'tcp:host=h:port=1'\n"
        loaded = config.load(self.write(f"links:\n  links:\n    {'a' * 95}:\n{endpoint}"))
        self.assertEqual(list(loaded.links.links), ["a" * 95])
        for name in ("''", "b" * 96, "'bad name!'"):
            path, lines = self.errors(f"links:\n  links:\n    {name}:\n{endpoint}")
            key = name.strip("'")
            self.assertEqual(lines, [f"{path}: links.links.{key}: a link name is 1-95 of A-Z a-z 0-9 _ . -"
                                     " (it names the journal stream link-<name>)"])

    def test_a_key_path_longer_than_any_real_one_is_cut(self) -> None:
        """docs/configuration.md: a key path is named whole up to 256 characters (a link name of
        95 makes real ones over 100), a longer one by its first 100 and
        its length: the line repeated it whole."""
        key = "k" * 1000  # (YAML's longest plain key: 1024)
        path, lines = self.errors(f"broker:\n  {key}: 1\n")
        self.assertEqual(len(lines), 1, [line[:200] for line in lines])
        self.assertTrue(lines[0].startswith(f"{path}: broker.{'k' * 93}... ({len(key) + 7} characters): unknown key"),
                        lines[0][:300])

    def test_link_names_beside_other_problems_and_http_links(self) -> None:
        """A bad link name is reported beside the link's other problems (docs/configuration.md:
        every problem is reported at once; it waited for them to be fixed), and an HTTP link's
        name is checked as an MQTT link's (exosite.md: they share the journal streams
        link-<name>); an HTTP link named 'bad name!' passed the check and the gateway then
        failed to start on its stream's name."""
        path, lines = self.errors("links:\n  links:\n    'bad name':\n      endpoint: 'tls:host=h:port=1:foo=1'\n"
                                  "http_links:\n  links:\n    'bad name!':\n      url: 'https://example.com/x'\n"
                                  "    ok:\n      url: 'https://example.com/y'\n")
        name_problem = "a link name is 1-95 of A-Z a-z 0-9 _ . - (it names the journal stream link-<name>)"
        self.assertIn(f"{path}: links.links.bad name: {name_problem}", lines)
        self.assertIn(f"{path}: http_links.links.bad name!: {name_problem}", lines)
        self.assertTrue(any(line.startswith(f"{path}: links.links.bad name.endpoint: ") for line in lines), lines)
        self.assertEqual(len(lines), 3, "\n".join(lines))

    def test_program_and_container_names_beside_other_problems(self) -> None:
        """A config program's or declared container's bad name is reported beside the entry's
        other problems (docs/configuration.md: every problem is reported at once); it waited
        for them to be fixed."""
        path, lines = self.errors("apps:\n  programs:\n    'bad/name':\n      command: ''\n"
                                  "containers:\n  containers:\n    'bad name':\n      image: ''\n")
        self.assertEqual(lines, [
            f"{path}: apps.programs.bad/name.command: required: the program's command line",
            f"{path}: containers.containers.bad name.image: an image reference is required",
            f"{path}: apps.programs.bad/name: bad program name 'bad/name': letters, digits and _.+- only",
            f"{path}: containers.containers.bad name: not a valid container name (letters, digits, _.-; 63 at most)"])

    def test_window_fits_the_packet_ids(self) -> None:
        """A link's window is at most the packet ids the forwarder gives publishes: with more
        in flight it would find no free id."""
        from gateway.links.forwarder import MAX_PACKET_ID
        endpoint = "      endpoint: 'tcp:host=h:port=1'\n"
        loaded = config.load(self.write(f"links:\n  links:\n    c:\n{endpoint}      window: {MAX_PACKET_ID}\n"))
        self.assertEqual(loaded.links.links["c"].window, MAX_PACKET_ID)
        self.assertOneError(f"links:\n  links:\n    c:\n{endpoint}      window: {MAX_PACKET_ID + 1}\n",
                            "links.links.c.window", "at most 64535")

    def test_http_link_ca_file_and_backoff(self) -> None:
        """An HTTP link's CA file is read and parsed at load, as an MQTT link's is (a missing
        one passed --check-config and stopped the gateway at start), a number is no path,
        and its backoff_max is at least its backoff_initial."""
        garbage = Path(self.mktemp())
        garbage.write_text("not a certificate\n")
        link = "      mode: json\n      url: 'https://127.0.0.1:1/in'\n"
        path, lines = self.errors(f"http_links:\n  links:\n    a:\n{link}      ca_file: /nonexistent/ca.pem\n"
                                  f"    b:\n{link}      ca_file: {garbage}\n"
                                  f"    c:\n{link}      ca_file: 123\n"
                                  f"    d:\n{link}      backoff_initial: 10\n      backoff_max: 5\n")
        self.assertEqual(lines, [
            f"{path}: http_links.links.a.ca_file: cannot read '/nonexistent/ca.pem': No such file or directory",
            f"{path}: http_links.links.b.ca_file: no PEM certificate in '{garbage}'",
            f"{path}: http_links.links.c.ca_file: must be a path (a non-empty string), not the number 123",
            f"{path}: http_links.links.d.backoff_max: must be at least backoff_initial (10.0)"])

    def test_http_link_downlink_alias_is_not_empty(self) -> None:
        """docs/exosite.md: a downlink entry's alias defaults to ``command`` (configurations
        written when that was the example still load); an empty one is refused, naming the entry."""
        link = "      url: 'https://p.m2.exosite.io'\n      downlink:\n"
        path, lines = self.errors(f"http_links:\n  links:\n    a:\n{link}        - {{}}\n"
                                  f"        - {{alias: report}}\n"
                                  f"        - {{alias: '', topic: 'command//myapp/req//{{alias}}'}}\n")
        self.assertEqual(lines, [
            f"{path}: http_links.links.a.downlink.2.alias: must not be empty: the cloud alias to long-poll"])
        loaded = config.load(self.write(f"http_links:\n  links:\n    a:\n{link}        - {{}}\n"))
        self.assertEqual(loaded.http_links.links["a"].downlink[0].alias, "command")

    def test_http_link_header_named_twice(self) -> None:
        """A json link's ``headers`` naming one header twice, in two cases, sent both values
        (header names are case-insensitive): refused under the second name (exosite.md); so
        is a header that frames the body, which the HTTP client writes itself."""
        self.assertOneError("http_links:\n  links:\n    j:\n      mode: json\n      url: 'https://i.example/in'\n"
                            "      headers: {Authorization: a, authorization: b}\n",
                            "http_links.links.j.headers.authorization",
                            "names the header 'Authorization' names again (case does not count)")
        for name in ("Content-Length", "transfer-encoding"):  # (Twisted's client wrote its own beside it)
            self.assertOneError("http_links:\n  links:\n    j:\n      mode: json\n      url: 'https://i.example/in'\n"
                                f"      headers: {{{name}: '5'}}\n", f"http_links.links.j.headers.{name}",
                                "the gateway sets it from each batch's body: it is no header to configure")

    def test_link_connect_fields_over_65535_bytes(self) -> None:
        """A link's ``client_id``, ``username``, ``password``, ``will_topic`` or
        ``will_payload`` of more than 65535 bytes of UTF-8 (40,000 ``é`` are 80,000) passed
        the check, and the link then never connected (``an MQTT string is at most 65535
        bytes``, at every attempt); the topic's refusal repeated all 40,000 characters. Each
        is refused naming its byte count, never its value; 65535 bytes are taken."""
        link = "links:\n  links:\n    c:\n      endpoint: 'tcp:host=h:port=1883'\n"
        big = "\u00e9" * 40000
        path, lines = self.errors(f"{link}      client_id: '{big}'\n      username: '{big}'\n"
                                  f"      password: '{big}'\n      will_topic: 'w{big}'\n      will_payload: '{big}'\n")
        says = "bytes of UTF-8: MQTT's CONNECT carries at most 65535 (a 16-bit length, 3.1.1 section 1.5.3)"
        self.assertEqual(sorted(lines), sorted(
            [f"{path}: links.links.c.{key}: is {size} {says}: the link could never connect"
             for key, size in (("client_id", 80000), ("username", 80000), ("password", 80000),
                               ("will_topic", 80001), ("will_payload", 80000))]
            + [f"{path}: links.links.c.will_topic: not a valid topic name: 'w{big[:99]}... (40001 characters)'"]))
        most = "\u00e9" * 32767 + "x"
        loaded = config.load(self.write(f"{link}      client_id: '{most}'\n      username: '{most}'\n"))
        self.assertEqual(loaded.links.links["c"].client_id, most)

    def test_http_link_header_no_request_can_carry(self) -> None:
        """A json link's header name that is no RFC 9110 token (a space, a colon, ``ü``)
        passed the check, and every batch then failed in Twisted with an internal error
        (``InvalidHeaderName``), for ever; a non-ASCII value would have been sent as UTF-8,
        which servers read as Latin-1 (``ZÃ¼rich``). Each is refused at load, naming the
        header (exosite.md); a value of visible ASCII and spaces loads."""
        link = "http_links:\n  links:\n    j:\n      mode: json\n      url: 'https://i.example/in'\n"
        for name in ("X Bad", "X:Bad", "X-Städt", "X-日本"):
            self.assertOneError(f"{link}      headers: {{'{name}': v}}\n", f"http_links.links.j.headers.{name}",
                                "is no HTTP header name: a name is one or more letters, digits and "
                                "!#$%&'*+-.^_`|~ (no space, colon, control or non-ASCII character)")
        self.assertOneError(f"{link}      headers: {{X-Site: 'Zürich'}}\n", "http_links.links.j.headers.X-Site",
                            "holds 'ü', which is not ASCII: an HTTP header value is ASCII")
        self.assertOneError(f"{link}      headers: {{X-Mark: \"a\\u202eb\"}}\n", "http_links.links.j.headers.X-Mark",
                            "holds '\\u202e', which is not ASCII")
        loaded = config.load(self.write(f"{link}      headers: {{X-Ok_1~: 'Bearer a b !~'}}\n"))
        self.assertEqual(loaded.http_links.links["j"].headers, {"X-Ok_1~": "Bearer a b !~"})

    def test_http_link_keys_of_the_other_mode(self) -> None:
        """docs/exosite.md: a ``json`` link has no downlink and an ``exosite`` link sends no
        ``headers``; given to the other mode, they are refused at load, saying so (they were
        ignored: a json link's commands never came, an exosite link's headers never went)."""
        path, lines = self.errors("http_links:\n  links:\n"
                                  "    j:\n      mode: json\n      url: 'https://ingest.example/in'\n"
                                  "      downlink: [{alias: setpoint}]\n"
                                  "    e:\n      url: 'https://p.m2.exosite.io'\n"
                                  "      headers: {Authorization: 'Bearer x'}\n")
        self.assertEqual(lines, [
            f"{path}: http_links.links.j.downlink: a json link long-polls nothing: only mode: exosite has a downlink",
            f"{path}: http_links.links.e.headers: an exosite link sends no extra headers: only mode: json does"])
        config.load(self.write("http_links:\n  links:\n"
                               "    j:\n      mode: json\n      url: 'https://ingest.example/in'\n"
                               "      headers: {Authorization: 'Bearer x'}\n      downlink: []\n"
                               "    e:\n      url: 'https://p.m2.exosite.io'\n      headers: {}\n"
                               "      downlink: [{alias: setpoint}]\n"))

    def test_http_link_url(self) -> None:
        """An HTTP link's url that is not an http(s) URL with a host is refused at load (it
        passed --check-config, then every request failed and was retried forever)."""
        path, lines = self.errors("http_links:\n  links:\n"
                                  "    b:\n      mode: json\n      url: 'ftp://files.example.com/in'\n"
                                  "    c:\n      mode: json\n      url: 'https:///in'\n")
        refused = "must be https://host[:port][/path][?query], not"
        self.assertEqual(lines, [f"{path}: http_links.links.b.url: {refused} 'ftp://files.example.com/in'",
                                 f"{path}: http_links.links.c.url: {refused} 'https:///in'"])

    def test_http_link_url_the_client_can_use(self) -> None:
        """An HTTP link's url passed the check with a port out of range or 0, an unclosed IPv6
        bracket, a space, a user name and password (never sent: every request got a 401 or a
        CIK error, retried forever) or a query (an exosite link's paths went into it:
        ``https://h?k=1/onep:v1/stack/alias``); each is refused under the link's url without
        repeating the password. A json link posts to its URL as it is, so it keeps a query; a
        fragment is never sent, on either."""
        link = "http_links:\n  links:\n    l:\n      mode: {mode}\n      url: '{url}'\n"
        for mode, url, says in (
                ("json", "https://h:99999/in", "'https://h:99999/in': the port must be from 1 to 65535, not '99999'"),
                ("exosite", "https://h:0", "'https://h:0': the port must be from 1 to 65535, not '0'"),
                ("exosite", "https://[fd00::1", "not a usable URL (Invalid IPv6 URL): 'https://[fd00::1'"),
                ("json", "https://h/a b", "without spaces or control characters, not 'https://h/a b'"),
                ("json", "https://me:secret@h/in", "without a user name or password (never sent): give an"
                                                   " Authorization header under headers"),
                ("exosite", "https://me:secret@h", "without a user name or password (never sent): the link"
                                                   " authenticates with its CIK"),
                ("exosite", "https://h/?k=1", "without a query or fragment: the device API's paths go after it"),
                ("exosite", "https://h?", "without a query or fragment"),
                ("json", "https://h/in#x",
                 "without a fragment (never sent): each batch is posted to the URL as it is")):
            self.assertOneError(link.format(mode=mode, url=url), "http_links.links.l.url", says)
        path, lines = self.errors(link.format(mode="json", url="https://me:secret@h:99999/in"))
        self.assertNotIn("secret", lines[0])
        for mode, url in (("json", "https://ingest.example/in?key=1"), ("exosite", "https://[fd00::1]:8443/"),
                          ("exosite", "http://p.m2.exosite.io"), ("json", "HTTPS://ingest.example:443/in")):
            self.assertEqual(config.load(self.write(link.format(mode=mode, url=url))).http_links.links["l"].url, url)

    def test_uploads_aws_endpoint_the_client_can_use(self) -> None:
        """uploads.aws_endpoint is checked as the other servers' URLs: a port out of range (it
        passed as a 'must be' with no reason given), an unclosed IPv6 bracket, a space and a
        user name and password are refused under the key, the password not repeated."""
        for url, says in (("https://s3.local:99999", "the port must be from 1 to 65535, not '99999'"),
                          ("https://[fd00::1", "not a usable URL (Invalid IPv6 URL)"),
                          ("https://s3 local", "without spaces or control characters"),
                          ("https://me:secret@s3.local:99999", "the port must be from 1 to 65535, not '99999'"),
                          ("https://s3.local/b?x", "without a path, not 'https://s3.local/b'")):
            self.assertOneError(f"uploads:\n  aws_endpoint: '{url}'\n", "uploads.aws_endpoint", says)
        path, lines = self.errors("uploads:\n  aws_endpoint: 'https://me:secret@s3.local:99999'\n")
        self.assertNotIn("secret", lines[0])
        # urlsplit's own error quoted the netloc, password and all (a host NFKC normalization changes)
        path, lines = self.errors("uploads:\n  aws_endpoint: 'https://me:secret@s3.\u2100.example'\n")
        self.assertIn("not a usable URL (netloc 's3.\u2100.example' contains invalid characters", lines[0])
        self.assertNotIn("secret", lines[0])

    def test_uploads_files_are_absolute_globs(self) -> None:
        """uploads.files took a relative glob (matched from the working directory: ``/`` under
        systemd, so ``logs/*.log`` uploaded nothing, or a file of / by a name no one meant) and
        ``""``; each is refused under uploads.files, naming the glob; absolute ones are taken."""
        for glob in ("logs/*.log", "''", "' '"):
            self.assertOneError(f"uploads:\n  files: [{glob}]\n", "uploads.files",
                                "is not an absolute glob (/var/log/app/*.log)")
        loaded = config.load(self.write("uploads:\n  files: [/var/log/app/*.log, '/data/**/*.csv']\n"))
        self.assertEqual(loaded.uploads.files, ("/var/log/app/*.log", "/data/**/*.csv"))

    def test_fleet_ca_file(self) -> None:
        """An enabled fleet's CA file is read and parsed at load: a missing one passed
        --check-config and ended the start in a FileNotFoundError traceback."""
        fleet = "fleet:\n  enabled: true\n  base_url: 'https://hawkbit.example.com'\n  auth: none\n"
        self.assertOneError(f"{fleet}  ca_file: /nonexistent/ca.pem\n", "fleet.ca_file",
                            "cannot read '/nonexistent/ca.pem': No such file or directory")
        self.assertOneError(f"{fleet}  ca_file: {__file__}\n", "fleet.ca_file", "no PEM certificate in")

    def test_fleet_min_poll_interval_above_poll_interval_disabled_or_not(self) -> None:
        """``min_poll_interval`` above ``poll_interval`` (fleet.md: "at most poll_interval") was
        refused only with the fleet enabled: a disabled fleet's pair passed the check, to fail
        the day it was enabled. It is refused either way, as a value out of its range is."""
        for enabled in ("true", "false"):
            self.assertOneError(f"fleet:\n  enabled: {enabled}\n  base_url: 'https://h'\n  auth: none\n"
                                "  poll_interval: 5\n  min_poll_interval: 6\n", "fleet.min_poll_interval",
                                "must not be above poll_interval (5)")

    def test_fleet_tenant_and_controller_id_are_url_segments(self) -> None:
        """The tenant and controller id are segments of every DDI URL's path: an empty one, '.'
        or '..' was taken and sent: a poll of {base_url}/DEFAULT/controller/v1/.., which a server
        that normalizes paths (nginx) takes as /DEFAULT/controller. They are refused under their
        keys; any other text is quoted into its segment, as before. gateway.tenant_id's refusal
        spoke of the controller id, which holds the device id only: it names the tenant."""
        fleet = "fleet:\n  enabled: true\n  base_url: 'https://hawkbit.example.com'\n  auth: none\n"
        for key, value in (("controller_id", ".."), ("controller_id", "."), ("tenant", "''"), ("tenant", "' '")):
            self.assertOneError(f"{fleet}  {key}: {value}\n", f"fleet.{key}", "it is one segment of the DDI URL's path")
        loaded = config.load(self.write(f"{fleet}  controller_id: 'gw ..%/1'\n"))
        self.assertEqual(loaded.fleet.controller_id, "gw ..%/1")
        for key, says in (("device_id", "must name this gateway, not '{value}': it is also a segment of URL paths"
                                        " (the fleet's controller id {{device}})"),
                          ("tenant_id", "must name this gateway's tenant, not '{value}': it is also a level of the"
                                        " cloud topics ({{tenant}})")):
            for value in (".", ".."):
                self.assertOneError(f"gateway:\n  {key}: '{value}'\n", f"gateway.{key}", says.format(value=value))

    def test_fleet_base_url(self) -> None:
        """An enabled fleet's base_url is the root every DDI path goes after: one with a port out
        of range, no host, a query or fragment (the paths went into it: a poll of
        ``https://h?x=1/DEFAULT/controller/v1/gw``) or a user name and password (never sent: the
        token is) passed --check-config and failed every poll; an unclosed IPv6 bracket was a
        ``fleet: cannot be checked: ValueError``. Each is refused under ``fleet.base_url``,
        without the URL's password; a path prefix and an IPv6 address in brackets are taken."""
        fleet = "fleet:\n  enabled: true\n  auth: none\n  base_url: "
        for url, says in (("'https://h:99999'", "'https://h:99999': the port must be from 1 to 65535, not '99999'"),
                          ("'https://[fd00::1'", "not a usable URL (Invalid IPv6 URL): 'https://[fd00::1'"),
                          ("'https://:443'", "must be https://host[:port][/path], not 'https://:443'"),
                          ("'https://h/?x=1'", "without a query or fragment: the DDI paths go after it"),
                          ("'https://h/#top'", "without a query or fragment: the DDI paths go after it"),
                          ("'https://me:secret@h'", "without a user name or password (never sent): the gateway"
                                                    " authenticates with token_file")):
            self.assertOneError(f"{fleet}{url}\n", "fleet.base_url", says)
        path, lines = self.errors(f"{fleet}'https://me:secret@h'\n")
        self.assertNotIn("secret", lines[0])
        for url in ("'https://[fd00::1]:8443'", "'https://h.example/hawkbit/'", "'HTTPS://h.example'"):
            self.assertEqual(config.load(self.write(f"{fleet}{url}\n")).fleet.base_url, url.strip("'"))

    def test_fleet_token_file(self) -> None:
        """An enabled fleet's token file is read at load as at start: an empty one passed
        --check-config and ended the start in a ValueError traceback."""
        fleet = "fleet:\n  enabled: true\n  base_url: 'https://hawkbit.example.com'\n"
        empty = Path(self.mktemp())
        empty.write_text("\n")
        self.assertOneError(f"{fleet}  token_file: {empty}\n", "fleet.token_file",
                            f"'{empty}' is empty (the token is its first line)")
        self.assertOneError(f"{fleet}  token_file: /nonexistent/token\n", "fleet.token_file",
                            "cannot read '/nonexistent/token': No such file or directory")

    def test_fleet_token_that_no_header_can_carry(self) -> None:
        """A token of non-ASCII text (``sécret``) or with a control character passed the check
        and went in every poll's ``Authorization`` header as UTF-8, which a server reads as
        Latin-1, another token than the one it issued: refused under ``fleet.token_file``,
        naming the character, not the token (fleet.md)."""
        fleet = "fleet:\n  enabled: true\n  base_url: 'https://hawkbit.example.com'\n"
        token = Path(self.mktemp())
        token.write_text("s\u00e9cret\n")
        self.assertOneError(f"{fleet}  token_file: {token}\n", "fleet.token_file",
                            f"the token in '{token}' holds '\u00e9', which is not ASCII: an HTTP header value is ASCII")
        token.write_text("a\x7fb\n")
        self.assertOneError(f"{fleet}  token_file: {token}\n", "fleet.token_file",
                            f"the token in '{token}' holds '\\x7f', a control character")
        path, lines = self.errors(f"{fleet}  token_file: {token}\n")
        self.assertNotIn("a\x7fb", lines[0])
        token.write_text("0123abcDEF-_.~+/=\n")
        self.assertEqual(config.load(self.write(f"{fleet}  token_file: {token}\n")).fleet.token_file, str(token))

    def test_link_ssl_endpoint_without_hostname(self) -> None:
        """Twisted's ssl: client endpoint checks the server's certificate only with hostname=:
        a link written ssl:host=H:port=P would talk TLS to any server, so it is refused and
        tls: named instead (docs/links.md: tls: verifies the server certificate for H)."""
        self.assertOneError("links:\n  links:\n    c:\n      endpoint: 'ssl:host=mqtt.example.com:port=8883'\n",
                            "links.links.c.endpoint", "verifies no server certificate; write tls:host=NAME:port=NUMBER")
        loaded = config.load(self.write(
            "links:\n  links:\n    c:\n      endpoint: 'ssl:host=mqtt.example.com:port=8883:hostname=mqtt.example.com'\n"))
        self.assertEqual(loaded.links.links["c"].endpoint, "ssl:host=mqtt.example.com:port=8883:hostname=mqtt.example.com")

    def test_link_endpoint_port_in_range(self) -> None:
        """A cloud link's port is 1 to 65535: Twisted's parser takes any number and the link
        would fail at every connect."""
        for endpoint in ("tcp:host=h:port=99999", "tcp:h:0", "tls:host=h:port=70000"):
            self.assertOneError(f"links:\n  links:\n    c:\n      endpoint: '{endpoint}'\n",
                                "links.links.c.endpoint", "the port must be from 1 to 65535, not ")

    def test_link_timeout_is_positive(self) -> None:
        """A link endpoint's ``timeout=`` is a positive number of seconds in ASCII digits (whole
        on ``tcp:`` and ``ssl:``, as Twisted reads theirs): with 0 or less every connection attempt
        would time out at once, forever. A ``tcp:`` or ``ssl:`` one of 0 or less passed the check
        and the link never connected ('no answer from ...: connecting timed out')."""
        for endpoint in ("tls:host=h:port=8883", "tcp:host=h:port=1883", "ssl:host=h:port=8883:hostname=h"):
            whole = "" if endpoint.startswith("tls:") else "whole "
            for timeout in ("0", "-1", "nan", "inf", "٣", "x"):
                self.assertOneError(f"links:\n  links:\n    c:\n      endpoint: '{endpoint}:timeout={timeout}'\n",
                                    "links.links.c.endpoint",
                                    f"timeout= takes a positive {whole}number of seconds, not {timeout!r}")
            loaded = config.load(self.write(f"links:\n  links:\n    c:\n      endpoint: '{endpoint}:timeout=7'\n"))
            self.assertEqual(loaded.links.links["c"].endpoint, f"{endpoint}:timeout=7")
        loaded = config.load(self.write("links:\n  links:\n    c:\n      endpoint: 'tls:host=h:port=8883:timeout=2.5'\n"))
        self.assertEqual(loaded.links.links["c"].endpoint, "tls:host=h:port=8883:timeout=2.5")

    def test_link_timeout_in_ascii_digits_only(self) -> None:
        """A link endpoint's ``timeout=`` written in another script's digits, as ``nan``, ``inf``,
        with an exponent, an underscore or a space is refused at load, quoted as written in one
        wording, as a port is: ``float()`` read ``３`` (fullwidth) as 3 seconds on a ``tls:``
        endpoint, ``1e3`` as 1000 and `` 3`` as 3, and Twisted's ``int()`` read ``٣`` as 3 on a
        ``unix:`` one, which was not checked at all; a ``unix:`` endpoint's is whole seconds above
        0 as a ``tcp:`` one's is."""
        arabic = "\u0663"  # 3
        written = [("tls:host=h:port=8883:timeout=" + t) for t in (arabic, "\uff13", "inf", "nan", "1e3", "1_0", " 3")]
        written += [f"tcp:host=h:port=1883:timeout={arabic}", f"tcp:h:1883:timeout={arabic}",
                    f"unix:path=/run/c.sock:timeout={arabic}"]
        text = "links:\n  links:\n" + "".join(f"    l{i}:\n      endpoint: '{e}'\n" for i, e in enumerate(written))
        path, lines = self.errors(text)
        whole = ["" if e.startswith("tls:") else "whole " for e in written]
        self.assertEqual(lines, [f"{path}: links.links.l{i}.endpoint: {e!r}: timeout= takes a positive {whole[i]}number"
                                 f" of seconds, not {e.rsplit('=', 1)[1]!r}" for i, e in enumerate(written)])
        for endpoint in ("tcp:host=h:port=1883:timeout=2.5", "unix:path=/run/c.sock:timeout=0"):
            self.assertOneError(f"links:\n  links:\n    c:\n      endpoint: '{endpoint}'\n", "links.links.c.endpoint",
                                f"timeout= takes a positive whole number of seconds, not {endpoint.rsplit('=', 1)[1]!r}")
        loaded = config.load(self.write("links:\n  links:\n    c:\n      endpoint: 'tls:host=h:port=8883:timeout=.5'\n"
                                        "    d:\n      endpoint: 'unix:path=/run/c.sock:timeout=7'\n"))
        self.assertEqual(sorted(loaded.links.links), ["c", "d"])

    def test_link_endpoint_checked_beside_its_tls_files(self) -> None:
        """Every problem at once (docs/configuration.md): a bad ``tls:`` endpoint string is
        reported beside an unreadable TLS file of its link or a problem of its ``aws:`` (it
        waited for them to be fixed)."""
        path, lines = self.errors("links:\n  links:\n    c:\n      endpoint: 'tls:host=h:port=8883:timeout=0'\n"
                                  "      ca_file: /nonexistent/ca.pem\n"
                                  "    d:\n      endpoint: 'tls:host=h:port=99999'\n      key_file: /nonexistent/k.pem\n")
        self.assertEqual(lines, [
            f"{path}: links.links.c.ca_file: cannot read '/nonexistent/ca.pem': No such file or directory",
            f"{path}: links.links.c.endpoint: 'tls:host=h:port=8883:timeout=0': timeout= takes a positive"
            " number of seconds, not '0'",
            f"{path}: links.links.d.key_file: needs cert_file (the client certificate it belongs to)",
            f"{path}: links.links.d.endpoint: 'tls:host=h:port=99999': the port must be from 1 to 65535, not '99999'"])
        path, lines = self.errors("links:\n  links:\n    c:\n      endpoint: 'tls:host=h:port=99999'\n"
                                  "      aws: {websocket: true}\n")
        self.assertEqual(lines, [
            f"{path}: links.links.c.aws.credentials_file: websocket: true signs its URL with these credentials",
            f"{path}: links.links.c.endpoint: 'tls:host=h:port=99999': the port must be from 1 to 65535, not '99999'"])

    def test_link_endpoint_ipv6_address(self) -> None:
        """A link to an IPv6 address, its colons escaped as Twisted's parser wants them, named
        or positional, is taken, with its port checked; the positional one was refused
        ("the port must be from 1 to 65535, not '\\\\'") though Twisted connects to it."""
        for endpoint in (r"tcp:\:\:1:1883", r"tcp:host=\:\:1:port=1883", r"tls:host=\:\:1:port=8883"):
            loaded = config.load(self.write(f"links:\n  links:\n    c:\n      endpoint: '{endpoint}'\n"))
            self.assertEqual(loaded.links.links["c"].endpoint, endpoint)
        self.assertOneError("links:\n  links:\n    c:\n      endpoint: 'tcp:\\:\\:1:99999'\n",
                            "links.links.c.endpoint", "the port must be from 1 to 65535, not '99999'")

    def test_updates_ca_file(self) -> None:
        """The download CA file must exist and hold a certificate."""
        self.assertOneError("updates:\n  download:\n    ca_file: /nonexistent/ca.pem\n",
                            "updates.download.ca_file", "cannot read")

    def test_all_problems_at_once(self) -> None:
        """One file with a problem in every section: every one is listed, none hides another."""
        path, lines = self.errors(
            "gateway:\n  state_dir: 123\n  device_id: ''\n"
            "broker:\n  max_packet_size: 1.5\n  listeners:\n    default:\n      endpoint: 'tcp:1883'\n"
            "      max_connections: -1\n"
            "journal:\n  directory: ''\n"
            "links:\n  links:\n    cloud:\n      window: 0\n      ca_file: /nonexistent/ca.pem\n"
            "      endpoint: 'tls:host=h:port=8883'\n"
            "      routes:\n        - {filter: 'bad/#/filter', topic: 'up/{nonsense}'}\n"
            "apps:\n  programs:\n    p: {}\n"
            "updates:\n  deb_install_command: []\n")
        joined = "\n".join(lines)
        for where in ("gateway.state_dir", "gateway.device_id", "broker.max_packet_size",
                      "broker.listeners.default.max_connections", "journal.directory", "links.links.cloud.window",
                      "links.links.cloud.ca_file", "links.links.cloud.routes.0.filter",
                      "links.links.cloud.routes.0.topic", "apps.programs.p.command", "updates.deb_install_command"):
            self.assertIn(f"{path}: {where}: ", joined)
        self.assertEqual(len(lines), 11, joined)

    def test_stream_settings_for_no_link(self) -> None:
        """Settings for a journal stream no link writes to (a misspelt link name) are refused."""
        path, lines = self.errors("links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=h:port=1'\n"
                                  "journal:\n  streams:\n    link-cloud: {}\n    link-clowd: {}\n")
        self.assertEqual(lines, [f"{path}: journal.streams.link-clowd: no such stream (streams are broker-state and link-<name>"
                                 " of a link: link-cloud)"])

    def test_a_shadow_stream_without_its_shadow_link_says_what_makes_it(self) -> None:
        """Settings for ``shadow-<link>`` (journal.md: the twin's shadow updates when
        ``twin.shadow_link`` names that link) on a gateway whose twin syncs no shadows are
        refused saying what makes that stream: the error listed only broker-state and the
        links' streams, as if shadow-<link> were no stream at all."""
        path, lines = self.errors("links:\n  links:\n    aws:\n      endpoint: 'tcp:host=h:port=1'\n"
                                  "journal:\n  streams:\n    shadow-aws: {}\n")
        self.assertEqual(lines, [f"{path}: journal.streams.shadow-aws: no such stream (streams are broker-state and "
                                 "link-<name> of a link: link-aws); a shadow-<link> stream is the twin's shadow sync's,"
                                 " while twin.shadow_link names that link"])
        config.load(self.write("links:\n  links:\n    aws:\n      endpoint: 'tcp:host=h:port=1'\n"
                               "twin: {shadow_link: aws}\njournal:\n  streams:\n    shadow-aws: {}\n"))

    def test_a_stream_name_no_stream_can_have_is_one_error(self) -> None:
        """A stream name that is no name at all (a space) is told once, as such: it was also
        told that no such stream exists."""
        self.assertOneError("journal:\n  streams:\n    'bad name': {}\n", "journal.streams.bad name",
                            "bad name 'bad name': use 1-100 of A-Z a-z 0-9 _ . - (no leading dot)")

    def test_a_misspelt_broker_state_stream_is_told_the_right_name(self) -> None:
        """The broker's state log is a stream ``journal.streams`` may name: the error for a
        stream of no link names it beside the links' streams (it said only that streams are
        ``link-<name>``, so ``broker_state`` for ``broker-state`` looked like no stream at all)."""
        self.assertOneError("journal:\n  streams:\n    broker_state: {sync: interval}\n", "journal.streams.broker_state",
                            "no such stream (streams are broker-state and link-<name> of a link: none: no link is"
                            " configured)")

    def test_checks_across_sections_come_with_the_other_problems(self) -> None:
        """Every problem at once: a stream for no link and a shadow_link naming no link are
        listed beside a problem of another section (they waited for it to be fixed first),
        and left out only when the names they read cannot be read."""
        path, lines = self.errors("gateway:\n  device_id: ''\njournal:\n  streams:\n    link-typo: {}\n")
        self.assertEqual(lines, [
            f"{path}: gateway.device_id: must not be empty",
            f"{path}: journal.streams.link-typo: no such stream (streams are broker-state and link-<name> of a link:"
            " none: no link is configured)"])
        path, lines = self.errors("gateway:\n  tenant_id: 'a/b'\ntwin:\n  shadow_link: nope\n")
        self.assertEqual(lines, [
            f"{path}: gateway.tenant_id: must be usable as one MQTT topic level, without '/'",
            f"{path}: twin.shadow_link: no MQTT link 'nope' in links.links (none is configured)"])
        path, lines = self.errors("links:\n  links: []\njournal:\n  streams:\n    link-cloud: {}\n")
        self.assertEqual(lines, [f"{path}: links.links: must be a mapping, not a list"])

    def test_stream_for_no_link_is_listed_beside_problems_of_journal_and_twin(self) -> None:
        """Every problem at once (docs/configuration.md): a stream named for no link is listed
        beside a bad value of ``journal:`` or ``twin:`` (the check waited for both sections to
        be fixed), and so is a shadow_link naming no link beside another twin value; a
        ``shadow-`` stream is left out only when the shadow_link itself was refused."""
        no_such = "journal.streams.link-typo: no such stream (streams are broker-state and link-<name> of a link: none: no link is" \
                  " configured)"
        for text, expected in (
                ("journal:\n  retention_check_s: 0\n  streams:\n    link-typo: {}\ntwin:\n  enabled: maybe\n",
                 ["journal.retention_check_s: must be at least 0.1, not 0.0",
                  "twin.enabled: must be true or false, not the text 'maybe'", no_such]),
                ("journal:\n  streams:\n    link-typo: {segment_bytes: x}\n",
                 ["journal.streams.link-typo.segment_bytes: must be a whole number, not the text 'x'", no_such]),
                ("twin:\n  max_depth: 0\n  shadow_link: nope\n",
                 ["twin.max_depth: must be at least 1, not 0",
                  "twin.shadow_link: no MQTT link 'nope' in links.links (none is configured)"]),
                ("twin:\n  shadow_link: 5.5.5\n  shadow-link: x\njournal:\n  streams:\n    shadow-x: {}\n"
                 "    link-typo: {}\n",
                 ["twin.shadow-link: given twice, as 'shadow_link' and 'shadow-link'", no_such])):
            path, lines = self.errors(text)
            self.assertEqual(lines, [f"{path}: {line}" for line in expected])

    def test_shadow_thing_is_checked_beside_other_problems(self) -> None:
        """Every problem at once: an AWS thing that cannot be a topic level (``twin.shadow_thing``,
        or the link's client id it defaults to) is reported beside a bad value of ``gateway:``
        or of the link (it waited for them to be fixed), and left out only when the device id,
        tenant id or client id it is made of was refused."""
        link = "links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=h:port=1'\n"
        path, lines = self.errors(f"gateway:\n  log_level: loud\n{link}      window: 0\n"
                                  "twin:\n  shadow_link: cloud\n  shadow_thing: a/b\n")
        self.assertEqual(lines[2:], [f"{path}: twin.shadow_thing: the AWS thing 'a/b' must be usable as one MQTT"
                                     " topic level, without '/'"])
        path, lines = self.errors(f"gateway:\n  log_level: loud\n{link}      client_id: 'x/{{device}}'\n"
                                  "twin:\n  shadow_link: cloud\n")
        self.assertEqual(lines[1:], [f"{path}: twin.shadow_thing: the AWS thing 'x/gateway' (the link's client id)"
                                     " must be usable as one MQTT topic level, without '/'"])
        path, lines = self.errors(f"gateway:\n  device_id: ''\n{link}      client_id: 'x/{{device}}'\n"
                                  "twin:\n  shadow_link: cloud\n")
        self.assertEqual(lines, [f"{path}: gateway.device_id: must not be empty"])

    def test_stream_for_no_link_is_listed_beside_a_problem_of_a_link(self) -> None:
        """Every problem at once (docs/configuration.md): a link with a bad value is still that
        link, so a stream named for no link is listed with it, not after it is fixed."""
        path, lines = self.errors("links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=h:port=1'\n"
                                  "      window: 0\n"
                                  "journal:\n  streams:\n    link-cloud: {}\n    link-clowd: {}\n")
        self.assertEqual(lines, [f"{path}: links.links.cloud.window: must be at least 1, not 0",
                                 f"{path}: journal.streams.link-clowd: no such stream (streams are broker-state and link-<name>"
                                 " of a link: link-cloud)"])

    def test_shadow_link_for_no_link_is_listed_beside_a_problem_of_a_link(self) -> None:
        """Every problem at once: a twin.shadow_link naming no link is listed beside a bad
        value of a link, and so is an HTTP link named like an MQTT link."""
        path, lines = self.errors("links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=h:port=1'\n"
                                  "      window: 0\n"
                                  "http_links:\n  links:\n    cloud:\n      mode: json\n"
                                  "      url: 'http://127.0.0.1:1/in'\n"
                                  "twin:\n  shadow_link: clowd\n")
        self.assertEqual(lines, [f"{path}: links.links.cloud.window: must be at least 1, not 0",
                                 f"{path}: http_links.links.cloud: a link of this name is in links: too"
                                 " (link names are shared)",
                                 f"{path}: twin.shadow_link: no MQTT link 'clowd' in links.links (cloud)"])

    def test_a_shadow_link_too_long_to_name_its_stream_is_refused(self) -> None:
        """twin.shadow_link may name a link of at most 93 characters: its journal stream is
        shadow-<link>, at most 100. A longer one (95, which a link's name may have) passed the
        check, and the gateway failed to start: bad name 'shadow-aaa...'."""
        def text(name: str) -> str:
            return f"links:\n  links:\n    {name}:\n      endpoint: 'tcp:host=h:port=1'\ntwin:\n  shadow_link: {name}\n"

        self.assertEqual(config.load(self.write(text("a" * 93))).twin.shadow_link, "a" * 93)
        path, lines = self.errors(text("a" * 94))
        self.assertEqual(lines, [f"{path}: twin.shadow_link: the link's name has 94 characters: the shadow sync's"
                                 " journal stream shadow-<link> takes a link name of at most 93"])

    def test_a_link_name_in_both_link_sections_is_refused(self) -> None:
        """An HTTP link named like an MQTT link is refused at load, not when the links start."""
        path, lines = self.errors("links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=h:port=1'\n"
                                  "http_links:\n  links:\n    cloud:\n      mode: json\n"
                                  "      url: 'http://127.0.0.1:1/in'\n")
        self.assertIn(f"{path}: http_links.links.cloud: a link of this name is in links: too"
                      " (link names are shared)", lines)

    def test_a_declared_container_named_like_a_config_program_is_refused(self) -> None:
        """A container app's name is not a hosted program's (docs/containers.md): the two would
        share one name in every operation and one log file."""
        path, lines = self.errors("apps:\n  programs:\n    web:\n      command: /bin/true\n"
                                  "containers:\n  enabled: true\n  containers:\n"
                                  "    web:\n      image: registry.local:5000/web:1\n")
        self.assertEqual(lines, [f"{path}: containers.containers.web: the name of a program in apps.programs"
                                 " (a container app's name is not a hosted program's)"])

    def test_a_container_named_like_a_program_is_reported_beside_other_problems(self) -> None:
        """Every problem at once: the container/program name clash is reported even when
        ``apps:`` or ``containers:`` has problems of its own, as long as their names are there."""
        path, lines = self.errors("apps:\n  backoff_initial: -1\n  programs:\n    web:\n      command: /bin/true\n"
                                  "    db:\n      command: \"unclosed 'quote\"\n"
                                  "containers:\n  enabled: true\n  request_timeout: 0\n  containers:\n"
                                  "    web:\n      image: registry.local:5000/web:1\n"
                                  "    db:\n      image: registry.local:5000/db:1\n      colour: red\n")
        clash = " (a container app's name is not a hosted program's)"
        self.assertIn(f"{path}: containers.containers.db: the name of a program in apps.programs{clash}", lines)
        self.assertIn(f"{path}: containers.containers.web: the name of a program in apps.programs{clash}", lines)
        self.assertEqual(len(lines), 6, lines)  # the four problems of the sections, and the two clashes
        path, lines = self.errors("apps:\n  programs: [web]\ncontainers:\n  containers:\n"
                                  "    web:\n      image: registry.local:5000/web:1\n")
        self.assertEqual(len(lines), 1, lines)  # no program names to compare with

    def test_names_whose_logs_are_another_logs_are_refused(self) -> None:
        """A program or container named ``<x>.err`` (its log is x's stderr log) or
        ``podman-service`` (the podman service's log) is refused at load."""
        path, lines = self.errors("apps:\n  programs:\n    web.err:\n      command: /bin/true\n"
                                  "    podman-service:\n      command: /bin/true\n"
                                  "containers:\n  enabled: true\n  containers:\n"
                                  "    db.err:\n      image: registry.local:5000/db:1\n")
        self.assertEqual(lines, [
            f"{path}: apps.programs.web.err: bad program name: 'web.err' ends in .err: its log web.err.log "
            "is the stderr log of 'web'",
            f"{path}: apps.programs.podman-service: bad program name: 'podman-service' is reserved: "
            "podman-service.log is the podman service's log",
            f"{path}: containers.containers.db.err: not a container name: 'db.err' ends in .err: its log "
            "db.err.log is the stderr log of 'db'"])

    def test_a_refused_value_is_not_reported_twice(self) -> None:
        """A command of the wrong type is one error, not also 'required'."""
        self.assertOneError("apps:\n  programs:\n    p:\n      command: [1]\n", "apps.programs.p.command",
                            "must be a string")


class SectionRegistryTests(SynchronousTestCase):
    """Sections are typed attributes of Config, listed once in ``config.SECTIONS``."""

    def test_registry_matches_config(self) -> None:
        """Every registered section is a Config attribute and every attribute but path, written and dropins a section."""
        import dataclasses

        fields = [f.name for f in dataclasses.fields(config.Config) if f.name not in ("path", "written", "dropins")]
        self.assertEqual(sorted(fields), sorted(config.SECTIONS))

    def test_sections_are_typed(self) -> None:
        """Each section is its settings object, not a mapping entry."""
        from gateway.apps.settings import AppsSettings
        from gateway.journal.settings import JournalSettings
        from gateway.links.settings import LinksSettings
        from gateway.updates.settings import UpdatesSettings

        loaded = config.load()
        self.assertIsInstance(loaded.journal, JournalSettings)
        self.assertIsInstance(loaded.links, LinksSettings)
        self.assertIsInstance(loaded.apps, AppsSettings)
        self.assertIsInstance(loaded.updates, UpdatesSettings)
