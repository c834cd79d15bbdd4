"""What keeps CPython's memory after a wave of clients: the objects left in otherwise empty arenas.

CPython's small-object allocator (pymalloc) takes memory from the kernel in 1 MiB arenas
of 16 KiB pools and gives an arena back only when every block in it is free. After a wave
of thousands of connections has come and gone, a few objects made during the wave and
still alive (a counter's new value, a timestamp, an entry of a free list) each keep a
whole arena resident. This runs the gateway's broker through the first wave of
``bench/sessions.py`` (``--idle`` clients connect, stay, leave), waits past the gateway's
release after a wave, then has the gateway walk its own pools and report, per arena with
at most ``--sparse`` pools in use, the type of every live block in them.

It reads pool headers from memory (the layout of CPython 3.10 to 3.12's
``Objects/obmalloc.c``: 16 KiB pools, a 48-byte header), only inside the process's own
anonymous read-write mappings, and names a block only when its type pointer is a known
type; nothing is written. A diagnostic for docs/benchmarks.md, not a measurement to
compare runs by (the report itself allocates, and a few of its own objects may show).

    .venv/bin/python bench/arena_pins.py [--idle 5000] [--settle 6] [--sparse 12]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import ctypes
import gc
import os
import signal
import sys
import tempfile
from array import array
from collections import Counter
from pathlib import Path
from typing import TextIO

HERE = Path(__file__).resolve().parent
POOL_SIZE = 1 << 14
POOL_OVERHEAD = 48  # sizeof(struct pool_header), rounded up to the 16-byte alignment
MAX_ARENAS = 100_000


def _known_types() -> set[type]:
    seen: set[type] = set()

    def add(t: type) -> None:
        if t in seen:
            return
        seen.add(t)
        try:
            subclasses = type.__subclasses__(t)
        except TypeError:
            return
        for sub in subclasses:
            add(sub)

    add(object)
    for obj in gc.get_objects():
        if isinstance(obj, type):
            add(obj)
    return seen


def walk(out: TextIO, sparse: int) -> None:
    """Write, for each arena with at most ``sparse`` pools in use, the types of its live blocks.

    Everything found is kept in preallocated arrays until the walk ends (new Python ints or
    tuples made on the way would land in the very pools being walked).
    """
    types = _known_types()
    type_ids = array("Q", sorted(id(t) for t in types))
    regions = array("Q")
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if parts[1].startswith("rw") and len(parts) < 6 and end - start >= POOL_SIZE:
                regions.extend((start, end))
    pools = array("Q", bytes(8 * 6 * 50_000))
    in_use = array("I", bytes(4 * MAX_ARENAS))
    blocks = array("Q", bytes(8 * 3 * 200_000))
    free = bytearray(POOL_SIZE // 16)
    read, from_bytes = ctypes.string_at, int.from_bytes
    npools = nblocks = 0
    for r in range(0, len(regions), 2):
        pool = (regions[r] + POOL_SIZE - 1) & ~(POOL_SIZE - 1)
        while pool + POOL_SIZE <= regions[r + 1] and npools < 50_000:
            header = read(pool, POOL_OVERHEAD)
            count = from_bytes(header[0:4], "little")
            arena, size_index = from_bytes(header[32:36], "little"), from_bytes(header[36:40], "little")
            next_offset, max_next = from_bytes(header[40:44], "little"), from_bytes(header[44:48], "little")
            size = (size_index + 1) * 16
            if (size_index < 32 and arena < MAX_ARENAS and max_next == POOL_SIZE - size
                    and POOL_OVERHEAD <= next_offset <= POOL_SIZE and (next_offset - POOL_OVERHEAD) % size == 0
                    and 0 < count <= (POOL_SIZE - POOL_OVERHEAD) // size):
                i = npools * 6
                pools[i:i + 6] = array("Q", (pool, arena, size, count, from_bytes(header[8:16], "little"),
                                             next_offset))
                npools += 1
                in_use[arena] += 1
            pool += POOL_SIZE
    for k in range(npools):
        pool, arena, size, _, free_block, next_offset = pools[k * 6:k * 6 + 6]
        if in_use[arena] > sparse:
            continue
        free[:] = bytes(len(free))
        hops = 0
        while free_block and pool <= free_block < pool + POOL_SIZE and hops < 2048:
            free[(free_block - pool) // 16] = 1
            free_block = from_bytes(read(free_block, 8), "little")
            hops += 1
        for block in range(pool + POOL_OVERHEAD, pool + next_offset, size):
            if free[(block - pool) // 16] or nblocks >= 200_000:
                continue
            found = 0
            for offset in (8, 24):  # ob_type without and with the GC header in front
                pointer = from_bytes(read(block + offset, 8), "little")
                j = bisect.bisect_left(type_ids, pointer)
                if j < len(type_ids) and type_ids[j] == pointer:
                    found = pointer
                    break
            blocks[nblocks * 3:nblocks * 3 + 3] = array("Q", (block, found, arena))
            nblocks += 1
    by_id = {id(t): t for t in types}
    sparse_arenas = sorted({(pools[k * 6 + 1], in_use[pools[k * 6 + 1]]) for k in range(npools)
                            if in_use[pools[k * 6 + 1]] <= sparse})
    out.write(f"pools in use: {npools}; arenas: {len({pools[k * 6 + 1] for k in range(npools)})}\n")
    out.write(f"arenas with at most {sparse} pools in use (arena, pools): {sparse_arenas}\n")
    tally: Counter[str] = Counter()
    for k in range(nblocks):
        _, pointer, arena = blocks[k * 3:k * 3 + 3]
        t = by_id.get(pointer)
        tally[f"arena {arena}: {t.__module__}.{t.__qualname__}" if t else f"arena {arena}: (unknown)"] += 1
    for name, n in sorted(tally.items()):
        out.write(f"{n:6d}  {name}\n")


def install() -> None:
    """In the gateway (imported through ``sitecustomize``): walk on SIGUSR2 into $ARENA_PINS_OUT."""
    def on_signal(signum: int, frame: object) -> None:
        path = os.environ["ARENA_PINS_OUT"]
        with open(path + ".part", "w") as out:
            walk(out, int(os.environ.get("ARENA_PINS_SPARSE", "12")))
        os.replace(path + ".part", path)

    signal.signal(signal.SIGUSR2, on_signal)


async def wave(args: argparse.Namespace, work: Path) -> str:
    sys.path.insert(0, str(HERE))
    import sessions  # bench/sessions.py: the gateway's config, the clients
    from broker import free_port, wait_for_port

    port = free_port()
    process = sessions.start_ours(port, work)
    try:
        wait_for_port(port, 60)
        await asyncio.sleep(args.settle)
        start = sessions.rss_mb(process.pid)
        tally = await sessions.idle_wave(port, args.idle)
        await asyncio.sleep(args.settle)  # past the gateway's release after a wave (2 s)
        left = sessions.rss_mb(process.pid)
        report = work / "pins.txt"
        process.send_signal(signal.SIGUSR2)
        for _ in range(600):  # the gateway renames the whole report into place
            if report.exists():
                break
            await asyncio.sleep(0.1)
        return (f"RSS {start:.1f} MiB at the start, {left:.1f} after {tally.ok} clients left "
                f"({left - start:+.1f})\n" + report.read_text())
    finally:
        process.terminate()
        process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--settle", type=float, default=6.0)
    parser.add_argument("--sparse", type=int, default=12, help="report arenas with at most this many pools in use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="arena-pins-") as tmp:
        work = Path(tmp)
        (work / "site").mkdir()
        (work / "site" / "sitecustomize.py").write_text(
            f"import sys\nsys.path.insert(0, {str(HERE)!r})\nimport arena_pins\narena_pins.install()\n")
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "site"), os.environ.get("PYTHONPATH")]))
        os.environ["ARENA_PINS_OUT"] = str(work / "pins.txt")
        os.environ["ARENA_PINS_SPARSE"] = str(args.sparse)
        print(asyncio.run(wave(args, work)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
