"""End to end: mosquitto_pub -> our broker -> journal (sync) -> link -> mosquitto -> mosquitto_sub.

Beside it, in the same run: the same chain with the journal acknowledging before its
fsync (``sync: interval``: what the durable acknowledgement costs), our broker alone (pub
and sub on the gateway), and a mosquitto-to-mosquitto bridge (the usual way to forward
without a journal). Then the
drain rate of a backlog journaled while the cloud was down. QoS 1 throughout, 64-byte
payloads carrying their send time, so the subscriber's receive stamps give latency.

    .venv/bin/python bench/e2e.py [--messages 20000] [--backlog 200000] [--publishers N]
                                  [--max-inflight 20] [--linger-ms MS]
    .venv/bin/python bench/e2e.py --publishers 8 --messages 40000 --rounds 6
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, stop_all, wait_for_port, write_json  # noqa: E402  (bench/broker.py)


#: The link's ``linger_ms`` (``--linger-ms``); None: the gateway's default.
LINGER_MS: float | None = None
#: QoS 1 messages each ``mosquitto_pub`` keeps unacknowledged (``--max-inflight``; its default is 20).
MAX_INFLIGHT = 20
#: What runs the gateway: ``twistd`` (another benchmark may put a wrapper in front of it).
TWISTD: list[str] = [str(BIN / "twistd")]
#: Called with ``("start", gateway)`` just before the publishers start and ``("stop",
#: gateway)`` once the subscriber has everything (``bench/e2e_opcodes.py`` counts between them).
PHASE_HOOKS: list["callable"] = []  # type: ignore[valid-type]


def gateway(work: Path, port: int, cloud_port: int | None, sync: str = "sync",
            plugin: str | None = None, state: Path | None = None) -> subprocess.Popen[bytes]:
    """Our gateway on ``port``; with a link to ``cloud_port`` routing telemetry/# to up/#,
    its journal streams on the ``sync`` policy; ``plugin``: one more amqtt plugin (dotted path);
    ``state``: its state directory (default ``<work>/state``)."""
    config = work / "gateway.yaml"
    # (no queue bound, as mosquitto's config below: the broker-only run, its subscriber slower
    # than 8 publishers, measures the broker, not its drops)
    text = (f"gateway:\n  state_dir: {state or work / 'state'}\n  log_level: warn\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            + (f"    {plugin}: {{}}\n" if plugin else "")
            + "  max_queued_messages: 100000000\n  max_queued_bytes: 100000000000\n"
            "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n")
    if cloud_port is not None:
        text += (f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud_port}'\n"
                 "      backoff_initial: 0.2\n      backoff_max: 1.0\n"
                 + (f"      linger_ms: {LINGER_MS}\n" if LINGER_MS is not None else "")
                 + "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n")
    if sync != "sync":
        text += f"journal:\n  defaults:\n    sync: {sync}\n"
    config.write_text(text)
    return subprocess.Popen([*TWISTD, "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                             "gateway", "--config", str(config)], cwd=work)


def mosquitto(work: Path, name: str, port: int, bridge_to: int | None = None,
              persist: bool = False) -> subprocess.Popen[bytes]:
    """A mosquitto on ``port``; optionally bridging telemetry/# out to ``bridge_to`` as up/#,
    or keeping sessions across restarts (``persist``)."""
    config = work / f"{name}.conf"
    persistence = f"persistence true\npersistence_location {work}/\n" if persist else "persistence false\n"
    text = (f"listener {port} 127.0.0.1\nallow_anonymous true\n{persistence}"
            "max_queued_messages 0\nmax_inflight_messages 0\nuser root\n")
    if bridge_to is not None:
        text += (f"connection cloud\naddress 127.0.0.1:{bridge_to}\ntopic # out 1 telemetry/ up/\n"
                 "cleansession true\n")
    config.write_text(text)
    return subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def subscribe(port: int, count: int, out: Path, session: str | None = None) -> subprocess.Popen[bytes]:
    """mosquitto_sub writing ``<receive ns> <payload>`` lines to a file (never a full pipe);
    with ``session``, a persistent session of that client id."""
    persistent = ["-c", "-i", session] if session else []
    return subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", "up/#", "-t", "bench/#",
                             "-q", "1", "-C", str(count), "-W", "600", "-F", "%U %p", *persistent],
                            stdout=open(out, "wb"))


def publish_parallel(port: int, topic: str, count: int, publishers: int) -> float:
    """``publishers`` concurrent :func:`publish` runs sharing ``count`` (topics ``<topic>/<i>``);
    returns the start."""
    started = time.perf_counter()
    share, extra = divmod(count, publishers)  # the first ``extra`` publishers send one more
    threads = [threading.Thread(target=publish, args=(port, f"{topic}/{i}", share + (i < extra)))
               for i in range(publishers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return started


def publish(port: int, topic: str, count: int, chunk: int = 10000) -> float:
    """mosquitto_pub -l of ``count`` 64-byte payloads stamped with their send time; returns the start.

    In chunks: one mosquitto_pub -l given a very long input against a broker that acks slowly
    (after fsync) was seen to exit early, having sent a fraction of it.
    """
    started = time.perf_counter()
    for first in range(0, count, chunk):
        lines = b"".join(f"{time.time_ns():<63}\n".encode() for _ in range(min(chunk, count - first)))
        subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1",
                        "-M", str(MAX_INFLIGHT), "-l"],
                       input=lines, check=True, timeout=900)
    return started


def result(name: str, out: Path, count: int, started: float, finished: float) -> dict[str, object]:
    """Rate and latency percentiles from a subscriber's output file."""
    latencies = []
    for line in out.read_bytes().splitlines():
        stamp, _, payload = line.partition(b" ")
        try:
            latencies.append((float(stamp) * 1e9 - int(payload)) / 1e6)
        except ValueError:
            continue
    latencies.sort()
    received = len(latencies)
    pick = (lambda q: latencies[min(received - 1, int(q * received))]) if received else (lambda q: float("nan"))
    return {"setup": name, "messages": count, "received": received, "msg_per_s": received / (finished - started),
            "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def cpu_seconds(proc: subprocess.Popen[bytes] | None) -> float:
    """CPU seconds (user + system, every thread) a process has used so far (NaN once it is gone)."""
    if proc is None:
        return 0.0
    try:
        times = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return float(times.user + times.system)


def thread_cpu(proc: subprocess.Popen[bytes] | None) -> dict[str, float]:
    """CPU seconds so far of a process's main (reactor) thread and of its other threads (the
    journal's I/O thread, Twisted's pool), user and system apart; empty once it is gone."""
    if proc is None:
        return {}
    try:
        threads = psutil.Process(proc.pid).threads()
    except psutil.Error:
        return {}
    split = {"main_user": 0.0, "main_system": 0.0, "other_user": 0.0, "other_system": 0.0}
    for thread in threads:
        which = "main" if thread.id == proc.pid else "other"
        split[f"{which}_user"] += thread.user_time
        split[f"{which}_system"] += thread.system_time
    return split


def journal_latency(log: Path) -> float | None:
    """The journal's mean append-to-durable latency (ms), from the line it logs at stop."""
    found = re.findall(r"append to durable ([0-9.]+) ms", log.read_text()) if log.exists() else []
    return float(found[-1]) if found else None


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (``/proc/stat``: user, nice, system,
    irq, softirq; not idle, iowait or steal)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[0:3]) + fields[5] + fields[6]) / os.sysconf("SC_CLK_TCK")


def run_chain(name: str, count: int, start: "callable",  # type: ignore[valid-type]
              publishers: int = 1) -> dict[str, object]:
    """Start the processes ``start`` makes, publish, wait for the subscriber, stop everything.

    Besides rate and latency, the row has the CPU per message of the gateway, of the cloud's
    mosquitto (end to end), of the subscriber while the publishers ran, and of the whole
    machine (every process and the kernel's loopback work)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        procs, pub_port, sub_port = start(work)
        gw = next((p for p in procs if list(p.args[:len(TWISTD)]) == TWISTD), None)
        cloud = next((p for p in procs if "mosquitto" in str(p.args[0])), None)
        row: dict[str, object] = {}
        try:
            out = work / "sub.out"
            sub = subscribe(sub_port, count, out)
            time.sleep(0.5)
            for hook in PHASE_HOOKS:
                hook("start", gw)
            cpu, cloud_cpu, sub_cpu, busy = cpu_seconds(gw), cpu_seconds(cloud), cpu_seconds(sub), system_busy_seconds()
            threads = thread_cpu(gw)
            topic = "telemetry/bench" if "broker only" not in name else "bench/x"
            started = (publish(pub_port, topic, count) if publishers == 1
                       else publish_parallel(pub_port, topic, count, publishers))
            sub_cpu = cpu_seconds(sub) - sub_cpu
            sub.wait(timeout=900)
            row = result(name, out, count, started, time.perf_counter())
            for hook in PHASE_HOOKS:
                hook("stop", gw)
            row["system_busy_us_per_msg"] = (system_busy_seconds() - busy) / count * 1e6
            row["subscriber_cpu_us_per_msg"] = sub_cpu / count * 1e6
            if gw is not None:
                row["gateway_cpu_us_per_msg"] = (cpu_seconds(gw) - cpu) / count * 1e6
                for key, seconds in thread_cpu(gw).items():
                    row[f"gateway_{key}_us_per_msg"] = (seconds - threads.get(key, 0.0)) / count * 1e6
            if cloud is not None:
                row["cloud_cpu_us_per_msg"] = (cpu_seconds(cloud) - cloud_cpu) / count * 1e6
            return row
        finally:
            stop_all(procs)
            latency = journal_latency(work / "gw.log")
            if latency is not None:
                row["journal_ack_ms"] = latency


def e2e(work: Path, sync: str = "sync") -> tuple[list[subprocess.Popen[bytes]], int, int]:
    cloud, port = free_port(), free_port()
    procs = [mosquitto(work, "cloud", cloud), gateway(work, port, cloud, sync)]
    wait_for_port(cloud), wait_for_port(port)
    time.sleep(1.0)  # the link connects
    return procs, port, cloud


def e2e_interval(work: Path) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    """End to end with the journal acknowledging before its fsync (``sync: interval``)."""
    return e2e(work, "interval")


def broker_only(work: Path) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    port = free_port()
    procs = [gateway(work, port, None)]
    wait_for_port(port)
    return procs, port, port


def bridge(work: Path) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    cloud, edge = free_port(), free_port()
    procs = [mosquitto(work, "cloud", cloud), mosquitto(work, "edge", edge, bridge_to=cloud)]
    wait_for_port(cloud), wait_for_port(edge)
    time.sleep(1.0)  # the bridge connects
    return procs, edge, cloud


def drain(backlog: int) -> dict[str, object]:
    """Journal ``backlog`` messages with the cloud down, then time how fast the link drains them."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cloud, port = free_port(), free_port()
        # The cloud's subscriber session exists before the backlog drains (else the first
        # messages would go to nobody): register it, stop the cloud, journal the backlog.
        cloud_proc = mosquitto(work, "cloud", cloud, persist=True)
        wait_for_port(cloud)
        register = subscribe(cloud, backlog, work / "register.out", session="drain")
        time.sleep(1.0)
        register.terminate()
        register.wait(timeout=30)
        cloud_proc.terminate()
        cloud_proc.wait(timeout=30)
        gw = gateway(work, port, cloud)
        procs = [gw]
        try:
            wait_for_port(port)
            publish(port, "telemetry/backlog", backlog)
            out = work / "sub.out"
            started = time.perf_counter()
            procs.append(mosquitto(work, "cloud", cloud, persist=True))
            wait_for_port(cloud)
            sub = subscribe(cloud, backlog, out, session="drain")
            sub.wait(timeout=900)
            finished = time.perf_counter()
            received = len(out.read_bytes().splitlines())
            return {"setup": "backlog drain", "messages": backlog, "received": received,
                    "msg_per_s": received / (finished - started)}
        finally:
            stop_all(procs)


def rounds(n: int, count: int, publishers: int, json_path: str) -> int:
    """``n`` rounds of end to end and broker only with ``publishers``, in alternating order:
    this machine drifts by tens of percent within minutes, so each round's end-to-end run is
    set against the broker-only run next to it, and the medians of those ratios are shown."""
    pairs = []
    for i in range(n):
        runs = [(f"end to end, {publishers} pub", e2e), (f"broker only, {publishers} pub", broker_only)]
        done = {name: run_chain(name, count, start, publishers) for name, start in (runs if i % 2 == 0 else runs[::-1])}
        e2e_row, only = done[runs[0][0]], done[runs[1][0]]
        pairs.append((e2e_row, only))
        print(f"round {i + 1}: end to end {e2e_row['msg_per_s']:.0f} msg/s, gateway "
              f"{e2e_row['gateway_cpu_us_per_msg']:.1f} us/msg (cloud mosquitto {e2e_row['cloud_cpu_us_per_msg']:.1f}, "
              f"machine {e2e_row['system_busy_us_per_msg']:.1f}); broker only {only['msg_per_s']:.0f} msg/s, "
              f"gateway {only['gateway_cpu_us_per_msg']:.1f} us/msg (machine {only['system_busy_us_per_msg']:.1f})",
              flush=True)

    def median(key: str, row: int) -> float:
        return statistics.median(float(pair[row][key]) for pair in pairs)  # type: ignore[arg-type]

    rate = statistics.median(float(a["msg_per_s"]) / float(b["msg_per_s"]) for a, b in pairs)  # type: ignore[arg-type]
    cpu = statistics.median(float(a["gateway_cpu_us_per_msg"]) / float(b["gateway_cpu_us_per_msg"])  # type: ignore[arg-type]
                            for a, b in pairs)
    print(f"\n{n} rounds, {count} messages each run, {publishers} publishers (medians)\n")
    print("| setup | msg/s | gateway CPU us/msg | cloud mosquitto us/msg | subscriber us/msg | machine us/msg |")
    print("|---|---|---|---|---|---|")
    for row, name in ((0, "end to end"), (1, "broker only")):
        cloud = f"{median('cloud_cpu_us_per_msg', row):.1f}" if row == 0 else "-"
        print(f"| {name} | {median('msg_per_s', row):.0f} | {median('gateway_cpu_us_per_msg', row):.1f} | {cloud} | "
              f"{median('subscriber_cpu_us_per_msg', row):.1f} | {median('system_busy_us_per_msg', row):.1f} |")
    print(f"| end to end / broker only (median of the rounds' ratios) | {rate:.2f} | {cpu:.2f} | | | |")
    print("\nThe gateway's CPU by thread (us/msg, medians): the reactor thread, and the others (the journal's I/O thread)\n")
    print("| setup | reactor user | reactor system | other threads user | other threads system |")
    print("|---|---|---|---|---|")
    for row, name in ((0, "end to end"), (1, "broker only")):
        print(f"| {name} | " + " | ".join(f"{median(f'gateway_{key}_us_per_msg', row):.1f}" for key in
                                          ("main_user", "main_system", "other_user", "other_system")) + " |")
    write_json(json_path, {"rounds": [{"end_to_end": a, "broker_only": b} for a, b in pairs],
                           "rate_ratio": rate, "gateway_cpu_ratio": cpu})
    return 0


def main() -> int:
    """Run the comparison and print the table."""
    global LINGER_MS, MAX_INFLIGHT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--backlog", type=int, default=200000)
    parser.add_argument("--publishers", type=int, default=1,
                        help="also run end to end and broker only with this many concurrent mosquitto_pub")
    parser.add_argument("--linger-ms", type=float, default=None,
                        help="the link's linger_ms (default: the gateway's default)")
    parser.add_argument("--max-inflight", type=int, default=MAX_INFLIGHT,
                        help="QoS 1 messages each mosquitto_pub keeps unacknowledged (mosquitto's default: 20)")
    parser.add_argument("--rounds", type=int, default=0,
                        help="instead: this many alternated rounds of end to end and broker only with "
                             "--publishers, and the medians of their ratios")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "e2e.json"))
    args = parser.parse_args()
    LINGER_MS = args.linger_ms
    MAX_INFLIGHT = args.max_inflight
    if args.rounds:
        return rounds(args.rounds, args.messages, args.publishers, args.json)
    rows = [run_chain("end to end", args.messages, e2e),
            run_chain("end to end (interval)", args.messages, e2e_interval),
            run_chain("broker only", args.messages, broker_only),
            run_chain("mosquitto bridge", args.messages, bridge)]
    if args.publishers > 1:
        n = args.publishers
        rows += [run_chain(f"end to end, {n} pub", args.messages, e2e, n),
                 run_chain(f"broker only, {n} pub", args.messages, broker_only, n)]
    if args.backlog:
        rows.append(drain(args.backlog))
    # each row against broker only with the same publishers
    bases = {str(r["setup"]).partition(", ")[2]: r["msg_per_s"] for r in rows
             if str(r["setup"]).startswith("broker only")}
    print(f"\n{'setup':<22} {'msg/s':>9} {'received':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs broker only':>15}"
          f" {'gw CPU us/msg':>14} {'journal ack ms':>15}")
    nan = float("nan")
    for r in rows:
        # a drain has no broker-only counterpart
        r["vs_broker_only"] = (nan if r["setup"] == "backlog drain" else
                               r["msg_per_s"] / bases[str(r["setup"]).partition(", ")[2]])
        print(f"{r['setup']:<22} {r['msg_per_s']:>9.0f} {r['received']:>9} {r.get('p50_ms', nan):>8.1f} "
              f"{r.get('p99_ms', nan):>8.1f} {r['vs_broker_only']:>15.2f}"
              f" {r.get('gateway_cpu_us_per_msg', nan):>14.0f} {r.get('journal_ack_ms', nan):>15.2f}")
    write_json(args.json, {"results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
