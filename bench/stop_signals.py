"""Stop signals under load: a real ``twistd gateway`` signalled at random moments, many times.

Each round starts the gateway (debug logging to a file, a link to a real mosquitto cloud, a
hosted program) on one state directory, loads it (QoS 1 publishes routed to the link's journal,
retained QoS 1 publishes, admin API requests on its unix socket) and sends it signals at a
random moment, in the start or under load: SIGTERM (most rounds), SIGINT, a second SIGTERM while
it stops, a burst of SIGUSR1 (log rotation) then SIGTERM, or SIGHUP (the default action: the
process ends at once, docs/install.md). Every few rounds the cloud mosquitto is stopped (SIGTERM,
its sessions persisted) and started again. For each round: how long after the (first) stop
signal the process ended, its exit status, its log's last line; a gateway still running
``--hang-after`` seconds after the signal is dumped with py-spy and killed. After the last round
one more gateway runs, with the cloud up, until a persistent subscriber on the cloud has every
message the gateway acknowledged (or ``--drain`` seconds): the messages missing are losses.

    .venv/bin/python bench/stop_signals.py [--rounds 120] [--reactor steady|asyncio] [--seed 1]
        [--port 33300] [--json out.json]

``--reactor asyncio`` runs ``twistd --reactor=asyncio``: Twisted's own asyncio reactor.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, write_json  # noqa: E402

PYSPY = os.environ.get("PYSPY", "/tmp/pyspy/bin/py-spy")
#: Each round's signal, by weight.
KINDS = {"term": 70, "int": 10, "term-term": 10, "usr1-term": 8, "hup": 2}

CONFIG = """\
gateway:
  state_dir: {state}
  log_level: debug
  shutdown_timeout: {shutdown_timeout}
broker:
  listeners:
    default:
      endpoint: 'tcp:{port}:interface=127.0.0.1'
  plugins:
    amqtt.plugins.authentication.AnonymousAuthPlugin: {{allow_anonymous: true}}
ingest:
  enabled: false
telemetry:
  metrics_endpoint: ''
links:
  links:
    cloud:
      endpoint: 'tcp:host=127.0.0.1:port={cloud}'
      backoff_initial: 0.2
      backoff_max: 1.0
      routes:
        - {{filter: 'telemetry/#', topic: 'up/{{#}}', qos: 1}}
apps:
  programs:
    ticker:
      command: /bin/sh -c 'while true; do echo tick; sleep 0.2; done'
"""


class Cloud:
    """mosquitto as the cloud, its sessions kept across its restarts, and a persistent QoS 1
    subscriber on ``up/#`` that collects every payload it gets."""

    def __init__(self, work: Path, port: int) -> None:
        self.port, self.conf = port, work / "cloud.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {work}/\nmax_queued_messages 0\nmax_inflight_messages 0\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.got: set[str] = set()
        self.start()
        self.sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stop-signals-sub", clean_session=False)
        self.sub.on_connect = lambda c, u, f, rc, p: c.subscribe("up/#", qos=1)
        self.sub.on_message = lambda c, u, m: self.got.add(m.payload.decode())
        self.sub.reconnect_delay_set(0.1, 0.5)
        self.sub.connect_async("127.0.0.1", port)
        self.sub.loop_start()

    def start(self) -> None:
        """Start mosquitto (again) on its port."""
        self.process = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        """Stop mosquitto with SIGTERM (it saves its sessions) and wait for it."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def close(self) -> None:
        """Stop the subscriber and mosquitto."""
        self.sub.loop_stop()
        self.stop()


def wait_port(port: int, timeout: float = 10.0) -> bool:
    """Whether something listens on 127.0.0.1:``port`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


class Load:
    """QoS 1 publishes (every 20th also retained on ``state/last``) and admin API requests
    against one gateway until :meth:`stop`; :meth:`acked` lists the payloads it acknowledged."""

    def __init__(self, port: int, admin_sock: Path, tag: str) -> None:
        self.port, self.admin_sock, self.tag = port, admin_sock, tag
        self.sent: list[tuple[str, mqtt.MQTTMessageInfo, bool]] = []
        self.admin_answers = 0
        self._stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{tag}")
        self.client.max_inflight_messages_set(50)
        self.client.max_queued_messages_set(0)
        self.threads = [threading.Thread(target=self._publish, daemon=True),
                        threading.Thread(target=self._admin, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _publish(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.connect("127.0.0.1", self.port, keepalive=5)
                break
            except OSError:
                time.sleep(0.02)
        self.client.loop_start()
        n = 0
        while not self._stop.is_set():
            if not self.client.is_connected() or len(self.sent) - self._done() > 200:
                time.sleep(0.005)
                continue
            payload = f"{self.tag}-{n}"
            retain = n % 20 == 0
            info = self.client.publish("state/last" if retain else f"telemetry/{self.tag}", payload, qos=1,
                                       retain=retain)
            self.sent.append((payload, info, retain))
            n += 1

    def _done(self) -> int:
        return sum(1 for _, info, _ in self.sent[-300:] if published(info)) + max(len(self.sent) - 300, 0)

    def _admin(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(1)
                    s.connect(str(self.admin_sock))
                    s.sendall(b"GET /status HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    if s.recv(12).endswith(b" 200"):
                        self.admin_answers += 1
            except OSError:
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop publishing and asking."""
        self._stop.set()
        for thread in self.threads:
            thread.join(5)
        self.client.loop_stop()

    def acked(self) -> tuple[list[str], list[str]]:
        """The telemetry payloads and the retained payloads the gateway acknowledged."""
        acked = [(p, retain) for p, info, retain in self.sent if published(info)]
        return [p for p, retain in acked if not retain], [p for p, retain in acked if retain]


def published(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged this publish (PUBACK)."""
    try:
        return info.is_published()
    except RuntimeError:  # (paho: it was never sent, the client not connected)
        return False


def start_gateway(work: Path, reactor: str, log: Path) -> subprocess.Popen[bytes]:
    """``twistd --nodaemon gateway`` on ``work/gateway.yaml``, logging to ``log``; SIGINT,
    SIGQUIT and SIGHUP at their defaults (a shell's background job would have the first two
    ignored, ``nohup`` the third)."""
    def defaults() -> None:
        for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        os.setpgrp()

    extra = ["--reactor=asyncio"] if reactor == "asyncio" else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen([sys.executable, str(BIN / "twistd"), *extra, "--nodaemon", "--pidfile=",
                             f"--logfile={log}", "gateway", "--config", str(work / "gateway.yaml")],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=open(str(log) + ".err", "wb"),
                            preexec_fn=defaults)


def wait_started(log: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Whether ``log`` says ``gateway started`` before ``timeout`` (or the process ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and b"gateway started" in log.read_bytes():
            return True
        time.sleep(0.02)
    return False


def last_line(log: Path) -> str:
    """The last line of ``log`` (its rotated files aside)."""
    try:
        lines = log.read_bytes().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][26:] if lines else "(empty)"


def one_round(n: int, args: argparse.Namespace, work: Path, cloud: Cloud, rng: random.Random) -> dict[str, object]:
    """Start, load and signal one gateway; what happened."""
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    log = work / "logs" / f"r{n:03d}.log"
    proc = start_gateway(work, args.reactor, log)
    in_start = rng.random() < 0.2
    load = None
    if in_start and rng.random() < 0.5:
        time.sleep(rng.uniform(0.0, 1.5))  # (mostly while Python and twistd load)
    elif in_start:  # (while the services start: the log file opens once the tree is built)
        deadline = time.monotonic() + 30
        while not log.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
    else:
        if not wait_started(log, proc):
            proc.kill()
            proc.wait()
            return {"round": n, "kind": kind, "error": "did not start", "last": last_line(log)}
        load = Load(args.port, work / "state" / "run" / "admin.sock", f"r{n}")
        time.sleep(rng.uniform(0.2, 3.0))
    if kind == "usr1-term":
        for _ in range(20):
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.5))
    first = {"term": signal.SIGTERM, "int": signal.SIGINT, "term-term": signal.SIGTERM,
             "usr1-term": signal.SIGTERM, "hup": signal.SIGHUP}[kind]
    signalled = time.monotonic()
    proc.send_signal(first)
    if kind == "term-term":
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGTERM)
    hung, stack = False, ""
    try:
        status = proc.wait(args.hang_after)
    except subprocess.TimeoutExpired:
        hung = True
        stack = subprocess.run([PYSPY, "dump", "--pid", str(proc.pid)], capture_output=True, text=True).stdout
        proc.kill()
        status = proc.wait()
    stopped = time.monotonic() - signalled
    acked: tuple[list[str], list[str]] = ([], [])
    if load is not None:
        load.stop()
        acked = load.acked()
    return {"round": n, "kind": kind, "in_start": in_start, "stop_s": round(stopped, 3), "status": status,
            "hung": hung, "stack": stack, "last": last_line(log), "acked": acked[0], "retained": acked[1],
            "admin": load.admin_answers if load else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=120)
    parser.add_argument("--reactor", choices=("steady", "asyncio"), default="steady")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=33300, help="the broker's; the cloud's is the next one")
    parser.add_argument("--shutdown-timeout", type=float, default=4.0)
    parser.add_argument("--hang-after", type=float, default=20.0)
    parser.add_argument("--drain", type=float, default=60.0)
    parser.add_argument("--cloud-every", type=int, default=6, help="stop the cloud every N rounds, for one round")
    parser.add_argument("--json", default="")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="stop-signals-"))
    (work / "logs").mkdir()
    (work / "gateway.yaml").write_text(CONFIG.format(state=work / "state", port=args.port, cloud=args.port + 1,
                                                     shutdown_timeout=args.shutdown_timeout))
    cloud = Cloud(work, args.port + 1)
    results: list[dict[str, object]] = []
    try:
        for n in range(args.rounds):
            cloud_down = n % args.cloud_every == args.cloud_every - 1
            if cloud_down:
                cloud.stop()
            result = one_round(n, args, work, cloud, rng)
            if cloud_down:
                cloud.start()
            results.append(result)
            print(f"{n:3d} {result['kind']:9s} {'start' if result.get('in_start') else 'load ':5s} "
                  f"stop {result.get('stop_s', '-')!s:>6} s  status {result.get('status')!s:>4}"
                  f"{'  HUNG' if result.get('hung') else ''}  acked {len(result.get('acked', []))}"  # type: ignore[arg-type]
                  f"  {result.get('last', '')[:90]}", flush=True)
            if result.get("hung"):
                print(result["stack"], flush=True)
        # The last gateway, until the cloud has everything acknowledged.
        log = work / "logs" / "final.log"
        proc = start_gateway(work, args.reactor, log)
        acked = {p for r in results for p in r.get("acked", [])}  # type: ignore[attr-defined]
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline and not acked <= cloud.got:
            time.sleep(0.2)
        lost = sorted(acked - cloud.got)
        retained_ok = check_retained(args.port, results) if wait_started(log, proc) else None
        proc.terminate()
        proc.wait(30)
    finally:
        cloud.close()
    unclean_starts = sum(log.read_text(errors="replace").count("did not stop cleanly")
                         for log in (work / "logs").glob("*.log"))
    summary(results, acked, lost, retained_ok, unclean_starts)
    if args.json:
        write_json(args.json, {"rounds": [{k: v for k, v in r.items() if k not in ("acked", "retained")}
                                          for r in results], "acked": len(acked), "lost": lost})
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work: {work}")
    return 1 if lost or any(r.get("hung") for r in results) else 0


def check_retained(port: int, results: list[dict[str, object]]) -> bool | None:
    """Whether the gateway's retained ``state/last`` is the last acknowledged one, or a later one."""
    last = [p for r in results for p in r.get("retained", [])]  # type: ignore[attr-defined]
    if not last:
        return None
    got: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retained-check")
    client.on_connect = lambda c, u, f, rc, p: c.subscribe("state/last", qos=1)
    client.on_message = lambda c, u, m: got.append(m.payload.decode())
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    if not got:
        return False
    want_round, want_n = last[-1].split("-")[0][1:], int(last[-1].split("-")[1])
    have_round, have_n = got[0].split("-")[0][1:], int(got[0].split("-")[1])
    return (int(have_round), have_n) >= (int(want_round), want_n)


def summary(results: list[dict[str, object]], acked: set[str], lost: list[str], retained_ok: bool | None,
            unclean_starts: int) -> None:
    """Print the table: per kind, tries, hangs, stop times, statuses; losses."""
    print(f"\n{'kind':10s} {'tries':>5s} {'hangs':>5s} {'p50 s':>6s} {'max s':>6s}  statuses")
    for kind in KINDS:
        rows = [r for r in results if r["kind"] == kind and "stop_s" in r]
        if not rows:
            continue
        times = [float(r["stop_s"]) for r in rows]  # type: ignore[arg-type]
        statuses: dict[object, int] = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        print(f"{kind:10s} {len(rows):5d} {sum(1 for r in rows if r['hung']):5d} {statistics.median(times):6.2f} "
              f"{max(times):6.2f}  {statuses}")
    errors = [r for r in results if "error" in r]
    print(f"rounds that did not start: {len(errors)}")
    clean = [r for r in results if str(r.get("last", "")).endswith("Server Shut Down.")]
    print(f"logs ending 'Server Shut Down.': {len(clean)} of {len(results)}; in the start: "
          f"{sum(1 for r in clean if r.get('in_start'))} of {sum(1 for r in results if r.get('in_start'))}")
    print(f"starts that found the previous run unclean: {unclean_starts}")
    print(f"acknowledged {len(acked)}, lost {len(lost)} {lost[:10]}; retained state/last kept: {retained_ok}")


if __name__ == "__main__":
    sys.exit(main())
