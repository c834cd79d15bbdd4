"""The podman client's parsing and requests, and container descriptions (no podman needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import fail
from twisted.internet.error import ConnectError, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gateway.containers.descfile import from_mapping, read_description
from gateway.containers.description import ContainerDescription, parse_size
from gateway.containers.errors import DescriptionError, ImageError, RuntimeUnavailable
from gateway.containers.images import read_credentials, registry_of
from gateway.containers.podman import (JsonLines, LogFrames, PodmanRuntime, _create_body, _state,
                                      container_oom_score_adj)
from gateway.containers.runtime import ContainerRuntime
from gateway.updates.operation import parse_request
from tests.containers.conformance import missing


class Libpod(Resource):
    """Answers like podman's libpod API for pulls and image inspection; records requests."""

    isLeaf = True

    def __init__(self, pull_lines: list[dict[str, Any]]) -> None:
        super().__init__()
        self.pull_lines = pull_lines
        self.requests: list[tuple[bytes, bytes, dict[bytes, list[bytes]], Any]] = []

    def render(self, request: Any) -> bytes:
        self.requests.append((request.method, request.path, request.args,
                              request.getHeader("X-Registry-Auth")))
        if request.path.endswith(b"/images/pull"):
            return b"".join(json.dumps(line).encode() + b"\n" for line in self.pull_lines)
        if request.path.endswith(b"/stop"):
            request.setResponseCode(204)
            return b""
        if request.path.endswith(b"/json"):
            return json.dumps({"Id": "abc", "Digest": "sha256:feed", "RepoTags": ["r/x:1"]}).encode()
        request.setResponseCode(404)
        return b'{"message": "no such thing"}'


class Unfinished(Resource):
    """Answers at once, as podman answers a pull, then writes one progress line and no more (a
    registry that never answers podman); or, with ``cut``, drops the connection after it."""

    isLeaf = True

    def __init__(self, cut: bool = False) -> None:
        super().__init__()
        self.cut = cut
        self.requests: list[Any] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        request.write(b'{"stream": "Trying to pull 127.0.0.1:5000/x:1...\\n"}\n')
        if self.cut:
            request.channel.transport.abortConnection()
        return NOT_DONE_YET


class PodmanClientTests(SynchronousTestCase):
    def runtime(self, resource: Resource, clock: Clock | None = None, client: StubTreq | None = None,
                **timeouts: float) -> PodmanRuntime:
        return PodmanRuntime(client or StubTreq(resource), clock or Clock(), **timeouts)  # type: ignore[arg-type]

    def test_provides_the_interface(self) -> None:
        """PodmanRuntime implements the runtime interface completely."""
        self.assertEqual(missing(self.runtime(Libpod([])), ContainerRuntime), [])

    def test_pull_sends_credentials_and_tls_choice(self) -> None:
        """A pull carries X-Registry-Auth and tlsVerify, then inspects the image for its digest."""
        resource = Libpod([{"stream": "Trying\n"}, {"images": ["abc"], "id": "abc"}])
        info = self.successResultOf(self.runtime(resource).pull("r/x:1", ("u", "p"), False))
        self.assertEqual((info.id, info.digest), ("abc", "sha256:feed"))
        method, path, args, auth = resource.requests[0]
        self.assertEqual((path, args[b"reference"], args[b"tlsVerify"]),
                         (b"/v4.0.0/libpod/images/pull", [b"r/x:1"], [b"false"]))
        self.assertEqual(json.loads(base64.urlsafe_b64decode(auth)), {"username": "u", "password": "p"})

    def test_pull_error_line_is_an_image_error(self) -> None:
        """podman reports a failed pull as an error line in a 200 answer: it becomes an ImageError."""
        resource = Libpod([{"stream": "Trying\n"}, {"error": "manifest unknown"}])
        failure = self.failureResultOf(self.runtime(resource).pull("r/x:9", None, True), ImageError)
        self.assertIn("manifest unknown", failure.getErrorMessage())

    def test_pull_that_does_not_end_fails_after_pull_timeout(self) -> None:
        """podman answers a pull at once and streams its progress: a pull whose answer does not
        end (a registry that never answers) fails once ``pull_timeout`` has passed, saying so;
        it held every container operation for ever before."""
        clock, resource = Clock(), Unfinished()
        client = StubTreq(resource)
        pulling = self.runtime(resource, clock, client, pull_timeout=5, timeout=1)
        pull = pulling.pull("127.0.0.1:5000/x:1", None, False)
        clock.advance(4.9)
        self.assertNoResult(pull)
        clock.advance(0.1)
        failure = self.failureResultOf(pull, RuntimeUnavailable)
        self.assertEqual(failure.getErrorMessage(), "podman does not answer: POST /images/pull: no answer within"
                                                    " 5 s (containers.pull_timeout)")
        # The answer's end, after the request was given up, is ignored (no AlreadyCalledError logged).
        resource.requests[0].write(b'{"id": "abc"}\n')
        resource.requests[0].finish()
        client.flush()
        ping = pulling.ping()
        clock.advance(1)
        self.assertIn("(containers.request_timeout)", self.failureResultOf(ping, RuntimeUnavailable).getErrorMessage())
        stop = pulling.stop("abc", 2)  # podman answers a stop once the container is gone: up to stop_timeout
        clock.advance(2.9)
        self.assertNoResult(stop)
        clock.advance(0.1)
        self.assertEqual(self.failureResultOf(stop, RuntimeUnavailable).getErrorMessage(),
                         "podman does not answer: POST /containers/abc/stop: no answer within 3 s "
                         "(containers.request_timeout plus stop_timeout)")

    def test_answer_cut_off_is_the_runtime_unavailable(self) -> None:
        """An answer cut off by a lost connection (podman's service died) is RuntimeUnavailable,
        as a refused connection is, not an error the callers do not expect."""
        failure = self.failureResultOf(self.runtime(Unfinished(cut=True)).pull("r/x:1", None, True),
                                       RuntimeUnavailable)
        self.assertEqual(failure.getErrorMessage(),
                         "podman does not answer: POST /images/pull: the connection was lost")

    def test_a_socket_that_cannot_be_reached_is_said_in_words(self) -> None:
        """No socket, or one that refuses: RuntimeUnavailable saying it cannot connect and why,
        for a request and for a stream alike (the ``error`` of every container app meanwhile):
        before, Twisted's ``An error occurred while connecting: 2: No such file or directory.``"""
        class Unreachable:
            def request(self, method: str, url: str, **kwargs: Any) -> Any:
                return fail(ConnectError(2, "No such file or directory"))

            def get(self, url: str, **kwargs: Any) -> Any:
                return fail(ConnectionRefusedError(111, "Connection refused"))

        runtime = PodmanRuntime(Unreachable(), Clock())  # type: ignore[arg-type]
        self.assertEqual(self.failureResultOf(runtime.ping(), RuntimeUnavailable).getErrorMessage(),
                         "podman does not answer: cannot connect to its socket: No such file or directory")
        self.assertEqual(self.failureResultOf(runtime.events(lambda event: None), RuntimeUnavailable).getErrorMessage(),
                         "podman does not answer: cannot connect to its socket: Connection refused")

    def test_a_stream_whose_connection_is_lost_before_its_answer_is_said_in_words(self) -> None:
        """podman's service dying between the request for a stream and its answer: the
        supervisor's "the runtime does not answer: ..." and a unit's "cannot follow the output
        of NAME: ..." gave Twisted's list of Failure reprs ("[<twisted.python.failure.Failure
        twisted.internet.error.ConnectionLost: ...>]"); it is RuntimeUnavailable in words, as
        for a request."""
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseNeverReceived

        class Dying:
            def get(self, url: str, **kwargs: Any) -> Any:
                return fail(ResponseNeverReceived([Failure(ConnectionLost("Connection to the other side was lost"))]))

        runtime = PodmanRuntime(Dying(), Clock())  # type: ignore[arg-type]
        self.assertEqual(self.failureResultOf(runtime.events(lambda event: None), RuntimeUnavailable).getErrorMessage(),
                         "podman does not answer: GET /events: the connection was lost")
        self.assertEqual(self.failureResultOf(runtime.logs("abc", "", lambda stream, data: None),
                                              RuntimeUnavailable).getErrorMessage(),
                         "podman does not answer: GET /containers/abc/logs: the connection was lost")

    def test_stream_parsers(self) -> None:
        """JSON lines split across reads, and multiplexed log frames split anywhere, come out whole."""
        values: list[Any] = []
        lines = JsonLines(values.append)
        for chunk in (b'{"a": 1}\n{"b"', b': 2}\nnot json\n', b'{"c": 3}'):
            lines.feed(chunk)
        self.assertEqual(values, [{"a": 1}, {"b": 2}])
        frames: list[tuple[int, bytes]] = []
        decoder = LogFrames(lambda stream, data: frames.append((stream, data)))
        raw = b"\x01\0\0\0\0\0\0\x03out" + b"\x02\0\0\0\0\0\0\x04err\n"
        for i in range(len(raw)):
            decoder.feed(raw[i:i + 1])
        self.assertEqual(frames, [(1, b"out"), (2, b"err\n")])

    def test_create_body(self) -> None:
        """Limits, network, mounts, ports and a delegated restart policy map to podman's
        SpecGenerator; the container runs at the oom_score_adj of a hosted program."""
        description = from_mapping({
            "image": "r/x:1", "memory": "64M", "cpus": 0.5, "network_mode": "bridge", "env": {"A": "1"},
            "mounts": [{"source": "/data", "destination": "/d", "read_only": True}],
            "port_mappings": [{"container_port": 80, "host_port": 8080}],
            "restart_policy": {"type": "on-failure", "max_retries": 2, "delegate": True}})
        body = _create_body("x.1", "abc", description, {"io.gateway.app": "x"})
        self.assertEqual(body["resource_limits"], {"memory": {"limit": 64 * 2**20},
                                                   "cpu": {"quota": 50000, "period": 100000}})
        self.assertEqual((body["netns"], body["restart_policy"], body["restart_tries"]),
                         ({"nsmode": "bridge"}, "on-failure", 2))
        self.assertEqual(body["mounts"][0]["options"], ["rbind", "ro"])
        self.assertEqual(body["portmappings"][0]["host_port"], 8080)
        self.assertEqual(body["oom_score_adj"], 500)  # (the OOM killer's first choice, before the gateway)

    def test_a_gateway_with_a_higher_oom_score_adj_gives_its_containers_its_own(self) -> None:
        """A gateway an operator gave an ``oom_score_adj`` above 500 (800) creates its containers
        with that score, as its hosted programs keep it: with 500 the OOM killer would take the
        gateway before them. A lower one (0, -1000), or none to read (not Linux), gives 500."""
        own = Path(self.mktemp())
        scores = []
        for text in ("800\n", "0\n", "-1000\n"):
            own.write_text(text)
            scores.append(container_oom_score_adj(str(own)))
        own.unlink()
        scores.append(container_oom_score_adj(str(own)))
        self.assertEqual(scores, [800, 500, 500, 500])

        class Creates(Resource):
            isLeaf = True
            bodies: list[Any] = []

            def render(self, request: Any) -> bytes:
                self.bodies.append(json.loads(request.content.read()))
                request.setResponseCode(201)
                return b'{"Id": "c1"}'

        resource = Creates()
        runtime = self.runtime(resource, oom_score_adj=800)
        created = runtime.create("x.1", "abc", from_mapping({"image": "r/x:1"}), {"io.gateway.app": "x"})
        self.assertEqual(self.successResultOf(created), "c1")
        self.assertEqual(resource.bodies[0]["oom_score_adj"], 800)

    def test_exit_code_podman_does_not_give_is_unknown(self) -> None:
        """An exited container's state with no ExitCode (or a null one) has an unknown exit status
        (None, reported as ``null``), not 0; a given one, 0 included, is taken as it is."""
        started = {"Running": False, "StartedAt": "2024-05-01T10:00:00Z"}
        for state, code in (({}, None), ({"ExitCode": None}, None), ({"ExitCode": 0}, 0),
                            ({"ExitCode": 137}, 137)):
            self.assertEqual(_state({"Id": "abc", "State": {**started, **state}}).exit_code, code, state)

    def test_a_container_podman_is_stopping_is_said_so(self) -> None:
        """podman's ``stopping`` status (a stop under way, or one cut short) is the state's
        ``stopping``; it does not run, as podman says."""
        for status, stopping in (("stopping", True), ("running", False), ("exited", False), ("", False)):
            state = _state({"Id": "abc", "State": {"Status": status, "Running": status == "running"}})
            self.assertEqual((state.stopping, state.running), (stopping, status == "running"), status)

    def test_stop_timeout_is_rounded_up_to_whole_seconds(self) -> None:
        """podman takes a stop timeout in whole seconds: ``stop_timeout: 0.5`` is sent as 1 (not 0,
        which kills the container at once), at create and at stop; a whole number is sent as it is."""
        for seconds, sent in ((0.5, 1), (2.1, 3), (0, 0), (10, 10)):
            description = from_mapping({"image": "r/x:1", "stop_timeout": seconds})
            self.assertEqual(_create_body("x.1", "abc", description, {})["stop_timeout"], sent, seconds)
            resource = Libpod([])
            self.successResultOf(self.runtime(resource).stop("abc", seconds))
            method, path, args, _ = resource.requests[-1]
            self.assertEqual((path, args[b"timeout"]), (b"/v4.0.0/libpod/containers/abc/stop", [str(sent).encode()]))


class DescriptionTests(SynchronousTestCase):
    def test_every_problem_is_named(self) -> None:
        """Unknown keys and wrong types are all reported together; then semantic problems."""
        with self.assertRaises(DescriptionError) as caught:
            from_mapping({"image": "r/x:1", "colour": "red", "cpus": "many"})
        self.assertIn("colour: unknown key", str(caught.exception))
        self.assertIn("cpus: must be a number", str(caught.exception))
        with self.assertRaises(DescriptionError) as caught:
            from_mapping({"memory": "1M", "network_mode": "host",
                          "port_mappings": [{"container_port": 1, "host_port": 2}]})
        message = str(caught.exception)
        for part in ("image: an image reference is required", "memory: at least 6M", "port_mappings"):
            self.assertIn(part, message)

    def test_a_description_that_is_no_mapping_is_named_in_yamls_words(self) -> None:
        """A description that is a list or a text is refused naming it so, as the configuration
        does (it said ``not list``, Python's name)."""
        for data, given in ((["r/x:1"], "a list"), ("r/x:1", "the text 'r/x:1'"), (None, "empty (null)")):
            with self.assertRaises(DescriptionError) as caught:
                from_mapping(data)
            self.assertEqual(str(caught.exception), f"description: must be a mapping, not {given}")

    def test_defaults_are_those_the_docs_give(self) -> None:
        """docs/containers.md: the keys left out of a description take the values its example
        shows for them (network_mode, restart_policy, log, stop_timeout, startsecs, autostart),
        no limits, the image's command, and apps.health_window."""
        description = from_mapping({"image": "r/x:1"})
        self.assertEqual((description.network_mode, description.restart_policy.type,
                          description.restart_policy.max_retries, description.restart_policy.delegate,
                          description.log.max_size, description.log.max_files, description.stop_timeout,
                          description.startsecs, description.autostart),
                         ("bridge", "unless-stopped", 0, False, "1M", 3, 10.0, 1.0, True))
        self.assertEqual((description.memory, description.cpus, description.cpuset_cpus, description.command,
                          description.env, description.mounts, description.port_mappings,
                          description.health_window, description.archive),
                         ("", 0.0, "", (), {}, (), (), None, None))

    def test_a_kanto_format_description_is_refused_naming_its_keys(self) -> None:
        """A description in Kanto's own format is not read as one (docs/containers.md): it is
        refused naming Kanto's keys, to be translated by the table there."""
        with self.assertRaises(DescriptionError) as caught:
            from_mapping({"container_name": "x", "image": {"name": "r/x:1"}, "host_config": {"network_mode": "host"}})
        message = str(caught.exception)
        for part in ("container_name: unknown key", "image: must be a string, not a mapping", "host_config: unknown key"):
            self.assertIn(part, message)

    def test_kantos_port_and_mount_entries_translate_by_the_docs_table(self) -> None:
        """Kanto's port mapping and mount point entries (container-management's
        ``port_mappings`` items: ``proto``, ``container_port``, ``host_ip``, ``host_port``,
        ``host_port_end``; ``mount_points``: ``source``, ``destination``, ``propagation_mode``)
        translate as docs/containers.md says: ``proto`` is ``protocol`` (Kanto's key as it is is
        refused, naming it), ``host_port_end`` and ``propagation_mode`` have no counterpart."""
        kanto_port = {"proto": "udp", "container_port": 5683, "host_ip": "", "host_port": 5683}
        kanto_mount = {"source": "/var/lib/s", "destination": "/data", "propagation_mode": "rprivate"}
        translated = from_mapping({"image": "r/x:1", "mounts": [{"source": "/var/lib/s", "destination": "/data"}],
                                   "port_mappings": [{"protocol": kanto_port["proto"], "container_port": 5683,
                                                      "host_ip": "", "host_port": 5683}]})
        self.assertEqual((translated.port_mappings[0].protocol, translated.port_mappings[0].host_port), ("udp", 5683))
        self.assertEqual(translated.mounts[0].destination, "/data")
        for key, entry, unknown in (("port_mappings", kanto_port, "proto"),
                                    ("port_mappings", {"protocol": "udp", "container_port": 5683, "host_port": 5683,
                                                      "host_port_end": 5690}, "host_port_end"),
                                    ("mounts", kanto_mount, "propagation_mode")):
            with self.assertRaises(DescriptionError) as caught:
                from_mapping({"image": "r/x:1", key: [entry]})
            self.assertIn(unknown, str(caught.exception))

    def test_files(self) -> None:
        """JSON and YAML files are read; an unparsable one is a DescriptionError."""
        work = Path(self.mktemp())
        work.mkdir()
        (work / "a.yaml").write_text("image: r/x:1\nenv: {A: '1'}\n")
        self.assertEqual(read_description(work / "a.yaml"), ContainerDescription(image="r/x:1", env={"A": "1"}))
        (work / "b.json").write_text("{nope")
        self.assertRaises(DescriptionError, read_description, work / "b.json")
        for name, deep in (("c.json", "[" * 5000), ("d.yaml", "image: " + "[" * 5000)):
            (work / name).write_text(deep)  # raised RecursionError, past every caller's except
            self.assertIn("nested too deeply", str(self.assertRaises(DescriptionError, read_description, work / name)))
        (work / "auth.json").write_text("[" * 5000)
        self.assertIn("nested too deeply", str(self.assertRaises(ImageError, read_credentials, work / "auth.json", "r")))
        self.assertEqual(parse_size("512K"), 524288)
        self.assertRaises(ValueError, parse_size, "lots")
        for digits in ("\u0663M", "\uff13M", "1\u00a0M"):  # (Arabic-Indic, fullwidth: int() read them; NBSP)
            self.assertRaises(ValueError, parse_size, digits)

    def test_credentials_and_registries(self) -> None:
        """auth.json entries (auth or username/password) are found by registry host, and Docker
        Hub's under the key a docker config.json gives it."""
        work = Path(self.mktemp())
        work.mkdir()
        (work / "auth.json").write_text(json.dumps({"auths": {
            "reg:5000": {"auth": base64.b64encode(b"me:secret").decode()},
            "other.io": {"username": "u", "password": "p"}}}))
        self.assertEqual(read_credentials(work / "auth.json", "reg:5000"), ("me", "secret"))
        self.assertEqual(read_credentials(work / "auth.json", "other.io"), ("u", "p"))
        self.assertIsNone(read_credentials(work / "auth.json", "docker.io"))
        # docker login's config.json files Docker Hub under its index URL, not docker.io.
        (work / "config.json").write_text(json.dumps({"auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()}}}))
        self.assertEqual(read_credentials(work / "config.json", registry_of("busybox")), ("hub", "pw"))
        self.assertIsNone(read_credentials(work / "config.json", "reg:5000"))
        # A file in another format is an error, not anonymous pulls the registry refuses.
        for text in ('["reg:5000"]', '{"auths": ["reg:5000"]}'):
            (work / "config.json").write_text(text)
            self.assertIn("not in the auth.json / config.json format", str(
                self.assertRaises(ImageError, read_credentials, work / "config.json", "reg:5000")))
        # An entry for the registry that holds no credentials in that format: an error too (it
        # was taken as none, and the registry's 401 came without a word about the file).
        for entry in ("me:secret", ["me", "secret"], {"auth": "not base64!"}):
            (work / "config.json").write_text(json.dumps({"auths": {"reg:5000": entry}}))
            self.assertIn(f"credentials file {work / 'config.json'}: reg:5000: ", str(
                self.assertRaises(ImageError, read_credentials, work / "config.json", "reg:5000")))
        (work / "config.json").write_text('{"credsStore": "desktop"}')
        self.assertIsNone(read_credentials(work / "config.json", "reg:5000"))
        self.assertEqual([registry_of(r) for r in ("reg:5000/a:1", "busybox", "library/busybox", "q.io/x")],
                         ["reg:5000", "docker.io", "docker.io", "q.io"])

    def test_update_target_container(self) -> None:
        """An update module may say metadata.target: container."""
        operation = parse_request("install", {"correlationId": "c", "softwareModules": [{
            "softwareModule": {"name": "hello", "version": "2"},
            "artifacts": [{"filename": "hello.json", "download": {"HTTP": {"url": "http://x/hello.json"}}}],
            "metadata": {"target": "container"}}]})
        self.assertEqual(operation.modules[0].target, "container")


class ConfigSectionTests(SynchronousTestCase):
    def test_declared_containers_are_checked_with_the_config(self) -> None:
        """A declared container with an unknown key, no image or a bad name fails the config load,
        naming each problem; so do a socket path too long for a unix socket and a declared
        container naming an archive (it was ignored: the image was pulled)."""
        from gateway import config as gateway_config
        from gateway.errors import ConfigError

        work = Path(self.mktemp())
        work.mkdir()
        (work / "gateway.yaml").write_text(
            "containers:\n  enabled: true\n  containers:\n"
            "    ok: {image: 'r/x:1', memory: 64M}\n"
            "    noimage: {memory: 64M}\n"
            "    typo: {image: 'r/x:1', memroy: 64M}\n"
            "    'bad name': {image: 'r/x:1'}\n")
        with self.assertRaises(ConfigError) as caught:
            gateway_config.load(work / "gateway.yaml")
        text = str(caught.exception)
        for part in ("containers.containers.typo.memroy: unknown key", "containers.noimage.image: an image",
                     "containers.bad name: not a valid container name"):
            self.assertIn(part, text)
        (work / "gateway.yaml").write_text(f"containers:\n  socket: /{'s' * 107}\n"
                                           "  containers:\n    packed: {image: 'r/x:1', archive: x.oci.tar}\n")
        text = str(self.assertRaises(ConfigError, gateway_config.load, work / "gateway.yaml"))
        self.assertIn("containers.socket: a unix socket path has at most 107 bytes, not 108", text)
        self.assertIn("containers.containers.packed.archive: only an update's description names an archive", text)
        (work / "gateway.yaml").write_text("containers:\n  containers:\n    ok: {image: 'r/x:1', memory: 64M}\n")
        loaded = gateway_config.load(work / "gateway.yaml").containers
        self.assertEqual(loaded.containers["ok"].memory_bytes, 64 * 2**20)
