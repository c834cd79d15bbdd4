"""app.yaml manifests and GWE package names."""

from __future__ import annotations

import shlex
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.errors import ManifestError
from gateway.apps.manifest import GWE_FILE, parse_app_yaml, read_manifest


class AppYamlTests(SynchronousTestCase):
    def test_full_manifest(self) -> None:
        """Every documented key lands in the program settings and health check."""
        m = parse_app_yaml("""
name: sensor
version: 2.1.0
command: [python3, sensor.py, --fast]
env: {RATE: 5}
restart: always
startsecs: 2
logs: {maxbytes: 4096, backups: 1}
health: {command: ./check.sh, timeout: 3, window: 4}
""")
        self.assertEqual((m.name, m.version), ("sensor", "2.1.0"))
        p = m.programs["sensor"]
        self.assertEqual(p.command, "python3 sensor.py --fast")
        self.assertEqual(p.environment, {"RATE": "5"})
        self.assertEqual(p.autorestart, "true")
        self.assertEqual(p.startsecs, 2)
        self.assertEqual((p.stdout_logfile_maxbytes, p.stdout_logfile_backups), (4096, 1))
        assert m.health is not None
        self.assertEqual(m.health.argv, ("./check.sh",))
        self.assertEqual(m.health_window, 4)

    def test_defaults_are_those_the_docs_give(self) -> None:
        """docs/apps.md: a key left out of app.yaml takes the value its example shows (directory
        the version directory, restart unexpected, exitcodes [0], startsecs 1, startretries 3,
        stopsignal TERM, stopwaitsecs 10, autostart true, redirect_stderr false, logs 1048576
        and 3, a health check's timeout 10); no env, user or health check; apps.health_window."""
        m = parse_app_yaml("name: s\nversion: '1'\ncommand: [a]\n")
        p = m.programs["s"]
        self.assertEqual((p.directory, p.autorestart, p.exitcodes, p.startsecs, p.startretries, p.stopsignal,
                          p.stopwaitsecs, p.autostart, p.redirect_stderr, p.stdout_logfile_maxbytes,
                          p.stdout_logfile_backups, p.environment, p.user, m.health, m.health_window),
                         (None, "unexpected", (0,), 1.0, 3, "TERM", 10.0, True, False, 1048576, 3, {}, None,
                          None, None))
        checked = parse_app_yaml("name: s\nversion: '1'\ncommand: [a]\nhealth: {command: [b]}\n")
        assert checked.health is not None
        self.assertEqual(checked.health.timeout, 10.0)

    def test_errors(self) -> None:
        """Unknown keys, missing keys, bad names and bad restart policies are refused."""
        for text, pattern in [
            ("name: a\nversion: 1\ncommand: x\ncolour: red", "unknown keys: colour"),
            ("name: a\nversion: 1", "command is required"),
            ("name: ../a\nversion: 1\ncommand: x", "bad name"),
            # a regular expression's "$" took a name before a trailing newline: an app "a\n"
            # (its directory, its logs) and a version "1\n" were installed
            ("name: \"a\\n\"\nversion: 1\ncommand: x", "bad name 'a\\\\n'"),
            ("name: a\nversion: \"1\\n\"\ncommand: x", "bad version '1\\\\n'"),
            ("name: a\nversion: 1\ncommand: x\nrestart: sometimes", "restart"),
            ("- a list", "mapping"),
            ("name: a\nversion: 1\ncommand: []", "empty command"),
            ("name: a.err\nversion: 1\ncommand: x", "stderr log of 'a'"),  # its program's log
            ("name: podman-service\nversion: 1\ncommand: x", "podman service's log"),
            ("env: " + "[" * 2000, "nested too deeply"),  # raised RecursionError: a 500, not `refused`
            # a string that does not split like a shell's: refused, not a ValueError that made
            # install errback (the admin API's 500, "internal error: No closing quotation")
            ("name: a\nversion: 1\ncommand: \"sleep '1\"", "command: not a command line: No closing quotation"),
            ("name: a\nversion: 1\ncommand: x\nhealth: {command: \"check '\"}",
             "health.command: not a command line: No closing quotation"),
            # an environment exec refuses: refused, not installed to fail its start and be
            # rolled back with a traceback from the launcher ("illegal environment variable name")
            ("name: a\nversion: 1\ncommand: x\nenv: {'A=B': 1}", "env.A=B: an environment variable's name needs no '='"),
            ("name: a\nversion: 1\ncommand: x\nenv: {'': 1}", "env.: an environment variable's name"),
            ("name: a\nversion: 1\ncommand: x\nenv: {A: \"x\\0y\"}", "env.A: an environment variable's name"),
            # a version or name YAML reads as null or a boolean was installed as "None" or "True"
            ("name: a\nversion: ~\ncommand: x", "version: must be a string or a number, not empty"),
            ("name: a\nversion:\ncommand: x", "version: must be a string or a number, not empty"),
            ("name: yes\nversion: 1\ncommand: x", "name: must be a string or a number, not the boolean true"),
            ("name: a\nversion: [1]\ncommand: x", "version: must be a string or a number, not a list"),
        ]:
            with self.assertRaisesRegex(ManifestError, pattern):
                parse_app_yaml(text)

    def test_values_of_the_wrong_type_are_refused_naming_the_key(self) -> None:
        """A value of the wrong type is a ManifestError naming its key, never another
        exception from the parser (install must answer ``refused``) nor a program that
        breaks later (a ``startsecs`` of ``abc`` failed its start, ``stopsignal: WINCH`` its
        stop); ``stopsignal`` takes a name with or without ``SIG``, as in a supervisor.conf."""
        base = "name: a\nversion: 1\ncommand: x\n"
        for extra, pattern in [
            ("exitcodes: 5", "exitcodes: must be a list"),
            ("exitcodes: [zero]", "exitcodes.0: must be a whole number"),
            # no process exits with these: the program counted every exit unexpected
            ("exitcodes: [0, 256]", "exitcodes.1: must be from 0 to 255, not 256"),
            ("exitcodes: [-1]", "exitcodes.0: must be from 0 to 255, not -1"),
            ("startsecs: abc", "startsecs: must be a number"),
            ("startretries: 1.5", "startretries: must be a whole number"),
            ("stopsignal: WINCH", "stopsignal: must be one of"),
            ("stopwaitsecs: -1", "stopwaitsecs: must be at least 0"),
            ("autostart: maybe", "autostart: must be true or false"),
            ("redirect_stderr: 1", "redirect_stderr: must be true or false"),
            ("user: [a]", "user: must be a string"),
            ("directory: [a]", "directory: must be a path"),
            # (as in the configuration: the program could not be started as that user or there)
            ('user: "a\\0"', "user: must not hold a NUL character"),
            ('directory: "/opt/a\\tb"', r"directory: must not hold a control character \('\\t'\)"),
            ("logs: {maxbytes: lots}", "logs.maxbytes: must be a whole number"),
            ("logs: {backups: -1}", "logs.backups: must be at least 0"),
            ("health: {command: [x], timeout: abc}", "health.timeout: must be a number"),
            # (a check given no time always timed out: every install of the app rolled back)
            ("health: {command: [x], timeout: 0}", r"health.timeout: must be at least 0.1, not 0"),
            ("health: {window: soon}", "health.window: must be a number"),
            # (without a command too: a health check's timeout of 0 installed as no error)
            ("health: {timeout: 0}", r"health.timeout: must be at least 0.1, not 0"),
            ("health: {window: 5, timeout: abc}", "health.timeout: must be a number"),
            # (they became the strings 'None', 'True', "['a']" in the program's environment)
            ("env: {A: null}", r"env.A: must be a string or a number, not empty \(null\)"),
            ("env: {A: true}", "env.A: must be a string or a number, not the boolean true"),
            ("env: {A: [a]}", "env.A: must be a string or a number, not a list"),
            ("env: {A: {b: c}}", "env.A: must be a string or a number, not a mapping"),
            # (a TypeError from the parser: install errbacked instead of answering refused)
            ("restart: [always]", "restart: one of always, never, unexpected"),
            ("restart: {a: b}", "restart: one of always, never, unexpected"),
            ("1: x\nfoo: y", "unknown keys: 1, foo"),
            # (accepted as no environment, no log settings at all)
            ("env: []", "env: must be a mapping, not a list"),
            ("env: 0", "env: must be a mapping, not a number"),
            ("logs: []", "logs: a mapping of maxbytes, backups"),
            # (it became the variable named 'None')
            ("env: {~: x}", r"env: a name must be a string or a number, not empty \(null\)"),
        ]:
            with self.assertRaisesRegex(ManifestError, "app.yaml: " + pattern, msg=extra):
                parse_app_yaml(base + extra)
        self.assertEqual(parse_app_yaml(base + "stopsignal: SIGhup").programs["a"].stopsignal, "HUP")
        self.assertEqual(parse_app_yaml(base + "env: {A: 5, B: x}").programs["a"].environment,
                         {"A": "5", "B": "x"})
        self.assertEqual(parse_app_yaml(base + "env:\nlogs:\n").programs["a"].environment, {})

    def test_a_refused_app_yaml_names_the_app_it_says_it_is(self) -> None:
        """An app.yaml refused for another key than its name or version names the app and version
        it gives, so the install's result says which package it was (docs/apps.md: null only when
        refused before it could say); it named none (a native package without a command read
        ``name: null, version: null``). One whose name or version is itself wrong names neither."""
        for text, said in [
            ("name: sensor\nversion: 2.10\n", ("sensor", "2.10")),
            ("name: sensor\nversion: '2'\ncommand: [a]\nstartsecs: abc\n", ("sensor", "2")),
            ("name: sensor\nversion: '2'\ncommand: [a]\nfoo: 1\n", ("sensor", "2")),
            ("name: caf\u00e9\nversion: '2'\ncommand: [a]\nfoo: 1\n", (None, None)),
            ("name: sensor\ncommand: [a]\n", (None, None)),
        ]:
            with self.assertRaises(ManifestError) as caught:
                parse_app_yaml(text)
            self.assertEqual((caught.exception.name, caught.exception.version), said, text)

    def test_gwe_file_names(self) -> None:
        """<name>.v<version>.tar.gz splits into name and version."""
        m = GWE_FILE.match("gwe-hello.world.v1.2.3.tar.gz")
        assert m is not None
        self.assertEqual((m["name"], m["version"]), ("gwe-hello.world", "1.2.3"))
        for name, split in (("sensor.values.v1.tar.gz", ("sensor.values", "1")),  # not ("sensor", "alues.v1")
                            ("app.vbeta.tgz", ("app", "beta")), ("a.v2.vx.tar.gz", ("a", "2.vx"))):
            m = GWE_FILE.match(name)
            assert m is not None, name
            self.assertEqual((m["name"], m["version"]), split, name)
        self.assertIsNone(GWE_FILE.match("hello.tar.gz"))
        self.assertIsNone(GWE_FILE.match("hello.v1.tar.gz\n"))  # a file name is whole, to its end


class ReadManifestTests(SynchronousTestCase):
    """read_manifest: the description files of an unpacked package."""

    def test_a_byte_order_mark_is_not_part_of_the_text(self) -> None:
        """A ``supervisor.conf`` saved with a UTF-8 byte order mark (Windows' Notepad) refused
        the package, saying ``File contains no section headers`` on two lines; ``app.yaml``
        with one was taken. Both are read as the text after the mark; non-ASCII values stay
        as written."""
        root = Path(self.mktemp())
        root.mkdir()
        (root / "supervisor.conf").write_bytes(
            "\ufeff[program:a]\ncommand=/bin/echo h\u00e9\ndirectory=/srv/d\u00e9 x\n".encode())
        programs = read_manifest(root, "app", "1").programs
        self.assertEqual((programs["a"].command, programs["a"].directory), ("/bin/echo h\u00e9", "/srv/d\u00e9 x"))
        (root / "app.yaml").write_bytes("\ufeffname: app\nversion: '2'\ncommand: /bin/echo \u00e9\n".encode())
        manifest = read_manifest(root)
        self.assertEqual((manifest.version, shlex.split(manifest.programs["app"].command)),
                         ("2", ["/bin/echo", "\u00e9"]))
