"""Benchmark: the upload service vs ``curl -T`` to the same local storage, per provider: an
nginx WebDAV PUT (generic HTTP), ministack (S3 presigned PUT) and Azurite (Azure Blob SAS).
Each round runs curl then ours (and the next round ours then curl) per provider, so the two
alternate on a noisy machine; the table has the medians over ``--rounds`` of MB/s and the
ratio to curl, and the worst RSS growth and reactor lag; ``bench/results/upload.json`` has every run.

Run: ``make test-deps && .venv/bin/python bench/upload.py [--size-mib 256] [--rounds 5]``
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import asyncioreactor

asyncioreactor.install()

import psutil  # noqa: E402
from twisted.internet import reactor, task  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.broker import write_json  # noqa: E402
from gateway.operations.httpclient import make_http_client  # noqa: E402
from gateway.uploads.filebody import digest_file  # noqa: E402
from gateway.uploads.service import UploadService  # noqa: E402
from gateway.uploads.settings import UploadsSettings  # noqa: E402
from tests.ports import free_port  # noqa: E402
from tests.uploads.realservers import (AZURE_ACCOUNT, AZURE_KEY, ServerProcess, StatusWatcher,  # noqa: E402
                                       azurite, ministack)

NGINX_DAV = """
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        dav_methods PUT;
        create_full_put_path on;
    }}
}}
"""


class Watch:
    """Every 20 ms: this process's RSS (peak) and how late the reactor ran the sample."""

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


def nginx_dav(work: Path) -> ServerProcess:
    """nginx accepting PUTs into ``work/www``."""
    port = free_port()
    (work / "www").mkdir(parents=True)
    conf = work / "nginx.conf"
    conf.write_text(NGINX_DAV.format(dir=work, port=port, root=work / "www"))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    return ServerProcess([binary, "-c", str(conf), "-p", str(work)], port, {}, work / "nginx.log")


def curl(url: str, path: Path, headers: dict[str, str]) -> float:
    """Seconds ``curl -T`` takes to PUT ``path`` to ``url``."""
    argv = ["curl", "-s", "-S", "-f", "-o", "/dev/null", "-T", str(path), url]
    for name, value in headers.items():
        argv[1:1] = ["-H", f"{name}: {value}"]
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - started


async def ours(service: UploadService, watcher: StatusWatcher, path: Path, options: dict[str, str],
               cid: str) -> dict[str, Any]:
    """One upload through the service's whole flow; seconds from start to SUCCESS, RSS growth."""
    await service.handle("trigger", json.dumps({"correlationId": cid, "options": {"upload.files": str(path)}}).encode())
    request = (await watcher.wait_requests(len(watcher.requests())))[-1]
    final = watcher.final(cid)
    watch, started = Watch(), time.perf_counter()
    await service.handle("start", json.dumps({"correlationId": request["correlationId"], "options": options}).encode())
    status = await final
    seconds, watched = time.perf_counter() - started, watch.stop()
    if status["state"] != "SUCCESS":
        raise RuntimeError(f"upload failed: {status}")
    return {"seconds": seconds, **watched}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
    from botocore.config import Config

    size = args.size_mib * 2**20
    work = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=args.dir))
    servers: list[ServerProcess] = []
    try:
        data = work / "data.bin"
        block = hashlib.sha256(b"bench").digest() * 32768  # 1 MiB
        with open(data, "wb") as f:
            for i in range(args.size_mib):
                f.write(block[i % 251:] + block[:i % 251])
        digests = digest_file(str(data))
        wanted = set(args.providers or ("http", "s3", "azure"))
        for name, make in (("http", nginx_dav), ("s3", ministack), ("azure", azurite)):
            if name in wanted:
                server = make(work / name)
                await server.start(reactor)
                servers.append(server)
        by_name = dict(zip([n for n in ("http", "s3", "azure") if n in wanted], servers))
        nginx, s3_server, azure_server = by_name.get("http"), by_name.get("s3"), by_name.get("azure")
        s3: Any = None
        if s3_server is not None:
            s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_server.port}", region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test",
                              config=Config(signature_version="s3v4"))
            s3.create_bucket(Bucket="bench")
        endpoint, sas = "", ""
        if azure_server is not None:
            endpoint = f"http://127.0.0.1:{azure_server.port}/{AZURE_ACCOUNT}/"
            blobs = BlobServiceClient.from_connection_string(
                f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
                f"BlobEndpoint={endpoint}")
            blobs.create_container("bench")
            sas = generate_container_sas(AZURE_ACCOUNT, "bench", account_key=AZURE_KEY,
                                     permission=ContainerSasPermissions(read=True, write=True, create=True),
                                     expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=2))

        def presign(key: str) -> str:
            return str(s3.generate_presigned_url("put_object", ExpiresIn=3600, Params={
                "Bucket": "bench", "Key": key, "ContentMD5": digests.md5, "ChecksumSHA256": digests.sha256_base64}))

        settings = UploadsSettings(allow_http=True, mode="lax", **({"chunk_size": args.chunk_kib * 1024}
                                                                   if args.chunk_kib else {}))
        watcher = StatusWatcher()
        service = UploadService(settings, work / "state", reactor, make_http_client(reactor, None, 2), watcher,
                                ("tenant", "ns:bench"))
        await service.startService()
        cases: dict[str, Any] = {}
        if nginx is not None:
            cases["http (nginx PUT)"] = (
                {"https.url": f"http://127.0.0.1:{nginx.port}/ours.bin"},
                (f"http://127.0.0.1:{nginx.port}/curl.bin", {}))
        if s3_server is not None:
            cases["s3 (ministack)"] = (
                {"storage.provider": "aws", "https.url": presign("data.bin")},
                (presign("data.bin"), {"Content-MD5": digests.md5, "x-amz-checksum-sha256": digests.sha256_base64}))
        if azure_server is not None:
            cases["azure (Azurite)"] = (
                {"storage.provider": "azure", "azure.storage.endpoint": endpoint,
                 "azure.shared.access.signature": sas, "azure.blob.container": "bench"},
                (f"{endpoint}bench/curl.bin?{sas}", {"x-ms-blob-type": "BlockBlob", "Content-MD5": digests.md5}))
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for round_ in range(args.rounds):
            for n, (name, (options, (curl_url, curl_headers))) in enumerate(cases.items()):
                if round_ % 2 == 0:
                    curl_seconds = curl(curl_url, data, curl_headers)
                result = await ours(service, watcher, data, options, f"bench-{round_}-{n}")
                if round_ % 2 == 1:
                    curl_seconds = curl(curl_url, data, curl_headers)
                run = {"curl_mb_per_s": size / 1e6 / curl_seconds, "ours_mb_per_s": size / 1e6 / result["seconds"],
                       "rss_growth_mib": result["rss_growth"] / 2**20, "reactor_lag_ms": result["reactor_lag_ms"]}
                run["ratio"] = run["ours_mb_per_s"] / run["curl_mb_per_s"]
                runs[name].append(run)
                print(f"round {round_ + 1}/{args.rounds} {name}: curl {run['curl_mb_per_s']:.0f} MB/s, "
                      f"ours {run['ours_mb_per_s']:.0f} MB/s ({run['ratio']:.2f}x)", flush=True)
        # throughput: the medians; RSS growth and reactor lag: the worst run
        results = {name: {key: (max if key in ("rss_growth_mib", "reactor_lag_ms") else statistics.median)(
            run[key] for run in rows) for key in rows[0]} for name, rows in runs.items()}
        await service.stopService()
        return {"size_bytes": size, "chunk_size": settings.chunk_size, "azure_block_size": settings.azure_block_size,
                "azure_block_threshold": settings.azure_block_threshold, "rounds": args.rounds,
                "results": results, "runs": runs}
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(summary: dict[str, Any]) -> None:
    """Print the table."""
    print(f"medians of {summary['rounds']} alternating rounds (RSS growth, lag: the worst)")
    print(f"{'provider':18} {'curl MB/s':>9} {'ours MB/s':>9} {'x curl':>7} {'RSS +MiB':>8} {'lag ms':>6}")
    for name, row in summary["results"].items():
        print(f"{name:18} {row['curl_mb_per_s']:9.0f} {row['ours_mb_per_s']:9.0f} {row['ratio']:7.2f} "
              f"{row['rss_growth_mib']:8.1f} {row['reactor_lag_ms']:6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    parser.add_argument("--chunk-kib", type=int, default=0, help="chunk_size (default: the setting's)")
    parser.add_argument("--providers", nargs="*", default=[], help="only these: http s3 azure")
    parser.add_argument("--dir", default=None, help="where the file and the servers' data go (default: $TMPDIR)")
    args = parser.parse_args()
    outcome: list[Any] = []
    # started once the reactor runs: a failure before the first wait must still stop it
    reactor.callWhenRunning(lambda: ensureDeferred(run(args)).addBoth(outcome.append).addBoth(
        lambda _: reactor.stop()))
    reactor.run()
    if not isinstance(outcome[0], dict):
        outcome[0].raiseException()
    report(outcome[0])
    write_json(str(Path(__file__).parent / "results" / "upload.json"), outcome[0])


if __name__ == "__main__":
    main()
