"""Python bytecodes the gateway runs per message, end to end and broker only.

Wall CPU per message on this 2-core VM moves by ±30 % between identical runs, and
callgrind sees Python only as the interpreter's C functions. This counts what the Python
code does instead: bench/e2e.py's two chains (8 publishers, QoS 1) with the gateway's
``twistd`` under an opcode counter (``sys.settrace`` with ``f_trace_opcodes``, every
thread), switched on just before the publishers start and read once the subscriber has
every message. It prints the bytecodes per message of both, their ratio and the functions
that differ most, and writes JSON.

What it does not count: C work (the kernel's, ``struct``, ``zlib``, allocation), thread
hand-offs. Counting slows the gateway about 50 times, so it is the bottleneck in both
chains (batches are as large as the publishers' windows allow), and work done on a timer
(the links' cursor saves every 50 ms) is spread over fewer messages than at full speed.

    .venv/bin/python bench/e2e_opcodes.py [--messages 3000] [--publishers 8] [--top 30]
                                          [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/e2e.py)
from broker import ROOT, write_json  # noqa: E402  (bench/broker.py)

#: Signals to the counted gateway: start counting; stop and write the counts.
START, DUMP = signal.SIGRTMIN + 1, signal.SIGRTMIN + 2
#: Seconds to wait for the counted gateway to write its counts.
DUMP_TIMEOUT = 60.0


def counted_twistd(out: str, argv: list[str]) -> None:
    """Run ``twistd argv`` in this process, counting the opcodes each function runs between
    the START and DUMP signals; DUMP pickles ``{(file, first line, name): count}`` to ``out``."""
    counts: collections.Counter[tuple[str, int, str]] = collections.Counter()
    on = False

    def local(frame: FrameType, event: str, _: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_firstlineno, code.co_name)] += 1
        return local

    def tracer(frame: FrameType, _event: str, _arg: Any) -> Any:
        if not on:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    def start(*_: Any) -> None:
        nonlocal on
        on = True

    def dump(*_: Any) -> None:
        nonlocal on
        on = False
        tmp = out + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(dict(counts), f)
        os.replace(tmp, out)

    signal.signal(START, start)
    signal.signal(DUMP, dump)
    sys.settrace(tracer)
    threading.settrace(tracer)
    from twisted.scripts.twistd import run
    sys.argv = ["twistd", *argv]
    run()


def measure(name: str, start: Any, messages: int, publishers: int, work: Path) -> dict[tuple[str, int, str], float]:
    """Opcodes per message by function for one chain."""
    out = work / f"{name}.pkl"
    e2e.TWISTD = [sys.executable, str(Path(__file__).resolve()), "--counted-twistd", str(out), "--"]

    def hook(phase: str, gateway: subprocess.Popen[bytes] | None) -> None:
        assert gateway is not None
        os.kill(gateway.pid, START if phase == "start" else DUMP)
        if phase == "stop":
            deadline = time.monotonic() + DUMP_TIMEOUT
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.1)

    e2e.PHASE_HOOKS[:] = [hook]
    slow_wait = e2e.wait_for_port
    e2e.wait_for_port = lambda port, timeout=20.0: slow_wait(port, 300.0)  # a counted start is slow
    try:
        row = e2e.run_chain(name, messages, start, publishers)
    finally:
        e2e.wait_for_port = slow_wait
        e2e.PHASE_HOOKS[:] = []
    if row.get("received") != messages:
        raise SystemExit(f"{name}: the subscriber got {row.get('received')} of {messages}")
    with open(out, "rb") as f:
        counts: dict[tuple[str, int, str], int] = pickle.load(f)
    return {key: n / messages for key, n in counts.items()}


def label(key: tuple[str, int, str]) -> str:
    """``path:line name``, the path relative to the repository or site-packages."""
    path = key[0].split("site-packages/")[-1].replace(str(ROOT) + "/", "")
    return f"{path}:{key[1]} {key[2]}"


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--counted-twistd":
        counted_twistd(sys.argv[2], sys.argv[4:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--publishers", type=int, default=8)
    parser.add_argument("--top", type=int, default=30, help="functions to list, by difference")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "e2e_opcodes.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ends = measure("end to end", e2e.e2e, args.messages, args.publishers, work)
        only = measure("broker only", e2e.broker_only, args.messages, args.publishers, work)
    total_e, total_b = sum(ends.values()), sum(only.values())
    print(f"| setup | opcodes per message |\n|---|---:|\n| end to end | {total_e:.0f} |\n"
          f"| broker only | {total_b:.0f} |\n| end to end / broker only | {total_e / total_b:.2f} |\n")
    diff = sorted(((ends.get(k, 0.0) - only.get(k, 0.0), k) for k in set(ends) | set(only)), reverse=True)
    print(f"{'more':>7} {'e2e':>7} {'broker':>7}  function (most more end to end, then most fewer)")
    for d, key in diff[:args.top] + diff[-args.top // 3:]:
        print(f"{d:7.1f} {ends.get(key, 0.0):7.1f} {only.get(key, 0.0):7.1f}  {label(key)}")
    write_json(args.json, {"messages": args.messages, "publishers": args.publishers,
                           "end_to_end_opcodes_per_msg": total_e, "broker_only_opcodes_per_msg": total_b,
                           "ratio": total_e / total_b,
                           "functions": [{"function": label(k), "end_to_end": ends.get(k, 0.0),
                                          "broker_only": only.get(k, 0.0)} for _, k in diff]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
