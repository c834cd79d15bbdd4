"""Benchmark: our resumable downloader vs ``curl -o`` (and a plain treq.collect + hashlib loop),
fetching one file from a local nginx. Prints a table; writes ``bench/results/download.json``.

Run: ``.venv/bin/python bench/download.py [--size-mib 1024] [--runs 1]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

import psutil  # noqa: E402
import treq  # noqa: E402
from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.threads import deferToThreadPool  # noqa: E402
from twisted.python.threadpool import ThreadPool  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.updates.downloader import Downloader  # noqa: E402
from gateway.updates.httpclient import close_connections, make_http_client  # noqa: E402
from gateway.updates.settings import DownloadSettings  # noqa: E402
from tests.updates.realservers import Nginx  # noqa: E402


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Watch:
    """Every 20 ms: samples this process's RSS and how late the reactor ran the sample
    (``lag``: the longest the reactor was kept from other work, e.g. MQTT traffic)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self.lag = 0.0
        self.last = time.perf_counter()
        self.loop = task.LoopingCall(self.sample)
        self.loop.start(0.02)

    def sample(self) -> None:
        now = time.perf_counter()
        self.lag = max(self.lag, now - self.last - 0.02)
        self.last = now
        self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> dict[str, float]:
        self.loop.stop()
        self.sample()
        return {"rss_growth": self.peak - self.start, "reactor_lag_ms": self.lag * 1000}


async def ours(url: str, out: Path, size: int, digest: str, settings: DownloadSettings) -> dict[str, Any]:
    pool = ThreadPool(1, 3, name="bench")
    pool.start()
    http = make_http_client(reactor, settings)
    downloader = Downloader(http, reactor, settings, partial(deferToThreadPool, reactor, pool))
    watch, cpu, started = Watch(), cpu_self(), time.perf_counter()
    await downloader.download(url, out, size=size, digests={"SHA256": digest}).result
    seconds, cpu_used, watched = time.perf_counter() - started, cpu_self() - cpu, watch.stop()
    await close_connections(http)
    pool.stop()
    return {"seconds": seconds, "cpu": cpu_used, **watched}


async def plain_collect(url: str, out: Path, size: int, digest: str) -> dict[str, Any]:
    """The naive loop: treq.collect, hash and write every chunk on the reactor."""
    http = make_http_client(reactor, DownloadSettings(allow_http=True))
    watch, cpu, started = Watch(), cpu_self(), time.perf_counter()
    sha = hashlib.sha256()
    with open(out, "wb") as f:
        def write(chunk: bytes) -> None:
            sha.update(chunk)
            f.write(chunk)

        response = await http.get(url, unbuffered=True)
        await treq.collect(response, write)
    assert sha.hexdigest() == digest
    seconds, cpu_used, watched = time.perf_counter() - started, cpu_self() - cpu, watch.stop()
    await close_connections(http)
    return {"seconds": seconds, "cpu": cpu_used, **watched}


def curl(url: str, out: Path) -> dict[str, Any]:
    cpu, started = cpu_children(), time.perf_counter()
    subprocess.run(["curl", "-s", "-S", "-o", str(out), url], check=True)
    return {"seconds": time.perf_counter() - started, "cpu": cpu_children() - cpu, "rss_growth": None,
            "reactor_lag_ms": None}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="bench-download-", dir=args.dir))
    try:
        (work / "www").mkdir()
        data_file, sha = work / "www" / "blob", hashlib.sha256()
        with open(data_file, "wb") as f:
            block = os.urandom(2**20)
            for i in range(args.size_mib):
                chunk = block[i % 256:] + block[:i % 256]
                sha.update(chunk)
                f.write(chunk)
        digest = sha.hexdigest()
        nginx = Nginx(work / "www", work / "nginx")
        url = f"http://127.0.0.1:{nginx.port}/blob"
        settings = DownloadSettings(allow_http=True, write_batch=args.batch_kib * 1024,
                                    checkpoint_bytes=args.checkpoint_mib * 2**20)
        results: dict[str, list[dict[str, Any]]] = {"curl -o": [], "ours (SHA-256)": [], "treq.collect+hashlib": []}
        try:
            for _ in range(args.runs):
                for name in results:
                    out = work / f"out-{len(results[name])}-{name[:4]}"
                    if name == "curl -o":
                        result = curl(url, out)
                    elif name.startswith("ours"):
                        result = await ours(url, out, size, digest, settings)
                    else:
                        result = await plain_collect(url, out, size, digest)
                    out.unlink()
                    result["mb_per_s"] = size / 1e6 / result["seconds"]
                    results[name].append(result)
        finally:
            nginx.stop()
        return {"size_bytes": size, "runs": args.runs, "write_batch": settings.write_batch,
                "checkpoint_bytes": settings.checkpoint_bytes, "results": results}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(summary: dict[str, Any]) -> None:
    """Print best and median throughput per client with ratios to curl; add them to ``summary``."""
    table: dict[str, dict[str, Any]] = {}
    for name, runs in summary["results"].items():
        speeds = sorted(r["mb_per_s"] for r in runs)
        growths = [r["rss_growth"] for r in runs if r["rss_growth"] is not None]
        table[name] = {
            "best_mb_per_s": speeds[-1],
            "median_mb_per_s": statistics.median(speeds),
            "median_cpu_s_per_gb": statistics.median(r["cpu"] for r in runs) / (summary["size_bytes"] / 1e9),
            "max_rss_growth_mib": max(growths) / 2**20 if growths else None,
            "max_reactor_lag_ms": max((r["reactor_lag_ms"] for r in runs if r["reactor_lag_ms"] is not None),
                                      default=None),
        }
    curl = table["curl -o"]
    print(f"{'client':22} {'best MB/s':>9} {'x curl':>7} {'median MB/s':>11} {'x curl':>7} "
          f"{'CPU s/GB':>8} {'RSS +MiB':>8} {'lag ms':>6}")
    for name, row in table.items():
        row["best_vs_curl"] = row["best_mb_per_s"] / curl["best_mb_per_s"]
        row["median_vs_curl"] = row["median_mb_per_s"] / curl["median_mb_per_s"]
        growth = "-" if row["max_rss_growth_mib"] is None else f"{row['max_rss_growth_mib']:.1f}"
        lag = "-" if row["max_reactor_lag_ms"] is None else f"{row['max_reactor_lag_ms']:.0f}"
        print(f"{name:22} {row['best_mb_per_s']:9.0f} {row['best_vs_curl']:7.2f} {row['median_mb_per_s']:11.0f} "
              f"{row['median_vs_curl']:7.2f} {row['median_cpu_s_per_gb']:8.2f} {growth:>8} {lag:>6}")
    summary["table"] = table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=1, help="runs of each client; best and median are shown")
    defaults = DownloadSettings()
    parser.add_argument("--batch-kib", type=int, default=defaults.write_batch // 1024, help="write_batch")
    parser.add_argument("--checkpoint-mib", type=int, default=defaults.checkpoint_bytes // 2**20,
                        help="checkpoint_bytes (fsync interval)")
    parser.add_argument("--dir", default=None, help="where the file and the downloads go (default: $TMPDIR)")
    args = parser.parse_args()
    summary = ensureDeferred(run(args))
    outcome: list[Any] = []
    summary.addBoth(outcome.append).addBoth(lambda _: reactor.stop())
    reactor.run()
    if not isinstance(outcome[0], dict):
        outcome[0].raiseException()
    report(outcome[0])
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "download.json").write_text(json.dumps(outcome[0], indent=1))


if __name__ == "__main__":
    main()
