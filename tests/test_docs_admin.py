"""docs/admin.md is the admin API's contract: it names every route the API serves (method and
path), and every route it names is served. A route added in the code alone is one operators
never hear of; one the page names that the API lacks is a 404 they were promised an answer for."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import AdminApi
from gateway.admin.cli import build_parser

ADMIN = Path(__file__).resolve().parent.parent / "docs" / "admin.md"


def documented() -> set[tuple[str, str]]:
    """Each ``METHOD /path`` the page writes as code (``NAME`` for a route's name), with the
    path as the API's pattern writes it (``{name}``); ``GET` or `POST /p`` names both."""
    routes: set[tuple[str, str]] = set()
    text = ADMIN.read_text(encoding="utf-8")
    for either, method, path in re.findall(r"`(?:(GET)` or `)?(GET|POST|DELETE|PUT|PATCH) (/[^`?\s]*)", text):
        pattern = path.replace("NAME", "{name}")
        routes.add((method, pattern))
        if either:
            routes.add((either, pattern))
    return routes


def served() -> set[tuple[str, str]]:
    """Each ``(method, pattern)`` of the API's route table."""
    api = AdminApi.__new__(AdminApi)  # (the table only names the handlers: nothing of the API is used)
    return {(method, pattern) for method, pattern, _, _ in api.routes()}


class RoutesTests(SynchronousTestCase):
    """The page and the route table name the same routes."""

    def test_every_route_is_documented(self) -> None:
        """Each route the API serves is named on the page."""
        self.assertEqual(sorted(served() - documented()), [])

    def test_every_documented_route_is_served(self) -> None:
        """Each route the page names is in the API's table."""
        self.assertEqual(sorted(documented() - served()), [])

    def test_the_page_is_read(self) -> None:
        """The parsing finds the routes (a reformatted page fails here, not silently)."""
        self.assertLessEqual({("GET", "/status"), ("DELETE", "/journal/{name}"), ("GET", "/apps/{name}/logs"),
                              ("POST", "/apps/{name}/logs"), ("POST", "/reports/{name}")}, documented())


#: The options every command takes (and gatewayctl before its command), named in the section's text.
COMMON_OPTIONS = frozenset({"--socket", "--state-dir", "--json", "-h", "--help"})


def gatewayctl_section() -> str:
    """The page's ``gatewayctl`` section."""
    text = ADMIN.read_text(encoding="utf-8")
    return text[text.index("## `gatewayctl`"):text.index("\n## Code")]


def documented_commands() -> dict[str, set[str]]:
    """Each command of the section's table (``config get``: a command of ``config``'s) with the
    words its rows give it: the actions (``start\\|stop``) and the options (``-n``, ``--force``),
    those of the row's text too (``-n`` is ``--lines``)."""
    commands: dict[str, set[str]] = {}
    for line in gatewayctl_section().splitlines():
        if not line.startswith("| `"):
            continue
        first, rest = line.split(" | ", 1)
        for shown in re.findall(r"`([^`]+)`", first):
            words = shown.replace("\\|", "|").split()
            name = " ".join(words[:2]) if words[0] == "config" else words[0]
            taken = commands.setdefault(name, set())
            for word in words[len(name.split()):]:
                taken.update(part for part in word.strip("[]").split("|") if part)
            taken.update(re.findall(r"`(--?[a-z][a-z-]*)", rest.split(" | ")[0]))
    return commands


def parser_commands() -> dict[str, tuple[set[str], set[str]]]:
    """Each command of gatewayctl's parser (``config get`` too), with the choices of its
    positionals and the option strings it shows in its help (a hidden one, ``help=SUPPRESS``,
    is not promised), the common ones left out."""
    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for name, sub in action.choices.items()}

    found: dict[str, tuple[set[str], set[str]]] = {}
    for name, sub in subcommands(build_parser()).items():
        for key, parser in [(name, sub)] + [(f"{name} {inner}", deeper) for inner, deeper in subcommands(sub).items()]:
            if subcommands(parser) and key == name:
                continue  # (``config``: its commands are its own rows)
            actions = {str(choice) for action in parser._actions if action.choices and not action.option_strings
                       and not isinstance(action, argparse._SubParsersAction) for choice in action.choices}
            options = {option for action in parser._actions if action.help != argparse.SUPPRESS
                       for option in action.option_strings} - COMMON_OPTIONS
            found[key] = (actions, options)
    return found


class GatewayctlTableTests(SynchronousTestCase):
    """The section's table names every command of gatewayctl, with its actions and options, and
    nothing gatewayctl does not take. A command, action or option in the parser alone is one
    operators never hear of; one the table names that gatewayctl lacks exits 2."""

    def test_every_command_is_a_row(self) -> None:
        """Each command (and each of ``config``'s) has a row, and each row is a command."""
        self.assertEqual(sorted(documented_commands()), sorted(parser_commands()))

    def test_every_action_and_option_is_documented(self) -> None:
        """Each action and each option string a command shows in its help is in its rows."""
        documented = documented_commands()
        missing = {f"{name}: {word}" for name, (actions, options) in parser_commands().items()
                   for word in actions | options if word not in documented.get(name, set())}
        self.assertEqual(sorted(missing), [])

    def test_every_documented_option_is_taken(self) -> None:
        """Each option and action word a row gives its command is one the command takes."""
        commands = parser_commands()
        unknown = {f"{name}: {word}" for name, words in documented_commands().items() if name in commands
                   for word in words - COMMON_OPTIONS if (word.startswith("-") or word.islower() and word.isalpha())
                   and word not in commands[name][0] | commands[name][1]}
        self.assertEqual(sorted(unknown), [])

    def test_the_common_options_and_exit_statuses(self) -> None:
        """``--socket``, ``--state-dir``, ``--json`` and ``--version`` are named, and the section's
        exit statuses are gatewayctl's (its ``--help`` says the same)."""
        from gateway.admin import cli

        section = gatewayctl_section()
        words = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", section))
        self.assertEqual(sorted({"--socket", "--state-dir", "--json", "--version"} - words), [])
        statuses = section[section.index("**Exit status**"):section.index("| command | does |")]
        for status in (cli.OK, cli.ERROR, cli.USAGE, cli.NOT_RUNNING, cli.INTERRUPTED):
            self.assertRegex(statuses, rf"\b{status} ")
            self.assertRegex(build_parser().epilog or "", rf"\b{status} ")


def read_rows() -> dict[str, str]:
    """The text of each row of the page's Reads table, by its route (``GET /fleet``)."""
    return {match.group(1): match.group(0)
            for match in re.finditer(r"^\| `(GET /[a-z]+)(?:\?[^`]*)?` \|.*$", ADMIN.read_text(encoding="utf-8"), re.M)}


class ReadsTableTests(SynchronousTestCase):
    """The Reads rows that list their answer's fields list every one: the admin API serves the
    snapshots as they are (:func:`gateway.readside.to_jsonable`), so a field the row leaves out
    is one a script finds without a word about it."""

    def test_every_field_of_the_answer_is_named(self) -> None:
        """Each field of the snapshot a row's route answers with is named in that row (``GET /links``,
        ``GET /journal`` and ``GET /broker`` name theirs on readside.md, which its tests check)."""
        from gateway.fleet.snapshot import FleetSnapshot
        from gateway.ingest.snapshot import IngestSnapshot
        from gateway.readside import GatewayStatus, ServiceState
        from gateway.twin.snapshot import TwinSnapshot
        from gateway.updates.snapshot import OperationSnapshot

        answers: dict[str, tuple[type, ...]] = {
            "GET /status": (GatewayStatus, ServiceState), "GET /operations": (OperationSnapshot,),
            "GET /ingest": (IngestSnapshot,), "GET /twin": (TwinSnapshot,), "GET /fleet": (FleetSnapshot,)}
        rows = read_rows()
        missing = {f"{route}: {field.name}" for route, records in answers.items() for record in records
                   for field in dataclasses.fields(record) if f"`{field.name}`" not in rows[route]}
        self.assertEqual(sorted(missing), [])


def shown_commands() -> list[tuple[str, list[str], bool]]:
    """Every ``gatewayctl`` command line a page shows, in a shell block (``$ `` and ``sudo ``
    dropped, up to a pipe, ``;``, ``&&`` or a redirection) or inline in backticks (``True``), with
    where it is; not a synopsis (``[-f]``, ``NAME|...``, ``set/apply``), a message
    (``gatewayctl: ...``) or the bare name."""
    found = []
    for page in [ADMIN.parent.parent / "README.md", *sorted(ADMIN.parent.glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        candidates: list[tuple[int, str, bool]] = []
        for block in re.finditer(r"^ *```(\w*)\n(.*?)^ *```", text, re.S | re.M):
            if block.group(1) not in ("sh", "console", ""):
                continue
            offset = block.start(2)
            for line in block.group(2).splitlines(keepends=True):
                command = line.strip().removeprefix("$ ").split(" #", 1)[0]
                if re.match(r"(sudo )?\S*gatewayctl ", command):
                    candidates.append((offset, command, False))
                offset += len(line)
        # Inline spans: blocks and ``double`` spans blanked (the same length), then every other piece.
        prose = re.sub(r"^ *```.*?^ *```|``.*?``", lambda span: re.sub(r"[^\n]", " ", span.group(0)), text,
                       flags=re.S | re.M)
        offset = 0
        for index, piece in enumerate(prose.split("`")):
            if index % 2 and re.match(r"(sudo )?gatewayctl ", piece):
                candidates.append((offset, " ".join(piece.split()), True))
            offset += len(piece) + 1
        for at, command, inline in candidates:
            command = re.split(r"\s*(?:\||;|&&)\s*|\s(?:<|>|2>)", command, maxsplit=1)[0]
            if re.search(r"[\[\]|]|\.\.\.|gatewayctl:|(?<![/\w])[a-z]+/[a-z]+(?![/\w.])", command):
                continue
            words = shlex.split(command)
            words = words[1:] if words[0] == "sudo" else words
            found.append((f"{page.name}:{text.count(chr(10), 0, at) + 1}", words[1:], inline))
    return found


class ShownCommandsTests(SynchronousTestCase):
    """Every ``gatewayctl`` command a page shows is one gatewayctl takes: a renamed command or
    option would make the page's line exit 2."""

    def test_every_shown_command_parses(self) -> None:
        """Each shown command line parses (usage errors are exit 2, argparse's SystemExit); an
        inline one may leave out the arguments, naming the command in a sentence."""
        parser = build_parser()
        refused = []
        for where, words, inline in shown_commands():
            said = io.StringIO()
            try:
                with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
                    parser.parse_args(words)
            except SystemExit as exit:
                # (``--version`` exits 0; prose may name a command without its arguments:
                # ``gatewayctl report`` builds one now)
                if exit.code and not (inline and "the following arguments are required" in said.getvalue()):
                    refused.append(f"{where}: gatewayctl {' '.join(words)}")
        self.assertEqual(refused, [])

    def test_the_pages_are_read(self) -> None:
        """The search finds the commands: over a hundred, inline and in blocks."""
        shown = shown_commands()
        self.assertGreater(len(shown), 100)
        self.assertIn(["apps", "logs", "hello", "-f"], [words for _, words, inline in shown if inline])
        self.assertIn(["check-config", "--config", "/etc/gateway/gateway.yaml"],
                      [words for _, words, inline in shown if not inline])
