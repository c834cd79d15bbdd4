"""Power cuts, not just SIGKILL: does the gateway keep what it acknowledged?

The gateway's state_dir lies on ``bench/powercutfs.py``, a FUSE passthrough that forgets at
unmount every write, create, rename and unlink that was not made durable (fsync of the file,
of the directory). Each round: mount, start the gateway (its journal streams to a cloud
mosquitto), publish QoS 1 telemetry, QoS 1 retained messages and persistent sessions'
subscriptions from several clients and count what was acknowledged, and at a random time
cut the power: SIGKILL the gateway, then unmount keeping only the durable state. The next
round's gateway must start on what is left (a file set aside is logged and counted). At the
end a last gateway runs until the cloud has every acknowledged message, and every
acknowledged retained message and persistent session is checked.

With ``--bounded`` the link's stream is kept at its size bound while the cuts happen: its
cloud is away during the rounds (the link points at a port nothing listens on), its
``max_bytes`` is 256 KiB in segments of 64 KiB under drop-oldest with ``max_age_s`` 5, so
segments roll and are dropped (max-bytes, and max-age at each start) all along (a persistent
session every 2000th message, not 200th: forty rounds stay within ``max_offline_sessions``,
beyond which the broker lets the oldest go). After each cut
the durable state is checked: the drops the loss ledger counts (none counted twice) and the
segments still on disk whose records it counts dropped (left by the cut). The last gateway
sends what is kept to the cloud, and every acknowledged message the cloud lacks must be
counted in the ledger.

Needs mosquitto (``make test-deps``), ``/dev/fuse`` with ``fusermount3`` (fuse3), and
``mfusepy`` in ``.venv-tools`` (``make tools-venv``). Run as root (FUSE mounts)::

    .venv/bin/python bench/powercut.py --cuts 10      # JSON: bench/results/powercut.json
    .venv/bin/python bench/powercut.py --cuts 30 --bounded --port 26841 --cloud-port 26842
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/e2e.py: the gateway with its link, as the end-to-end bench runs it)
from broker import ROOT, wait_for_port, write_json  # noqa: E402  (bench/broker.py)

FS = [str(ROOT / ".venv-tools" / "bin" / "python"), str(Path(__file__).with_name("powercutfs.py"))]
PORT, CLOUD = 25361, 25362  # (in 25300-25399: the range the project keeps for fixed ports)
#: --bounded: the link's stream at its size bound, its segments rolling and dropped.
BOUNDED = ("journal:\n  retention_check_s: 0.5\n  streams:\n    link-cloud: {max_bytes: 262144, segment_bytes: 65536,"
           " max_age_s: 5, overflow: drop-oldest}\n")
#: The loss reasons of drop-oldest's drops.
DROPS = ("max-bytes", "max-age", "min-free-disk")


def dropped_state(stream_dir: Path) -> dict[str, int]:
    """What a cut left of a stream: the records its loss ledger counts dropped, how many of
    those it counts more than once, and its sealed segments whose every record it counts
    dropped (their deletion was not durable)."""
    try:
        entries = json.loads((stream_dir / "losses.json").read_bytes())["entries"]
    except FileNotFoundError:
        entries = []
    drops = [e for e in entries if e["reason"] in DROPS and e["records"]]
    runs = sorted((e["first_seq"], e["last_seq"]) for e in drops)
    counted, distinct, end = sum(e["records"] for e in drops), 0, 0
    for first, last in runs:
        distinct += max(0, last - max(first, end + 1) + 1)
        end = max(end, last)
    firsts = sorted(int(p.name[:-4]) for p in stream_dir.glob("*.seg"))
    left = sum(1 for first, nxt in zip(firsts, firsts[1:]) if any(a <= first and nxt - 1 <= b for a, b in runs))
    return {"dropped": counted, "counted_twice": counted - distinct, "dropped_segments_on_disk": left}


def _packet(kind: int, body: bytes) -> bytes:
    length, encoded = len(body), b""
    while True:
        digit, length = length % 128, length // 128
        encoded += bytes([digit | (128 if length else 0)])
        if not length:
            return bytes([kind]) + encoded + body


def _string(text: str) -> bytes:
    return struct.pack("!H", len(text)) + text.encode()


class Client:
    """A blocking MQTT 3.1.1 client: just enough to count acknowledgements."""

    def __init__(self, client_id: str, clean: bool = True, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
        flags = 0x02 if clean else 0
        self.sock.sendall(_packet(0x10, _string("MQTT") + bytes([4, flags]) + struct.pack("!H", 600)
                                  + _string(client_id)))
        kind, body = self.read()
        if kind != 0x20 or body[1] != 0:
            raise ConnectionError(f"CONNACK {body!r}")
        self.session_present = bool(body[0] & 1)
        self.next_id = 0

    def read(self) -> tuple[int, bytes]:
        """One packet: its first byte's type and its body."""
        head = self._exact(1)[0]
        length, shift = 0, 0
        while True:
            digit = self._exact(1)[0]
            length += (digit & 127) << shift
            shift += 7
            if not digit & 128:
                break
        return head & 0xF0, self._exact(length)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1 PUBLISH; returns once PUBACKed (raises when the connection drops first)."""
        pid = self._id()
        self.sock.sendall(_packet(0x32 | int(retain), _string(topic) + struct.pack("!H", pid) + payload))
        while True:
            kind, body = self.read()
            if kind == 0x40 and struct.unpack("!H", body)[0] == pid:
                return

    def subscribe(self, topic: str) -> None:
        """QoS 1 SUBSCRIBE; returns once SUBACKed."""
        pid = self._id()
        self.sock.sendall(_packet(0x82, struct.pack("!H", pid) + _string(topic) + b"\x01"))
        while True:
            kind, body = self.read()
            if kind == 0x90 and body[:2] == struct.pack("!H", pid):
                if body[2] == 0x80:
                    raise ConnectionError("SUBACK failure")
                return

    def retained(self, topic: str, quiet: float = 1.0) -> dict[str, bytes]:
        """Subscribe to ``topic`` and collect the retained messages sent until ``quiet`` s pass."""
        self.subscribe(topic)
        found: dict[str, bytes] = {}
        self.sock.settimeout(quiet)
        try:
            while True:
                kind, body = self.read()
                if kind == 0x30:
                    size = struct.unpack("!H", body[:2])[0]
                    found[body[2:2 + size].decode()] = body[2 + size + 2:]
        except (socket.timeout, TimeoutError):
            return found

    def close(self) -> None:
        """Drop the connection (no DISCONNECT: as at a power cut)."""
        self.sock.close()


class Acknowledged:
    """What the gateway acknowledged, over all rounds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: set[str] = set()
        #: Per topic, the retained payloads sent, in order, and the last acknowledged one:
        #: after a cut the topic may hold that one or one sent after it (stored, not yet acked).
        self.retained: dict[str, tuple[list[str], str]] = {}
        self.sessions: set[str] = set()


def publisher(index: int, acked: Acknowledged, stop: threading.Event, round_: int, sessions: int = 200) -> None:
    """Publish QoS 1 telemetry, a retained message every tenth, a persistent session's
    subscription every ``sessions``-th, until ``stop`` or the connection drops."""
    try:
        client = Client(f"pub-{index}")
    except OSError:
        return
    n = 0
    try:
        while not stop.is_set():
            n += 1
            payload = f"r{round_}-p{index}-{n}"
            client.publish(f"telemetry/p{index}", payload.encode())
            with acked.lock:
                acked.messages.add(payload)
            if n % 10 == 0:
                topic = f"state/p{index}/{n % 30}"
                with acked.lock:
                    sent, last = acked.retained.get(topic, ([], ""))
                    acked.retained[topic] = (sent + [payload], last)
                client.publish(topic, payload.encode(), retain=True)
                with acked.lock:
                    acked.retained[topic] = (acked.retained[topic][0], payload)
            if n % sessions == 0:  # (fewer than max_offline_sessions, 1000: the oldest would go)
                session = f"sess-r{round_}-p{index}-{n}"
                sub = Client(session, clean=False)
                sub.subscribe(f"keep/{session}")
                with acked.lock:
                    acked.sessions.add(session)
                sub.close()
    except OSError:
        pass
    finally:
        client.close()


def mount(backing: Path, mnt: Path, stats: Path) -> subprocess.Popen[bytes]:
    """Start the FUSE file system and wait for the mount."""
    fs = subprocess.Popen([*FS, str(backing), str(mnt), "--cut", "--stats", str(stats)],
                          stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.ismount(mnt):
            return fs
        time.sleep(0.02)
    raise RuntimeError("FUSE mount did not appear")


def cut(gateway: subprocess.Popen[bytes], fs: subprocess.Popen[bytes]) -> None:
    """The power cut: SIGKILL the gateway, then unmount keeping only the durable state."""
    gateway.kill()
    gateway.wait()
    unmount(fs)


def unmount(fs: subprocess.Popen[bytes]) -> None:
    """Unmount: the file system's loop ends and it writes the durable state to the backing
    directory (libfuse, not Python, has the signals while it serves: unmount is the way)."""
    for _ in range(100):  # (the gateway's children, killed with it, may still hold the mount a moment)
        if subprocess.run(["fusermount3", "-u", fs.args[-4]], stderr=subprocess.DEVNULL).returncode == 0:
            break
        time.sleep(0.1)
    else:
        subprocess.run(["fusermount3", "-u", fs.args[-4]], check=True)
    fs.wait(timeout=60)


def wait_for_cloud(cloud_log: Path, acked: Acknowledged, timeout: float = 120.0,
                   dropped: Callable[[], int] = lambda: 0) -> set[str]:
    """Wait until the cloud's subscriber (writing each payload to ``cloud_log``) has every
    acknowledged message but at most ``dropped()`` (counted lost: read again at each look, as
    the last gateway drops too, by max-age at its start), for ``timeout`` s at most; the
    messages it still lacks."""
    deadline = time.monotonic() + timeout
    while True:
        lost = acked.messages - set(cloud_log.read_bytes().decode(errors="replace").split())
        if len(lost) <= dropped() or time.monotonic() > deadline:
            return lost
        time.sleep(0.5)


def distinct_dropped(stream_dir: Path) -> int:
    """The records a stream's loss ledger counts dropped, each once."""
    try:
        state = dropped_state(stream_dir)
    except (OSError, ValueError):  # (read while the gateway replaces it: looked at again)
        return 0
    return state["dropped"] - state["counted_twice"]


def run(cuts: int, publishers: int, seed: int, work: Path, bounded: bool = False) -> dict[str, object]:
    """All rounds and the final check; returns the results.

    :param bounded: keep the link's stream at its size bound (:data:`BOUNDED`), its cloud away
        until the last start, and check its drops after each cut.
    """
    rng = random.Random(seed)
    backing, mnt = work / "backing", work / "mnt"
    backing.mkdir()
    mnt.mkdir()
    if bounded:
        (work / "conf.d").mkdir()
        (work / "conf.d" / "bounded.yaml").write_text(BOUNDED)
    stream_dir = backing / "state" / "journal" / "link-cloud"
    away = CLOUD + 1 if bounded else CLOUD  # (nothing listens there)
    (backing / "state").mkdir(mode=0o750)  # as the .deb makes it: there, and durable, before the first start
    cloud_log = work / "cloud.txt"
    cloud = e2e.mosquitto(work, "cloud", CLOUD)  # (no queue limit: mosquitto's default 1000 drops a backlog)
    time.sleep(0.3)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(CLOUD), "-t", "up/#", "-q", "1",
                            "-i", "powercut-cloud", "-c"], stdout=open(cloud_log, "wb"))
    acked = Acknowledged()
    rounds: list[dict[str, object]] = []
    try:
        for round_ in range(cuts):
            fs = mount(backing, mnt, work / f"fs{round_}.json")
            started = time.monotonic()
            gateway = e2e.gateway(work, PORT, away, state=mnt / "state")
            wait_for_port(PORT, timeout=60)
            start_s = time.monotonic() - started
            stop = threading.Event()
            threads = [threading.Thread(target=publisher, args=(i, acked, stop, round_, 2000 if bounded else 200))
                       for i in range(publishers)]
            for thread in threads:
                thread.start()
            after = rng.uniform(0.2, 3.0)
            time.sleep(after)
            cut(gateway, fs)
            stop.set()
            for thread in threads:
                thread.join()
            ops = json.loads((work / f"fs{round_}.json").read_text())
            state = dropped_state(stream_dir) if bounded else {}
            rounds.append({"round": round_, "cut_after_s": round(after, 2), "start_s": round(start_s, 2),
                           "acked_total": len(acked.messages), **ops, **state})
            print(f"round {round_}: started in {start_s:.2f} s, cut after {after:.2f} s, "
                  f"{len(acked.messages)} messages acknowledged so far {state or ''}", flush=True)
        final_state = dropped_state(stream_dir) if bounded else {}
        # The last start: everything acknowledged must be there.
        fs = mount(backing, mnt, work / "final.json")
        gateway = e2e.gateway(work, PORT, CLOUD, state=mnt / "state")
        wait_for_port(PORT, timeout=60)
        checker = Client("powercut-check")
        retained = checker.retained("state/#")
        checker.close()
        lost_retained = sorted(t for t, (sent, last) in acked.retained.items() if last and (
            retained.get(t, b"").decode() not in sent[sent.index(last):]))
        lost_sessions = sorted(s for s in acked.sessions if not Client(s, clean=False).session_present)
        live = mnt / "state" / "journal" / "link-cloud"
        lost = wait_for_cloud(cloud_log, acked, dropped=lambda: distinct_dropped(live) if bounded else 0)
        log = "".join(p.read_text(errors="replace") for p in work.glob("gw.log*"))  # (twistd rotates it at 1 MB)
        gateway.terminate()
        gateway.wait(timeout=60)
        unmount(fs)
        # (the last gateway's own drops, max-age at its start above all, count too)
        distinct = distinct_dropped(stream_dir) if bounded else 0
    finally:
        for proc in (sub, cloud):
            proc.terminate()
            proc.wait()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
    return {
        "cuts": cuts, "publishers": publishers, "seed": seed, "rounds": rounds,
        "acked_messages": len(acked.messages), "lost_messages": len(lost), "lost_examples": sorted(lost)[:10],
        "acked_retained_topics": len(acked.retained), "lost_retained": lost_retained[:10],
        "lost_retained_count": len(lost_retained),
        "acked_sessions": len(acked.sessions), "lost_sessions": lost_sessions[:10],
        "lost_sessions_count": len(lost_sessions),
        "set_aside_logged": log.count(".damaged"),
        **({"bounded": True, **final_state,
            "unaccounted": max(0, len(lost) - distinct), "dropped_at_the_end": distinct,
            "segments_deleted_at_start": log.count("that a crash or power cut left after they were dropped"),
            "cuts_leaving_dropped_segments": sum(1 for r in rounds if r["dropped_segments_on_disk"]),
            "max_counted_twice": max((int(r["counted_twice"]) for r in rounds), default=0),
            "failed_starts": log.count("failed to start")} if bounded else {}),
    }


def main() -> int:
    """Run, print a table, write JSON; exit 1 when anything acknowledged was lost."""
    global PORT, CLOUD
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuts", type=int, default=10)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "powercut.json"))
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--bounded", action="store_true",
                        help="keep the link's stream at its size bound (drop-oldest, max-age), its cloud away")
    parser.add_argument("--port", type=int, default=PORT, help="the gateway's MQTT port")
    parser.add_argument("--cloud-port", type=int, default=CLOUD,
                        help="the cloud mosquitto's port (--bounded: the next one, which nothing listens on, too)")
    parser.add_argument("--checkout", default=str(ROOT), help="run the gateway of this checkout")
    args = parser.parse_args()
    PORT, CLOUD = args.port, args.cloud_port
    os.environ["PYTHONPATH"] = args.checkout  # (the gateway's: the venv's editable install may be another)
    e2e.TWISTD = [sys.executable, str(Path(sys.executable).parent / "twistd")]  # this interpreter's
    work = Path(tempfile.mkdtemp(prefix="powercut-"))
    try:
        result = run(args.cuts, args.publishers, args.seed, work, args.bounded)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory: {work}")
    print("| cuts | messages acknowledged | lost | retained topics | lost | persistent sessions | lost |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {result['cuts']} | {result['acked_messages']} | {result['lost_messages']} | "
          f"{result['acked_retained_topics']} | {result['lost_retained_count']} | "
          f"{result['acked_sessions']} | {result['lost_sessions_count']} |")
    if args.bounded:
        print("| cuts | dropped (ledger) | counted twice (most after a cut) | cuts leaving dropped segments |"
              " deleted at a start | acknowledged, not delivered | not counted | failed starts |")
        print("|---|---|---|---|---|---|---|---|")
        print(f"| {result['cuts']} | {result['dropped']} | {result['counted_twice']} ({result['max_counted_twice']}) | "
              f"{result['cuts_leaving_dropped_segments']} | {result['segments_deleted_at_start']} | "
              f"{result['lost_messages']} | {result['unaccounted']} | {result['failed_starts']} |")
    write_json(args.json, result)
    if args.bounded:
        return 1 if (result["unaccounted"] or result["counted_twice"] or result["lost_retained_count"]
                     or result["lost_sessions_count"] or result["failed_starts"]) else 0
    lost = result["lost_messages"] or result["lost_retained_count"] or result["lost_sessions_count"]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
