"""The podman runtime: libpod's REST API over podman's unix socket, with treq.

Implements :class:`gateway.containers.runtime.ContainerRuntime`. Nothing here shells out:
every call is one HTTP request; events and logs are long responses read as they arrive.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlencode

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (Agent, FileBodyProducer, HTTPConnectionPool, RequestTransmissionFailed,
                                ResponseDone, ResponseFailed)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from gateway.apps.launch import OOM_SCORE_ADJ, OWN_OOM_SCORE_ADJ, read_oom_score_adj
from gateway.containers.description import ContainerDescription
from gateway.containers.errors import ImageError, NotFound, RuntimeFailure, RuntimeUnavailable
from gateway.containers.runtime import ContainerState, ImageInfo, RuntimeEvent


@implementer(IAgentEndpointFactory)
class _UnixEndpoints:
    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self._reactor, self._path, timeout=10)


def unix_http_client(reactor: Any, socket_path: str) -> HTTPClient:
    """A treq client whose every request goes to the unix socket ``socket_path``.

    :param reactor: an IReactorUNIX and IReactorTime.
    :param socket_path: the socket (the URL's host is ignored).
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent.usingEndpointFactory(reactor, _UnixEndpoints(reactor, socket_path), pool))


class _LineStream(Protocol):
    """Reads a long response: JSON lines (events) or podman's multiplexed log frames."""

    def __init__(self, on_chunk: Callable[[bytes], None]) -> None:
        self.done: Deferred[None] = Deferred()
        self._on_chunk = on_chunk
        self._cancelled = False

    def dataReceived(self, data: bytes) -> None:
        if not self._cancelled:
            self._on_chunk(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if self._cancelled or reason.check(ResponseDone, ConnectionDone):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def cancel(self) -> None:
        self._cancelled = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class _Body(Protocol):
    """Reads a whole answer into ``done``; cancelling ``done`` drops the connection, and
    whatever the connection does afterwards is ignored (twisted's ``readBody`` fires its
    Deferred a second time when the connection closes only after the cancel)."""

    def __init__(self) -> None:
        self.done: Deferred[bytes] = Deferred(lambda _: self._drop())
        self._parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):  # (a body without a length ends with the close)
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)

    def _drop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class JsonLines:
    """Splits a byte stream into JSON values, one a line; a bad line is skipped.

    :param on_value: called with each decoded value.
    """

    def __init__(self, on_value: Callable[[Any], None]) -> None:
        self._on_value = on_value
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line.strip():
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                self._on_value(value)


class LogFrames:
    """Decodes podman's multiplexed log stream: 8-byte headers (stream, 0, 0, 0, length BE).

    :param on_output: called with (1 for stdout or 2 for stderr, payload).
    """

    def __init__(self, on_output: Callable[[int, bytes], None]) -> None:
        self._on_output = on_output
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the stream."""
        self._buffer += data
        while len(self._buffer) >= 8:
            size = int.from_bytes(self._buffer[4:8], "big")
            if len(self._buffer) < 8 + size:
                return
            stream = self._buffer[0]
            payload, self._buffer = self._buffer[8:8 + size], self._buffer[8 + size:]
            self._on_output(2 if stream == 2 else 1, payload)


def _event(value: Any) -> RuntimeEvent | None:
    if not isinstance(value, dict) or value.get("Type") != "container":
        return None
    actor = value.get("Actor") or {}
    attributes = dict(actor.get("Attributes") or {})
    name = attributes.pop("name", "")
    code = attributes.pop("containerExitCode", None)
    action = str(value.get("Action") or value.get("status") or "")
    return RuntimeEvent(action, str(actor.get("ID") or value.get("id") or ""), str(name),
                        {str(k): str(v) for k, v in attributes.items()},
                        int(code) if action == "died" and code is not None else None)


def _state(data: dict[str, Any]) -> ContainerState:
    state = data.get("State") or {}
    config = data.get("Config") or {}
    host = data.get("HostConfig") or {}
    running = bool(state.get("Running"))
    memory = host.get("Memory") or None
    never_ran = str(state.get("StartedAt", "")).startswith("0001")
    # A missing (or null) ExitCode is an exit status podman does not give: unknown, not 0.
    code = state.get("ExitCode")
    return ContainerState(
        str(data.get("Id", "")), str(data.get("Name", "")).lstrip("/"),
        dict(config.get("Labels") or {}), running, state.get("Pid") or None if running else None,
        None if never_ran or running or code is None else int(code),
        "" if never_ran else str(state.get("StartedAt", "")), str(data.get("Image", "")),
        int(memory) if memory else None, str(state.get("Status", "")) == "stopping")


def whole_seconds(seconds: float) -> int:
    """``seconds`` as podman takes a stop timeout, in whole seconds: rounded up, so that a
    container is never given less time than its description says (0.5 is 1, not 0: killed
    at once)."""
    return math.ceil(seconds)


def container_oom_score_adj(path: str = OWN_OOM_SCORE_ADJ) -> int:
    """The ``oom_score_adj`` the gateway gives its containers: :data:`OOM_SCORE_ADJ` (500), or the
    gateway's own when that is higher (one an operator set higher), as a hosted program keeps it,
    so that the OOM killer still takes a container before the gateway. Where ``path`` cannot be
    read (not Linux), 500.

    :param path: the gateway's own ``oom_score_adj`` file.
    """
    try:
        return max(OOM_SCORE_ADJ, read_oom_score_adj(path))
    except (OSError, ValueError):
        return OOM_SCORE_ADJ


def _create_body(name: str, image_id: str, description: ContainerDescription,
                 labels: dict[str, str], oom_score_adj: int = OOM_SCORE_ADJ) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name, "image": image_id, "labels": labels, "env": dict(description.env),
        "netns": {"nsmode": description.network_mode},
        "stop_timeout": whole_seconds(description.stop_timeout),
        # (the OOM killer takes a container before the gateway, as it takes a hosted program)
        "oom_score_adj": oom_score_adj,
        "mounts": [{"type": "bind", "source": m.source, "destination": m.destination,
                    "options": ["rbind", "ro" if m.read_only else "rw"]} for m in description.mounts],
        "portmappings": [{"container_port": p.container_port, "host_port": p.host_port,
                          "host_ip": p.host_ip, "protocol": p.protocol}
                         for p in description.port_mappings],
    }
    if description.command:
        body["command"] = list(description.command)
    limits: dict[str, Any] = {}
    if description.memory_bytes is not None:
        limits["memory"] = {"limit": description.memory_bytes}
    if description.cpus:
        limits["cpu"] = {"quota": int(description.cpus * 100000), "period": 100000}
    if description.cpuset_cpus:
        limits.setdefault("cpu", {})["cpus"] = description.cpuset_cpus
    if limits:
        body["resource_limits"] = limits
    policy = description.restart_policy
    if policy.delegate and policy.type != "no":
        body["restart_policy"] = policy.type
        if policy.type == "on-failure" and policy.max_retries:
            body["restart_tries"] = policy.max_retries
    return body


def unreachable(error: BaseException) -> RuntimeUnavailable:
    """The runtime's socket refused or lacks a connection, said in words (Twisted's own,
    ``An error occurred while connecting: 2: No such file or directory.``, carry its errno).

    :param error: the ``ConnectError`` (or subclass) of the connection attempt.
    """
    why = error.args[0] if error.args and error.args[0] else type(error).__name__
    return RuntimeUnavailable(f"podman does not answer: cannot connect to its socket: {why}")


#: What the HTTP client fails with when podman's connection is lost under a request (its
#: service died): Twisted wraps the cause in a list of Failures, no words for a log line.
_LOST = (ResponseFailed, RequestTransmissionFailed, ConnectionLost, ConnectionDone)


def connection_lost(method: str, path: str) -> RuntimeUnavailable:
    """The runtime's connection was lost before it answered ``method path`` whole, said in words.

    :param method: the request's method.
    :param path: its path under the API's prefix, without the query.
    """
    return RuntimeUnavailable(f"podman does not answer: {method} {path}: the connection was lost")


class PodmanRuntime:
    """podman's libpod API.

    :param client: a treq HTTPClient whose requests reach podman's socket
        (:func:`unix_http_client`).
    :param clock: times the requests (an IReactorTime).
    :param api_version: the path prefix's version, e.g. ``v4.0.0``.
    :param timeout: seconds an ordinary request may take, its whole answer read.
    :param pull_timeout: seconds a pull or load may take, its whole answer read (podman
        answers a pull at once and streams its progress: the wait is for the end).
    :param oom_score_adj: the ``oom_score_adj`` of the containers it creates
        (:func:`container_oom_score_adj`).
    """

    def __init__(self, client: HTTPClient, clock: IReactorTime, api_version: str = "v4.0.0",
                 timeout: float = 60.0, pull_timeout: float = 600.0,
                 oom_score_adj: int = OOM_SCORE_ADJ) -> None:
        self._clock = clock
        self._oom_score_adj = oom_score_adj
        self._client = client
        self._base = f"http://podman/{api_version}/libpod"
        self._timeout = timeout
        self._pull_timeout = pull_timeout

    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        query = {k: v for k, v in (query or {}).items() if v is not None}
        return self._base + path + (("?" + urlencode(query)) if query else "")

    @inlineCallbacks
    def _call(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None,
              timeout: float | None = None, headers: dict[str, str] | None = None,
              data: Any = None, timeout_name: str = "containers.request_timeout") -> Any:
        """One request and its whole answer, within ``timeout`` seconds (default: the request
        timeout), which ``timeout_name`` names in the error when they pass."""
        seconds = timeout or self._timeout
        kwargs: dict[str, Any] = {"headers": headers or {}, "unbuffered": True}
        if body is not None:
            kwargs["json"] = body
        if data is not None:
            kwargs["data"] = data

        def read(response: IResponse) -> Deferred[tuple[IResponse, bytes]]:
            reader = _Body()
            response.deliverBody(reader)
            return reader.done.addCallback(lambda content: (response, content))

        # One deadline for the answer and its whole body (cancelling it aborts the connection).
        exchange = self._client.request(method, self._url(path, query), **kwargs).addCallback(read)
        exchange.addTimeout(seconds, self._clock)
        try:
            response, content = yield exchange
        except ConnectError as exc:
            raise unreachable(exc) from exc
        except TimeoutError as exc:
            raise RuntimeUnavailable(f"podman does not answer: {method} {path}: no answer within {seconds:g} s "
                                     f"({timeout_name})") from exc
        except _LOST as exc:
            raise connection_lost(method, path) from exc
        if response.code >= 400:
            message = content.decode("utf-8", "replace")
            try:
                message = json.loads(content).get("message") or message
            except (ValueError, AttributeError):
                pass
            error = NotFound if response.code == 404 else RuntimeFailure
            raise error(f"{method} {path}: {response.code}: {message.strip()}")
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except ValueError:
            return content

    def ping(self) -> Deferred[None]:
        """Fires when podman answers ``_ping``."""
        return self._call("GET", "/_ping").addCallback(lambda _: None)

    @inlineCallbacks
    def pull(self, reference: str, credentials: tuple[str, str] | None, tls_verify: bool) -> Any:
        """Pull ``reference``; the pull's own error line (unknown tag, registry down) is raised."""
        headers = {}
        if credentials is not None:
            auth = json.dumps({"username": credentials[0], "password": credentials[1]})
            headers["X-Registry-Auth"] = base64.urlsafe_b64encode(auth.encode()).decode()
        try:
            result = yield self._call("POST", "/images/pull", {
                "reference": reference, "tlsVerify": str(tls_verify).lower()},
                timeout=self._pull_timeout, headers=headers, timeout_name="containers.pull_timeout")
        except RuntimeUnavailable:
            raise
        except RuntimeFailure as exc:
            raise ImageError(f"cannot pull {reference}: {exc}") from exc
        values: list[Any] = []
        parser = JsonLines(values.append)
        parser.feed(result if isinstance(result, bytes) else json.dumps(result).encode() + b"\n")
        parser.feed(b"\n")
        errors = [v["error"] for v in values if isinstance(v, dict) and v.get("error")]
        if errors or not any(isinstance(v, dict) and v.get("id") for v in values):
            raise ImageError(f"cannot pull {reference}: {(errors or ['no image in the answer'])[-1].strip()}")
        info = yield self.image(reference)
        return info

    @inlineCallbacks
    def load(self, archive: Path) -> Any:
        """Load an image archive (streamed from the file)."""
        with archive.open("rb") as handle:
            try:
                result = yield self._call("POST", "/images/load", timeout=self._pull_timeout,
                                          timeout_name="containers.pull_timeout",
                                          headers={"Content-Type": "application/x-tar"},
                                          data=FileBodyProducer(handle))
            except RuntimeUnavailable:
                raise
            except RuntimeFailure as exc:
                raise ImageError(f"cannot load {archive.name}: {exc}") from exc
        names = result.get("Names") if isinstance(result, dict) else None
        if not names:
            raise ImageError(f"{archive.name}: the runtime found no image in it")
        return [str(n) for n in names]

    @inlineCallbacks
    def image(self, reference: str) -> Any:
        """Inspect a local image."""
        data = yield self._call("GET", f"/images/{quote(reference, safe='')}/json")
        return ImageInfo(str(data.get("Id", "")), str(data.get("Digest", "")),
                         tuple(data.get("RepoTags") or ()))

    def remove_image(self, image_id: str) -> Deferred[None]:
        """Delete a local image (never forced: an image in use stays)."""
        return self._call("DELETE", f"/images/{quote(image_id, safe='')}").addCallback(lambda _: None)

    @inlineCallbacks
    def create(self, name: str, image_id: str, description: ContainerDescription,
               labels: dict[str, str]) -> Any:
        """Create a container from a SpecGenerator body."""
        data = yield self._call("POST", "/containers/create",
                                body=_create_body(name, image_id, description, labels, self._oom_score_adj))
        return str(data["Id"])

    def start(self, container_id: str) -> Deferred[None]:
        """Start it (already running is fine: podman answers 304)."""
        return self._call("POST", f"/containers/{container_id}/start").addCallback(lambda _: None)

    def stop(self, container_id: str, timeout: float) -> Deferred[None]:
        """Stop it: SIGTERM, SIGKILL after ``timeout``."""
        return self._call("POST", f"/containers/{container_id}/stop", {"timeout": whole_seconds(timeout)},
                          timeout=self._timeout + timeout,
                          timeout_name="containers.request_timeout plus stop_timeout").addCallback(lambda _: None)

    def remove(self, container_id: str) -> Deferred[None]:
        """Delete it, killing it first; an unknown container is fine."""
        d = self._call("DELETE", f"/containers/{container_id}", {"force": "true", "v": "true"})
        d.addErrback(lambda f: f.trap(NotFound) and None)
        return d.addCallback(lambda _: None)

    @inlineCallbacks
    def inspect(self, container_id: str) -> Any:
        """The container's state."""
        data = yield self._call("GET", f"/containers/{container_id}/json")
        return _state(data)

    @inlineCallbacks
    def containers(self, label: str) -> Any:
        """Every container with the label, inspected."""
        listed = yield self._call("GET", "/containers/json",
                                  {"all": "true", "filters": json.dumps({"label": [label]})})
        found = []
        for entry in listed or []:
            try:
                state = yield self.inspect(str(entry["Id"]))
            except NotFound:
                continue
            found.append(state)
        return found

    def _stream(self, path: str, query: dict[str, Any], on_chunk: Callable[[bytes], None]) -> Deferred[Any]:
        url = self._url(path, query)

        def started(response: IResponse) -> Any:
            if response.code >= 400:
                return treq.content(response).addCallback(lambda body: _raise(
                    RuntimeFailure(f"{url}: {response.code}: {body.decode('utf-8', 'replace').strip()}")))
            stream = _LineStream(on_chunk)
            response.deliverBody(stream)
            return stream

        def unavailable(failure: Failure) -> Any:
            if failure.check(ConnectError):
                raise unreachable(failure.value)
            if failure.check(*_LOST):
                raise connection_lost("GET", path)
            return failure

        return self._client.get(url, unbuffered=True).addCallbacks(started, unavailable)

    def events(self, on_event: Callable[[RuntimeEvent], None]) -> Deferred[Any]:
        """Follow container events."""
        def value(raw: Any) -> None:
            event = _event(raw)
            if event is not None:
                on_event(event)

        parser = JsonLines(value)
        return self._stream("/events", {"stream": "true", "filters": json.dumps({"type": ["container"]})},
                            parser.feed)

    def logs(self, container_id: str, since: str, on_output: Callable[[int, bytes], None]) -> Deferred[Any]:
        """Follow a container's stdout and stderr from ``since``."""
        frames = LogFrames(on_output)
        return self._stream(f"/containers/{container_id}/logs", {
            "follow": "true", "stdout": "true", "stderr": "true", "since": since or None}, frames.feed)


def _raise(error: Exception) -> Any:
    raise error
