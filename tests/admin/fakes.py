"""In-memory stand-ins for what the admin API reads and acts through, and a raw HTTP
exchange with a twisted.web Site over a StringTransport (so the admin API's own request
class, with its body limit, is what runs)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.apps.errors import UnknownAppError
from gateway.apps.logs import tail_bytes
from gateway.apps.operations import InstallResult
from gateway.apps.process import ProgramState, ProgramStatus
from gateway.apps.snapshot import AppSnapshot, AppsSnapshot
from gateway.commands.dropin import CheckOutcome
from gateway.errors import ConfigKeyError
from gateway.fleet.snapshot import FleetSnapshot
from gateway.ingest.snapshot import IngestSnapshot
from gateway.readside import GatewayStatus, ServiceState
from gateway.shown import shown
from gateway.twin.snapshot import TwinSnapshot
from gateway.updates.errors import InvalidOperation
from tests.fleet.samples import FAILING_FLEET


def gateway_status(services: tuple[ServiceState, ...] | None = None) -> GatewayStatus:
    """A gateway status with the given services (default: all running)."""
    return GatewayStatus("0.1.0", 1000.0, 75, 4242, services if services is not None else (
        ServiceState("journal", True), ServiceState("apps", True), ServiceState("updates", True),
        ServiceState("telemetry", True)))


@dataclass(frozen=True)
class LinkSnapshot:
    name: str
    state: str
    backlog: int
    last_error: str = ""


@dataclass(frozen=True)
class CursorSnapshot:
    name: str
    acked: int
    unacked: int


@dataclass(frozen=True)
class StreamSnapshot:
    name: str
    records: int
    bytes: int
    oldest_unacked_age_s: float
    cursors: tuple[CursorSnapshot, ...] = ()


@dataclass(frozen=True)
class OperationSnapshot:
    correlation_id: str
    action: str
    status: str
    active: bool
    progress_percent: int | None


@dataclass
class FakeReadSide:
    """Snapshots set by the test."""

    gateway: GatewayStatus = field(default_factory=gateway_status)
    link_list: tuple[LinkSnapshot, ...] = (LinkSnapshot("cloud", "connected", 3),
                                           LinkSnapshot("backup", "disconnected", 1500, "refused"))
    stream_list: tuple[StreamSnapshot, ...] = (
        StreamSnapshot("link-cloud", 10, 300, 12.0, (CursorSnapshot("cloud", 7, 3),)),
        StreamSnapshot("link-backup", 1500, 150000, 3700.0, (CursorSnapshot("backup", 0, 1500),)))
    programs: tuple[AppSnapshot, ...] = (
        AppSnapshot("hello", "hello", "1.2", "RUNNING", 99, 65.0, None, 0),)
    operation_list: tuple[OperationSnapshot, ...] = (
        OperationSnapshot("op-1", "install", "DOWNLOADING", True, 42),
        OperationSnapshot("op-0", "install", "FINISHED_SUCCESS", False, None))
    ingest_snapshot: IngestSnapshot | None = IngestSnapshot(True, "", 7, 9, 2, 1, 3, 4, 0)
    twin_snapshot: TwinSnapshot | None = TwinSnapshot("acme:gw1", 2, 5, None, max_things=1000)
    fleet_snapshot: FleetSnapshot | None = FAILING_FLEET

    def status(self) -> Any:
        return self.gateway

    def broker(self) -> Any:
        return {"clients": 2, "listeners": ["tcp:1883"]}

    def journal(self) -> Any:
        return {"streams": self.stream_list}

    def links(self) -> Any:
        return {"links": self.link_list}

    def apps(self) -> Any:
        return AppsSnapshot("0.1.0", self.programs)

    def updates(self) -> Any:
        return {"operations": self.operation_list}

    def ingest(self) -> Any:
        return self.ingest_snapshot

    def twin(self) -> Any:
        return self.twin_snapshot

    def fleet(self) -> Any:
        return self.fleet_snapshot


class FakeApps:
    """AppOperations over a dict of program name -> state; records every call."""

    def __init__(self, log_dir: Path) -> None:
        self.states = {"hello": ProgramState.RUNNING}
        self.calls: list[tuple[str, Any]] = []
        self.log_dir = log_dir
        self.install_result = InstallResult(True, "installed", "hello", "1.3", "1.2", "hello 1.3 installed")
        self.installed_bytes: bytes | None = None
        self.pending: Deferred[None] | None = None

    def _known(self, name: str) -> None:
        if name not in self.states:
            raise UnknownAppError(f"no app or program {name!r}")

    def install(self, archive: Path) -> Deferred[Any]:
        self.calls.append(("install", archive.name))
        self.installed_bytes = archive.read_bytes()
        return succeed(self.install_result)

    def uninstall(self, name: str) -> Deferred[None]:
        return self._act("uninstall", name, None)

    def start(self, name: str) -> Deferred[None]:
        return self._act("start", name, ProgramState.RUNNING)

    def stop(self, name: str) -> Deferred[None]:
        return self._act("stop", name, ProgramState.STOPPED)

    def restart(self, name: str) -> Deferred[None]:
        return self._act("restart", name, ProgramState.RUNNING)

    def _act(self, action: str, name: str, state: ProgramState | None) -> Deferred[None]:
        self.calls.append((action, name))
        try:
            self._known(name)
        except UnknownAppError as exc:
            return fail(exc)
        if state is None:
            del self.states[name]
        else:
            self.states[name] = state
        return self.pending if self.pending is not None else succeed(None)

    def status(self, name: str | None = None) -> list[Any]:
        if name is not None:
            self._known(name)
        return [ProgramStatus(n, n, "1.2", s, 99 if s == ProgramState.RUNNING else None, 5, None, 0)
                for n, s in self.states.items() if name in (None, n)]

    def tail_bytes(self, name: str, lines: int = 100, stderr: bool = False) -> Deferred[bytes]:
        try:
            path = self.log_path(name, stderr)
        except UnknownAppError as exc:
            return fail(exc)
        return succeed(tail_bytes(path, lines))

    def log_path(self, name: str, stderr: bool = False) -> Path:
        self._known(name)
        return self.log_dir / (f"{name}.err.log" if stderr else f"{name}.log")


@dataclass
class FakeOperation:
    correlation_id: str
    status: str = "STARTED"


class FakeUpdates:
    """UpdateService's handle_request, with its refusals."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {"op-1": "DOWNLOADING", "op-2": "INSTALLING"}
        self.calls: list[tuple[str, Any]] = []

    def submit(self, action: Any, request: Any) -> Any:
        self.calls.append((action, request))
        cid = request.get("correlationId") if isinstance(request, dict) else None
        if not isinstance(cid, str) or not request.get("softwareModules"):
            raise InvalidOperation("correlationId and softwareModules are required")
        if cid in self.running:
            raise InvalidOperation(f"operation {cid} is already {self.running[cid]}")
        self.running[cid] = "STARTED"
        return FakeOperation(cid)

    def cancel(self, request: Any) -> None:
        self.calls.append(("cancel", request))
        cid = request.get("correlationId")
        if cid not in self.running:
            raise InvalidOperation(f"no running operation {cid!r} to cancel")
        if self.running[cid] == "INSTALLING":
            raise InvalidOperation(f"operation {cid} is INSTALLING; it can no longer be canceled")

    def handle_request(self, command: str, request: Any) -> Any:
        if command == "cancel":
            self.cancel(request)
            return None
        return self.submit(command, request)


class FakeReports:
    """The telemetry service's report and metrics methods."""

    def __init__(self) -> None:
        self.requested: list[str] = []

    def report_names(self) -> tuple[str, ...]:
        return ("device_info", "usage_report", "engine_report")

    def last_reports(self) -> Mapping[str, Mapping[str, Any]]:
        return {"device_info": {"model": "test"}}

    def request_report(self, name: str) -> Deferred[Mapping[str, Any]]:
        self.requested.append(name)
        return succeed({"report": name})

    def render_metrics(self, accept: str) -> tuple[bytes, str]:
        return b"# HELP gateway_up 1\ngateway_up 1\n", "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class ApplyResult:
    applied: bool
    errors: tuple[str, ...]
    restarted: tuple[str, ...]
    confirm_deadline: float | None
    outcome: str
    warnings: tuple[str, ...] = ()


class FakeConfigChanger:
    """check/get/apply over a flat dict of key paths."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {"links.links.0.endpoint": "tcp:cloud:1883", "gateway.device_id": "gw1"}
        self.applied: list[tuple[dict[str, Any], float | None, str]] = []
        self.busy = False
        self.fails: ApplyResult | None = None  # what the next valid apply ends with, if not applied

    def get(self, path: str) -> Any:
        if path not in self.values:
            raise ConfigKeyError(f"{shown(path)}: not among the fake's keys")
        return self.values[path]

    def check(self, changes: Mapping[str, Any]) -> Deferred[CheckOutcome]:
        errors = self._errors(changes)
        return succeed(CheckOutcome(errors, [] if errors else self._warnings(changes)))

    @staticmethod
    def _warnings(changes: Mapping[str, Any]) -> list[str]:
        return [f"{k}: {v!r} may not be meant" for k, v in changes.items() if v == "doubtful"]

    def _errors(self, changes: Mapping[str, Any]) -> list[str]:
        return [f"<remote>: {k}: unknown key" for k in changes if k not in self.values]

    def apply(self, changes: Mapping[str, Any], confirm_within: float | None, origin: str) -> Deferred[Any]:
        from gateway.admin.errors import conflict
        if self.busy:
            return fail(conflict("another change waits for confirmation"))
        errors = tuple(self._errors(changes))
        if errors:
            return succeed(ApplyResult(False, errors, (), None, "invalid"))
        if self.fails is not None:
            return succeed(self.fails)
        self.applied.append((dict(changes), confirm_within, origin))
        self.values.update(changes)
        return succeed(ApplyResult(True, (), ("links",), 1120.0 if confirm_within else None, "applied",
                                   warnings=tuple(self._warnings(changes))))

    def pending(self) -> Any:
        return None


def assert_implements(test: Any, obj: Any, protocol: type) -> None:
    """``obj`` has every method of ``protocol`` with the same parameter names."""
    test.assertIsInstance(obj, protocol)
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        want = list(inspect.signature(member).parameters)[1:]
        have = list(inspect.signature(getattr(obj, name)).parameters)
        test.assertEqual(have, want, f"{type(obj).__name__}.{name}")


@dataclass
class Response:
    """A parsed HTTP response (the body de-chunked)."""

    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool

    def json(self) -> Any:
        import json
        return json.loads(self.body)


def parse_response(raw: bytes) -> Response:
    """Parse the bytes a server wrote (one response; a chunked one may be incomplete)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body, complete = b"", False
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                complete = True
                break
            body += rest[:size]
            rest = rest[size + 2:]
        return Response(status, headers, body, complete)
    length = int(headers.get("content-length", len(rest)))
    return Response(status, headers, rest[:length], len(rest) >= length)


class Exchange:
    """One client connection to ``site`` over a StringTransport."""

    def __init__(self, site: Any) -> None:
        self.transport = StringTransport()
        self.protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        # The channel's idle timeout on a clock of its own, not the global reactor's.
        self.clock = Clock()
        self.protocol.callLater = self.clock.callLater
        self.protocol.makeConnection(self.transport)

    def send(self, method: str, path: str, body: bytes = b"", headers: Mapping[str, str] | None = None,
             chunks: int = 1) -> None:
        """Send a request, its body in ``chunks`` pieces."""
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode())
        step = max(1, len(body) // chunks)
        for i in range(0, len(body), step):
            self.protocol.dataReceived(body[i:i + step])

    def response(self) -> Response:
        """What the server has answered so far."""
        return parse_response(self.transport.value())

    def close(self) -> None:
        """The client goes away."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.protocol.connectionLost(Failure(ConnectionDone()))


def request(site: Any, method: str, path: str, body: bytes = b"",
            headers: Mapping[str, str] | None = None) -> Response:
    """Send one request to ``site`` and parse the answer."""
    exchange = Exchange(site)
    exchange.send(method, path, body, headers)
    return exchange.response()
