"""docs/admin.md, read as an outside tester reads it: every route it lists is a route of the
admin API and every route is listed; the query keys it says each route takes are the ones it
takes; every ``gatewayctl`` command of its table parses as shown and every command is in the
table; and a real gateway answers each listed route, and the examples of errors the page
quotes, as the page says."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.admin.api import LOG_OPTIONS, AdminApi, Backends
from gateway.admin.cli import build_parser, main
from gateway.admin.history import DepthHistory
from gateway.admin.settings import AdminSettings
from tests.admin.test_gatewayctl import write_config
from tests.gatewayprocess import spawn_gateway
from tests.ports import closed_port, free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN = (ROOT / "docs" / "admin.md").read_text(encoding="utf-8")
METHODS = "GET|POST|DELETE|PUT|PATCH"
#: A route as the page writes it (`POST /apps/NAME/start`, `GET /config?key=a.b.c`), and the
#: page's one "`GET` or `POST /apps/NAME/logs`".
ROUTE = re.compile(rf"`(?:({METHODS})` or `)?({METHODS}) (/[^`\s]*)`")


def section(title: str, level: str = "##") -> str:
    """The text of admin.md's heading ``title`` up to the next heading of its level or above."""
    match = re.search(rf"^{level} {re.escape(title)}\n(.*?)(?=^#{{2,{len(level)}}} |\Z)", ADMIN, re.S | re.M)
    assert match is not None, title
    return match.group(1)


def route_key(method: str, path: str) -> tuple[str, str]:
    """``(method, pattern)`` of a route as the page writes it: no query, ``NAME`` as ``{name}``."""
    return method, re.sub(r"\bNAME\b", "{name}", path.split("?")[0])


def documented_routes() -> set[tuple[str, str]]:
    """Every route the page names, anywhere in it."""
    routes = set()
    for also, method, path in ROUTE.findall(ADMIN):
        routes.add(route_key(method, path))
        if also:
            routes.add(route_key(also, path))
    return routes


def code_routes() -> dict[tuple[str, str], tuple[str, ...]]:
    """Every route of the API, with the query keys it takes."""
    api = AdminApi(Backends(None, None, None, None, None), AdminSettings(), Clock(), lambda work: work(),
                   Path("/nonexistent"), DepthHistory())
    return {(method, pattern): tuple(keys) for method, pattern, _, keys in api.routes()}


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the first markdown table in ``text``, as cells (``\\|`` kept in a cell)."""
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not re.fullmatch(r"[|: -]+", line):
            rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows[1:]


class RoutesTests(SynchronousTestCase):
    """The routes the page names are the API's."""

    def test_every_documented_route_is_a_route(self) -> None:
        """A route the page names that the API does not have would answer 404 (or 405)."""
        self.assertEqual(documented_routes() - set(code_routes()), set())

    def test_every_route_is_documented(self) -> None:
        """A route of the API that the page does not name is one no user knows of."""
        self.assertEqual(set(code_routes()) - documented_routes(), set())

    def test_the_query_keys_taken_are_the_documented_ones(self) -> None:
        """The 400 row lists the query keys taken, "and no others"; the logs' are its options,
        those its example error lists (``known: follow, lines, stderr``)."""
        row = re.search(r"the query keys taken are (.*?), and no others", section("The API"), re.S)
        assert row is not None
        documented: dict[tuple[str, str], set[str]] = {}
        for key, method, path in re.findall(rf"`(\w+)` of `({METHODS}) (/\S*?)`", row.group(1)):
            documented.setdefault(route_key(method, path), set()).add(key)
        logs = re.search(rf"the options of `({METHODS}) (/\S*?)`", row.group(1))
        known = re.search(r"unknown key 'line' \(known: ([\w, ]+)\)", section("Apps", "###"))
        assert logs is not None and known is not None
        documented[route_key(*logs.groups())] = set(known.group(1).split(", "))
        self.assertEqual(set(LOG_OPTIONS), set(known.group(1).split(", ")))
        taken = {route: set(keys) for route, keys in code_routes().items() if keys}
        self.assertEqual(documented, taken)


#: What stands for each placeholder of the command table when a synopsis is parsed.
PLACEHOLDERS = {"NAME": "x", "FILE": "x.v1.tar.gz", "ID": "u1", "LINES": "5", "GLOB": "/tmp/*",
                "KEY=VALUE...": "a.b=1", "KEY": "a.b", "VALUE": "1", "F": "changes.json", "S": "60",
                "PATH": "gateway.yaml"}


def synopses() -> list[str]:
    """Every command line of the command table (``apps start\\|stop NAME`` gives two), with
    every optional part given."""
    lines = []
    for row in table_rows(section("`gatewayctl`")):
        for shown in re.findall(r"`([^`]+)`", row[0]):
            words = shown.replace("[", "").replace("]", "").split()
            alternatives = next((i for i, word in enumerate(words) if "\\|" in word), None)
            if alternatives is None:
                lines.append(" ".join(words))
                continue
            for choice in words[alternatives].split("\\|"):
                lines.append(" ".join([*words[:alternatives], choice, *words[alternatives + 1:]]))
    return lines


class GatewayctlTableTests(SynchronousTestCase):
    """The command table and gatewayctl's parser say the same."""

    def setUp(self) -> None:
        self.err = io.StringIO()
        self.patch(sys, "stderr", self.err)

    def argv(self, line: str) -> list[str]:
        return [PLACEHOLDERS.get(word, word) for word in line.split()]

    def test_every_documented_command_parses(self) -> None:
        """Each command line of the table, with every option it shows, is one gatewayctl takes."""
        lines = synopses()
        self.assertGreater(len(lines), 25, lines)
        for line in lines:
            try:
                args = build_parser().parse_args(self.argv(line))
            except SystemExit:
                self.fail(f"gatewayctl {line}: {self.err.getvalue()}")
            self.assertEqual(args.command, line.split()[0], line)

    def choices(self, *argv: str) -> list[str]:
        """The words gatewayctl takes after ``argv`` (its command, or that command's action), as
        it lists them when given another: none when it takes any word, or none."""
        self.err.seek(0)
        self.err.truncate()
        try:
            build_parser().parse_args([*argv, "no-such-word"])
        except SystemExit:
            pass
        listed = re.search(r"invalid choice: 'no-such-word' \(choose from (.*)\)", self.err.getvalue())
        return re.findall(r"'([^']+)'", listed.group(1)) if listed else []

    def test_every_command_and_action_is_documented(self) -> None:
        """Each command of gatewayctl, and each action of one that has them, is in the table."""
        shown = {tuple(line.split()[:2]) for line in synopses()} | {(line.split()[0],) for line in synopses()}
        commands = self.choices()
        self.assertIn("check-config", commands)
        missing = [name for name in commands if (name,) not in shown]
        for name in commands:
            missing += [f"{name} {action}" for action in self.choices(name) if (name, action) not in shown]
        self.assertEqual(missing, [])

    def test_the_global_options_are_gatewayctls(self) -> None:
        """The synopsis line's options parse, before and after the command."""
        synopsis = re.search(r"^gatewayctl (\[.*\]) COMMAND \.\.\.$", section("`gatewayctl`"), re.M)
        assert synopsis is not None
        options = [word for word in synopsis.group(1).replace("[", "").replace("]", "").split()]
        self.assertEqual(options, ["--socket", "PATH", "--state-dir", "DIR", "--json"])
        argv = ["--socket", "/tmp/x.sock", "--state-dir", "/tmp/x", "--json"]
        build_parser().parse_args([*argv, "status"])
        build_parser().parse_args(["status", *argv])


def ask(path: str, method: str, target: str, body: bytes | None = None,
        headers: tuple[str, ...] = ()) -> tuple[int, dict[str, str], bytes]:
    """One request on the unix socket ``path``, blocking: its status, headers (lowercase
    names) and body (chunks joined)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close", *headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(30)
        client.connect(path)
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    found = {name.lower(): value.strip() for name, _, value in (field.partition(":") for field in fields)}
    if found.get("transfer-encoding") == "chunked":
        content = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            length = int(size, 16)
            content, rest = content + rest[:length], rest[length + 2:]
        rest = content
    return int(status.split()[1]), found, rest


#: A harmless request to each route, and what the page says it answers then: (method, path,
#: body, status). NAME is an app, program or stream that does not exist, a report that does.
CALLS = (
    ("GET", "/", None, 200),
    ("GET", "/status", None, 200), ("GET", "/broker", None, 200), ("GET", "/links", None, 200),
    ("GET", "/journal", None, 200), ("GET", "/apps", None, 200), ("GET", "/operations", None, 200),
    ("GET", "/ingest", None, 200), ("GET", "/twin", None, 200), ("GET", "/fleet", None, 503),
    ("GET", "/reports", None, 200),
    ("GET", "/metrics", None, 200), ("GET", "/config?key=gateway.device_id", None, 200),
    ("GET", "/uploads", None, 200),
    ("GET", "/apps/ghost", None, 404), ("GET", "/apps/ghost/logs", None, 404),
    ("POST", "/apps/ghost/logs", b"{}", 404),
    ("POST", "/apps/install?filename=ghost.v1.tar.gz", b"not a package", 400),
    ("POST", "/apps/ghost/start", None, 404), ("POST", "/apps/ghost/stop", b"{}", 404),
    ("POST", "/apps/ghost/restart", None, 404), ("POST", "/apps/ghost/uninstall", None, 404),
    ("DELETE", "/journal/ghost", None, 404), ("DELETE", "/journal/link-cloud", None, 409),
    ("POST", "/updates/install", b'{"correlationId": "ddi-1", "softwareModules": []}', 400),
    ("POST", "/updates/download", b'{"correlationId": "op-1"}', 400),
    ("POST", "/updates/cancel", b'{"correlationId": "op-1"}', 404),
    ("POST", "/updates/cancel", b'{"path": "/features/SoftwareUpdatable/inbox/messages/cancel",'
                                b' "value": {"correlationId": "op-1"}}', 404),  # (Ditto's envelope, as on MQTT)
    ("POST", "/uploads/trigger", b"{}", 409), ("POST", "/uploads/cancel", b'{"correlationId": "u1"}', 404),
    ("POST", "/uploads/activate", b"{}", 200), ("POST", "/uploads/deactivate", b"{}", 200),
    ("POST", "/reports/device_info", None, 200), ("POST", "/reports/ghost", None, 404),
    ("POST", "/config/check", b'{"changes": {"gateway.device_id": "gw-17"}}', 200),
    ("POST", "/config/apply", b'{"changes": {"gateway.colour": "red"}}', 400),
)
#: The fields the Reads table (and the Uploads table) says each read answers with.
FIELDS = {
    "/status": {"version", "started_at", "uptime_s", "pid", "reactor_lag_s", "services", "config_pending"},
    "/links": {"links", "cursor_failing"},
    "/journal": {"streams", "refusing", "ledger_failing", "dropped"},
    "/apps": {"apps"},
    "/operations": {"operations"},
    "/ingest": {"listening", "error", "writes", "values", "unrouted", "refused", "bad", "aliases", "waiting", "off"},
    "/twin": {"root", "things", "revision", "sync", "save_failing", "save_s", "save_bytes"},
    "/reports": {"names", "last"},
    "/config?key=gateway.device_id": {"key", "value"},
    "/uploads": {"uploads", "autoUpload"},
}
LINK_FIELDS = {"state", "backlog", "in_flight", "acked", "drain_rate", "last_error", "certificates", "cursor_failing",
               "taken_over"}
STREAM_FIELDS = {"records", "bytes", "cursors", "oldest_unacked_age_s", "free_bytes", "fsync_latency",
                 "cursor_save_latency", "losses", "refusing", "refused_appends", "ledger_failing", "in_use"}


class RunningGatewayTests(TestCase):
    """A real gateway answers every route and every read command as the page says."""

    timeout = 90

    @inlineCallbacks
    def test_every_route_and_read_command_answers_as_documented(self) -> Any:
        """Every route of the page, with a harmless request: its status, JSON (HTML for ``/``,
        Prometheus text for ``/metrics``), the fields the page lists; ``HEAD`` for every
        ``GET``, ``405`` with ``Allow`` for another method; the page's quoted errors word for
        word; and each read command of gatewayctl, table and ``--json``, exit 0."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        sock = f"/tmp/gwdocs-{os.getpid()}-{free_port()}.sock"
        for leftover in (sock, f"{sock}.lock"):
            self.addCleanup(Path(leftover).unlink, True)
        config = write_config(work, free_port(), closed_port(self))
        with config.open("a") as f:
            f.write(f"admin:\n  socket: '{sock}'\n")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        # The gateway is another process: blocking on its socket here holds up nothing.
        routes = code_routes()
        for method, target, body, expected in CALLS:
            status, headers, content = ask(sock, method, target, body)
            self.assertEqual(status, expected, (method, target, content))
            path = target.split("?")[0]
            if path == "/":
                self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
                self.assertIn(b'<meta http-equiv="refresh" content="5">', content)
            elif path == "/metrics":
                self.assertTrue(headers["content-type"].startswith("text/plain"), headers)
            else:
                self.assertEqual(headers["content-type"], "application/json", (method, target))
                answer = json.loads(content)
                if status >= 400:
                    self.assertIsInstance(answer["error"], str)
                self.assertLessEqual(FIELDS.get(target, set()), set(answer), target)
            if method == "GET":
                head = ask(sock, "HEAD", target)
                self.assertEqual((head[0], head[2]), (status, b""), target)
            allowed = sorted(m for (m, pattern) in routes if re.fullmatch(
                re.sub(r"\{name\}", "[^/]+", pattern), path))
            self.assertIn(method, allowed, target)
            other = "PUT"
            status, headers, _ = ask(sock, other, target, b"")
            self.assertEqual(status, 405, (other, target))
            shown = {m.strip() for m in headers["allow"].split(",")}
            self.assertEqual(shown, set(allowed) | ({"HEAD"} if "GET" in allowed else set()), target)
        answer = json.loads(ask(sock, "GET", "/links")[2])
        self.assertLessEqual(LINK_FIELDS, set(answer["links"][0]))
        answer = json.loads(ask(sock, "GET", "/journal")[2])
        self.assertLessEqual(STREAM_FIELDS, set(answer["streams"][0]))
        answer = json.loads(ask(sock, "POST", "/reports/device_info")[2])
        self.assertEqual(set(answer), {"name", "report"})

        # The errors the page quotes, word for word, for the requests it shows.
        api = section("The API")
        for target, said in re.findall(r"\(`GET (/[^`]+)`: `(unknown key [^`]+)`", api):
            self.assertEqual(json.loads(ask(sock, "GET", target)[2]), {"error": said}, target)
        said = re.search(r"\(`(unknown key 'confirm_whithin' [^`]+)`", api)
        line = re.search(r"\(`\?line=3`:\n?`(unknown key 'line' [^`]+)`", section("Apps", "###"))
        assert said is not None and line is not None
        self.assertEqual(json.loads(ask(sock, "POST", "/config/apply", b'{"confirm_whithin": 1}')[2]),
                         {"error": said.group(1)})
        self.assertEqual(json.loads(ask(sock, "GET", "/apps/ghost/logs?line=3")[2]), {"error": line.group(1)})
        takes_none = re.search(r"a route that takes none says `([^`]+)`", api)
        assert takes_none is not None
        self.assertEqual(json.loads(ask(sock, "POST", "/apps/ghost/start", b'{"x": 1}')[2]),
                         {"error": f"unknown key 'x' ({takes_none.group(1)})"})

        # Every read command of the table, as a table and as JSON: exit 0.
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        for command in (["status"], ["apps"], ["apps", "list"], ["links"], ["queue"], ["journal"],
                        ["journal", "list"], ["ops"], ["uploads"], ["uploads", "list"], ["version"],
                        ["config", "get", "gateway.device_id"]):
            for argv in (command, [*command, "--json"]):
                self.assertEqual(main(["--socket", sock, *argv]), 0, (argv, out.getvalue()[-500:]))
        self.assertIn("gateway 0.1.0 (pid", out.getvalue())
        # The fleet off (the default): `fleet` exits 1 saying so, as the command table says.
        said = re.search(r"exit 1 when the fleet is off \(`(gatewayctl: [^`]+)`\)", section("`gatewayctl`"))
        assert said is not None
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        self.assertEqual(main(["--socket", sock, "fleet"]), 1)
        self.assertEqual(err.getvalue().strip(), said.group(1))
