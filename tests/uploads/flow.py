"""Driving a real :class:`UploadService` through Kanto's message flow in integration tests."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from gateway.operations.httpclient import make_http_client
from gateway.uploads.service import UploadService
from gateway.uploads.settings import UploadsSettings
from tests.uploads.realservers import StatusWatcher

DEVICE = ("tenant", "org.example:gateway")


def make_file(path: Path, size: int, seed: int = 1) -> str:
    """Write ``size`` pseudo-random bytes to ``path``; return their SHA-256 (hex)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB, not compressible by accident
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            f.write(chunk)
            sha.update(chunk)
            left -= len(chunk)
    return sha.hexdigest()


@inlineCallbacks
def start_service(test: Any, settings: UploadsSettings | None = None, **kwargs: Any) -> Any:
    """A started upload service on the real reactor (stopped at cleanup); returns it and its watcher."""
    settings = settings or UploadsSettings()
    settings = replace(settings, allow_http=True, mode="lax")
    watcher = StatusWatcher()
    state = Path(test.mktemp())
    http = make_http_client(reactor, None, settings.concurrency)
    service = UploadService(settings, state, reactor, http, watcher, DEVICE,
                            retry_policy=kwargs.pop("retry_policy", lambda attempt: 0.05), **kwargs)
    yield service.startService()
    test.addCleanup(service.stopService)
    return service, watcher


@inlineCallbacks
def upload(service: UploadService, watcher: StatusWatcher, path: str, options: dict[str, str],
           cid: str = "trigger-1") -> Any:
    """Trigger an upload of ``path``, answer its request with ``options``; fires with the final status."""
    before = len(watcher.requests())
    status, body = yield service.handle("trigger", json.dumps(
        {"correlationId": cid, "options": {"upload.files": path}}).encode())
    assert status == 204, body
    requests = yield watcher.wait_requests(before + 1)
    request = requests[-1]
    assert request["options"]["file.path"] == os.path.abspath(path), request
    final = watcher.final(cid)
    status, body = yield service.handle("start", json.dumps(
        {"correlationId": request["correlationId"], "options": options}).encode())
    assert status == 204, body
    result = yield final
    return result
