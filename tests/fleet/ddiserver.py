"""A small DDI server (twisted.web) for what gooseBit does not do: cancelAction, maintenance
windows, skip/attempt modes, and answers of 401, 429 and 5xx.

It serves one controller under ``/{tenant}/controller/v1/{controller}`` and its artifacts
under ``/artifacts/<name>`` (with Range, through :class:`tests.updates.resources.RangeFile`).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

from tests.updates.resources import RangeFile

ROOT = "/DEFAULT/controller/v1/gw-1"


class DDIServer(Resource):
    """The server's state is plain attributes the tests set and read.

    :ivar base: the URL the server thinks it is at (for ``_links``).
    :ivar sleep: ``config.polling.sleep``.
    :ivar deployment: the ``deploymentBase`` body offered, or None.
    :ivar cancel: the ``cancelAction`` body offered, or None.
    :ivar ask_config: offer ``_links.configData``.
    :ivar errors: ``(code, headers)`` answered to the next requests instead of the real answer.
    :ivar feedback: every feedback received: ``(kind, action id, body)``.
    :ivar feedback_errors: statuses (or ``(status, headers)``, or ``(status, headers, body)``)
        answered to the next feedback POSTs instead of taking them.
    :ivar config: every configData body received.
    :ivar config_errors: statuses answered to the next configData PUTs instead of taking them.
    :ivar auth: every Authorization header seen.
    :ivar files: artifact name -> RangeFile.
    :ivar offer_until_closed: stop offering an action once closed feedback arrived (as hawkBit);
        False keeps offering it (a server that lost the feedback).
    :ivar waiting_confirmation: hawkBit's confirmation flow: the deployment is offered as a
        ``confirmationBase`` link until a ``confirmed`` feedback comes on it (then as a
        ``deploymentBase``); a ``denied`` one leaves it waiting.
    """

    isLeaf = True

    def __init__(self, base: str = "https://ddi.example") -> None:
        super().__init__()
        self.base = base
        self.sleep = "00:01:00"
        self.deployment: dict[str, Any] | None = None
        self.cancel: dict[str, Any] | None = None
        self.ask_config = False
        self.errors: list[tuple[int, dict[str, str]]] = []
        self.feedback: list[tuple[str, str, dict[str, Any]]] = []
        self.feedback_errors: list[int | tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]] = []
        self.config: list[dict[str, Any]] = []
        self.config_errors: list[int] = []
        self.auth: list[str | None] = []
        self.polls = 0
        self.offer_until_closed = True
        self.waiting_confirmation = False
        self.files: dict[str, RangeFile] = {}

    def render(self, request: Request) -> bytes | int:
        path = request.path.decode()
        if path.startswith("/artifacts/"):
            return self.files[path.rsplit("/", 1)[1]].render_GET(request)
        header = request.getHeader("authorization")
        self.auth.append(header.decode() if isinstance(header, bytes) else header)
        if self.errors:
            code, headers = self.errors.pop(0)
            request.setResponseCode(code)
            for name, value in headers.items():
                request.setHeader(name, value)
            return b'{"message": "scripted error"}'
        method = request.method.decode()
        rest = path[len(ROOT):]
        if method == "GET" and rest == "":
            return self._poll()
        if method == "PUT" and rest == "/configData":
            if self.config_errors:
                request.setResponseCode(self.config_errors.pop(0))
                return b'{"message": "value too long"}'
            self.config.append(json.loads(request.content.read()))
            self.ask_config = False
            return b""
        if method == "GET" and rest.startswith("/deploymentBase/") and self.deployment is not None:
            return json.dumps(self.deployment).encode()
        if method == "GET" and rest.startswith("/confirmationBase/") and self.deployment is not None:
            return json.dumps({"id": self.deployment["id"], "confirmation": self.deployment["deployment"],
                               "actionHistory": {"status": "WAIT_FOR_CONFIRMATION", "messages": []}}).encode()
        if method == "GET" and rest.startswith("/cancelAction/") and self.cancel is not None:
            return json.dumps(self.cancel).encode()
        if method == "POST" and rest.endswith("/feedback"):
            if self.feedback_errors:
                error = self.feedback_errors.pop(0)
                code, headers, body = (*error, b"")[:3] if isinstance(error, tuple) else (error, {}, b"")
                request.setResponseCode(code)
                for name, value in headers.items():
                    request.setHeader(name, value)
                return body
            _, kind, action_id, _ = rest.split("/")
            body = json.loads(request.content.read())
            self.feedback.append((kind, action_id, body))
            if kind == "confirmationBase" and body["confirmation"] == "confirmed":
                self.waiting_confirmation = False
            if kind == "deploymentBase" and body["status"]["execution"] == "closed" and self.offer_until_closed \
                    and self.deployment is not None and str(self.deployment["id"]) == action_id:
                self.deployment = None  # hawkBit offers an action until it is closed
            if kind == "cancelAction" and self.cancel is not None and str(self.cancel["id"]) == action_id:
                self.cancel = None
            return b""
        request.setResponseCode(404)
        return b""

    def _poll(self) -> bytes:
        self.polls += 1
        links: dict[str, Any] = {}
        if self.ask_config:
            links["configData"] = {"href": f"{self.base}{ROOT}/configData"}
        if self.deployment is not None and self.waiting_confirmation:
            links["confirmationBase"] = {"href": f"{self.base}{ROOT}/confirmationBase/{self.deployment['id']}?c=1"}
        elif self.deployment is not None:
            links["deploymentBase"] = {"href": f"{self.base}{ROOT}/deploymentBase/{self.deployment['id']}?c=1"}
        if self.cancel is not None:
            links["cancelAction"] = {"href": f"{self.base}{ROOT}/cancelAction/{self.cancel['id']}"}
        return json.dumps({"config": {"polling": {"sleep": self.sleep}}, "_links": links}).encode()

    def executions(self, kind: str = "deploymentBase") -> list[tuple[str, str]]:
        """``(execution, finished)`` of every feedback of ``kind`` so far."""
        return [(b["status"]["execution"], b["status"]["result"]["finished"])
                for k, _, b in self.feedback if k == kind]


def deployment(action_id: str, files: dict[str, tuple[bytes, str]], base: str = "https://ddi.example",
               download: str = "forced", update: str = "forced", window: str | None = None,
               target: str | None = None) -> dict[str, Any]:
    """A ``deploymentBase`` body of one chunk holding ``files`` (name -> (bytes, sha256))."""
    chunk: dict[str, Any] = {"part": "bApp", "name": "app", "version": "2", "artifacts": [
        {"filename": name, "size": len(data), "hashes": {"sha256": digest},
         "_links": {"download": {"href": f"{base}/artifacts/{name}"}}}
        for name, (data, digest) in files.items()]}
    if target:
        chunk["metadata"] = [{"key": "target", "value": target}]
    body: dict[str, Any] = {"id": action_id, "deployment": {"download": download, "update": update,
                                                            "chunks": [chunk]}}
    if window is not None:
        body["deployment"]["maintenanceWindow"] = window
    return body
