"""``gatewayctl``: the gateway's command line for operators.

It talks to the admin API over its unix socket with the standard library only (no
Twisted, no YAML on its path), so it starts in a few tens of milliseconds. Exit status:
0 ok, 1 error, 2 usage, 3 the gateway is not running (as ``systemctl`` does).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
TYPE_CHECKING = False  # typing costs ~5 ms of start-up: annotations only
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping

from gateway import __version__, jsontext
from gateway.admin.client import (AdminAway, AdminClient, ApiFailure, NotRunning, ProtocolFailure, app_path,
                                  query_string, quote)
from gateway.admin.paths import CHECKOUT_SOCKET, ENVIRONMENT, PACKAGED_SOCKET, default_socket, state_dir_of
from gateway.admin.tables import (ProgressBar, confirming_links, duration, fleet_rows, link_problem, pending_change, previous_stop,
                                  service_state, size, stream_losses, stream_problem, table)
from gateway.admin.terminaltext import TerminalText
from gateway.asciidigits import ascii_decimal, ascii_digits
from gateway.apps.outcome import outcome_line
from gateway.stdstreams import escape_unencodable

OK, ERROR, USAGE, NOT_RUNNING = 0, 1, 2, 3
#: The exit status of a command interrupted by Ctrl-C (SIGINT), as a shell gives it (128 + 2).
INTERRUPTED = 130
#: Seconds ``ops --follow`` waits for a gateway that stopped answering to be back: it
#: restarts (a gateway package the followed operation installs, a remote ``restart``,
#: ``systemctl restart``) and its operations go on after it.
FOLLOW_RESTART_WAIT = 300.0

#: ``status`` says the gateway is slow when its reactor ran a timer this many seconds late
#: (``reactor_lag_s``): a second is past what a healthy gateway's turns take by far.
SLOW_REACTOR = 1.0


class UsageError(Exception):
    """The command line is wrong in a way argparse cannot see (exit status 2, as its own errors)."""


def check_config(path: str | None, as_json: bool = False) -> int:
    """Validate the configuration at ``path``; print every problem. Returns the exit status.

    :param as_json: print ``{"valid", "errors", "warnings", "path"}`` (``config check``'s answer,
        with the file checked) on stdout instead of the lines for people.
    """
    from gateway import config as gateway_config  # YAML and every section: only for this command
    from gateway.errors import ConfigError

    checked = str(gateway_config.DEFAULT_CONFIG if path is None else path)
    read = checked  # (the OK line's: with the drop-ins merged)
    warnings: list[str] = []
    try:
        loaded = gateway_config.load(path)
    except ConfigError as exc:
        errors = list(exc.errors)
    else:
        errors, checked, warnings = [], str(loaded.path), loaded.warnings()
        read = loaded.files_read()
    if as_json:
        print(json.dumps({"valid": not errors, "errors": errors, "warnings": warnings, "path": checked}, indent=2,
                         sort_keys=True))
    elif errors:
        print("invalid configuration:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
    else:
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        print(f"configuration OK: {read}")
    return ERROR if errors else OK


def _out(args: argparse.Namespace, value: Any, human: Callable[[Any], str]) -> int:
    print(json.dumps(value, indent=2, sort_keys=True) if args.json else human(value))
    return OK


def _value(text: str) -> Any:
    """A command-line value: JSON when it parses as the strict JSON the admin API takes
    (numbers, true, null, lists...), else a string: ``NaN``, ``Infinity`` or ``1e400`` is the
    word, not a float the API would refuse."""
    try:
        return jsontext.loads(text, strict=True)
    except ValueError:
        return text


def _seconds(text: str) -> float:
    """A number of seconds on the command line, in ASCII digits (``120``, ``2.5``): ``float()``
    read ``١٢٠`` (Arabic-Indic) as 120, and ``inf``, ``1e3`` or ``1_0`` as numbers too.

    :raises argparse.ArgumentTypeError: for anything else (a usage error naming it).
    """
    if not ascii_decimal(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return float(text)


def _line_count(text: str) -> int:
    """A number of lines on the command line, in ASCII digits (``int()`` read ``١٠`` as 10).

    :raises argparse.ArgumentTypeError: for anything else (a usage error naming it).
    """
    if not ascii_digits(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lines")
    return int(text)


def _stdin_value(key: str) -> str:
    """The value ``config set KEY -`` reads, so that a secret is not on the command line (which
    every local user sees, ``ps``) nor in the shell's history: asked for without echo on a
    terminal, else standard input, less the newline that ends it."""
    if sys.stdin.isatty():
        return getpass.getpass(f"{key}: ")
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        raise SystemExit("gatewayctl: the value on standard input is not UTF-8") from None
    return text[:-1] if text.endswith("\n") else text


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if getattr(args, "file", None):
        try:
            if args.file == "-":
                data = sys.stdin.buffer.read()
            else:
                with open(args.file, "rb") as handle:
                    data = handle.read()
        except OSError as exc:  # said as `apps install` says it of its package
            raise SystemExit(f"gatewayctl: cannot read {args.file}: {exc.strerror}") from None
        try:
            loaded = jsontext.loads(data.decode("utf-8"), strict=True)  # (as the API takes it)
        except ValueError as exc:
            raise SystemExit(f"gatewayctl: {args.file} is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise SystemExit("gatewayctl: the changes file must hold a JSON object of key paths")
        changes.update(loaded)
    for pair in getattr(args, "pairs", None) or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{pair!r} is not KEY=VALUE")
        changes[key] = _value(text)
    if not changes:
        raise UsageError("no changes given (KEY=VALUE ... or --file)")
    return changes


# -- commands -------------------------------------------------------------------------

def cmd_status(client: AdminClient, args: argparse.Namespace) -> int:
    """The gateway: version, pid, uptime, services, how its previous run ended."""
    def human(s: Any) -> str:
        lines = [f"gateway {s['version']}, pid {s['pid']}, up {duration(s['uptime_s'])}",
                 table(("service", "state"), [(x["name"], service_state(x)) for x in s["services"]])]
        if s.get("reactor_lag_s", 0.0) >= SLOW_REACTOR:
            lines.append(f"slow: the gateway ran its timers up to {s['reactor_lag_s']:.1f} s late in the last "
                         "minute or two (a CPU too slow for the load: every answer waits as long)")
        if s.get("config_pending"):
            lines.append("configuration: " + pending_change(s["config_pending"], time.time()))
        previous = previous_stop(s.get("previous_stop"))
        if previous:
            lines.append(previous)
        return "\n".join(lines)
    return _out(args, client.get("/status"), human)


def _apps_table(snapshot: Any) -> str:
    """The programs; an ``error`` column when one says why it failed."""
    errors = [a.get("error") or "" for a in snapshot["apps"]]
    extra = ("error",) if any(errors) else ()
    return table(("program", "app", "version", "state", "pid", "uptime", "restarts", *extra),
                 [(a["name"], a["app"], a["version"], a["status"], a["pid"], duration(a["uptime_s"]),
                   a["restarts"], *((error,) if extra else ())) for a, error in zip(snapshot["apps"], errors)])


def cmd_apps(client: AdminClient, args: argparse.Namespace) -> int:
    """apps [list|start|stop|restart|uninstall NAME|install FILE|logs NAME [-f]]."""
    action = args.action or "list"
    if action == "list":
        return _out(args, client.get("/apps"), _apps_table)
    if action == "install":
        return _install(client, args)
    if action == "logs":
        return _logs(client, args)
    result = client.post(app_path(args.name, action), timeout=None)
    return _out(args, result, lambda r: f"{r['name']}: {action} done" + (
        "\n" + table(("program", "state", "pid"), [(p["name"], p["status"], p["pid"]) for p in r["programs"]])
        if r["programs"] else ""))


def _install(client: AdminClient, args: argparse.Namespace) -> int:
    path = args.name
    name = os.path.basename(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        print(f"gatewayctl: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return ERROR
    bar = ProgressBar(f"uploading {name}")
    with handle:
        total = os.fstat(handle.fileno()).st_size
        try:
            result = client.upload(f"/apps/install{query_string({'filename': name})}", handle, total, bar.update)
        except ApiFailure as exc:
            raise _with_outcome(exc) from None
        finally:
            bar.close()
    return _out(args, result, lambda r: r["message"] + (f"\n{r['log']}" if args.verbose and r.get("log") else ""))


def _with_outcome(failure: ApiFailure) -> ApiFailure:
    """A failed install's error led by its outcome (``rolled-back: ...``): the message alone
    does not say whether the previous version runs again."""
    result = failure.body.get("result") if isinstance(failure.body, dict) else None
    if not (isinstance(result, dict) and isinstance(result.get("outcome"), str)):
        return failure
    return ApiFailure(failure.status, failure.body, outcome_line(result["outcome"], str(failure)))


def _logs(client: AdminClient, args: argparse.Namespace) -> int:
    params = {"lines": args.lines, "follow": "1" if args.follow else "0", "stderr": "1" if args.stderr else "0"}
    out = sys.stdout.buffer
    # (to a terminal, control characters escaped; to a pipe or a file, the bytes as they are)
    shown = TerminalText(sys.stdout.encoding or "utf-8") if sys.stdout.isatty() else None
    try:
        for chunk in client.stream(app_path(args.name, "logs"), params):
            out.write(chunk if shown is None else shown.feed(chunk))
            out.flush()
    except KeyboardInterrupt:
        return OK
    finally:
        if shown is not None:
            out.write(shown.end())
            out.flush()
    if args.follow:  # only the gateway ends a followed log: say so, or it looks like a quiet program
        print("gatewayctl: the gateway ended the followed log (it is stopping, or a configuration change"
              " restarted its services): follow again", file=sys.stderr)
        return ERROR
    return OK


def _links_table(snapshot: Any) -> str:
    """The links; a ``problem`` column when one's cursor is not saved or its session taken over."""
    problems = [link_problem(x) for x in snapshot["links"]]
    extra = ("problem",) if any(problems) else ()
    return table(("link", "state", "backlog", "in flight", "acked", "drain/s", "last error", *extra),
                 [(x["name"], x["state"], x["backlog"], x["in_flight"], x["acked"], f"{x['drain_rate']:.1f}",
                   x["last_error"], *((problem,) if extra else ())) for x, problem in zip(snapshot["links"], problems)])


def cmd_links(client: AdminClient, args: argparse.Namespace) -> int:
    """The cloud links: state, backlog, in flight, drain rate, last error, what keeps one from its job."""
    return _out(args, client.get("/links"), _links_table)


def cmd_fleet(client: AdminClient, args: argparse.Namespace) -> int:
    """The fleet channel (hawkBit DDI): the server, state, polls, last success and error, next
    poll, the action under way, the feedback waiting."""
    return _out(args, client.get("/fleet"), lambda fleet: table(("fleet", ""), fleet_rows(fleet)))


def _queue_table(snapshot: Any) -> str:
    """The streams; a ``lost`` column when one lost records since the start (drop-oldest under a
    flood, reject-new's refusals); a ``problem`` column when one refuses appends or does not write
    its loss ledger."""
    def depth(stream: Any) -> int:
        return max((c["unacked"] for c in stream["cursors"]), default=stream["records"])
    problems = [stream_problem(x) for x in snapshot["streams"]]
    extra = ("problem",) if any(problems) else ()
    losses = [stream_losses(x) for x in snapshot["streams"]]
    lost = ("lost since start",) if any(losses) else ()
    # (a stream no link uses any more: the operator may drop it, `journal drop NAME`)
    unused = ("in use",) if not all(x.get("in_use", True) for x in snapshot["streams"]) else ()
    return table(("stream", "records", "size", "waiting", "oldest waiting", "free disk", *lost, *unused, *extra),
                 [(x["name"], x["records"], size(x["bytes"]), depth(x), duration(x["oldest_unacked_age_s"]),
                   size(x["free_bytes"]), *((loss or "0",) if lost else ()),
                   *(("yes" if x.get("in_use", True) else "no",) if unused else ()), *((problem,) if extra else ()))
                  for x, problem, loss in zip(snapshot["streams"], problems, losses)])


def cmd_queue(client: AdminClient, args: argparse.Namespace) -> int:
    """The journal's streams: records, bytes, waiting, oldest unacknowledged, what keeps one from its job."""
    return _out(args, client.get("/journal"), _queue_table)


def cmd_journal(client: AdminClient, args: argparse.Namespace) -> int:
    """journal [list | drop NAME [--force]]: the streams (as ``queue``), or drop one no longer used."""
    if (args.action or "list") == "list":
        return cmd_queue(client, args)
    result = client.delete(f"/journal/{quote(args.name)}", {"force": "true"} if args.force else None, timeout=None)
    return _out(args, result, lambda r: f"{r['name']}: dropped" + (
        f", {r['lost']} record{'' if r['lost'] == 1 else 's'} not acknowledged counted lost (dropped)"
        if r["lost"] else ""))


def _ops_table(snapshot: Any) -> str:
    return table(("operation", "action", "status", "progress", "message"),
                 [(o["correlation_id"], o["action"], o["status"],
                   f"{o['progress_percent']}%" if o["progress_percent"] is not None else "-", o["message"])
                  for o in snapshot["operations"]])


def cmd_ops(client: AdminClient, args: argparse.Namespace) -> int:
    """Update operations; with --follow, until none is active (a progress bar on a terminal)."""
    snapshot = client.get("/operations")
    if not args.follow:
        return _out(args, snapshot, _ops_table)
    bars: dict[str, ProgressBar] = {}
    seen: dict[str, str] = {}
    while True:
        for op in snapshot["operations"]:
            key = op["correlation_id"]
            if seen.get(key) != op["status"] and (op["active"] or key in seen):
                seen[key] = op["status"]
                if key in bars:
                    bars.pop(key).close()
                print(json.dumps(op, sort_keys=True) if args.json else f"{key}: {op['status']} {op['message']}",
                      flush=True)
            if op["active"] and op["progress_percent"] is not None:
                bars.setdefault(key, ProgressBar(key)).update(op["progress_percent"], 100)
        if not any(op["active"] for op in snapshot["operations"]):
            for bar in bars.values():
                bar.close()
            return OK
        time.sleep(args.interval)
        snapshot = _get_through_restarts(client, "/operations", args.interval)


def _get_through_restarts(client: AdminClient, path: str, interval: float) -> Any:
    """``GET path``; while the gateway does not answer (it restarts), again every ``interval``
    seconds, for up to :data:`FOLLOW_RESTART_WAIT` seconds (then :class:`NotRunning` or the
    failure is raised), saying on stderr that it waits, and when the gateway is back."""
    deadline = None
    while True:
        try:
            answer = client.get(path)
        except (NotRunning, ProtocolFailure, AdminAway) as exc:
            now = time.monotonic()
            if deadline is None:
                deadline = now + FOLLOW_RESTART_WAIT
                print(f"gatewayctl: {exc}; waiting up to {FOLLOW_RESTART_WAIT:g} s for it to be back"
                      " (it may be restarting)", file=sys.stderr, flush=True)
            elif now >= deadline:
                raise
            time.sleep(interval)
            continue
        if deadline is not None:
            print("gatewayctl: the gateway is back", file=sys.stderr, flush=True)
        return answer


def _uploads_table(snapshot: Any) -> str:
    rows = [(u["correlationId"], u["state"], f"{u['progress']}%", len(u["files"]), u["message"])
            for u in snapshot["uploads"]]
    auto = snapshot["autoUpload"]
    return table(("upload", "state", "progress", "files", "message"), rows) + (
        f"\nperiodic triggers: {'on' if auto['active'] else 'off'}")


def cmd_uploads(client: AdminClient, args: argparse.Namespace) -> int:
    """uploads [list | trigger [ID] [--files GLOB] [--diagnostics] [--force] | cancel ID]."""
    action = args.action or "list"
    if action == "list":
        return _out(args, client.get("/uploads"), _uploads_table)
    if action == "cancel":
        result = client.post("/uploads/cancel", {"correlationId": args.id})
        return _out(args, result,
                    lambda r: f"{r['correlationId']}: {r['upload']['state'] if r['upload'] else 'canceled'}")
    options: dict[str, str] = {}
    if args.files:
        options["upload.files"] = args.files
    if args.diagnostics:
        options["upload.diagnostics"] = "true"
    if args.force:
        options["force"] = "true"
    body: dict[str, Any] = {"options": options}
    if args.id:
        body["correlationId"] = args.id
    result = client.post("/uploads/trigger", body)
    return _out(args, result, lambda r: f"{r['correlationId']}: {r['upload']['state']}, "
                                        f"{len(r['upload']['files'])} file(s) requested from the cloud")


def cmd_report(client: AdminClient, args: argparse.Namespace) -> int:
    """Build and publish one report now; print it (the name quoted: ``report 'a b'`` or
    ``report 'x?y'`` asks for that name, not a broken request or another report)."""
    result = client.post(f"/reports/{quote(args.name)}")
    print(json.dumps(result if args.json else result["report"], indent=2, sort_keys=True))
    return OK


def _print_warnings(args: argparse.Namespace, result: Mapping[str, Any]) -> None:
    """Without ``--json``, the ``warnings`` of a config check's or apply's answer, each a
    ``warning: ...`` line on stderr (``check-config``'s); a gateway older than the key sends none."""
    if not args.json:
        for line in result.get("warnings", ()):
            print(f"warning: {line}", file=sys.stderr)


def cmd_config(client: AdminClient, args: argparse.Namespace) -> int:
    """config get KEY | check KEY=VALUE... | set KEY VALUE | apply KEY=VALUE..."""
    if args.action == "get":
        return _out(args, client.get("/config", {"key": args.key}),
                    lambda r: json.dumps(r["value"]) if not isinstance(r["value"], str) else r["value"])
    if args.action == "check":
        result = client.post("/config/check", {"changes": _changes(args)})
        _print_warnings(args, result)
        _out(args, result, lambda r: "configuration OK" if r["valid"] else
             "invalid configuration:\n" + "\n".join(f"  {e}" for e in r["errors"]))
        return OK if result["valid"] else ERROR
    if args.action == "set":
        changes = {args.key: _value(_stdin_value(args.key) if args.value == "-" else args.value)}
    else:
        changes = _changes(args)
    body: dict[str, Any] = {"changes": changes, "confirm_within": args.confirm_within}
    result = client.post("/config/apply", body, timeout=None)
    _print_warnings(args, result)

    def human(r: Any) -> str:
        text = "applied; restarted: " + (", ".join(r.get("restarted") or ()) or "nothing")
        if r.get("confirm_deadline") is not None:
            text += f"\nreverted unless {confirming_links(r)} within {args.confirm_within:g} s"
        return text
    return _out(args, result, human)


def cmd_version(client: AdminClient, args: argparse.Namespace) -> int:
    """This command's version and the running gateway's."""
    try:
        status = client.get("/status")
    except NotRunning:
        print(json.dumps({"gatewayctl": __version__, "gateway": None}) if args.json
              else f"gatewayctl {__version__}\ngateway not running")
        return NOT_RUNNING
    return _out(args, {"gatewayctl": __version__, "gateway": status["version"], "pid": status["pid"]},
                lambda v: f"gatewayctl {v['gatewayctl']}\ngateway {v['gateway']} (pid {v['pid']})")


# -- parser -----------------------------------------------------------------------------

class CommandParser(argparse.ArgumentParser):
    """An argument parser whose commands take their options before, between or after their
    positionals (``apps logs -f NAME`` as ``apps logs NAME -f``).

    argparse alone fills a command's positionals from the words before its first option and
    refuses those after it; a parser without subcommands is parsed the intermixed way instead
    (argparse refuses to intermix subcommands). Whether it has any is its own record, kept
    by :meth:`add_subparsers`.
    """

    _intermixing = False
    _has_subcommands = False

    def add_subparsers(self, **kwargs: Any) -> Any:
        """As :meth:`argparse.ArgumentParser.add_subparsers`; this parser is then parsed the plain way."""
        self._has_subcommands = True
        return super().add_subparsers(**kwargs)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As :meth:`argparse.ArgumentParser.parse_known_args`, intermixed for a parser
        without subcommands (that parsing calls this again: then the plain way)."""
        if self._has_subcommands or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _common_options(parser: argparse.ArgumentParser, default: Any, json_default: Any) -> None:
    """``--socket``, ``--state-dir`` and ``--json``, which gatewayctl takes before its command or after it."""
    parser.add_argument("--socket", default=default,
                        help=f"the admin socket (default: ${ENVIRONMENT}; else DIR/run/admin.sock with --state-dir"
                             f" DIR; else {PACKAGED_SOCKET} for the packaged gatewayctl, else {CHECKOUT_SOCKET})")
    parser.add_argument("--state-dir", default=default,
                        help="the gateway's state directory, whose lock tells a gateway restarting its admin API"
                             " from one not running (default: the socket's DIR when it is DIR/run/admin.sock;"
                             " /var/lib/gateway for the packaged socket)")
    parser.add_argument("--json", action="store_true", default=json_default, help="print JSON for machines")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = CommandParser(
        prog="gatewayctl", description="Operate the IoT gateway through its admin API.",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 gateway not running, 130 interrupted (Ctrl-C).")
    parser.add_argument("--version", action="version", version=f"gatewayctl {__version__}")
    _common_options(parser, None, False)
    # Every command takes them too; there they set a value only when given (SUPPRESS).
    common = CommandParser(add_help=False)
    _common_options(common, argparse.SUPPRESS, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(subparsers: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        result: argparse.ArgumentParser = subparsers.add_parser(name, parents=[common], **kwargs)
        result.set_defaults(parser=result)  # its own usage for the errors argparse cannot see
        return result

    command(commands, "status", help="version, pid, uptime and services").set_defaults(run=cmd_status)
    apps = command(commands, "apps", help="hosted apps: list, start, stop, restart, install, uninstall, logs")
    apps.add_argument("action", nargs="?", choices=("list", "start", "stop", "restart", "install", "uninstall",
                                                   "logs"))
    apps.add_argument("name", nargs="?", help="the app or program (install: the package FILE)")
    apps.add_argument("-f", "--follow", action="store_true", help="logs: go on printing as the log grows")
    apps.add_argument("-n", "--lines", type=_line_count, default=100, help="logs: how many last lines (100)")
    apps.add_argument("--stderr", action="store_true", help="logs: the program's stderr log")
    apps.add_argument("-v", "--verbose", action="store_true", help="install: print install.sh's output")
    apps.set_defaults(run=cmd_apps)
    command(commands, "links", help="cloud links").set_defaults(run=cmd_links)
    command(commands, "fleet", help="the fleet channel (hawkBit DDI): polls, errors, action, feedback"
            ).set_defaults(run=cmd_fleet)
    command(commands, "queue", help="journal streams (the store-and-forward queue)").set_defaults(run=cmd_queue)
    journal = command(commands, "journal", help="journal streams: list (as queue), drop one no longer used")
    journal.add_argument("action", nargs="?", choices=("list", "drop"))
    journal.add_argument("name", nargs="?", help="drop: the stream (link-<name> of a link removed or renamed)")
    journal.add_argument("--force", action="store_true",
                         help="drop: even with records not acknowledged (counted lost)")
    journal.set_defaults(run=cmd_journal)
    ops = command(commands, "ops", help="update operations")
    ops.add_argument("--follow", action="store_true", help="until no operation is active")
    ops.add_argument("--interval", type=_seconds, default=1.0, help=argparse.SUPPRESS)
    ops.set_defaults(run=cmd_ops)
    uploads = command(commands, "uploads", help="file uploads: list, trigger, cancel")
    uploads.add_argument("action", nargs="?", choices=("list", "trigger", "cancel"))
    uploads.add_argument("id", nargs="?", help="trigger: the upload's id (default: a new one); cancel: the id")
    uploads.add_argument("--files", help="trigger: a glob to upload (upload.files, as uploads.mode permits)")
    uploads.add_argument("--diagnostics", action="store_true", help="trigger: add the diagnostics bundle")
    uploads.add_argument("--force", action="store_true", help="trigger: even while another upload runs")
    uploads.set_defaults(run=cmd_uploads)
    report = command(commands, "report", help="build and publish a report now")
    report.add_argument("name", help="device_info, usage_report or engine_report")
    report.set_defaults(run=cmd_report)

    config = command(commands, "config", help="get, check, set or apply configuration changes")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = command(actions, "get", help="one value: config get links.links.cloud.endpoint")
    get.add_argument("key")
    for name, text in (("check", "validate changes: config check KEY=VALUE..."),
                       ("apply", "apply changes: config apply KEY=VALUE...")):
        sub = command(actions, name, help=text)
        sub.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="VALUE is JSON if it parses, else a string")
        sub.add_argument("--file", help="a JSON object of key paths and values (-: standard input)")
    setter = command(actions, "set", help="apply one change: config set KEY VALUE")
    setter.add_argument("key")
    setter.add_argument("value", help="JSON if it parses, else a string; - reads it from standard input (a secret "
                                      "kept off the command line)")
    for sub in (actions.choices["apply"], setter):
        sub.add_argument("--confirm-within", type=_seconds, default=None, metavar="SECONDS",
                         help="revert unless the cloud link is up within SECONDS")
    config.set_defaults(run=cmd_config)

    check = command(commands, "check-config", help="validate a configuration file (no gateway needed)")
    check.add_argument("path", nargs="?", default=None, help="the YAML config (default: the embedded one)")
    check.add_argument("--config", "-c", default=None, metavar="PATH", help="the YAML config, as PATH")
    command(commands, "version", help="gatewayctl's and the gateway's versions").set_defaults(run=cmd_version)
    return parser


#: The arguments that name local files, whose names need not be UTF-8.
_PATH_ARGUMENTS = {"socket", "state_dir", "file", "path", "config"}


def _not_utf8(args: argparse.Namespace) -> str | None:
    """The first argument the gateway is sent that is not UTF-8, or None; the others are made
    text. Python holds the bytes of a command-line word its locale cannot decode as surrogate
    escapes (under ``LC_ALL=C`` with ``PYTHONUTF8=0``, the UTF-8 of ``annulé`` too), which
    JSON would carry on as lone surrogates: such a word is its bytes read as UTF-8, if they
    are. A package's file (``apps install FILE``) may be named anyhow.
    """
    for key, value in vars(args).items():
        if key in _PATH_ARGUMENTS or (key == "name" and getattr(args, "action", None) == "install"):
            continue
        words = value if isinstance(value, list) else [value]
        for index, word in enumerate(words):
            if isinstance(word, str):
                try:
                    word.encode("utf-8")
                except UnicodeEncodeError:
                    try:
                        words[index] = os.fsencode(word).decode("utf-8")
                    except UnicodeError:
                        return word
        if not isinstance(value, list):
            setattr(args, key, words[0])
    return None


def _stdout_gone() -> int:
    """Stdout's reader went away (``gatewayctl apps | head``): say nothing more, and keep
    Python's flush at exit from raising again. Returns the exit status."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return ERROR


def _say_waiting(message: str) -> None:
    print(f"gatewayctl: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gatewayctl``; returns the exit status."""
    escape_unencodable()
    parser = build_parser()
    args = parser.parse_args(argv)
    command: argparse.ArgumentParser = args.parser  # the deepest subcommand's: its usage for errors
    if args.command == "check-config":
        if args.path is not None and args.config is not None:
            command.error(f"check-config takes PATH or --config PATH, not both ({args.path!r} and {args.config!r})")
        try:
            return check_config(args.path or args.config, bool(args.json))
        except BrokenPipeError:
            return _stdout_gone()
    if args.command == "uploads" and args.action == "cancel" and not args.id:
        command.error("uploads cancel needs the upload's ID")
    if args.command == "apps" and args.action not in (None, "list") and not args.name:
        command.error(f"apps {args.action} needs a {'FILE' if args.action == 'install' else 'NAME'}")
    # (a listing would otherwise take a stray word, a mistyped action's, and list everything)
    if args.command == "apps" and args.action in (None, "list") and args.name:
        command.error(f"apps list takes no NAME, not {args.name!r}")
    if args.command == "journal" and args.action == "drop" and not args.name:
        command.error("journal drop needs the stream's NAME")
    if args.command == "journal" and args.action in (None, "list") and (args.name or args.force):
        command.error(f"journal list takes no NAME nor --force{f', not {args.name!r}' if args.name else ''}")
    if args.command == "uploads" and args.action in (None, "list") and args.id:
        command.error(f"uploads list takes no ID, not {args.id!r}")
    word = _not_utf8(args)
    if word is not None:
        command.error(f"{word.encode('utf-8', 'surrogateescape')!r} is not UTF-8 text: the gateway takes names,"
                      " keys and values as UTF-8")
    path = args.socket or default_socket(args.state_dir)
    client = AdminClient(path, state_dir=args.state_dir or state_dir_of(path), on_wait=_say_waiting)
    try:
        return int(args.run(client, args))
    except UsageError as exc:
        command.error(str(exc))
    except NotRunning as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        return NOT_RUNNING
    except ApiFailure as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        errors = exc.body.get("errors") if isinstance(exc.body, dict) else None
        for line in errors or ():
            print(f"  {line}", file=sys.stderr)
        result = exc.body.get("result") if isinstance(exc.body, dict) else None
        if getattr(args, "verbose", False) and isinstance(result, dict) and result.get("log"):
            print(result["log"], file=sys.stderr)
        if args.json:
            print(json.dumps(exc.body, indent=2, sort_keys=True))
        return ERROR
    except BrokenPipeError:
        return _stdout_gone()
    except TimeoutError:
        waited = f" within {client.timeout:g} s" if client.timeout else ""
        print(f"gatewayctl: the gateway did not answer{waited} (on {client.path})", file=sys.stderr)
        return ERROR
    except OSError as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        return ERROR
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        # An answer of another shape than this gatewayctl reads (another version's gateway,
        # or something else on the socket): one line, not a traceback.
        print(f"gatewayctl: the gateway's answer is not what this gatewayctl expects ({type(exc).__name__}:"
              f" {exc}); is the gateway the same version ({__version__})?", file=sys.stderr)
        return ERROR
    except KeyboardInterrupt:
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
