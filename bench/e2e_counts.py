"""Counts per message that do not depend on the machine's load: where the end-to-end CPU goes.

Runs bench/e2e.py's two chains (end to end and broker only, N publishers, QoS 1) and, for
the gateway's process, between the moment the publishers start and the moment the
subscriber has every message, one of:

- ``--mode syscalls``: ``perf trace -s`` (every syscall, by thread: the reactor thread's
  ``epoll_wait`` calls are its event-loop turns, its ``futex`` calls mostly GIL waits,
  the I/O thread's ``sendto`` its wake-ups of the loop);
- ``--mode switches``: ``perf stat --per-thread`` software counters (context switches,
  task clock) and syscall tracepoints (all syscalls, and a few by name) by thread, counted
  in the kernel: much less slowdown than ``perf trace``;
- ``--mode profile``: ``perf record -e cpu-clock`` samples at full speed, CPU µs per
  message by thread and C function (Python's own functions show as the interpreter's);
- ``--mode pyspy``: py-spy's samples of the reactor thread when not idle (1 kHz, not paused;
  this counts waiting for the GIL or for a core too, e.g. in a socket call), µs per message
  by Python function, its own ("self") and with what it calls ("total");
- ``--mode turns``: the event loop's turns, the I/O thread's wake-ups of it and the timers
  by callee, counted in the gateway's Python (a ``sitecustomize``, :data:`TURNS_SITE`);
- ``--mode callgrind``: the gateway under ``valgrind --tool=callgrind`` (instrumentation
  switched on at the start and dumped at the stop with ``callgrind_control``), instructions
  by thread; slow (about 50 times), so use a few thousand messages.

Counting changes timing (batches grow when the gateway is slowed), so compare the two
chains measured the same way, not a count with an unmeasured run. Ports come from
``--ports`` (default: any free port).

    .venv/bin/python bench/e2e_counts.py --mode syscalls [--messages 20000] [--publishers 8]
                                         [--rounds 1] [--ports 34300-34399] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/e2e.py)
from broker import ROOT, write_json  # noqa: E402  (bench/broker.py)

sys.path.insert(0, str(ROOT))
from tests.ports import bindable  # noqa: E402


#: What ``--mode switches`` counts: software counters and syscall tracepoints (counted in
#: the kernel, no record per event: far less overhead than ``perf trace``).
STAT_EVENTS = ",".join(["context-switches", "task-clock", "raw_syscalls:sys_enter"] + [
    f"syscalls:sys_enter_{name}" for name in
    ("epoll_wait", "futex", "sendto", "recvfrom", "read", "write", "pwritev2", "fsync", "fdatasync")])


#: Samples a second of ``--mode profile`` (cpu-clock: this VM has no hardware counters).
PROFILE_HZ = 1000


#: ``--mode pyspy``: py-spy (not a dependency: ``--py-spy PATH``) and its samples a second.
PY_SPY = "py-spy"
PY_SPY_HZ = 1000


#: ``--mode turns``: a ``sitecustomize`` put before the gateway's ``PYTHONPATH``: counts the
#: asyncio loop's turns, ``call_soon_threadsafe`` calls (the I/O thread's wake-ups of the
#: loop), ``call_soon`` and the reactor's ``callLater`` by callee; SIGUSR2 writes them.
TURNS_SITE = '''
import collections, json, os, signal
out = os.environ["E2E_COUNTS_OUT"]
counts = collections.Counter()
import asyncio.base_events as be
def _counting(name, original, key):
    def wrapper(self, *args, **kwargs):
        counts[key(args)] += 1
        return original(self, *args, **kwargs)
    setattr(be.BaseEventLoop, name, wrapper)
def _callee(prefix):
    return lambda args: prefix + getattr(args[0], "__qualname__", type(args[0]).__name__)
_counting("_run_once", be.BaseEventLoop._run_once, lambda args: "loop turns")
_counting("call_soon_threadsafe", be.BaseEventLoop.call_soon_threadsafe, lambda args: "call_soon_threadsafe")
_counting("call_soon", be.BaseEventLoop.call_soon, _callee("call_soon "))
from twisted.internet import asyncioreactor
_later = asyncioreactor.AsyncioSelectorReactor.callLater
def callLater(self, delay, f, *args, **kwargs):
    counts[("callLater(0) " if delay == 0 else "callLater(>0) ") + getattr(f, "__qualname__", type(f).__name__)] += 1
    return _later(self, delay, f, *args, **kwargs)
asyncioreactor.AsyncioSelectorReactor.callLater = callLater
def dump(*_):
    with open(out + ".tmp", "w") as f:
        json.dump(dict(counts), f)
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR2, dump)
'''


def port_range(spec: str) -> Any:
    """A ``free_port`` that hands out free ports of ``LO-HI`` in turn."""
    low, high = (int(v) for v in spec.split("-"))
    state = {"next": low}

    def free_port() -> int:
        for _ in range(high - low + 1):
            port = state["next"]
            state["next"] = low if port >= high else port + 1
            if bindable(port):
                return port
        raise RuntimeError(f"no free port in {spec}")
    return free_port


def threads_of(pid: int) -> dict[int, str]:
    """Thread id -> name of a process."""
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            names[int(tid)] = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            pass
    return names


class Counter:
    """The phase hook: starts a counter on the gateway at "start", stops it at "stop"."""

    def __init__(self, mode: str, work: Path) -> None:
        self.mode = mode
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = work / "counts.txt"
        self.pid = 0
        self.names: dict[int, str] = {}

    def __call__(self, phase: str, gw: subprocess.Popen[bytes] | None) -> None:
        if gw is None:
            return
        if self.mode == "turns":
            gw.send_signal(signal.SIGUSR2)
            deadline = time.monotonic() + 30
            while not (self.work / "turns.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            (self.work / "turns.json").rename(self.work / f"turns.{phase}.json")
            return
        if phase == "start":
            self.pid = gw.pid
            self.names = threads_of(gw.pid)
            if self.mode == "syscalls":
                cmd = ["perf", "trace", "-s", "-o", str(self.out), "-p", str(gw.pid)]
            elif self.mode == "switches":
                cmd = ["perf", "stat", "--per-thread", "-x", ",", "-o", str(self.out),
                       "-e", STAT_EVENTS, "-p", str(gw.pid)]
            elif self.mode == "profile":
                cmd = ["perf", "record", "-e", "cpu-clock", "-F", str(PROFILE_HZ), "--per-thread",
                       "-o", str(self.work / "perf.data"), "-p", str(gw.pid)]
            elif self.mode == "pyspy":
                cmd = [PY_SPY, "record", "--nonblocking", "--threads", "--rate", str(PY_SPY_HZ),
                       "--format", "raw", "-o", str(self.out), "-p", str(gw.pid)]
            else:
                subprocess.run(["callgrind_control", "-z", str(gw.pid)], check=True, capture_output=True)
                subprocess.run(["callgrind_control", "-i", "on", str(gw.pid)], check=True, capture_output=True)
                return
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached before the publishers start
        else:
            self.names.update(threads_of(gw.pid))
            if self.mode == "callgrind":
                subprocess.run(["callgrind_control", "-d", "phase", str(gw.pid)], check=True, capture_output=True)
                subprocess.run(["callgrind_control", "-i", "off", str(gw.pid)], check=True, capture_output=True)
                return
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)

    def syscalls(self) -> dict[str, dict[str, int]]:
        """{thread: {syscall: calls}} from perf trace -s's summary."""
        result: dict[str, dict[str, int]] = {}
        current = None
        for line in self.out.read_text().splitlines():
            head = re.match(r"\s*(\S.*?) \((\d+)\), \d+ events", line)
            if head:
                tid = int(head.group(2))
                current = self.thread_name(tid)
                result.setdefault(current, {})
                continue
            row = re.match(r"\s+([a-z_0-9]+)\s+(\d+)\s+\d+\s", line)
            if row and current is not None:
                result[current][row.group(1)] = result[current].get(row.group(1), 0) + int(row.group(2))
        return result

    def profile(self) -> dict[str, dict[str, float]]:
        """{thread: {"dso:symbol": CPU seconds}} from perf record's samples."""
        text = subprocess.run(["perf", "script", "-i", str(self.work / "perf.data"), "-F", "tid,ip,sym,dso"],
                              capture_output=True, text=True, check=True).stdout
        result: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            parts = line.split(None, 2)  # tid, ip, "symbol (dso)"
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            name = self.thread_name(int(parts[0]))
            sym, _, dso = parts[2].rpartition(" (")
            symbol = f"{Path(dso.rstrip(')')).name}:{sym.split('+')[0].strip()}"
            bucket = result.setdefault(name, {})
            bucket[symbol] = bucket.get(symbol, 0.0) + 1.0 / PROFILE_HZ
        return result

    def python(self) -> dict[str, dict[str, float]]:
        """{"self"|"total": {"function (file:line)": CPU seconds}} of the reactor thread from
        py-spy's collapsed stacks (idle samples, in the loop's epoll_wait, left out)."""
        self_time: dict[str, float] = {}
        total: dict[str, float] = {}
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            if not count.isdigit() or len(frames) < 2 or "_run_once" not in stack:
                continue  # not the reactor thread (the I/O thread has no event loop)
            if frames[-1].startswith("select (selectors.py") or frames[-1].startswith("poll ("):
                continue
            seconds = int(count) / PY_SPY_HZ
            leaf = re.sub(r"^(\S+) \((?:.*/)?([^/]+):\d+\)$", r"\1 (\2)", frames[-1])
            self_time[leaf] = self_time.get(leaf, 0.0) + seconds
            for frame in set(re.sub(r"^(\S+) \((?:.*/)?([^/]+):\d+\)$", r"\1 (\2)", f) for f in frames[1:]):
                total[frame] = total.get(frame, 0.0) + seconds
        return {"self": self_time, "total": total}

    def turns(self) -> dict[str, dict[str, float]]:
        """{"reactor": {what: count}} between the two phases (``--mode turns``)."""
        before = json.loads((self.work / "turns.start.json").read_text())
        after = json.loads((self.work / "turns.stop.json").read_text())
        return {"reactor": {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}}

    def thread_name(self, tid: int) -> str:
        """"reactor" for the main thread, else the thread's name."""
        return "reactor" if tid == self.pid else f"{self.names.get(tid, 'thread')}"

    def switches(self) -> dict[str, dict[str, float]]:
        """{thread: {event: count}} from perf stat --per-thread."""
        result: dict[str, dict[str, float]] = {}
        for line in self.out.read_text().splitlines():
            parts = line.split(",")
            if len(parts) < 4 or not parts[1].replace(".", "").isdigit():
                continue
            tid = int(parts[0].rsplit("-", 1)[1])
            name = self.thread_name(tid)
            event = parts[3].removeprefix("syscalls:sys_enter_").replace("raw_syscalls:sys_enter", "syscalls")
            result.setdefault(name, {})
            result[name][event] = result[name].get(event, 0.0) + float(parts[1])
        return result

    def instructions(self) -> dict[str, float]:
        """{thread: instructions} from callgrind's dump files of the phase."""
        result: dict[str, float] = {}
        for path in self.work.glob(f"callgrind.out.{self.pid}*"):
            text = path.read_text(errors="replace")
            if "phase" not in text.split("\n", 20)[-1] and "desc: Trigger: Client Request: phase" not in text \
                    and "phase" not in text[:2000]:
                continue
            thread = re.search(r"^thread: (\d+)", text, re.M)
            total = re.search(r"^totals: (\d+)", text, re.M) or re.search(r"^summary: (\d+)", text, re.M)
            if total:
                name = "reactor" if thread is None or thread.group(1) == "1" else f"thread {thread.group(1)}"
                result[name] = result.get(name, 0.0) + float(total.group(1))
        return result


def one(mode: str, name: str, count: int, start: Any, publishers: int) -> dict[str, Any]:
    """One chain, counted."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        counter = Counter(mode, work)
        e2e.PHASE_HOOKS[:] = [counter]
        saved = e2e.TWISTD
        if mode == "callgrind":
            waited = e2e.wait_for_port
            e2e.wait_for_port = lambda port, timeout=20.0: waited(port, 300.0)  # (starting under valgrind is slow)
            e2e.TWISTD = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
                          f"--callgrind-out-file={work}/callgrind.out.%p", *saved]
        path = os.environ.get("PYTHONPATH")
        if mode == "turns":
            (work / "site").mkdir()
            (work / "site" / "sitecustomize.py").write_text(TURNS_SITE)
            os.environ["E2E_COUNTS_OUT"] = str(work / "turns.json")
            os.environ["PYTHONPATH"] = os.pathsep.join([str(work / "site"), *([path] if path else [])])
        try:
            row = e2e.run_chain(name, count, start, publishers)
        finally:
            if path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = path
            e2e.TWISTD = saved
            e2e.PHASE_HOOKS[:] = []
        received = int(row["received"])
        if mode == "syscalls":
            per = {t: {k: v / received for k, v in calls.items()} for t, calls in counter.syscalls().items()}
        elif mode == "switches":
            per = {t: {k: v / received for k, v in ev.items()} for t, ev in counter.switches().items()}
        elif mode == "profile":
            per = {t: {k: v / received * 1e6 for k, v in syms.items()} for t, syms in counter.profile().items()}
        elif mode == "turns":
            per = {t: {k: v / received for k, v in c.items()} for t, c in counter.turns().items()}
        elif mode == "pyspy":
            per = {t: {k: v / received * 1e6 for k, v in syms.items()} for t, syms in counter.python().items()}
        else:
            per = {t: {"instructions": v / received} for t, v in counter.instructions().items()}
        return {"setup": name, "received": received, "msg_per_s": row["msg_per_s"], "per_message": per}


def show(rows: list[dict[str, Any]]) -> None:
    """Print each row's per-message counts by thread (the main ones)."""
    for row in rows:
        print(f"\n{row['setup']}: {row['received']} messages, {row['msg_per_s']:.0f} msg/s (while counted)")
        for thread, counts in sorted(row["per_message"].items()):
            top = sorted(counts.items(), key=lambda kv: -kv[1])
            total = sum(v for k, v in counts.items() if k not in ("task-clock",))
            shown = ", ".join(f"{k} {v:.3f}" for k, v in top[:12] if v >= 0.005)
            if shown:
                print(f"  {thread:<16} total {total:.3f}: {shown}")


def main() -> int:
    """Count, print, write JSON."""
    global PY_SPY
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("syscalls", "switches", "profile", "pyspy", "turns", "callgrind"), default="syscalls")
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--max-inflight", type=int, default=e2e.MAX_INFLIGHT)
    parser.add_argument("--py-spy", default=PY_SPY, help="py-spy's path (--mode pyspy)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--ports", default=None, help="LO-HI: take ports from this range only")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "e2e_counts.json"))
    args = parser.parse_args()
    e2e.MAX_INFLIGHT = args.max_inflight
    PY_SPY = args.py_spy
    if args.ports:
        e2e.free_port = port_range(args.ports)
    rows = []
    for i in range(args.rounds):
        chains = [(f"end to end, {args.publishers} pub", e2e.e2e), (f"broker only, {args.publishers} pub", e2e.broker_only)]
        for name, start in (chains if i % 2 == 0 else chains[::-1]):
            rows.append(one(args.mode, name, args.messages, start, args.publishers))
    show(rows)
    write_json(args.json, {"mode": args.mode, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
