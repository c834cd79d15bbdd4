"""A real gooseBit (a hawkBit DDI server on FastAPI) on 127.0.0.1 with SQLite, from its own
virtualenv (``make tools``: ``.venv-tools/goosebit``), and nginx in front of it to slow its
downloads down (so a test can kill a gateway midway) and to log the Range of each request.

gooseBit is driven without a browser: ``POST /setup`` creates the admin and answers a
bearer token; ``PUT /api/v1/devices`` registers a device (and its TargetToken),
``PUT /api/v1/software`` uploads a bundle (``.swu``), ``PATCH /api/v1/devices`` assigns it,
``GET /api/v1/devices`` and ``/api/v1/devices/<id>/log`` show state and the last feedback's details.

``aerich upgrade`` (1.5 s) migrates an empty database once per test run; each server starts
on a copy of it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

from tests.ports import free_port, listened_by

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON = ROOT / ".venv-tools" / "goosebit" / "bin" / "python"
AERICH = ROOT / ".venv-tools" / "goosebit" / "bin" / "aerich"

PROXY_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$status "$http_range" $body_bytes_sent $request_uri';
    access_log {dir}/access.log ranges;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_set_header Host $http_host;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;  # (limit_rate applies to buffered responses)
            limit_rate {rate};
        }}
    }}
}}
"""


#: The database ``aerich upgrade`` migrated, copied for each server (made by the first one).
_migrated: Path | None = None


def goosebit_available() -> bool:
    """True when ``make tools`` made gooseBit's virtualenv."""
    return PYTHON.exists() and AERICH.exists()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not listened_by(process.pid, port):  # (not a connection: another run's server may hold the port)
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _environment(**settings: str) -> dict[str, str]:
    """This process's environment without its virtualenv and ``PYTHONPATH`` (gooseBit runs from
    its own), with ``settings`` added."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("VIRTUAL_ENV") and name != "PYTHONPATH"}
    return {**env, **settings}


def _migrated_database(log: Path) -> Path:
    """An empty gooseBit database, migrated by ``aerich upgrade`` (its output in ``log``) at the
    first call of the test run and removed when the run ends."""
    global _migrated
    if _migrated is None:
        workdir = Path(tempfile.mkdtemp(prefix="goosebit-db-"))
        atexit.register(shutil.rmtree, workdir, True)
        env = _environment(GOOSEBIT_DB_URI=f"sqlite:///{workdir}/db.sqlite3")
        migrations = PYTHON.parent.parent / "lib"
        location = next(migrations.glob("python3*/site-packages/goosebit/db/migrations"))
        (workdir / "pyproject.toml").write_text(
            f'[tool.aerich]\ntortoise_orm = "goosebit.db.config.TORTOISE_CONF"\nlocation = "{location}"\n'
            'src_folder = "./."\n')
        with log.open("wb") as out:
            subprocess.run([str(AERICH), "upgrade"], cwd=workdir, env=env, stdout=out, stderr=out,
                           check=True, timeout=120)
        _migrated = workdir / "db.sqlite3"
    return _migrated


class GooseBit:
    """gooseBit (device tokens required: ``strict``) behind a rate-limiting nginx.

    :param workdir: its database, artifacts, logs.
    :param rate: nginx's ``limit_rate`` towards the gateway (``2m``: 2 MB/s).
    :ivar url: the base URL devices use (nginx's).
    """

    def __init__(self, workdir: Path, rate: str = "2m") -> None:
        self.workdir = workdir.absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = _environment(GOOSEBIT_DB_URI=f"sqlite:///{self.workdir}/db.sqlite3",
                           GOOSEBIT_ARTIFACTS_DIR=str(self.workdir / "artifacts"), GOOSEBIT_POLL_TIME="00:00:01",
                           GOOSEBIT_SECRET_KEY=uuid.uuid4().hex + uuid.uuid4().hex[:11],
                           GOOSEBIT_DEVICE_AUTH__ENABLE="true", GOOSEBIT_DEVICE_AUTH__MODE="strict")
        self.log = self.workdir / "goosebit.log"
        shutil.copyfile(_migrated_database(self.log), self.workdir / "db.sqlite3")
        self.process = subprocess.Popen(
            [str(PYTHON), "-m", "uvicorn", "goosebit:app", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.workdir, env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        self.proxy: subprocess.Popen[bytes] | None = None
        try:
            _wait_for_port(self.port, self.process, "gooseBit", self.log, 60)
            self._start_proxy(rate)
            self.token = self._admin()
        except Exception:
            self.stop()
            raise

    def _start_proxy(self, rate: str) -> None:
        proxy_dir = self.workdir / "nginx"
        proxy_dir.mkdir(exist_ok=True)
        self.proxy_port = free_port()
        conf = proxy_dir / "nginx.conf"
        conf.write_text(PROXY_CONF.format(dir=proxy_dir, port=self.proxy_port, upstream=self.port, rate=rate))
        self.proxy = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(proxy_dir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(self.proxy_port, self.proxy, "nginx", proxy_dir / "error.log", 10)
        self.url = f"http://127.0.0.1:{self.proxy_port}"

    def _admin(self) -> str:
        deadline = time.monotonic() + 60
        while True:  # the port opens before the app's start-up (database) is done
            try:
                answer = self.call("POST", "/setup", b"username=admin&password=secret-pw",
                                   "application/x-www-form-urlencoded", authorization=None)
                return str(answer["access_token"])
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json",
             authorization: str | None = "admin") -> Any:
        """One request to gooseBit itself (blocking; for test set-up and checks).

        :param authorization: the ``Authorization`` header; ``admin``: the admin's bearer token."""
        headers = {"Content-Type": content_type} if body is not None else {}
        if authorization is not None:
            headers["Authorization"] = f"Bearer {self.token}" if authorization == "admin" else authorization
        request = Request(f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers)
        with urlopen(request, timeout=30) as response:
            data = response.read()
        return json.loads(data) if data else None

    def add_device(self, device_id: str, token: str) -> None:
        """Register a device with its TargetToken."""
        self.call("PUT", "/api/v1/devices", json.dumps({"devices": [device_id], "auth_token": token}).encode())

    def register(self, device_id: str, token: str) -> None:
        """Send a first ``configData`` as the device would (with its TargetToken, straight to
        gooseBit: nginx's log stays the gateway's), which takes it from Unknown to Registered:
        its gateway's first poll is then offered the assigned software, where an Unknown
        device's is told to come back in 10 s (gooseBit's fixed registration sleep)."""
        self.call("PUT", f"/DEFAULT/controller/v1/{device_id}/configData",
                  json.dumps({"mode": "merge", "data": {}}).encode(), authorization=f"TargetToken {token}")

    def upload(self, filename: str, data: bytes) -> int:
        """Upload a bundle; return its software id."""
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        answer = self.call("PUT", "/api/v1/software", body, f"multipart/form-data; boundary={boundary}")
        return int(answer["id"])

    def assign(self, device_id: str, software_id: int) -> None:
        """Assign the software to the device (gooseBit's ``Assigned`` update mode)."""
        self.call("PATCH", "/api/v1/devices",
                  json.dumps({"devices": [device_id], "software": str(software_id)}).encode())

    def device(self, device_id: str) -> dict[str, Any]:
        """The device as gooseBit's API lists it (``last_state``, ``sw_version``, ...)."""
        devices = self.call("GET", "/api/v1/devices")["devices"]
        return next((d for d in devices if d["id"] == device_id), {})

    def device_log(self, device_id: str) -> str:
        """The device's last feedback details as gooseBit keeps them."""
        return str(self.call("GET", f"/api/v1/devices/{device_id}/log").get("log") or "")

    def requests(self) -> list[tuple[int, str, int, str]]:
        """nginx's log of the requests devices made: status, Range asked for (``""``: none), bytes
        sent, URI."""
        log = self.workdir / "nginx" / "access.log"
        entries = []
        for line in (log.read_text().splitlines() if log.exists() else []):
            status, rest = line.split(" ", 1)
            asked, sent, uri = rest.rsplit(" ", 2)
            asked = asked.strip('"')
            entries.append((int(status), "" if asked == "-" else asked, int(sent), uri))
        return entries

    def downloads(self) -> list[tuple[int, str, int]]:
        """nginx's log of artifact requests: status, Range asked for (``""``: none), bytes sent."""
        return [(status, asked, sent) for status, asked, sent, uri in self.requests() if uri.endswith("/download")]

    def stop(self) -> None:
        """Stop nginx and gooseBit and wait for them."""
        if self.proxy is not None:
            _stop(self.proxy)
        _stop(self.process)
