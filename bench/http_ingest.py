"""HTTP ingest: durable writes/s over keep-alive, beside MQTT QoS 1, and the HTTP link's forward rate.

One gateway process (journal ``sync: sync``, an MQTT link to a closed port so every
write is journaled and stays there), loaded in turn by:

- HTTP: 1 and 16 kept-alive connections, each sending one form write (one alias, a
  64-byte value) and waiting for its 204, which comes only once the write is fsynced;
- MQTT: 1 and 16 ``mosquitto_pub -q 1 -M 1`` clients (one PUBLISH in flight each, as an
  HTTP client has one request), 64-byte payloads on ``telemetry/...``: the same durable path.

Then the HTTP link's forward rate: a gateway with an ``exosite`` HTTP link
(``min_interval: 0``, batches of 1000) takes N writes through the ingest while its cloud is
down; then the test server of ``tests/links/exositeserver.py`` starts in its own process
and the time until it holds all of them is measured (its start-up included).

    .venv/bin/python bench/http_ingest.py [--writes 3000] [--forward 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402  (bench/broker.py)

VALUE = "x" * 64
CIK = "0123456789abcdef0123456789abcdef01234567"

SERVER = """
import sys
from twisted.internet import reactor
from twisted.web.server import Site
sys.path.insert(0, {root!r})
from tests.links.exositeserver import ExositeAPI
api = ExositeAPI(reactor, devices=(("acme", "box", "gw1"),))
want = {want}
store = api._store
def counting(alias, ts, value):
    store(alias, ts, value)
    if len(api.values.get("v", ())) == want:
        print("done", flush=True)
api._store = counting
reactor.listenTCP({port}, Site(api), interface="127.0.0.1")
reactor.run()
"""


def start_gateway(work: Path, broker: int, ingest: int, extra: str) -> subprocess.Popen[bytes]:
    config = work / "gateway.yaml"
    config.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n  log_level: warn\n  device_id: gw1\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker}:interface=127.0.0.1'\n"
        "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
        f"ingest:\n  endpoint: 'tcp:{ingest}:interface=127.0.0.1'\n{extra}")
    proc = subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                             "gateway", "--config", str(config)], cwd=work)
    wait_for_port(broker), wait_for_port(ingest)
    time.sleep(0.5)
    return proc


async def http_client(port: int, count: int, first: int) -> None:
    """One kept-alive connection: ``count`` writes, each waiting for its 204."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(first, first + count):
            body = f"v={i:08d}{VALUE}".encode()
            writer.write(b"POST /onep:v1/stack/alias HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\nX-Exosite-CIK: " + CIK.encode()
                         + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 204"):
                raise RuntimeError(f"write {i}: {head.splitlines()[0]!r}")
    finally:
        writer.close()


def http_load(port: int, writes: int, clients: int) -> float:
    """Writes/s of ``clients`` kept-alive connections sharing ``writes``."""
    share = writes // clients

    async def run() -> None:
        await asyncio.gather(*(http_client(port, share, c * share) for c in range(clients)))

    started = time.perf_counter()
    asyncio.run(run())
    return share * clients / (time.perf_counter() - started)


def mqtt_load(port: int, writes: int, clients: int) -> float:
    """Messages/s of ``clients`` QoS 1 publishers, one PUBLISH in flight each, sharing ``writes``."""
    share = writes // clients
    lines = b"".join(f"{i:08d}{VALUE}\n".encode() for i in range(share))

    def publish(n: int) -> None:
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", f"telemetry/m{n}", "-q", "1",
                        "-M", "1", "-l"], input=lines, check=True, timeout=900)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return share * clients / (time.perf_counter() - started)


def durable_writes(writes: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, ingest = free_port(), free_port()
        link = (f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={free_port()}'\n"
                "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n")
        gw = start_gateway(work, broker, ingest, link)
        try:
            for clients in (1, 16):
                mqtt = mqtt_load(broker, writes, clients)
                http = http_load(ingest, writes, clients)
                rows.append({"clients": clients, "http_writes_per_s": http, "mqtt_qos1_msgs_per_s": mqtt,
                             "http_vs_mqtt": http / mqtt})
        finally:
            gw.terminate()
            gw.wait(timeout=30)
    return rows


def forward_rate(count: int, limit: float = 300.0) -> dict[str, object]:
    """Journal ``count`` writes through the ingest while the cloud is down, then time the drain."""
    count -= count % 16  # 16 clients share it evenly
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cloud = free_port()
        broker, ingest = free_port(), free_port()
        link = ("http_links:\n  links:\n    murano:\n"
                f"      url: 'http://127.0.0.1:{cloud}'\n      vendor: acme\n      model: box\n"
                "      min_interval: 0\n      batch_wait: 0.05\n      batch_records: 1000\n"
                "      backoff_initial: 0.05\n      backoff_max: 0.1\n")
        gw = start_gateway(work, broker, ingest, link)
        server = None
        try:
            http_load(ingest, count, 16)
            server = subprocess.Popen([sys.executable, "-c", SERVER.format(root=str(ROOT), want=count, port=cloud)],
                                      stdout=subprocess.PIPE)
            started = time.perf_counter()
            assert server.stdout is not None
            watchdog = threading.Timer(limit, server.kill)  # a stuck link ends the wait, not the machine
            watchdog.start()
            line = server.stdout.readline()
            watchdog.cancel()
            done = time.perf_counter()
            if line.strip() != b"done":
                raise RuntimeError(f"the test server said {line!r}")
            return {"records": count, "drain_s": done - started, "forward_records_per_s": count / (done - started),
                    "note": "from the test server's start (its own start-up included) to the last record"}
        finally:
            gw.terminate()
            gw.wait(timeout=30)
            if server is not None:
                server.terminate()
                server.wait(timeout=30)


def main() -> int:
    """Run both parts, print the tables, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=3000)
    parser.add_argument("--forward", type=int, default=5000)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "http_ingest.json"))
    args = parser.parse_args()
    rows = durable_writes(args.writes)
    print("| clients | HTTP ingest writes/s | MQTT QoS 1 msgs/s | HTTP / MQTT |")
    print("|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['http_writes_per_s']:.0f} | {row['mqtt_qos1_msgs_per_s']:.0f} "
              f"| {row['http_vs_mqtt']:.2f} |")
    forward = forward_rate(args.forward)
    print(f"\nHTTP link (exosite mode, min_interval 0, batches of 1000) drained a backlog of {forward['records']} "
          f"records in {forward['drain_s']:.2f} s: {forward['forward_records_per_s']:.0f} records/s")
    write_json(args.json, {"writes": args.writes, "durable": rows, "forward": forward})
    return 0


if __name__ == "__main__":
    sys.exit(main())
