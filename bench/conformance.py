"""The broker against third-party MQTT 3.1.1 conformance suites, each on a real ``twistd gateway``.

Nothing is fetched: give the checkouts' paths.

- ``--paho DIR`` (``paho.mqtt.testing/interoperability``): ``client_test.py``'s ten tests,
  through its own ``unittest`` class (its ``__main__`` hands ``--hostname``/``--port`` on to
  ``unittest``, which refuses them); nine on a gateway anonymous clients may use freely,
  ``test_subscribe_failure`` on one whose ``TopicAccessControlListPlugin`` refuses
  ``test/nosubscribe`` (amqtt's ACL cannot both grant ``+/+``, which other tests subscribe to,
  and refuse that topic). Then the model-based test logs (``testsuites/basic/test.log.*``)
  replayed through ``mbt`` and ``specifications/MQTTV311.py`` (``run_test.py`` imports that
  module under an older name, ``MQTTV311_spec``, and a client module that no longer exists).
- ``--mosquitto DIR`` (``mosquitto/test``, copied to a temporary folder first: its tests
  write their config files beside themselves): ``broker/0[1-7]-*.py``, ``10-*``, ``11-*``
  (not the ``-v5`` ones, nor bridges, TLS, plugins, dynamic security: mosquitto's own),
  each in a child process where ``mosq_test.start_broker`` starts a gateway instead of
  mosquitto, with a state folder of its own unless the test's config asks for persistence
  (mosquitto without it starts empty). The test's mosquitto config is translated where the
  gateway has the same setting (listeners, ``allow_anonymous``, a password file whose
  passwords the test sends, the in-flight and queue bounds); a test that needs another one
  is reported ``untranslatable``. The MQTT 5 and MQTT 3.1 (``MQIsdp``) parts are not run;
  the gateway's own retained messages (docs/topics.md) are cleared after each start, as
  mosquitto starts with none; the memory cap of ``01-bad-initial-packets`` (25 MB, mosquitto's
  whole size) is checked against what the gateway's RSS grew by.

    .venv/bin/python bench/conformance.py --paho ~/paho.mqtt.testing/interoperability \\
        --mosquitto ~/mosquitto/test [--port 27061]

It uses ``--port`` and the next two. Every outcome that differs from the suite's and is
known (docs/benchmarks.md says why) is printed with its reason; the exit status is 1 when
any other test fails.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import glob
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import ROOT, write_json  # noqa: E402

BIN = Path(sys.executable).parent

#: Outcomes that differ from the suite's expectation, and why (docs/benchmarks.md).
EXPECTED = {
    "01-connect-uname-or-anon.py": "amqtt's allow_anonymous: false lets in any client that gives a user "
                                   "name when no password plugin is listed (configuration.md)",
    "02-subpub-qos0-long-topic.py": "max_topic_levels counts levels (200); mosquitto counts 200 '/' (201 levels)",
    "02-subscribe-long-topic.py": "a filter over max_topic_levels gets SUBACK 0x80; mosquitto closes",
    "02-subpub-qos2.py": "a QoS 2 message goes on at its PUBLISH, before the PUBREC (MQTT 3.1.1 4.3.3, "
                         "method B); mosquitto sends it on at the PUBREL",
    "03-publish-qos2-dup.py": "a third copy of an unreleased QoS 2 PUBLISH gets its PUBREC [MQTT-4.3.3-2]; "
                              "mosquitto closes the connection",
    "07-will-control.py": "$CONTROL/ is mosquitto's control topic; a will there is accepted",
    "07-will-takeover.py": "a takeover publishes the will [MQTT-3.1.2-8]; mosquitto does not when both "
                           "connections keep their session (CleanSession 0)",
    "03-publish-qos1-queued-bytes.py": "the test is Python 2 (import Queue)",
}
#: Paho's model-based logs whose steps fail, and how many: each sends a packet before its CONNECT
#: and expects the ``not connected`` exception that the older test client raised (docs/benchmarks.md).
EXPECTED_MBT_FAILURES = {"test.log.1": 1, "test.log.6": 1, "test.log.8": 1}
#: Calls of a test's ``do_test`` that need a mosquitto-only setting: not run.
DROP = {"01-connect-zero-length-id.py": 'allow_zero="false"'}
#: What the gateway publishes retained itself (docs/topics.md).
OWN_RETAINED = ("edge/connection/remote/status", "edge/gateway/reports/device_info",
                "edge/gateway/reports/engine_report", "edge/gateway/uploads/autoUpload")
#: 127.0.0.1 ports given to the tests (``--port`` and the next two).
PORTS: list[int] = []


class Untranslatable(Exception):
    """A mosquitto setting the gateway has no equivalent of."""


class Gateway:
    """A ``twistd gateway`` whose broker listens on 127.0.0.1 ``ports``; up once its tree has started."""

    def __init__(self, state: Path, ports: list[int], broker_keys: str = "", anonymous: bool = True,
                 plugins: str = "") -> None:
        work = state.parent
        work.mkdir(parents=True, exist_ok=True)
        listeners = "".join(f"    l{i}:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
                            for i, port in enumerate(ports))
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {state}\nbroker:\n  listeners:\n{listeners}{broker_keys}"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: "
            f"{{allow_anonymous: {'true' if anonymous else 'false'}}}\n{plugins}"
            "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n")
        log = work / "gateway.log"
        start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, str(BIN / "twistd"), "--nodaemon", "--pidfile=", "gateway",
                                          "--config", str(config)], stdout=out, stderr=subprocess.STDOUT, cwd=work)
        self.pid = self.proc.pid
        self.returncode: int | None = None
        atexit.register(self.kill)
        deadline = time.monotonic() + 60
        while b"gateway started" not in log.read_bytes()[start:]:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError(f"the gateway did not start: see {log}")
            time.sleep(0.05)
        self.log, self.log_start = log, start
        self.baseline_rss = self.rss()

    def rss(self) -> int:
        """The gateway's resident set, bytes."""
        pages = int(Path(f"/proc/{self.pid}/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    # What mosquitto's tests do with the broker's Popen:
    def terminate(self) -> None:
        """SIGTERM."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end (60 s at most)."""
        self.returncode = self.proc.wait(timeout=60)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        """No output; the end of the gateway's log as its standard error."""
        self.wait()
        return b"", self.log.read_bytes()[self.log_start:][-4000:]

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.proc.poll()

    def kill(self) -> None:
        """End it if it still runs (at exit: a test that failed midway)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.terminate()
        self.wait()


# -- Paho --------------------------------------------------------------------------------------

def paho_child(suite: Path, port: int, names: list[str]) -> None:
    """In a child process: ``client_test.Test``'s ``names`` against 127.0.0.1:``port``; prints
    ``PAHO <name> ok|fail|error`` for each."""
    sys.path.insert(0, str(suite))
    client_test: Any = __import__("client_test")
    client_test.host, client_test.port = "127.0.0.1", port
    client_test.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
    client_test.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
    client_test.nosubscribe_topics = ("test/nosubscribe",)
    result = unittest.TextTestRunner(verbosity=2).run(unittest.TestSuite([client_test.Test(n) for n in names]))
    outcome = {name: "ok" for name in names}
    outcome.update({test._testMethodName: "fail" for test, _ in result.failures})
    outcome.update({test._testMethodName: "error" for test, _ in result.errors})
    for name, status in outcome.items():
        print("PAHO", name, status, flush=True)


def paho_client_tests(suite: Path, port: int, work: Path) -> dict[str, str]:
    """The ten interoperability tests: test name -> ok, fail or error."""
    source = (suite / "client_test.py").read_text()
    names = sorted(set(re.findall(r"def (test_\w+|testBasic)\(", source)))
    acl = ("    amqtt.plugins.topic_checking.TopicAccessControlListPlugin:\n      acl:\n"
           "        anonymous: [TopicA, TopicA/#, Topic/#, /#]\n")
    outcome: dict[str, str] = {}
    for label, chosen, plugins in (("open", [n for n in names if n != "test_subscribe_failure"], ""),
                                   ("acl", ["test_subscribe_failure"], acl)):
        gateway = Gateway(work / f"paho-{label}" / "state", [port], plugins=plugins)
        try:
            child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--paho-child", str(suite),
                                    str(port), *chosen], capture_output=True, text=True, timeout=900, cwd=work)
        finally:
            gateway.stop()
        for line in child.stdout.splitlines():
            if line.startswith("PAHO "):
                _, name, status = line.split()
                outcome[name] = status
        for name in chosen:
            outcome.setdefault(name, "error")
    return outcome


def paho_model_tests(suite: Path, port: int, work: Path) -> dict[str, dict[str, int]]:
    """The model-based test logs replayed: log name -> steps passed and failed."""
    gateway = Gateway(work / "paho-mbt" / "state", [port])
    try:
        # (mbt logs every step to test.log in its current folder)
        child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--mbt-child", str(suite), str(port)],
                               capture_output=True, text=True, timeout=900, cwd=work)
    finally:
        gateway.stop()
    results = {}
    for line in child.stdout.splitlines():
        if line.startswith("MBT "):
            _, name, passes, failures = line.split()
            results[name] = {"passed": int(passes), "failed": int(failures)}
    return results


def mbt_child(suite: Path, port: int) -> None:
    """In a child process: replay each log (clean sessions first, as ``run_test.py`` does)."""
    sys.path[:0] = [str(suite), str(suite / "specifications")]
    import mbt  # type: ignore[import-not-found]
    import MQTTV311 as spec  # type: ignore[import-not-found]
    import mqtt.clients.V311 as client  # type: ignore[import-not-found]
    spec.hostname, spec.port = "127.0.0.1", port
    logs = sorted(glob.glob(str(suite / "testsuites" / "basic" / "test.log.*")), key=lambda n: int(n.rsplit(".", 1)[1]))
    for log in logs:
        for client_id in ("", "normal", "23 characters4567890123",
                          "A clientid that is longer than 23 chars - should work in 3.1.1"):
            cleaner = client.Client(client_id.encode())
            cleaner.connect(host="127.0.0.1", port=port, cleansession=True)
            cleaner.disconnect()
        spec.restart()
        spec.test = test = mbt.Tests(mbt.model, log, {"exception": lambda rc, expected: True},
                                     observationMatchCallback=spec.observationCheckCallback,
                                     callCallback=spec.callCallback)
        test.run(stepping=False)
        print("MBT", Path(log).name, test.passes, test.failures, flush=True)


# -- mosquitto ---------------------------------------------------------------------------------

def mosquitto_password(entry: str, candidates: set[str]) -> str | None:
    """The password among ``candidates`` that a mosquitto password file's entry holds
    (``$6$<salt>$<sha512(password + salt)>``, base64; or the password in clear)."""
    if "$" not in entry:
        return entry
    _, kind, salt, digest = entry.split("$", 3)
    for password in candidates:
        if kind == "6" and hashlib.sha512(password.encode() + base64.b64decode(salt)).digest() == base64.b64decode(digest):
            return password
    return None


def translate(conf: Path, test_source: str, work: Path) -> tuple[list[int], bool, str, str, bool]:
    """A mosquitto config -> (ports, anonymous allowed, broker keys, more plugins, persistence)."""
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher
    ports: list[int] = []
    anonymous: set[bool] = set()
    keys = plugins = ""
    persistence = per_listener = False
    for line in conf.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key, args = words[0], words[1:]
        if key in ("port", "listener"):
            ports.append(int(args[0]))
        elif key == "allow_anonymous":
            anonymous.add(args[0] == "true")
        elif key == "persistence":
            persistence = args[0] == "true"
        elif key in ("persistence_file", "persistence_location", "sys_interval") or line.strip() == \
                "allow_zero_length_clientid true":
            pass  # where mosquitto keeps its state; $SYS updates (none here); MQTT 3.1.1's rule
        elif key == "per_listener_settings":
            per_listener = args[0] == "true"
        elif key in ("max_inflight_messages", "max_inflight_bytes", "max_queued_messages", "max_queued_bytes"):
            keys += f"  {key}: {int(args[0])}\n"
        elif key == "password_file":
            hasher, lines = PasswordHash((Argon2Hasher(),)), []
            candidates = set(re.findall(r'password="([^"]*)"', test_source))
            for other in Path.cwd().glob("*.py"):  # a test that sends a wrong one: the suite's others
                candidates |= set(re.findall(r'password="([^"]*)"', other.read_text()))
            for entry in Path(args[0]).resolve().read_text().split():
                user, hashed = entry.split(":", 1)
                password = mosquitto_password(hashed, candidates)
                if password is None:
                    raise Untranslatable(f"password_file: {user}'s password is none the suite's tests send")
                lines.append(f"{user}:{hasher.hash(password)}\n")
            (work / "passwd").write_text("".join(lines))
            plugins += f"    amqtt.plugins.authentication.FileAuthPlugin: {{password_file: {work / 'passwd'}}}\n"
        else:
            raise Untranslatable(line.strip())
    if per_listener and len(anonymous) > 1:
        raise Untranslatable("per_listener_settings true, listeners that differ")
    # mosquitto 2: the listeners of a config file refuse anonymous clients unless it says otherwise
    return ports, anonymous == {True}, keys, plugins, persistence


def clear_own_retained(port: int) -> None:
    """Remove the gateway's own retained messages, as a client may."""
    import mosq_test  # type: ignore[import-not-found]
    sock = mosq_test.do_client_connect(mosq_test.gen_connect_311("clear-own-retained"), mosq_test.gen_connack(rc=0),
                                       port=port)
    for topic in OWN_RETAINED:
        sock.send(mosq_test.gen_publish(topic, qos=1, mid=1, retain=True))
        mosq_test.expect_packet(sock, "puback", mosq_test.gen_puback(1))
    sock.send(mosq_test.gen_disconnect())
    sock.close()


class SkipMQTT5(BaseException):
    """An MQTT 5 CONNECT the test builds: the rest of the test is not run."""


def mosquitto_child(test: Path, ports: list[str]) -> None:
    """In a child process, in the copied ``test/broker``: run ``test`` against gateways; exit with its
    status (77: untranslatable). Prints how many MQTT 3.1.1 CONNECTs it built."""
    os.chdir(test.parent)
    sys.path[:0] = [str(test.parent.parent), str(test.parent)]
    import mosq_test
    work = Path(tempfile.mkdtemp(prefix=test.stem + "-", dir=os.environ["CONFORMANCE_WORK"]))
    source = test.read_text()
    started: list[Gateway] = []
    connects = 0
    gen_connect = mosq_test.gen_connect

    def connect_311_only(*args: Any, **kwargs: Any) -> bytes:
        nonlocal connects
        if kwargs.get("proto_ver", 4) == 5:
            print("MQTT 5 CONNECT: not run", flush=True)
            raise SkipMQTT5()
        connects += 1
        return gen_connect(*args, **kwargs)

    def start_broker(filename: str, cmd: Any = None, port: int = 0, use_conf: bool = False,
                     expect_fail: bool = False, nolog: bool = False) -> Gateway:
        if cmd is not None:
            raise Untranslatable(f"a mosquitto command line: {cmd}")
        if use_conf or port == 0:
            listen, anonymous, keys, plugins, persistence = translate(
                Path(filename.replace(".py", ".conf")).resolve(), source, work)
        else:
            listen, anonymous, keys, plugins, persistence = [port], True, "", "", False
        state = work / "state" if persistence else Path(tempfile.mkdtemp(prefix="state-", dir=work))
        gateway = Gateway(state, listen, keys, anonymous, plugins)
        started.append(gateway)
        if anonymous:
            clear_own_retained(listen[0])
        return gateway

    real_process = None
    try:
        import psutil
        real_process = psutil.Process

        class GrowthOnly:
            """``psutil.Process`` of the gateway: its memory is what its RSS grew by since it started."""

            def __init__(self, pid: int) -> None:
                self.gateway = next(g for g in started if g.pid == pid)

            def memory_info(self) -> Any:
                grown = self.gateway.rss() - self.gateway.baseline_rss
                print("RSS grew by", grown)
                return type("Memory", (), {"vms": grown, "rss": grown})()

        psutil.Process = GrowthOnly
    except ImportError:
        pass
    mosq_test.gen_connect_311 = gen_connect
    mosq_test.gen_connect = connect_311_only
    mosq_test.start_broker = start_broker
    mosq_test.get_port = lambda count=1: int(ports[0]) if count == 1 else tuple(int(p) for p in ports[:count])
    for version in ("5", "3"):  # MQTT 5 and MQTT 3.1: not run
        source = re.sub(rf"(?m)^(\s*)do_test\((proto_ver=)?{version}\b.*\)\s*$", r"\1pass", source)
    if test.name in DROP:
        source = re.sub(rf"(?m)^(\s*)do_test\(.*{re.escape(DROP[test.name])}.*\)\s*$", r"\1pass", source)
    source = source.replace("for proto_ver in [4, 5]:", "for proto_ver in [4]:")
    code = 0
    try:
        exec(compile(source, str(test), "exec"), {"__name__": "__main__", "__file__": str(test)})
    except SkipMQTT5:
        pass
    except Untranslatable as e:
        print("UNTRANSLATABLE", e)
        code = 77
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        if real_process is not None:
            psutil.Process = real_process
    print("CONNECTS", connects, "STARTS", len(started), flush=True)
    sys.exit(code)


def mosquitto_tests(suite: Path, ports: list[int], work: Path) -> dict[str, dict[str, Any]]:
    """Each test in a child: name -> its status (passed, failed, untranslatable, MQTT 5 only) and detail."""
    copy = work / "mosquitto-test"
    shutil.copytree(suite, copy)
    results: dict[str, dict[str, Any]] = {}
    names = sorted(glob.glob(str(copy / "broker" / "0[1-7]-*.py")) + glob.glob(str(copy / "broker" / "1[01]-*.py")))
    for path in map(Path, names):
        if path.stem.endswith("-v5") or "bridge" in path.name or "helper" in path.name:
            continue
        started = time.monotonic()
        child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--mosquitto-child", str(path),
                                *map(str, ports)], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "CONFORMANCE_WORK": str(work)})
        connects, starts = map(int, (re.findall(r"CONNECTS (\d+) STARTS (\d+)", child.stdout) or [("0", "0")])[-1])
        if child.returncode == 77:
            status = "untranslatable"
        elif not connects and ("MQTT 5 CONNECT: not run" in child.stdout or (not starts and child.returncode == 0)):
            status = "MQTT 5 only"
        elif child.returncode == 0:
            status = "passed"
        else:
            status = "failed"
        detail = [line for line in (child.stdout + child.stderr).splitlines()
                  if line.startswith(("FAIL", "Received", "Expected", "UNTRANSLATABLE", "RSS"))]
        results[path.name] = {"status": status, "seconds": round(time.monotonic() - started, 1),
                              "detail": detail[:4], "known": EXPECTED.get(path.name)}
        print(f"{path.name:48} {status:15} {results[path.name]['seconds']:5.1f} s "
              f"{EXPECTED.get(path.name) or ' '.join(detail[:1])}", flush=True)
    return results


def main() -> int:
    """Run the suites given; print a summary; exit 1 on a failure not in ``EXPECTED``."""
    if len(sys.argv) > 1 and sys.argv[1] == "--paho-child":
        paho_child(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--mbt-child":
        mbt_child(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--mosquitto-child":
        mosquitto_child(Path(sys.argv[2]), sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paho", type=Path, help="paho.mqtt.testing/interoperability")
    parser.add_argument("--mosquitto", type=Path, help="mosquitto/test")
    parser.add_argument("--port", type=int, default=27061, help="the first of three 127.0.0.1 ports")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "conformance.json"))
    options = parser.parse_args()
    ports = [options.port, options.port + 1, options.port + 2]
    results: dict[str, Any] = {}
    unexpected = 0
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        work = Path(tmp)
        if options.paho:
            client = results["paho_client_test"] = paho_client_tests(options.paho.resolve(), ports[0], work)
            print("\nPaho client_test.py:", ", ".join(f"{name} {status}" for name, status in sorted(client.items())))
            unexpected += sum(status != "ok" for status in client.values())
            model = results["paho_model_based"] = paho_model_tests(options.paho.resolve(), ports[0], work)
            for name, counts in model.items():
                print(f"Paho model-based {name}: {counts['passed']} steps passed, {counts['failed']} failed")
                unexpected += counts["failed"] > EXPECTED_MBT_FAILURES.get(name, 0)
        if options.mosquitto:
            print()
            mosquitto = results["mosquitto"] = mosquitto_tests(options.mosquitto.resolve(), ports, work)
            counts: dict[str, int] = {}
            for outcome in mosquitto.values():
                counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
                unexpected += outcome["status"] == "failed" and not outcome["known"]
            print("\nmosquitto:", ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    write_json(options.json, results)
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
