"""The admin API's client for ``gatewayctl``: HTTP/1.1 over the unix socket in a few lines
of the standard library (not even ``http.client``, whose e-mail parser costs ~30 ms of
start-up), so the command starts fast. Each call is one connection (``Connection: close``)."""

from __future__ import annotations

import json
import os
import socket
import time
TYPE_CHECKING = False  # typing costs ~5 ms of start-up: annotations only
if TYPE_CHECKING:
    from typing import IO, Any, Callable, Iterator, Mapping

from gateway.statelock import LOCK_FILE, lock_held, stopping_holder

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


#: Seconds a call waits for the admin API of a gateway that runs (it holds its state
#: directory's lock) while its socket is absent or refuses: a configuration change restarts
#: the admin API with the other services, and a starting gateway has not opened it yet.
RESTART_WAIT = 30.0
#: Seconds between looks at the socket meanwhile.
RESTART_LOOK = 0.1


class NotRunning(Exception):
    """The gateway is not running: its socket is absent or refuses connections (and, when
    its state directory is known, no process holds the directory's lock)."""


class AdminAway(OSError):
    """The gateway runs (it holds its state directory's lock), but its admin API did not
    answer on the socket within :data:`RESTART_WAIT` seconds."""


class ApiFailure(Exception):
    """The admin API answered an error.

    :param status: the HTTP status.
    :param body: the decoded JSON error (``{"error": ...}``), or the raw text.
    :param message: what to tell the operator instead of the body's error.
    """

    def __init__(self, status: int, body: Any, message: str | None = None) -> None:
        if message is None:
            message = body.get("error") if isinstance(body, dict) else str(body).strip()
        super().__init__(message or f"HTTP {status}")
        self.status = status
        self.body = body


class ProtocolFailure(OSError):
    """The answer was not HTTP as expected (the connection broke in the middle, say)."""


class ConnectionCut(ProtocolFailure):
    """The gateway closed or reset the connection before its whole answer (its admin API
    stops: the gateway stops, or a configuration change restarts its services)."""


def quote(text: str) -> str:
    """Percent-encode ``text`` for a path segment or query value (the bytes of a command-line
    word that is not UTF-8, which Python holds as surrogate escapes, are sent as they are)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode("utf-8", "surrogateescape"))


def query_string(params: Mapping[str, Any] | None) -> str:
    """``?a=1&b=x`` from ``params`` (empty when there are none)."""
    if not params:
        return ""
    return "?" + "&".join(f"{quote(str(k))}={quote(str(v))}" for k, v in params.items())


def app_path(name: str, *rest: str) -> str:
    """``/apps/<name>/...`` with the name quoted."""
    return "/".join(["/apps", quote(name)] + list(rest))


class Response:
    """An HTTP response read from a socket: status, headers, then the body as it comes."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        head = self._until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            raise ProtocolFailure(f"not an HTTP answer: {lines[0][:80]!r}") from None
        self.headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()

    def _recv(self, size: int) -> bytes:
        try:
            return self._sock.recv(size)
        except ConnectionResetError:  # (it closed with the request unread: its admin API stops)
            raise ConnectionCut("the gateway reset the connection (its admin API stops: the gateway stops, or a"
                                  " configuration change restarts its services); try again") from None

    def _fill(self) -> bool:
        data = self._recv(65536)
        self._buffer += data
        return bool(data)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            if not self._fill():
                raise ConnectionCut("the gateway closed the connection mid-answer")
        part, _, self._buffer = self._buffer.partition(marker)
        return part

    def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not self._fill():
                raise ConnectionCut("the gateway closed the connection mid-answer")
        part, self._buffer = self._buffer[:n], self._buffer[n:]
        return part

    def _number(self, text: bytes | str, base: int, what: str) -> int:
        try:
            number = int(text, base)
        except ValueError:
            number = -1
        if number < 0:
            raise ProtocolFailure(f"the gateway's answer is not HTTP as expected: {what} {text[:40]!r}")
        return number

    def chunks(self) -> Iterator[bytes]:
        """The body, piece by piece as it arrives."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = self._number(self._until(b"\r\n").split(b";")[0].strip(), 16, "chunk size")
                if size == 0:
                    return
                yield self._exactly(size)
                self._exactly(2)
        elif "content-length" in self.headers:
            left = self._number(self.headers["content-length"], 10, "Content-Length")
            if self._buffer:
                piece, self._buffer = self._buffer[:left], b""
                left -= len(piece)
                yield piece
            while left > 0:
                data = self._recv(min(65536, left))
                if not data:
                    raise ConnectionCut("the gateway closed the connection mid-answer")
                left -= len(data)
                yield data
        else:
            if self._buffer:
                yield self._buffer
                self._buffer = b""
            while data := self._recv(65536):
                yield data

    def decode(self) -> Any:
        """The whole body, JSON-decoded when it is JSON; ApiFailure for an error status."""
        data = b"".join(self.chunks())
        kind = self.headers.get("content-type", "")
        try:
            value: Any = (json.loads(data) if kind.startswith("application/json") and data
                          else data.decode("utf-8", "replace"))
        except ValueError as exc:
            raise ProtocolFailure(f"the gateway's answer is not JSON: {exc}") from None
        if self.status >= 400:
            raise ApiFailure(self.status, value)
        return value


def _where_relative(path: str) -> str:
    """For a relative socket path (a checkout's ``var/run/admin.sock``), where it was looked
    for and what to do: run from another directory than ``make run``'s, ``gatewayctl`` does
    not find the socket of a gateway that runs."""
    if os.path.isabs(path):
        return ""
    try:
        here = f", {os.getcwd()}"
    except OSError:  # (a current directory deleted meanwhile)
        here = ""
    return (f"; looked for in the current directory{here}: run gatewayctl in the directory the gateway was"
            " started in, or name its state directory with --state-dir DIR")


def _send_request(sock: socket.socket, data: bytes) -> None:
    """Send (part of) a request whose answer is read next.

    :raises ProtocolFailure: the gateway closed the connection before it took the request (its
        admin API stops); not the BrokenPipeError that gatewayctl takes for its stdout's reader gone.
    """
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        raise ConnectionCut("the gateway closed the connection before it took the request (its admin API stops:"
                              " the gateway stops, or a configuration change restarts its services): nothing was"
                              " done; try again") from None


class AdminClient:
    """Calls the admin API over its unix socket.

    :param path: the socket path.
    :param timeout: seconds to wait for an answer (None: as long as it takes).
    :param state_dir: the gateway's state directory, when known: a socket absent or refusing
        while a process holds the directory's lock is waited for (:data:`RESTART_WAIT`)
        instead of being taken for a gateway that is not running.
    :param on_wait: told, once per wait, that a call waits for the admin API.
    """

    def __init__(self, path: str, timeout: float | None = 60.0, state_dir: str | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.timeout = timeout
        self.state_dir = state_dir
        self.on_wait = on_wait

    def _connect(self, timeout: float | None) -> socket.socket:
        """A connection to the admin socket; while a gateway that runs has none open (it
        restarts its services), after it opens one again, for up to :data:`RESTART_WAIT`.

        :raises NotRunning: the socket is absent or refuses, and no process holds the state
            directory's lock (or the state directory is unknown).
        :raises AdminAway: the gateway runs, but its admin API stayed away.
        """
        since = None
        while True:
            try:
                return self._connect_once(timeout)
            except NotRunning:
                since = self._restart_wait(since)
                if since is None:
                    raise

    def _restart_wait(self, since: float | None) -> float | None:
        """One look while the admin API may be restarting: ``None`` when no process holds the
        state directory's lock, or the directory is unknown (the gateway is not running); else,
        after a pause of :data:`RESTART_LOOK`, the time the wait began (``since``, or now at
        the first look, told to :attr:`on_wait`).

        :raises AdminAway: :data:`RESTART_WAIT` seconds have passed since the wait began.
        :raises NotRunning: the gateway that holds the lock is stopping (its lock file says so).
        """
        if self.state_dir is None or not lock_held(self.state_dir):
            return None
        stopping = stopping_holder(self.state_dir)
        if stopping is not None:  # (its admin API will not open again: nothing to wait for)
            raise NotRunning(f"the gateway is stopping (pid {stopping}): its admin API has closed")
        now = time.monotonic()
        if since is None:
            since = now
            if self.on_wait is not None:
                self.on_wait(f"the gateway runs but its admin API is not open (a configuration change restarts"
                             f" it, or the gateway starts): waiting up to {RESTART_WAIT:g} s for it on {self.path}")
        elif now - since >= RESTART_WAIT:
            raise AdminAway(f"the gateway runs (a process holds {os.path.join(self.state_dir, LOCK_FILE)})"
                            f" but its admin API did not answer on {self.path} within {RESTART_WAIT:g} s"
                            " (admin.enabled false, or another admin.socket?)")
        time.sleep(RESTART_LOOK)
        return since

    def _connect_once(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        directory = None
        try:
            target = self.path
            if len(os.fsencode(target)) > 107:  # too long for sun_path: go through the directory
                directory = os.open(os.path.dirname(target) or ".", os.O_RDONLY | os.O_DIRECTORY)
                target = f"/proc/self/fd/{directory}/{os.path.basename(target)}"
            sock.connect(target)
        except ConnectionRefusedError as exc:  # a socket left behind by a gateway that died
            sock.close()
            raise NotRunning(f"the gateway is not running (nothing answers on the admin socket {self.path}:"
                             f" {exc.strerror})") from None
        except (FileNotFoundError, NotADirectoryError) as exc:
            sock.close()
            raise NotRunning(f"the gateway is not running (no admin socket at {self.path}:"
                             f" {exc.strerror}{_where_relative(self.path)})") from None
        except PermissionError:
            sock.close()
            raise PermissionError(f"no permission to use the admin socket {self.path}: run gatewayctl"
                                  " as root or as a member of the socket's group (the .deb's:"
                                  " gateway)") from None
        except OSError:
            sock.close()
            raise
        finally:
            if directory is not None:
                os.close(directory)
        return sock

    def _send_head(self, sock: socket.socket, method: str, path: str,
                   headers: Mapping[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        _send_request(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())

    def _call(self, method: str, path: str, body: bytes | None, timeout: float | None) -> Any:
        sock = self._connect(timeout)
        try:
            headers = {} if body is None else {"Content-Type": "application/json",
                                               "Content-Length": str(len(body))}
            self._send_head(sock, method, path, headers)
            if body:
                _send_request(sock, body)
            return Response(sock).decode()
        finally:
            sock.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` (with query ``params``) and decode the answer. A GET changes nothing,
        so one whose connection the gateway cut (its admin API restarting with a configuration
        change) is sent again while the gateway runs, for up to :data:`RESTART_WAIT`.

        :raises NotRunning: the gateway is not running.
        :raises ApiFailure: the API answered an error.
        """
        since = None
        while True:
            try:
                return self._call("GET", path + query_string(params), None, self.timeout)
            except ConnectionCut:
                since = self._restart_wait(since)
                if since is None:
                    raise

    def post(self, path: str, body: Any = None, timeout: float | None = -1.0) -> Any:
        """POST ``body`` as JSON to ``path`` and decode the answer.

        :param timeout: seconds to wait (default: the client's; None: as long as it takes).
        """
        data = json.dumps(body if body is not None else {}).encode()
        return self._call("POST", path, data, self.timeout if timeout == -1.0 else timeout)

    def delete(self, path: str, params: Mapping[str, Any] | None = None, timeout: float | None = -1.0) -> Any:
        """DELETE ``path`` (with query ``params``) and decode the answer; never sent twice.

        :param timeout: as for :meth:`post`.
        """
        return self._call("DELETE", path + query_string(params), None, self.timeout if timeout == -1.0 else timeout)

    def upload(self, path: str, source: IO[bytes], size: int,
               progress: Callable[[int, int], None] | None = None) -> Any:
        """POST the file ``source`` (``size`` bytes) to ``path`` in 64 KiB pieces; the answer
        may take as long as the install does."""
        sock = self._connect(None)
        try:
            self._send_head(sock, "POST", path, {"Content-Type": "application/octet-stream",
                                                 "Content-Length": str(size)})
            sent = 0
            try:
                while chunk := source.read(65536):
                    sock.sendall(chunk)
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent, size)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the gateway answered early; read what it said
            return Response(sock).decode()
        finally:
            sock.close()

    def stream(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[bytes]:
        """GET ``path`` and yield the body as it arrives (a followed log)."""
        sock = self._connect(None)
        try:
            self._send_head(sock, "GET", path + query_string(params), {})
            response = Response(sock)
            if response.status >= 400:
                response.decode()
            yield from response.chunks()
        finally:
            sock.close()
