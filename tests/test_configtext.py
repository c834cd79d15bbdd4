"""The text a configuration value or key may hold: a NUL in none, a control character only
in command words, environment values and payloads; each refused once, under its key, in one
line naming the file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.configtext import key_problem, nul_problems, text_problem
from gateway.containers.descfile import from_mapping
from gateway.containers.errors import DescriptionError
from gateway.errors import ConfigError


class TextProblemTests(SynchronousTestCase):
    """:func:`text_problem`, :func:`key_problem` and :func:`nul_problems` on their own."""

    def test_nul_always(self) -> None:
        """A NUL is refused, whether control characters are allowed or not."""
        self.assertEqual(text_problem("a\0b"), "must not hold a NUL character: 'a\\x00b'")
        self.assertEqual(text_problem("a\0b", controls=True), "must not hold a NUL character: 'a\\x00b'")

    def test_control_characters_unless_allowed(self) -> None:
        """C0 controls, DEL and C1 controls are refused, naming the first; other text is not."""
        for char in ("\n", "\r", "\t", "\x1b", "\x7f", "\x85"):
            self.assertEqual(text_problem(f"a{char}b"), f"must not hold a control character ({char!r}): {f'a{char}b'!r}")
            self.assertIsNone(text_problem(f"a{char}b", controls=True))
        for fine in ("", "a b", "ünïcødé \u2028 \u00a0", "{device}", "C:/temp"):
            self.assertIsNone(text_problem(fine))

    def test_key_problem(self) -> None:
        """A key is a name: no NUL, no control character."""
        self.assertEqual(key_problem("X-A\n"), "the key must not hold a control character ('\\n'): 'X-A\\n'")
        self.assertIsNone(key_problem("X-A"))

    def test_nul_problems_walks_keys_and_values(self) -> None:
        """Every key and string holding a NUL, at any depth, with its path; a key's path ends
        with the key, and what is under it is not walked."""
        data = {"a": ["x", "y\0"], "b\0": {"c\0": 1}, "d": {"e": "tab\tok", "f": 1}}
        self.assertEqual(list(nul_problems(data, ("broker",))), [
            (("broker", "a", "1"), "must not hold a NUL character: 'y\\x00'"),
            (("broker", "b\0"), "the key must not hold a NUL character: 'b\\x00'")])


class ConfigTextTests(SynchronousTestCase):
    """Keys that took a NUL or a control character, and failed (or misbehaved) only at run
    time, are refused by the check, once each, under their key."""

    def load_errors(self, data: dict[str, Any]) -> tuple[Path, list[str]]:
        """Write ``data`` as a config in a fresh directory (its state dir there); return the
        file and the error lines ``load`` raises."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "gateway.yaml"
        data.setdefault("gateway", {}).setdefault("state_dir", str(directory / "state"))
        path.write_text(yaml.safe_dump(data))
        return path, self.assertRaises(ConfigError, config.load, path).errors

    def loads(self, data: dict[str, Any]) -> config.Config:
        """``data`` as a config, loaded."""
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "gateway.yaml"
        data.setdefault("gateway", {}).setdefault("state_dir", str(directory / "state"))
        path.write_text(yaml.safe_dump(data))
        return config.load(path)

    def assertRefused(self, data: dict[str, Any], where: str, says: str) -> None:
        """``data`` is refused with exactly one line: the file, ``where``, and ``says``."""
        path, lines = self.load_errors(data)
        self.assertEqual(lines, [f"{path}: {where}: {says}"])

    def test_program_command_holding_a_nul(self) -> None:
        """A hosted program's ``command`` with a NUL: shlex split it into a word holding it and
        the check passed; the program could never be executed (``embedded null byte``)."""
        self.assertRefused({"apps": {"programs": {"p": {"command": "/bin/sleep 1\0"}}}},
                           "apps.programs.p.command", "must not hold a NUL character: '/bin/sleep 1\\x00'")

    def test_program_command_may_span_lines(self) -> None:
        """A newline or a tab in ``command`` separates words, as a space does (a folded YAML
        block): it is taken."""
        loaded = self.loads({"apps": {"programs": {"p": {"command": "/bin/sleep\n\t1\n"}}}})
        self.assertEqual(loaded.apps.programs["p"].command, "/bin/sleep\n\t1\n")

    def test_http_link_downlink_alias(self) -> None:
        """An HTTP link's downlink ``alias`` with a newline or a NUL: it goes into the long-poll's
        request and into the local topic, and was taken."""
        for alias, shown in (("cmd\n", "must not hold a control character ('\\n'): 'cmd\\n'"),
                             ("c\0md", "must not hold a NUL character: 'c\\x00md'")):
            self.assertRefused({"http_links": {"links": {"h": {"url": "https://h", "downlink": [{"alias": alias}]}}}},
                               "http_links.links.h.downlink.0.alias", shown)

    def test_container_image(self) -> None:
        """A declared container's ``image`` with a NUL or a newline: the runtime's pull could
        only fail, after the check passed."""
        for image, shown in (("reg/img:1\0", "must not hold a NUL character: 'reg/img:1\\x00'"),
                             ("reg/img:1\n", "must not hold a control character ('\\n'): 'reg/img:1\\n'")):
            self.assertRefused({"containers": {"containers": {"c": {"image": image}}}},
                               "containers.containers.c.image", shown)

    def test_container_description_artifact(self) -> None:
        """A container description shipped by an update is held to the same rule as a declared
        one: its ``image`` with a NUL is refused, naming the key."""
        with self.assertRaises(DescriptionError) as caught:
            from_mapping({"image": "img\0"}, "c.json")
        self.assertEqual(str(caught.exception), "c.json: image: must not hold a NUL character: 'img\\x00'")

    def test_fleet_attributes(self) -> None:
        """``fleet.attributes`` (sent to the DDI server as configData) with a NUL or a control
        character in a value or a name was taken."""
        self.assertRefused({"fleet": {"attributes": {"hw": "rev\0"}}},
                           "fleet.attributes.hw", "must not hold a NUL character: 'rev\\x00'")
        self.assertRefused({"fleet": {"attributes": {"hw": "a\nb"}}},
                           "fleet.attributes.hw", "must not hold a control character ('\\n'): 'a\\nb'")
        self.assertRefused({"fleet": {"attributes": {"h\x1bw": "a"}}},
                           "fleet.attributes.h\\x1bw", "the key must not hold a control character ('\\x1b'): 'h\\x1bw'")

    def test_link_client_endpoint(self) -> None:
        """A link's client ``endpoint`` with a newline in a ``tcp:`` host or a NUL in a ``unix:``
        path passed the check (Twisted's parser takes both); the link could only fail to
        connect, at every retry."""
        self.assertRefused({"links": {"links": {"c": {"endpoint": "tcp:host=broker\n.example.com:port=1883"}}}},
                           "links.links.c.endpoint",
                           "must not hold a control character ('\\n'): 'tcp:host=broker\\n.example.com:port=1883'")
        self.assertRefused({"links": {"links": {"c": {"endpoint": "unix:path=/run/b\0.sock"}}}},
                           "links.links.c.endpoint", "must not hold a NUL character: 'unix:path=/run/b\\x00.sock'")

    def test_upload_globs(self) -> None:
        """``uploads.files`` and ``uploads.diagnostics_logs`` globs with a NUL or a control
        character were taken, and matched nothing, without a word."""
        path, lines = self.load_errors({"uploads": {"files": ["/var/log/a\0*"], "diagnostics_logs": ["logs/\t*.log"]}})
        self.assertEqual(lines, [
            f"{path}: uploads.diagnostics_logs.0: must not hold a control character ('\\t'): 'logs/\\t*.log'",
            f"{path}: uploads.files.0: must not hold a NUL character: '/var/log/a\\x00*'"])

    def test_every_other_key_of_one_line(self) -> None:
        """The other keys found to take a NUL or a control character: names, ids, URLs, HTTP
        headers and topics; each is refused once under its key."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"gateway": {"device_id": "dev\n"}}, "gateway.device_id"),
            ({"gateway": {"state_dir": "var\tx"}}, "gateway.state_dir"),
            ({"links": {"links": {"c": {"client_id": "id\0"}}}}, "links.links.c.client_id"),
            ({"links": {"links": {"c": {"username": "u\r"}}}}, "links.links.c.username"),
            ({"links": {"links": {"c": {"will_topic": "w/\n"}}}}, "links.links.c.will_topic"),
            ({"links": {"links": {"c": {"routes": [{"filter": "t/#", "topic": "x/\n{#}"}]}}}},
             "links.links.c.routes.0.topic"),
            ({"links": {"policy_id": "p\0"}}, "links.policy_id"),
            ({"http_links": {"links": {"h": {"url": "https://h/\n"}}}}, "http_links.links.h.url"),
            ({"http_links": {"links": {"h": {"headers": {"X-A": "b\r\nX-B: c"}}}}}, "http_links.links.h.headers.X-A"),
            ({"http_links": {"links": {"h": {"serial": "sn\0"}}}}, "http_links.links.h.serial"),
            ({"http_links": {"links": {"h": {"loss_topic": "loss\n"}}}}, "http_links.links.h.loss_topic"),
            ({"apps": {"programs": {"p": {"command": "true", "directory": "/tmp\n"}}}}, "apps.programs.p.directory"),
            ({"containers": {"api_version": "v4\n"}}, "containers.api_version"),
            ({"containers": {"insecure_registries": ["r:5000\0"]}}, "containers.insecure_registries.0"),
            ({"containers": {"podman_command": ["podman\0"]}}, "containers.podman_command.0"),
            ({"containers": {"containers": {"c": {"image": "i", "env": {"E": "v\0"}}}}},
             "containers.containers.c.env.E"),
            ({"containers": {"containers": {"c": {"image": "i", "mounts": [{"source": "/a\n", "destination": "/b"}]}}}},
             "containers.containers.c.mounts.0.source"),
            ({"fleet": {"tenant": "T\n"}}, "fleet.tenant"),
            ({"fleet": {"controller_id": "{device}\0"}}, "fleet.controller_id"),
            ({"fleet": {"base_url": "https://hb\0"}}, "fleet.base_url"),
            ({"uploads": {"feature_id": "Auto\nUploadable"}}, "uploads.feature_id"),
            ({"uploads": {"aws_endpoint": "https://s3\n"}}, "uploads.aws_endpoint"),
            ({"twin": {"shadow_thing": "t\0"}}, "twin.shadow_thing"),
            ({"ingest": {"ciks": ["a" * 39 + "\n"]}}, "ingest.ciks.0"),
            ({"updates": {"deb_install_command": ["dpkg\0"]}}, "updates.deb_install_command.0"),
            ({"updates": {"swupdate_command": ["swupdate\0"]}}, "updates.swupdate_command.0"),
        ]
        for data, where in cases:
            path, lines = self.load_errors(data)
            self.assertEqual(len(lines), 1, (where, lines))
            self.assertTrue(lines[0].startswith(f"{path}: {where}: must not hold a "), (where, lines))

    def test_command_words_environment_values_and_payloads_take_control_characters(self) -> None:
        """Argument words, environment values, a will payload and a password may hold a newline
        or a tab (an exec or an MQTT packet carries them as they are)."""
        loaded = self.loads({
            "apps": {"programs": {"p": {"command": "true", "environment": {"CERT": "-----\nAB\n-----"}}}},
            "containers": {"podman_command": ["podman", "--log-level\tinfo"],
                           "containers": {"c": {"image": "i", "command": ["sh", "-c", "a\nb"], "env": {"E": "a\nb"}}}},
            "links": {"links": {"c": {"username": "u", "password": "p\tw", "will_payload": "gone\n"}}},
            "updates": {"swupdate_command": ["swupdate", "-e\tx"]}})
        self.assertEqual(loaded.apps.programs["p"].environment["CERT"], "-----\nAB\n-----")
        self.assertEqual(loaded.containers.containers["c"].command, ("sh", "-c", "a\nb"))
        self.assertEqual(loaded.links.links["c"].password, "p\tw")

    def test_names_are_refused_once(self) -> None:
        """A name (a program's, a link's, a header's, an environment variable's) with a NUL or a
        control character is one line, its key escaped: not a second one from the check of
        program or link names."""
        path, lines = self.load_errors({
            "apps": {"programs": {"p\0": {"command": "true"}, "q": {"command": "true", "environment": {"A\nB": "1"}}}},
            "links": {"links": {"l\n": {}}},
            "http_links": {"links": {"h": {"url": "https://h", "headers": {"X-A\r": "b"}}}}})
        self.assertEqual(lines, [
            f"{path}: links.links.l\\n: the key must not hold a control character ('\\n'): 'l\\n'",
            f"{path}: apps.programs.p\\x00: the key must not hold a NUL character: 'p\\x00'",
            f"{path}: apps.programs.q.environment.A\\nB: the key must not hold a control character ('\\n'): 'A\\nB'",
            f"{path}: http_links.links.h.headers.X-A\\r: the key must not hold a control character ('\\r'): 'X-A\\r'"])

    def test_broker_section_refuses_a_nul_anywhere(self) -> None:
        """The ``broker:`` section is amqtt's configuration, passed on: a NUL in any of its keys
        or strings (an ACL's filter, a plugin's name) is refused once, under its key; its
        listeners take no control character either, in their names (they are in the gateway's
        log) or their keys (a socket, a file, an address)."""
        acl = "amqtt.plugins.topic_checking.TopicAccessControlListPlugin"
        path, lines = self.load_errors({"broker": {
            "listeners": {"default": {"endpoint": "unix:/run/a\n.sock"}, "two\n": {"bind": "127.0.0.1:0"},
                          "three": {"bind": "127.0.0.1:0", "cafile": "\tca.pem"}},
            "plugins": {acl: {"acl": {"u": ["a/\0"]}}, "amqtt.plugins.x\0": {}}}})
        self.assertEqual(lines, [
            f"{path}: broker.plugins.{acl}.acl.u.0: must not hold a NUL character: 'a/\\x00'",
            f"{path}: broker.plugins.amqtt.plugins.x\\x00: the key must not hold a NUL character: 'amqtt.plugins.x\\x00'",
            f"{path}: broker.listeners.default.endpoint: must not hold a control character ('\\n'):"
            " 'unix:/run/a\\n.sock'",
            f"{path}: broker.listeners.three.cafile: must not hold a control character ('\\t'): '\\tca.pem'",
            f"{path}: broker.listeners.two\\n: the key must not hold a control character ('\\n'): 'two\\n'"])

    def test_text_the_file_system_encoding_cannot_hold(self) -> None:
        """Under a locale that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``, a Latin-1
        ``LANG``), Python passes file names, process arguments and environment entries in that
        encoding: a state dir, an admin socket, a program's command or an upload glob holding
        text it cannot encode stopped the start with a traceback (``'ascii' codec can't encode
        character``), failed each start of the program, or crashed each trigger. Each such
        value is refused once, under its key, with what to do; the same text is taken under
        UTF-8."""
        self.patch(sys, "getfilesystemencoding", lambda: "ascii")
        remedy = ("this system cannot pass it on: Python's file system encoding is ascii (the locale is not UTF-8, "
                  "or PYTHONUTF8=0): run the gateway with PYTHONUTF8=1 or under a UTF-8 locale (LANG=C.UTF-8)")
        data: dict[str, Any] = {"admin": {"socket": "/run/g\u00e9/admin.sock"},
                                "apps": {"programs": {"p": {"command": "/bin/echo \u00b0C \u2713",
                                                            "environment": {"UNIT": "\u00b0C"}}}},
                                "uploads": {"files": ["/var/log/donn\u00e9es/*.log"]}}
        path, lines = self.load_errors(dict(data))
        self.assertEqual(sorted(lines), [
            f"{path}: admin.socket: holds '\u00e9': {remedy}",
            f"{path}: apps.programs.p.command: holds '\u00b0': {remedy}",
            f"{path}: apps.programs.p.environment.UNIT: holds '\u00b0': {remedy}",
            f"{path}: uploads.files.0: holds '\u00e9': {remedy}"])
        self.patch(sys, "getfilesystemencoding", lambda: "utf-8")
        self.assertEqual(self.loads(dict(data)).uploads.files, ("/var/log/donn\u00e9es/*.log",))
