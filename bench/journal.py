"""Benchmark: durable appends/s and replay rate of the journal vs SQLite and fsync-per-record.

Run: ``.venv/bin/python bench/journal.py [--seconds 3] [--dir DIR]``; with ``--max-bytes`` (and
``--segment-bytes``) the journal's streams sit at that bound under drop-oldest, so appends
drop (and delete) a segment per segment's worth of records. Every figure is
for 256-byte payloads. Producers are closed loops: each makes its next append only
after the previous one is durable, so N producers offer at most N records per
fsync. The baselines get the same treatment: SQLite (WAL, synchronous=FULL) commits
the N records of a round in one transaction; the naive file store fsyncs after
every record. The process uses the gateway's garbage collector settings
(:mod:`gateway.gctuning`). Prints a table and writes ``bench/results/journal.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import asyncioreactor

if "twisted.internet.reactor" not in sys.modules:  # (imported by a test: trial installed it)
    asyncioreactor.install()
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from gateway import gctuning  # noqa: E402
from gateway.journal.errors import StreamFullError  # noqa: E402
from gateway.journal.record import Record, encode  # noqa: E402
from gateway.journal.service import JournalService  # noqa: E402
from gateway.journal.settings import JournalSettings, StreamSettings  # noqa: E402

PAYLOAD = bytes(range(256))
PRODUCERS = (1, 8, 64)
#: The journal's streams' settings (``--segment-bytes``, ``--max-bytes`` change them).
SETTINGS = JournalSettings(defaults=StreamSettings(min_free_bytes=0))


def _record() -> Record:
    return Record("telemetry/bench/sensor", PAYLOAD, 1, False, time.time())


@inlineCallbacks
def journal_appends(base: str, producers: int, seconds: float, deferreds: bool = False) -> Any:
    """Durable appends/s through JournalService with ``producers`` closed loops.

    Each producer appends with ``Stream.append_then`` (the broker's path), or with
    ``Stream.append`` and a Deferred per record when ``deferreds``.
    """
    svc = JournalService(SETTINGS, Path(base), reactor)
    yield svc.startService()
    stream = svc.stream("bench")
    deadline = time.perf_counter() + seconds
    count = 0

    def producer() -> Deferred[None]:
        """One closed loop of plain callbacks (an inlineCallbacks generator per producer
        costs about as much per append as the journal itself)."""
        finished: Deferred[None] = Deferred()

        def step(_: object) -> None:
            nonlocal count
            count += 1
            if time.perf_counter() < deadline:
                append(_record(), step, finished.errback)
            else:
                finished.callback(None)

        append(_record(), step, finished.errback)
        return finished

    def append_deferred(record: Record, done: Any, failed: Any) -> None:
        stream.append(record).addCallbacks(done, failed)

    append = append_deferred if deferreds else stream.append_then

    t0 = time.perf_counter()
    yield gatherResults([producer() for _ in range(producers)])
    elapsed = time.perf_counter() - t0
    stats = stream.stats()
    yield svc.stopService()
    return {"rate": count / elapsed, "records": count, "mean_batch": stats.batch_records.mean,
            "fsync_mean_ms": stats.fsync_latency.mean * 1000, "append_mean_ms": stats.append_latency.mean * 1000}


@inlineCallbacks
def journal_window(base: str, total: int, window: int) -> Any:
    """Durable appends/s with ``window`` appends always outstanding (open loop).

    An append the stream refuses (``StreamFullError``: a ``--max-bytes`` below what the
    window holds, which no drop can make room for) ends like a stored one and is counted
    in ``refused``; the rate counts the stored ones only. Any other failure ends the run.
    """
    svc = JournalService(SETTINGS, Path(base), reactor)
    yield svc.startService()
    stream = svc.stream("window")
    done: Deferred[None] = Deferred()
    state = {"issued": 0, "ended": 0, "refused": 0}

    def ended(_: object = None) -> None:
        state["ended"] += 1
        if state["ended"] == total:
            done.callback(None)
        elif state["issued"] < total:
            issue()

    def refused(failure: Failure) -> None:
        failure.trap(StreamFullError)
        state["refused"] += 1
        reactor.callLater(0, ended)  # (a refusal fires at once: the next append must not recurse)

    def issue() -> None:
        state["issued"] += 1
        stream.append(_record()).addCallbacks(ended, refused).addErrback(
            lambda failure: None if done.called else done.errback(failure))

    t0 = time.perf_counter()
    for _ in range(min(window, total)):
        issue()
    yield done
    elapsed = time.perf_counter() - t0
    stats = stream.stats()
    yield svc.stopService()
    stored = total - state["refused"]
    return {"rate": stored / elapsed, "records": stored, "refused": state["refused"],
            "mean_batch": stats.batch_records.mean, "drops": sum(stats.drops.values())}


@inlineCallbacks
def journal_replay(base: str) -> Any:
    """Records/s read back through a cursor from the journal written above (reopened)."""
    svc = JournalService(SETTINGS, Path(base), reactor)
    t_open = time.perf_counter()
    yield svc.startService()
    open_s = time.perf_counter() - t_open
    stream = svc.stream("window")
    yield stream.cursor("replay")
    t0 = time.perf_counter()
    n = 0
    while True:
        records = yield stream.read("replay", 5000, 4 << 20)
        if not records:
            break
        n += len(records)
    elapsed = time.perf_counter() - t0
    yield svc.stopService()
    return {"rate": n / elapsed, "records": n, "open_s": open_s}


def sqlite_appends(base: str, producers: int, seconds: float) -> dict[str, float]:
    """SQLite WAL, synchronous=FULL, one transaction per round of ``producers`` records."""
    db = sqlite3.connect(os.path.join(base, f"bench-{producers}.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, topic TEXT, payload BLOB, qos INT, "
               "retain INT, received REAL)")
    count = 0
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        db.execute("BEGIN")
        rows = [(r.topic, r.payload, r.qos, int(r.retain), r.received) for r in (_record() for _ in range(producers))]
        db.executemany("INSERT INTO q (topic, payload, qos, retain, received) VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        count += producers
    elapsed = time.perf_counter() - t0
    db.close()
    return {"rate": count / elapsed, "records": count}


def sqlite_replay(base: str, producers: int) -> dict[str, float]:
    """Rows/s read back from the SQLite table written with ``producers``."""
    db = sqlite3.connect(os.path.join(base, f"bench-{producers}.db"))
    t0 = time.perf_counter()
    n = 0
    last = 0
    while True:
        rows = db.execute("SELECT seq, topic, payload, qos, retain, received FROM q WHERE seq > ? "
                          "ORDER BY seq LIMIT 5000", (last,)).fetchall()
        if not rows:
            break
        n += len(rows)
        last = rows[-1][0]
    elapsed = time.perf_counter() - t0
    db.close()
    return {"rate": n / elapsed, "records": n}


def fsync_per_record(base: str, seconds: float) -> dict[str, float]:
    """Append one framed record and fsync, again and again (no group commit)."""
    fd = os.open(os.path.join(base, "naive.seg"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    count = 0
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        os.write(fd, encode(_record(), count + 1))
        os.fsync(fd)
        count += 1
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return {"rate": count / elapsed, "records": count}


@inlineCallbacks
def main(args: argparse.Namespace) -> Any:
    base = tempfile.mkdtemp(prefix="journal-bench-", dir=args.dir)
    results: dict[str, Any] = {"seconds": args.seconds, "payload_bytes": len(PAYLOAD), "rows": []}
    try:
        naive = fsync_per_record(base, args.seconds)
        for p in PRODUCERS:
            ours = yield journal_appends(os.path.join(base, f"j{p}"), p, args.seconds, args.deferreds)
            lite = sqlite_appends(base, p, args.seconds)
            results["rows"].append({"producers": p, "journal": ours, "sqlite": lite, "fsync_per_record": naive})
        window = yield journal_window(os.path.join(base, "jw"), args.window_total, 4096)
        replay = yield journal_replay(os.path.join(base, "jw"))
        lite_replay = sqlite_replay(base, PRODUCERS[-1])
        results.update(window=window, replay=replay, sqlite_replay=lite_replay)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    lines = [f"{'workload':34} {'journal/s':>11} {'sqlite/s':>10} {'fsync1/s':>9} {'vs sqlite':>9} {'vs fsync1':>9}"]
    for row in results["rows"]:
        j, s, n = row["journal"]["rate"], row["sqlite"]["rate"], row["fsync_per_record"]["rate"]
        lines.append(f"{'durable appends, %d producers' % row['producers']:34} {j:11,.0f} {s:10,.0f} "
                     f"{n:9,.0f} {j / s:8.1f}x {j / n:8.1f}x")
    w = results["window"]["rate"]
    n = results["rows"][0]["fsync_per_record"]["rate"]
    lines.append(f"{'durable appends, 4096 in flight':34} {w:11,.0f} {'':>10} {n:9,.0f} {'':>9} {w / n:8.1f}x")
    r, sr = results["replay"]["rate"], results["sqlite_replay"]["rate"]
    lines.append(f"{'replay (records/s)':34} {r:11,.0f} {sr:10,.0f} {'':>9} {r / sr:8.1f}x")
    lines.append("mean batch per fsync: " + ", ".join(
        f"{row['producers']}p={row['journal']['mean_batch']:.1f}" for row in results["rows"])
        + f", window={results['window']['mean_batch']:.0f}; reopen of {results['replay']['records']:,} "
        f"records: {results['replay']['open_s']:.3f} s; records dropped in the windowed run: "
        f"{results['window']['drops']:,}, refused: {results['window']['refused']:,}")
    print("\n".join(lines))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "journal.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per append measurement")
    parser.add_argument("--window-total", type=int, default=300_000, help="records in the windowed run")
    parser.add_argument("--deferreds", action="store_true",
                        help="closed loops use Stream.append (a Deferred per record), not append_then")
    parser.add_argument("--dir", default=None, help="where to put the files (default: the temp dir)")
    parser.add_argument("--segment-bytes", type=int, default=SETTINGS.defaults.segment_bytes)
    parser.add_argument("--max-bytes", type=int, default=SETTINGS.defaults.max_bytes,
                        help="each stream's bound (drop-oldest drops beyond it); more than the windowed run's"
                        " 4096 appends in flight hold (about 1.2 MB), which no drop can make room for")
    options = parser.parse_args()
    SETTINGS = JournalSettings(defaults=dataclasses.replace(
        SETTINGS.defaults, segment_bytes=options.segment_bytes, max_bytes=options.max_bytes))
    status = []
    gctuning.tune()  # as twistd gateway does at start

    def run() -> None:
        d = main(options)
        d.addErrback(lambda f: (status.append(1), f.printTraceback(file=sys.stderr)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    sys.exit(1 if status else 0)
