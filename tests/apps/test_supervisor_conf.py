"""supervisor.conf parsing: GWE's keys mean what supervisord says they mean."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.errors import ManifestError
from gateway.apps.supervisor_conf import parse_environment, parse_size, parse_supervisor_conf

GWE_CONF = """\
[supervisord]
logfile = /tmp/ignored.log

[program:hello]
command = python3 %(here)s/hello.py --name %(program_name)s
directory = %(here)s
stdout_logfile = %(here)s/hello.log
redirect_stderr = true
stdout_logfile_maxbytes = 200KB
stdout_logfile_backups = 2
environment = GREETING="hi there",PORT="8080",EMPTY=""
autorestart = unexpected
exitcodes = 0,2
startsecs = 0
stopsignal = SIGINT
priority = 10
"""


class ParseTests(SynchronousTestCase):
    def test_gwe_program(self) -> None:
        """A GWE demo app's [program:x] section becomes the same settings."""
        programs = parse_supervisor_conf(GWE_CONF, "/apps/hello/1")
        self.assertEqual(list(programs), ["hello"])
        p = programs["hello"]
        self.assertEqual(p.command, "python3 /apps/hello/1/hello.py --name hello")
        self.assertEqual(p.directory, "/apps/hello/1")
        self.assertEqual(p.stdout_logfile, "/apps/hello/1/hello.log")
        self.assertTrue(p.redirect_stderr)
        self.assertEqual(p.stdout_logfile_maxbytes, 200 * 1024)
        self.assertEqual(p.stdout_logfile_backups, 2)
        self.assertEqual(p.environment, {"GREETING": "hi there", "PORT": "8080", "EMPTY": ""})
        self.assertEqual(p.exitcodes, (0, 2))
        self.assertEqual(p.startsecs, 0)
        self.assertEqual(p.stopsignal, "INT")

    def test_env_expansion(self) -> None:
        """%(ENV_X)s expands from the gateway's environment."""
        import os
        os.environ["GW_TEST_VALUE"] = "v"
        self.addCleanup(os.environ.pop, "GW_TEST_VALUE")
        programs = parse_supervisor_conf("[program:a]\ncommand=run %(ENV_GW_TEST_VALUE)s\n", "/x")
        self.assertEqual(programs["a"].command, "run v")

    def test_unknown_key_is_an_error(self) -> None:
        """A typo is reported with its section, not ignored."""
        with self.assertRaisesRegex(ManifestError, r"\[program:a\] comand: unknown key"):
            parse_supervisor_conf("[program:a]\ncomand=x\n", "/x")

    def test_missing_command(self) -> None:
        """A program without a command is refused."""
        with self.assertRaisesRegex(ManifestError, "command is required"):
            parse_supervisor_conf("[program:a]\nautostart=true\n", "/x")

    def test_a_file_configparser_refuses_is_one_line(self) -> None:
        """configparser says what is wrong on two or three lines (``File contains no section
        headers.``, then the file and line, then the text; a line that is no option on a
        tab-indented line of its own): the refusal, logged at start as ``apps: cannot load
        ...``, split in as many log lines. It is one line, the same words."""
        for text, said in (("junk\n[program:a]\ncommand=x\n", "supervisor.conf: File contains no section headers.;"
                            " file: 'supervisor.conf', line: 1; 'junk\\n'"),
                           ("[program:a]\ncommand=x\nbad line\n", "supervisor.conf: Source contains parsing errors:"
                            " 'supervisor.conf'; [line  3]: 'bad line\\n'")):
            with self.assertRaises(ManifestError) as caught:
                parse_supervisor_conf(text, "/x")
            self.assertEqual(str(caught.exception), said)

    def test_bad_values(self) -> None:
        """Bad booleans, sizes and expansions name the key."""
        for text, pattern in [
            ("autostart=maybe", "not a boolean"),
            ("stdout_logfile_maxbytes=lots", "not a size"),
            ("directory=%(nowhere)s", "cannot expand"),
            ("numprocs=2", "numprocs=1"),
            ("stopsignal=WINCH", "unsupported signal"),
            # a count or a time below 0: stdout_logfile_backups=-1 rotated to a .1 file that the
            # logs cap never counted; app.yaml and apps.programs refuse it too
            ("stdout_logfile_backups=-1", r"\[program:a\] stdout_logfile_backups: must be at least 0, not -1"),
            ("startsecs=-1", r"startsecs: must be at least 0, not -1"),
            ("startretries=-3", r"startretries: must be at least 0, not -3"),
            ("stopwaitsecs=-10", r"stopwaitsecs: must be at least 0, not -10"),
            ("exitcodes=0,256", r"\[program:a\] exitcodes: must be from 0 to 255, not 256"),
        ]:
            with self.assertRaisesRegex(ManifestError, pattern):
                parse_supervisor_conf(f"[program:a]\ncommand=x\n{text}\n", "/x")

    def test_program_name_must_be_one_safe_path_component(self) -> None:
        """A program's name becomes its log file's name (``<state>/logs/apps/<program>.log``):
        ``[program:../../x]`` would write outside the logs directory, so it is refused, like a
        config program's name that is not letters, digits and ``_.+-``."""
        for name in ("../../escaped", "a/b", "two words", ".."):
            with self.assertRaisesRegex(ManifestError, "bad program name"):
                parse_supervisor_conf(f"[program:{name}]\ncommand=x\n", "/x")

    def test_program_name_whose_logs_are_another_logs_is_refused(self) -> None:
        """``[program:x.err]`` would log to ``x.err.log``, program x's stderr log, and
        ``[program:podman-service]`` to the podman service's log: both are refused."""
        for name, why in (("x.err", "stderr log of 'x'"), ("podman-service", "podman service's log")):
            with self.assertRaisesRegex(ManifestError, f"bad program name: .*{why}"):
                parse_supervisor_conf(f"[program:{name}]\ncommand=x\n", "/x")

    def test_integers_are_ascii_digits(self) -> None:
        """``startsecs=٣`` (Arabic-Indic), ``startretries=１0`` (fullwidth) or ``stopwaitsecs=1_0``
        was read by ``int()`` as a number; an exit code in another script too: only ASCII digits
        (with a sign) are an integer, as for supervisord."""
        for text, pattern in [("startsecs=\u0663", r"startsecs: not an integer: '\u0663'"),
                              ("startretries=\uff110", "startretries: not an integer"),
                              ("stopwaitsecs=1_0", "stopwaitsecs: not an integer: '1_0'"),
                              ("stdout_logfile_backups=\u0662", "stdout_logfile_backups: not an integer"),
                              ("exitcodes=0,\u0662", "exitcodes: not a list of integers"),
                              ("exitcodes=0, +1", r"exitcodes: not a list of integers: '0, \+1'")]:
            with self.assertRaisesRegex(ManifestError, pattern):
                parse_supervisor_conf(f"[program:a]\ncommand=x\n{text}\n", "/x")
        program = parse_supervisor_conf("[program:a]\ncommand=x\nstartsecs= 3 \nexitcodes=0, 2\n", "/x")["a"]
        self.assertEqual((program.startsecs, program.exitcodes), (3, (0, 2)))

    def test_sizes(self) -> None:
        """Sizes take supervisord's KB/MB/GB suffixes."""
        self.assertEqual(parse_size("1024", "k"), 1024)
        self.assertEqual(parse_size("10MB", "k"), 10 * 2**20)
        self.assertEqual(parse_size("1gb", "k"), 2**30)

    def test_sizes_are_ascii_digits(self) -> None:
        """A size in Arabic-Indic or fullwidth digits (``١٠MB``, ``１０MB``) was read by ``int()``
        as 10 MB: only ASCII digits are a size, as for supervisord."""
        for text in ("\u0661\u0660MB", "\uff11\uff10MB"):
            with self.assertRaisesRegex(ManifestError, "not a size"):
                parse_size(text, "stdout_logfile_maxbytes")

    def test_environment_syntax(self) -> None:
        """Unquoted and single-quoted values work; a dangling pair is an error."""
        self.assertEqual(parse_environment("A=1,B='two words',C=/x/y"),
                         {"A": "1", "B": "two words", "C": "/x/y"})
        with self.assertRaises(ManifestError):
            parse_environment("A=1,B")
