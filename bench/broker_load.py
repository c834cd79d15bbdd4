"""Broker under load: our broker vs mosquitto, in one run.

Four cases, each run against a fresh broker process on 127.0.0.1, the brokers alternating
(gateway, mosquitto, gateway, mosquitto, ...) for ``--repeat`` rounds; the table quotes
medians and the ratio gateway/mosquitto; JSON goes to ``bench/results/broker_load.json``.

- ``accept``: ``--connections`` raw MQTT 3.1.1 clients (clean session, unique client ids)
  connect as fast as the client manages with ``--accept-concurrency`` handshakes in flight,
  each waiting for its CONNACK (``20 02 00 00``); connections per second (CONNACKs over
  the elapsed time) and the CONNACK latency (from ``connect()`` to the CONNACK) p50/p99.
  All stay open until the last CONNACK, then close. "listen overflows" is the kernel's
  ``TcpExt ListenOverflows`` meanwhile (machine-wide): a full accept queue drops the SYN,
  and that client retries after a second, which shows in the p99.
- ``flood``: a subscriber and a publisher (raw clients in this process) exchange QoS 1
  messages at ``--rate`` msg/s, the publish time in the payload. After ``--baseline`` s a
  flooder process opens ``--flood`` connections in all, ``--flood-concurrency`` at a time,
  that send garbage (random bytes, a reserved packet type, a CONNECT with a bad protocol
  name, a PUBLISH before CONNECT) or nothing, and close after the broker does or after
  ``--flood-hold`` s. The pair's delivery latency p50/p99 before and during the flood,
  and how many flood connections were made, how fast.
- ``fanout``: ``--subscribers`` raw clients in this process subscribe to one topic at
  QoS 1 and PUBACK every message; ``mosquitto_pub -l -q 1`` publishes ``--fanout-messages``;
  deliveries/s = subscribers x messages / time until every subscriber has them all.
- ``many``: ``--pairs`` ``mosquitto_pub -l`` -> ``mosquitto_sub -C`` pairs, each on its own
  topic, ``--many-messages`` each, at QoS 0 and at QoS 1; total msg/s.

    .venv/bin/python bench/broker_load.py [--cases accept,flood,fanout,many] [--repeat 2]
        [--connections 2000] [--flood 20000] [--rate 200] [--subscribers 100]
        [--fanout-messages 2000] [--pairs 8] [--many-messages 5000]   # about 2 minutes
    .venv/bin/python bench/broker_load.py --repeat 1 --connections 300 --flood 2000 \
        --min-duration 2 --fanout-messages 200 --many-messages 500   # a quick look

Every case also reports the broker process's CPU seconds during the run. Everything
(brokers, clients, flooder) shares the machine's cores, so on a small machine the client
side (this process for ``accept``, ``flood``'s pair and ``fanout``; the Python flooder)
limits the mosquitto numbers first: where mosquitto's CPU is far below the run's wall time,
its rate is the client's, and the ratio flatters ours.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import random
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import ROOT, free_port, start_gateway, start_mosquitto, wait_for_port, write_json  # noqa: E402

from gateway.mqtt import packets  # noqa: E402  (the gateway's one MQTT codec)

#: ``(port, work dir) -> broker process``.
Starter = Callable[[int, Path], "subprocess.Popen[bytes]"]
BROKERS: list[tuple[str, Starter]] = [("gateway", start_gateway), ("mosquitto", start_mosquitto)]
CASES = ("accept", "flood", "fanout", "many")
CONNACK_OK = b"\x20\x02\x00\x00"
PAYLOAD = b"x" * 64


# --- MQTT 3.1.1 packets -------------------------------------------------------------------

def connect_packet(client_id: str, keep_alive: int = 600) -> bytes:
    """CONNECT, protocol level 4 (MQTT 3.1.1), clean session, no will, no credentials."""
    return packets.connect(client_id, keep_alive, True)


def subscribe_packet(topic_filter: str, qos: int = 1, packet_id: int = 1) -> bytes:
    """SUBSCRIBE to one filter."""
    return packets.subscribe(packet_id, [(topic_filter, qos)])


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    """PUBLISH at QoS 1."""
    return packets.publish(topic, payload, 1, False, packet_id)


DISCONNECT = b"\xe0\x00"


# --- a raw asyncio client -----------------------------------------------------------------

class RawClient(asyncio.Protocol):
    """A minimal MQTT client: frames what the broker sends, PUBACKs QoS 1 PUBLISHes (one write
    per read), and hands each payload to ``on_message``.

    :param on_message: called with the payload of every PUBLISH received.
    """

    def __init__(self, on_message: Callable[[bytes], None] | None = None) -> None:
        self.on_message = on_message
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future[bytes] = loop.create_future()
        self.suback: asyncio.Future[bytes] | None = None  # set by whoever subscribes, and awaits it
        self.pubacks = 0
        self._next_id = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        """Take every complete packet out of the buffer; answer QoS 1 PUBLISHes in one write."""
        buffer = self.buffer
        buffer += data
        acks = bytearray()
        offset, end = 0, len(buffer)
        while end - offset >= 2:
            first, length, shift, pos, whole = buffer[offset], 0, 0, offset + 1, False
            while pos < end and shift < 28:
                byte = buffer[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    whole = True
                    break
            if not whole or pos + length > end:
                break
            body = bytes(buffer[pos:pos + length])
            offset = pos + length
            kind = first >> 4
            if kind == 3:
                topic_length = (body[0] << 8) | body[1]
                start = 2 + topic_length
                if first & 0x06:
                    acks += b"\x40\x02" + body[start:start + 2]
                    start += 2
                if self.on_message is not None:
                    self.on_message(body[start:])
            elif kind == 4:
                self.pubacks += 1
            elif kind == 2 and not self.connack.done():
                self.connack.set_result(bytes([first, length]) + body)
            elif kind == 9 and self.suback is not None and not self.suback.done():
                self.suback.set_result(body)
        del buffer[:offset]
        if acks and self.transport is not None:
            self.transport.write(bytes(acks))

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail whoever still waits for a reply."""
        for future in (self.connack, self.suback):
            if future is not None and not future.done():
                future.set_exception(ConnectionError("closed by the broker"))

    def publish(self, topic: str, payload: bytes) -> None:
        """Send a QoS 1 PUBLISH with the next packet id."""
        self._next_id = self._next_id % 65535 + 1
        assert self.transport is not None
        self.transport.write(publish_packet(topic, payload, self._next_id))

    def close(self) -> None:
        """DISCONNECT and close."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(DISCONNECT)
            self.transport.close()


async def open_client(port: int, client_id: str, topic_filter: str | None = None,
                      on_message: Callable[[bytes], None] | None = None, timeout: float = 30.0) -> RawClient:
    """Connect a :class:`RawClient` (CONNACK checked) and subscribe it at QoS 1 if ``topic_filter``."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: RawClient(on_message), "127.0.0.1", port), timeout)
    assert client.transport is not None
    if topic_filter is not None:
        client.suback = loop.create_future()
    client.transport.write(connect_packet(client_id)
                           + (subscribe_packet(topic_filter) if topic_filter is not None else b""))
    connack = await asyncio.wait_for(client.connack, timeout)
    if connack != CONNACK_OK:
        raise RuntimeError(f"{client_id}: CONNACK {connack.hex()}")
    if client.suback is not None:
        suback = await asyncio.wait_for(client.suback, timeout)
        if suback[2:] != b"\x01":
            raise RuntimeError(f"{client_id}: SUBACK {suback.hex()}")
    return client


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets of the
    network namespace: ``TcpExt ListenOverflows`` in ``/proc/net/netstat``), or -1 if unknown."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            fields = dict(zip(names.split()[1:], values.split()[1:]))
            return int(fields.get("ListenOverflows", -1))
    return -1


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank), or NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# --- accept --------------------------------------------------------------------------------

async def run_accept(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Open ``args.connections`` MQTT connections, ``args.accept_concurrency`` at a time; time the CONNACKs."""
    limit = asyncio.Semaphore(args.accept_concurrency)
    latencies: list[float] = []
    writers: list[asyncio.StreamWriter] = []
    failures: dict[str, int] = {}
    prefix = f"acc{time.monotonic_ns()}-"

    async def one(index: int) -> None:
        async with limit:
            began = time.perf_counter()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
                writers.append(writer)
                writer.write(connect_packet(f"{prefix}{index}"))
                reply = await asyncio.wait_for(reader.readexactly(4), 30)
                if reply != CONNACK_OK:
                    raise RuntimeError(f"CONNACK {reply.hex()}")
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, RuntimeError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            latencies.append(time.perf_counter() - began)

    overflows = listen_overflows()
    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(args.connections)))
    elapsed = time.perf_counter() - started
    overflows = listen_overflows() - overflows if overflows >= 0 else -1
    for writer in writers:
        try:
            writer.write(DISCONNECT)
            writer.close()
        except OSError:
            pass
    await asyncio.gather(*(writer.wait_closed() for writer in writers), return_exceptions=True)
    return {"connections": args.connections, "connacks": len(latencies), "failures": failures,
            "elapsed_s": elapsed, "conn_per_s": len(latencies) / elapsed, "listen_overflows": overflows,
            "connack_p50_ms": percentile(latencies, 0.50) * 1e3, "connack_p99_ms": percentile(latencies, 0.99) * 1e3}


# --- flood ---------------------------------------------------------------------------------

def flood_payloads(rng: random.Random) -> list[tuple[str, bytes]]:
    """What the flood connections send, by kind (``silent`` sends nothing)."""
    return [
        ("random", rng.randbytes(64)),
        ("reserved_type", b"\x00\x02\x00\x00"),
        ("bad_protocol", connect_packet(f"flood{rng.getrandbits(32)}").replace(b"MQTT", b"MQTX", 1)),
        ("publish_first", publish_packet("flood", b"x", 1)),
        ("silent", b""),
    ]


async def _flood(port: int, total: int, concurrency: int, hold: float) -> dict[str, Any]:
    """Open ``total`` garbage connections, ``concurrency`` at a time (the flooder's loop)."""
    rng = random.Random(total)
    limit = asyncio.Semaphore(concurrency)
    tally = {"made": 0, "failed": 0, "closed_by_broker": 0, "held": 0}
    failures: dict[str, int] = {}

    async def one(index: int) -> None:
        kinds = flood_payloads(rng)
        _, data = kinds[index % len(kinds)]
        async with limit:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            except (OSError, asyncio.TimeoutError) as exc:
                tally["failed"] += 1
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                return
            tally["made"] += 1
            try:
                if data:
                    writer.write(data)
                deadline = time.monotonic() + hold
                while (left := deadline - time.monotonic()) > 0:
                    if not await asyncio.wait_for(reader.read(4096), left):
                        tally["closed_by_broker"] += 1
                        break
                else:
                    tally["held"] += 1
            except asyncio.TimeoutError:
                tally["held"] += 1
            except OSError:
                tally["closed_by_broker"] += 1
            writer.transport.abort()

    started = time.monotonic()
    await asyncio.gather(*(one(index) for index in range(total)))
    ended = time.monotonic()
    return {**tally, "failures": failures, "started": started, "ended": ended,
            "elapsed_s": ended - started, "conn_per_s": tally["made"] / (ended - started)}


def flood_process(port: int, total: int, concurrency: int, hold: float) -> dict[str, Any]:
    """The flooder, run in its own process: see :func:`_flood`."""
    return asyncio.run(_flood(port, total, concurrency, hold))


def _noop() -> None:
    """Warms the flooder's process up before the clock starts."""


async def run_flood(port: int, args: argparse.Namespace, pool: concurrent.futures.ProcessPoolExecutor
                    ) -> dict[str, Any]:
    """QoS 1 pair at a steady rate; a flooder process joins after ``args.baseline`` s."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(pool, _noop)
    topic = f"bench/flood/{time.monotonic_ns()}"
    sent: dict[int, float] = {}
    received: dict[int, float] = {}

    def delivered(payload: bytes) -> None:
        seq, = struct.unpack_from("!I", payload)
        received.setdefault(seq, time.monotonic())

    sub = await open_client(port, f"flood-sub-{time.monotonic_ns()}", topic, delivered)
    pub = await open_client(port, f"flood-pub-{time.monotonic_ns()}")
    flooding: asyncio.Future[dict[str, Any]] | None = None
    started = time.monotonic()
    seq = 0
    while True:
        now = time.monotonic()
        if flooding is None and now - started >= args.baseline:
            flooding = asyncio.ensure_future(loop.run_in_executor(
                pool, flood_process, port, args.flood, args.flood_concurrency, args.flood_hold))
        if flooding is not None and flooding.done() and now - started >= args.baseline + args.min_duration:
            break
        if now - started > args.baseline + args.flood_timeout:
            raise RuntimeError(f"the flood did not finish within {args.flood_timeout} s")
        sent[seq] = now
        pub.publish(topic, struct.pack("!I", seq) + PAYLOAD)
        seq += 1
        await asyncio.sleep(max(0.0, started + seq / args.rate - time.monotonic()))
    assert flooding is not None
    flood = flooding.result()
    deadline = time.monotonic() + 10
    while len(received) < len(sent) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    sub.close()
    pub.close()
    before = [received[s] - t for s, t in sent.items() if s in received and t < flood["started"]]
    during = [received[s] - t for s, t in sent.items() if s in received and flood["started"] <= t <= flood["ended"]]
    return {"sent": len(sent), "received": len(received), "lost": len(sent) - len(received),
            "pubacks": pub.pubacks, "baseline_p50_ms": percentile(before, 0.5) * 1e3,
            "baseline_p99_ms": percentile(before, 0.99) * 1e3, "flood_p50_ms": percentile(during, 0.5) * 1e3,
            "flood_p99_ms": percentile(during, 0.99) * 1e3, "flood_max_ms": max(during, default=float("nan")) * 1e3,
            "flood_made": flood["made"], "flood_failed": flood["failed"], "flood_conn_per_s": flood["conn_per_s"],
            "flood_elapsed_s": flood["elapsed_s"], "flood": flood}


# --- fanout --------------------------------------------------------------------------------

async def run_fanout(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """``args.subscribers`` QoS 1 subscribers, one ``mosquitto_pub -l -q 1``; time until all have every message."""
    topic = f"bench/fanout/{time.monotonic_ns()}"
    messages, count = args.fanout_messages, args.subscribers
    counts = [0] * count
    complete = [0]
    done = asyncio.get_running_loop().create_future()
    finished_at = [0.0]

    def counter(index: int) -> Callable[[bytes], None]:
        def delivered(payload: bytes) -> None:
            counts[index] += 1
            if counts[index] == messages:
                complete[0] += 1
                if complete[0] == count and not done.done():
                    finished_at[0] = time.perf_counter()
                    done.set_result(None)
        return delivered

    limit = asyncio.Semaphore(50)

    async def subscriber(index: int) -> RawClient:
        async with limit:
            return await open_client(port, f"fan{index}-{time.monotonic_ns()}", topic, counter(index))

    clients = await asyncio.gather(*(subscriber(index) for index in range(count)))
    await asyncio.sleep(0.3)
    started = time.perf_counter()
    pub = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1", "-l",
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(pub.communicate((PAYLOAD + b"\n") * messages), args.timeout)
    except asyncio.TimeoutError:
        pub.kill()
        await pub.wait()
        raise RuntimeError(f"mosquitto_pub did not finish within {args.timeout} s") from None
    if pub.returncode != 0:
        raise RuntimeError(f"mosquitto_pub failed: {stderr.decode()}")
    try:
        await asyncio.wait_for(done, args.timeout)
        elapsed = finished_at[0] - started
    except asyncio.TimeoutError:
        elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    total = sum(min(c, messages) for c in counts)
    return {"subscribers": count, "messages": messages, "delivered": total,
            "lost": count * messages - total, "elapsed_s": elapsed, "deliveries_per_s": total / elapsed}


# --- many ----------------------------------------------------------------------------------

def run_many_qos(port: int, pairs: int, messages: int, qos: int, timeout: float) -> dict[str, Any]:
    """``pairs`` ``mosquitto_pub -l`` -> ``mosquitto_sub -C`` pairs at ``qos``, all at once; total msg/s."""
    stamp = time.monotonic_ns()
    topics = [f"bench/many/{stamp}/{index}" for index in range(pairs)]
    outputs = [tempfile.TemporaryFile() for _ in topics]  # files, not pipes nobody reads meanwhile
    subs = [subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos),
                              "-C", str(messages), "-W", str(int(timeout))], stdout=output)
            for topic, output in zip(topics, outputs)]
    time.sleep(0.5)  # let the subscriptions settle before the clock starts
    inputs = []
    for _ in topics:  # one file each: a shared one would share its offset, the first reader taking all
        lines = tempfile.TemporaryFile()
        lines.write((PAYLOAD + b"\n") * messages)
        lines.seek(0)
        inputs.append(lines)
    started = time.perf_counter()
    pubs = []
    for topic, lines in zip(topics, inputs):
        pubs.append(subprocess.Popen(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic,
                                      "-q", str(qos), "-l"], stdin=lines, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE))
    for sub in subs:
        sub.wait(timeout=timeout + 10)
    elapsed = time.perf_counter() - started
    errors = []
    for pub in pubs:
        _, stderr = pub.communicate(timeout=30)
        if pub.returncode != 0:
            errors.append(stderr.decode().strip())
    if errors:
        raise RuntimeError(f"mosquitto_pub failed: {errors}")
    received = 0
    for output in outputs:
        output.seek(0)
        received += output.read().count(b"\n")
    return {"received": received, "lost": pairs * messages - received, "elapsed_s": elapsed,
            "msg_per_s": received / elapsed}


async def run_many(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`run_many_qos` at QoS 0, then at QoS 1."""
    result: dict[str, Any] = {"pairs": args.pairs, "messages": args.many_messages}
    for qos in (0, 1):
        one = await asyncio.to_thread(run_many_qos, port, args.pairs, args.many_messages, qos, args.timeout)
        result[f"qos{qos}"] = one
        result[f"qos{qos}_msg_per_s"] = one["msg_per_s"]
        result[f"qos{qos}_lost"] = one["lost"]
    return result


# --- driver --------------------------------------------------------------------------------

#: Per case, the table's rows: (result key, label, format).
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "accept": [("conn_per_s", "connections/s", ".0f"), ("connack_p50_ms", "CONNACK p50 ms", ".2f"),
               ("connack_p99_ms", "CONNACK p99 ms", ".2f"), ("connacks", "CONNACKs", ".0f"),
               ("listen_overflows", "listen overflows", ".0f")],
    "flood": [("baseline_p50_ms", "before flood p50 ms", ".2f"), ("baseline_p99_ms", "before flood p99 ms", ".2f"),
              ("flood_p50_ms", "in flood p50 ms", ".2f"), ("flood_p99_ms", "in flood p99 ms", ".2f"),
              ("flood_max_ms", "in flood max ms", ".1f"), ("lost", "pair msgs lost", ".0f"),
              ("flood_made", "flood conns made", ".0f"), ("flood_conn_per_s", "flood conns/s", ".0f")],
    "fanout": [("deliveries_per_s", "deliveries/s", ".0f"), ("lost", "lost", ".0f")],
    "many": [("qos0_msg_per_s", "QoS 0 msg/s", ".0f"), ("qos0_lost", "QoS 0 lost", ".0f"),
             ("qos1_msg_per_s", "QoS 1 msg/s", ".0f"), ("qos1_lost", "QoS 1 lost", ".0f")],
}


async def run_case(case: str, port: int, args: argparse.Namespace,
                   pool: concurrent.futures.ProcessPoolExecutor) -> dict[str, Any]:
    """One case against the broker listening on ``port``."""
    runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "accept": lambda: run_accept(port, args), "flood": lambda: run_flood(port, args, pool),
        "fanout": lambda: run_fanout(port, args), "many": lambda: run_many(port, args)}
    return await runners[case]()


def measure(case: str, name: str, start: Starter, args: argparse.Namespace,
            pool: concurrent.futures.ProcessPoolExecutor) -> dict[str, Any]:
    """Start a fresh broker, run one case against it, stop it."""
    with tempfile.TemporaryDirectory(prefix="broker-load-") as tmp:
        port = free_port()
        proc = start(port, Path(tmp))
        try:
            wait_for_port(port)
            time.sleep(0.3)
            broker = psutil.Process(proc.pid)
            cpu = sum(broker.cpu_times()[:2])
            began = time.perf_counter()
            result = asyncio.run(run_case(case, port, args, pool))
            result["wall_s"] = time.perf_counter() - began
            result["broker_cpu_s"] = sum(broker.cpu_times()[:2]) - cpu
            return result
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def summary_line(case: str, result: dict[str, Any]) -> str:
    """The first row's value and the run's wall time, for the progress log."""
    if "error" in result:
        return f"ERROR {result['error']}"
    key, label, fmt = ROWS[case][0]
    return f"{label} {result[key]:{fmt}} ({result['wall_s']:.1f} s)"


def main() -> int:
    """Run the cases, brokers alternating; print the table; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--repeat", type=int, default=2, help="rounds of gateway then mosquitto")
    parser.add_argument("--connections", type=int, default=2000, help="accept: connections opened")
    parser.add_argument("--accept-concurrency", type=int, default=100, help="accept: handshakes in flight")
    parser.add_argument("--flood", type=int, default=20000, help="flood: garbage connections in all")
    parser.add_argument("--flood-concurrency", type=int, default=200, help="flood: garbage connections at once")
    parser.add_argument("--flood-hold", type=float, default=0.25,
                        help="flood: seconds a garbage connection waits for the broker to close it")
    parser.add_argument("--flood-timeout", type=float, default=120.0, help="flood: give up after this many s")
    parser.add_argument("--rate", type=float, default=200.0, help="flood: the pair's QoS 1 msg/s")
    parser.add_argument("--baseline", type=float, default=2.0, help="flood: seconds of the pair before the flood")
    parser.add_argument("--min-duration", type=float, default=5.0,
                        help="flood: the pair runs at least this long after the flood starts")
    parser.add_argument("--subscribers", type=int, default=100, help="fanout: QoS 1 subscribers")
    parser.add_argument("--fanout-messages", type=int, default=2000, help="fanout: messages published")
    parser.add_argument("--pairs", type=int, default=8, help="many: publisher/subscriber pairs")
    parser.add_argument("--many-messages", type=int, default=5000, help="many: messages per pair and QoS")
    parser.add_argument("--timeout", type=float, default=120.0, help="fanout/many: seconds to wait for delivery")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "broker_load.json"))
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")

    runs: list[dict[str, Any]] = []
    began = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for case in cases:
            for repeat in range(args.repeat):
                for name, start in BROKERS:
                    try:
                        result = measure(case, name, start, args, pool)
                    except Exception as exc:  # one failed run must not lose the others
                        result = {"error": f"{type(exc).__name__}: {exc}"}
                    runs.append({"case": case, "broker": name, "repeat": repeat, **result})
                    print(f"{case:<7} {name:<10} #{repeat + 1}: {summary_line(case, result)}", flush=True)

    medians: dict[str, dict[str, dict[str, float]]] = {}
    print(f"\nmedians of {args.repeat} runs per broker, brokers alternating; {time.perf_counter() - began:.0f} s\n")
    print(f"{'case':<7} {'metric':<20} {'gateway':>10} {'mosquitto':>10} {'gw/mosq':>8}")
    for case in cases:
        medians[case] = {}
        for key, label, fmt in ROWS[case] + [("broker_cpu_s", "broker CPU s", ".2f")]:
            values: dict[str, float] = {}
            for name, _ in BROKERS:
                got = [r[key] for r in runs if r["case"] == case and r["broker"] == name and "error" not in r]
                if got:
                    values[name] = statistics.median(got)
            medians[case][key] = values
            cells = [f"{values[name]:>10{fmt}}" if name in values else f"{'-':>10}" for name, _ in BROKERS]
            ours, theirs = values.get("gateway"), values.get("mosquitto")
            ratio = f"{ours / theirs:>8.2f}" if ours is not None and theirs else f"{'-':>8}"
            print(f"{case:<7} {label:<20} {cells[0]} {cells[1]} {ratio}")
    errors = [r for r in runs if "error" in r]
    for r in errors:
        print(f"failed: {r['case']} {r['broker']} #{r['repeat'] + 1}: {r['error']}")
    write_json(args.json, {"args": vars(args), "cases": cases, "medians": medians, "runs": runs})
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
