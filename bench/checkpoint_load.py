"""Memory and time to load the broker's checkpoint (``<state_dir>/broker/state.json``) at start.

A checkpoint of ``--sessions`` offline persistent sessions, each with ``--messages`` queued
QoS 1 messages of ``--size`` bytes (all different, or with ``--shared`` the same messages for
every session: a topic they all subscribe to), is written by the broker's own writer
(:meth:`~gateway.broker.persistence.BrokerStateStore.save`). Then, each in a fresh process:

- ``load``: :meth:`~gateway.broker.persistence.BrokerStateStore.load` alone, in a thread:
  resident set before it, its peak (VmHWM) and after it (the loaded state held), its time,
  and the longest the main thread waited meanwhile beyond its 1 ms sleeps;
- ``gateway``: a real ``twistd gateway`` started on that state directory: the time from its
  spawn until its broker listens (the checkpoint loaded and restored), its peak resident set
  (VmHWM) ``--settle`` seconds later, and its resident set then (the gateway hands its free heap
  back once started).

    .venv/bin/python bench/checkpoint_load.py [--sessions 100] [--messages 1000] [--size 1024] [--shared]
        [--settle 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import ROOT, free_port, wait_for_port, write_json  # noqa: E402
from sessions import start_ours  # noqa: E402

from gateway.broker.persistence import BrokerStateStore  # noqa: E402

#: Run in a fresh interpreter: the load alone, in a thread as the broker's start runs it, its
#: memory read off /proc; meanwhile the main thread wakes every millisecond, as a reactor
#: would, and notes its longest wait (for the GIL the load holds).
LOAD = """
import sys, threading, time
from pathlib import Path
from gateway.broker.persistence import BrokerStateStore

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

store = BrokerStateStore(Path(sys.argv[1]))
before = status("VmRSS")
took = []
loading = threading.Thread(target=lambda: took.append((time.perf_counter(), store.load(), time.perf_counter())))
loading.start()
wait = 0.0
last = time.perf_counter()
while loading.is_alive():
    time.sleep(0.001)
    now = time.perf_counter()
    wait, last = max(wait, now - last - 0.001), now
loading.join()
started, state, ended = took[0]
print(before, status("VmHWM"), status("VmRSS"), ended - started, wait, len(state["sessions"]))
"""


def write_checkpoint(directory: Path, sessions: int, messages: int, size: int, shared: bool) -> int:
    """Write the checkpoint; its size in bytes."""
    common = [[f"fan/{m}", os.urandom(size), 1, False] for m in range(messages)] if shared else None

    def queue(n: int) -> list[list[object]]:
        return common if common is not None else [[f"s/{n}/{m}", os.urandom(size), 1, False] for m in range(messages)]

    store = BrokerStateStore(directory)
    store.save({"log_through": 0, "retained": [], "sessions": [
        {"client_id": f"c{n}", "username": None, "offline_since": None,
         "subscriptions": [["fan/#" if shared else f"s/{n}/#", 1]], "queue": queue(n),
         "inflight": [], "inflight_in": []}
        for n in range(sessions)]})
    return store.path.stat().st_size


def status_mib(pid: int, key: str) -> float:
    """A ``/proc/<pid>/status`` size (``VmRSS``, ``VmHWM``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def measure_load(directory: Path) -> dict[str, float]:
    """The load alone, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT))}
    # (run elsewhere than here: ``-c`` puts the working directory first on its path)
    out = subprocess.run([sys.executable, "-c", LOAD, str(directory)], env=env, cwd=directory, check=True,
                         capture_output=True, text=True).stdout.split()
    before, peak, after, took, wait = map(float, out[:5])
    return {"rss_before_mib": before, "peak_mib": peak, "rss_after_mib": after, "seconds": took,
            "longest_wait_ms": wait * 1000}


def measure_gateway(work: Path, settle: float) -> dict[str, float]:
    """A real gateway's start on the state directory ``work/state``, measured ``settle`` s after it listens."""
    port = free_port()
    started = time.monotonic()
    process = start_ours(port, work)
    try:
        wait_for_port(port, timeout=300)
        took = time.monotonic() - started
        time.sleep(settle)
        return {"peak_mib": status_mib(process.pid, "VmHWM"), "rss_after_mib": status_mib(process.pid, "VmRSS"),
                "seconds": took}
    finally:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--shared", action="store_true", help="the same messages queued for every session")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the listen and the reading")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "checkpoint_load.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        size = write_checkpoint(work / "state" / "broker", args.sessions, args.messages, args.size, args.shared)
        print(f"checkpoint: {size / (1 << 20):.1f} MiB ({args.sessions} sessions x {args.messages} x {args.size} B,"
              f" {'shared' if args.shared else 'all different'})")
        load = measure_load(work / "state" / "broker")
        print(f"load:    {load['seconds']:.2f} s, resident {load['rss_before_mib']:.0f} MiB before,"
              f" peak {load['peak_mib']:.0f}, after {load['rss_after_mib']:.0f}; the main thread waited"
              f" {load['longest_wait_ms']:.0f} ms at most")
        gateway = measure_gateway(work, args.settle)
        print(f"gateway: listening after {gateway['seconds']:.2f} s, peak {gateway['peak_mib']:.0f} MiB,"
              f" then {gateway['rss_after_mib']:.0f}")
    write_json(args.json, {"file_mib": size / (1 << 20), "args": vars(args), "load": load, "gateway": gateway})
    return 0


if __name__ == "__main__":
    sys.exit(main())
