"""docs/containers.md and docs/aws.md, checked as a reader takes them: the limits and edge
values they state are where the configuration check draws its lines, and the error texts
they quote are the ones it prints."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import yaml
from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.apps.snapshot import AppSnapshot, AppsSnapshot
from gateway.errors import ConfigError
from gateway.links.aws_settings import AWSSettings
from gateway.links.router import Router, Rule
from gateway.links.settings import AWS_ROUTES, LinkSettings
from gateway.telemetry.engine import engine_report

DOCS = Path(__file__).resolve().parent.parent / "docs"


def prose(doc: str) -> str:
    """The text of ``doc`` with its lines joined, as a reader reads a sentence across them."""
    return " ".join((DOCS / doc).read_text(encoding="utf-8").split())


class ConfigCheck(SynchronousTestCase):
    """Loads a configuration over a base with an ``aws`` link, the way ``--check-config`` does."""

    def assertQuoted(self, text: str, doc: str) -> None:
        """``text`` is quoted in ``doc`` (between backticks)."""
        self.assertTrue(f"`{text}`" in prose(doc), f"{doc} does not quote `{text}`")

    def problems(self, text: str, state_dir: Path | None = None) -> list[str]:
        """The configuration check's problems for ``text`` (YAML), each without its file name.

        :param state_dir: ``gateway.state_dir`` (default: one under the test's directory).
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        if state_dir is None:  # short enough for podman's default socket under it
            state_dir = Path(tempfile.mkdtemp(prefix="docs-"))
            self.addCleanup(shutil.rmtree, state_dir, True)
        state = state_dir
        (directory / "gateway.yaml").write_text(
            f"gateway: {{state_dir: '{state}'}}\n"
            "links:\n  links:\n    aws: {endpoint: 'tcp:host=127.0.0.1:port=1', aws: {}}\n")
        (directory / "conf.d").mkdir()
        (directory / "conf.d" / "50-test.yaml").write_text(text)
        try:
            config.load(directory / "gateway.yaml")
        except ConfigError as error:
            return [line.split(": ", 1)[1] for line in error.errors]
        return []


class ContainersDocTests(ConfigCheck):
    """containers.md's limits and error texts."""

    def test_default_socket_under_a_deep_state_dir_is_a_config_error(self) -> None:
        """An empty ``containers.socket`` whose default, ``<state>/containers/podman.sock``,
        is longer than the 107 bytes of a unix socket path is refused by the configuration
        check, as the page says, naming the path and what to change (podman's service could
        never bind it: the gateway would wait 30 s and list every container FATAL)."""
        base = Path(tempfile.mkdtemp(prefix="docs-"))
        self.addCleanup(shutil.rmtree, base, True)
        fits = base / ("s" * (107 - len(str(base)) - len("/containers/podman.sock") - 1))
        self.assertEqual(len(str(fits / "containers" / "podman.sock")), 107)
        self.assertEqual(self.problems("containers: {enabled: true}\n", fits), [])
        deep = fits.with_name(fits.name + "s")
        [problem] = self.problems("containers: {enabled: true}\n", deep)
        socket = deep / "containers" / "podman.sock"
        self.assertEqual(problem, f"containers.socket: empty: its default '{socket}' is too long (a unix socket path"
                                  " has at most 107 bytes, not 108): set a shorter containers.socket or"
                                  " gateway.state_dir")
        self.assertQuoted("containers.socket: empty: its default '<path>' is too long (a unix socket path has at"
                          " most 107 bytes, not N): set a shorter containers.socket or gateway.state_dir",
                          "containers.md")
        # a short socket of its own, or containers left off, is fine under the same directory
        self.assertEqual(self.problems("containers: {enabled: true, socket: /run/p.sock}\n", deep), [])
        self.assertEqual(self.problems("containers: {enabled: false}\n", deep), [])

    def test_insecure_registries_are_host_port(self) -> None:
        """An ``insecure_registries`` entry written as a URL would match no image's registry
        (the pull would verify TLS after all): refused with the text the page quotes."""
        self.assertEqual(self.problems("containers: {insecure_registries: [registry.local:5000, reg]}\n"), [])
        [problem] = self.problems("containers: {insecure_registries: ['http://registry.local:5000']}\n")
        self.assertQuoted(problem, "containers.md")

    def test_api_version_as_podman_routes_take_it(self) -> None:
        """An ``api_version`` podman's routes do not take (``/4.0.0/libpod/...`` is 404 there)
        passed the check and failed every request at run time: refused with the quoted text."""
        for version in ("v4.0.0", "v4", "v5.1.0-rc1"):
            self.assertEqual(self.problems(f"containers: {{api_version: '{version}'}}\n"), [])
        for version in ("4.0.0", "latest", "v", "v4/x", "vx"):
            [problem] = self.problems(f"containers: {{api_version: '{version}'}}\n")
            self.assertEqual(problem, f"containers.api_version: {version!r} is no libpod API version: v and a"
                                      " version number, as in v4.0.0")
        self.assertQuoted("containers.api_version: '4.0.0' is no libpod API version: v and a version number, as"
                          " in v4.0.0", "containers.md")

    def test_cpuset_cpus_is_a_cpu_list(self) -> None:
        """A ``cpuset_cpus`` that is no CPU list passed the check and was refused by podman only
        at install: refused by the check (and by the description's own check, at install). Its
        digits are ASCII ones: the kernel reads no other (an Arabic-Indic ``٣`` passed)."""
        for value in ("0", "0-1", "0,2", "0-1,4", "12-15"):
            self.assertEqual(self.problems(f"containers: {{containers: {{abc: {{image: x, cpuset_cpus: '{value}'}}}}}}\n"),
                             [])
        for value in ("0-", "a", "1-0", "0,,2", "0;1", "1.5", " 0", "0-1,", "\u0663", "0-\u0663", "\uff11"):
            [problem] = self.problems(f"containers: {{containers: {{abc: {{image: x, cpuset_cpus: '{value}'}}}}}}\n")
            self.assertEqual(problem, f"containers.containers.abc.cpuset_cpus: {value!r} is not a list of CPUs"
                                      " (numbers and ranges low-high, comma separated: 0-1 or 0,2)")
        self.assertQuoted("cpuset_cpus: '0-' is not a list of CPUs (numbers and ranges low-high, comma separated:"
                          " 0-1 or 0,2)", "containers.md")

    def test_empty_podman_command(self) -> None:
        """An empty ``podman_command`` is a configuration error when the gateway starts the
        service (it would run ``system service ...`` as a program), not when it does not."""
        self.assertEqual(self.problems("containers: {enabled: true, podman_command: []}\n"),
                         ["containers.podman_command: empty: the gateway needs it to run podman's service"
                          " (start_service: true)"])
        self.assertEqual(self.problems("containers: {enabled: true, podman_command: [], start_service: false}\n"),
                         [])

    def test_timeouts_at_least_one_second(self) -> None:
        """``request_timeout`` and ``pull_timeout`` are "at least 1"."""
        for key in ("request_timeout", "pull_timeout"):
            self.assertEqual(self.problems(f"containers: {{enabled: true, {key}: 1}}\n"), [])
            self.assertEqual(self.problems(f"containers: {{enabled: true, {key}: 0.99}}\n"),
                             [f"containers.{key}: must be at least 1, not 0.99"])

    def test_memory_at_least_6M(self) -> None:
        """``memory``: K/M/G, at least 6M."""
        for value, refused in (("6M", False), ("6144K", False), ("1G", False), ("6143K", True), ("5M", True)):
            found = self.problems(f"containers: {{enabled: true, containers: {{abc: {{image: x, memory: {value}}}}}}}\n")
            self.assertEqual(bool(found), refused, (value, found))

    def test_log_max_files_counts_rotated_files(self) -> None:
        """``log``: with the defaults (1M, 3) a container's output rotates into ``<name>.log.1`` to
        ``.3``, 1 MiB each, beside the file written to; ``max_files: 0`` keeps no rotated file."""
        from gateway.apps.logs import AppLogWriter
        from gateway.containers.descfile import from_mapping
        from gateway.containers.description import parse_size
        from gateway.containers.unit import log_paths

        logs = Path(self.mktemp())
        writer = AppLogWriter(256 * 2**20)  # (no reactor: written inline)
        for name, log in (("sensor", {}), ("bare", {"max_size": "10K", "max_files": 0})):
            limits = from_mapping({"image": "x", "log": log}).log
            stdout, _ = log_paths(logs, name)
            target = writer.open(stdout, parse_size(limits.max_size), limits.max_files)
            for _ in range(3 if log else 10):  # (bare: 12000 bytes emptied it, then 6000)
                writer.write(target, b"x" * 6000 if log else b"x" * 2**20)
            target.close()
        self.assertEqual(sorted((p.name, p.stat().st_size) for p in logs.iterdir()),
                         [("bare.log", 6000)] + [(f"sensor.log.{i}", 2**20) for i in (1, 2, 3)])
        self.assertIn("keeps `max_files` rotated files of each beside it", prose("containers.md"))

    def test_names(self) -> None:
        """A name: letters, digits and ``_.-``, at most 63; not ending in ``.err``; not
        ``podman-service``."""
        def check(name: str) -> list[str]:
            return self.problems(f"containers: {{enabled: true, containers: {{'{name}': {{image: x}}}}}}\n")
        self.assertEqual(check("a" * 63), [])
        self.assertEqual(check("a_.-B9"), [])
        for name in ("a" * 64, "a b", "sensor.err", "podman-service"):
            self.assertEqual(len(check(name)), 1, name)

    def test_kanto_description_refused_naming_its_keys(self) -> None:
        """The Kanto description's errors are the ones the page quotes."""
        found = self.problems("containers: {enabled: true, containers: {abc: {container_name: abc, image: {name: x}}}}\n")
        self.assertEqual([re.sub(r" \(known: .*\)$", " ...", line) for line in found],
                         ["containers.containers.abc.container_name: unknown key ...",
                          "containers.containers.abc.image: must be a string, not a mapping"])
        self.assertQuoted("container_name: unknown key ...; image: must be a string, not a mapping ...",
                          "containers.md")


class AWSDocTests(ConfigCheck):
    """aws.md's limits and error texts."""

    def test_a_command_from_aws_comes_down_on_both_local_forms(self) -> None:
        """An ``aws:`` link without ``downlink`` of its own republishes AWS's
        ``command//+/req/#`` locally unchanged and on Hono's short form, as the topics table
        says (it said "unchanged" only; a gateway showed both)."""
        link = LinkSettings(endpoint="tcp:host=127.0.0.1:port=1", aws=AWSSettings())
        self.assertEqual({(d.filter, d.topic) for d in link.downlink},
                         {("command//+/req/#", "{topic}"), ("command//+/req/#", "c//{1}/q/{#}")})
        self.assertIn("| local, unchanged, and on its short form `c//<dev>/q/<id>/<name>`", prose("aws.md"))

    def test_the_routes_for_kantos_aws_topics_make_them(self) -> None:
        """aws.md's routes for a Kanto gateway's AWS topics load as a configuration and send
        telemetry and events as Kanto's AWS connector does (suite-connector's
        ``routing/events.go``: ``t`` as ``telemetry/<tenant>/<device>``), the rest of the
        table as the defaults do. The docs called the defaults (topics as they are) Kanto's."""
        [block] = [b for b in re.findall(r"```yaml\n(.*?)```", (DOCS / "aws.md").read_text(), re.S)
                   if "routes:" in b and "telemetry/{tenant}" in b]
        self.assertEqual(self.problems(block), [])
        routes = yaml.safe_load(block)["links"]["links"]["aws"]["routes"]
        router = Router([Rule.compile("aws", r["filter"], r["topic"], 1) for r in routes], "acme", "gw1")
        defaults = Router([Rule.compile("aws", r.filter, r.topic, r.qos) for r in AWS_ROUTES], "acme", "gw1")
        for topic, kanto in (("t", "telemetry/acme/gw1"), ("telemetry/meter", "telemetry/acme/gw1/meter"),
                             ("e/alarm", "event/acme/gw1/alarm"), ("event", "event/acme/gw1")):
            self.assertEqual([d.topic for d in router.route(topic)], [kanto], topic)
            self.assertEqual([d.topic for d in defaults.route(topic)], [topic], topic)
        for topic in ("command//gw1/res/1/200", "c//gw1/s/1/200", "edge/gateway/updates/lastOperation",
                      "edge/gateway/config/lastChange", "edge/gateway/reports/device_info",
                      "edge/gateway/reports/usage_report", "edge/gateway/reports/engine_report",
                      "edge/gateway/uploads/lastUpload", "edge/gateway/uploads/autoUpload",
                      "edge/gateway/uploads/request", "edge/gateway/reports/request", "edge/thing/request"):
            self.assertEqual(router.route(topic), defaults.route(topic), topic)

    def test_max_message_bytes_1_to_131072(self) -> None:
        """``max_message_bytes`` of an ``aws:`` link: 1 to 131072, not higher nor 0."""
        for value, refused in ((1, False), (131072, False), (0, True), (131073, True)):
            found = self.problems(f"links: {{links: {{aws: {{max_message_bytes: {value}}}}}}}\n")
            self.assertEqual(bool(found), refused, (value, found))

    def test_loss_topic_slashes(self) -> None:
        """A ``loss_topic`` with 8 slashes is refused with the quoted text; 7 are taken, and
        so are 8 after a Basic Ingest prefix."""
        self.assertEqual(self.problems("links: {links: {aws: {loss_topic: a/b/c/d/e/f/g/h}}}\n"), [])
        self.assertEqual(self.problems("links: {links: {aws: {loss_topic: $aws/rules/r/a/b/c/d/e/f/g/h}}}\n"), [])
        [problem] = self.problems("links: {links: {aws: {loss_topic: a/b/c/d/e/f/g/h/i}}}\n")
        self.assertQuoted(problem, "aws.md")

    def test_qos_2_refused(self) -> None:
        """A downlink entry's QoS 2 is refused with the quoted text."""
        [problem] = self.problems("links: {links: {aws: {downlink: [{filter: 'a/#'}, {filter: 'b/#', qos: 2}]}}}\n")
        self.assertQuoted(problem, "aws.md")

    def test_shadow_thing_names(self) -> None:
        """``twin.shadow_thing``: 1 to 128 letters, digits, ``:``, ``_`` or ``-``; 'gw.1' is
        refused with the text the page begins to quote."""
        def check(thing: str) -> list[str]:
            return self.problems(f"twin: {{shadow_link: aws, shadow_thing: '{thing}'}}\n")
        self.assertEqual(check("t" * 128), [])
        self.assertEqual(check("a:b_c-D9"), [])
        self.assertEqual(len(check("t" * 129)), 1)
        [problem] = check("gw.1")
        self.assertTrue(problem.startswith("twin.shadow_thing: the AWS thing 'gw.1' is no AWS IoT thing name "),
                        problem)
        self.assertQuoted("twin.shadow_thing: the AWS thing 'gw.1' is no AWS IoT thing name ...", "aws.md")

    def test_endpoint_errors(self) -> None:
        """The region and credentials file errors are the ones the page quotes."""
        directory = Path(self.mktemp())
        directory.mkdir()
        good, bad = directory / "good", directory / "bad"
        good.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = s\n")
        bad.write_text("aws_secret_access_key = s3cret\n[default]\n")
        [region] = self.problems(f"links: {{links: {{aws: {{aws: {{websocket: true, credentials_file: '{good}'}}}}}}}}\n")
        self.assertEqual(region, "links.links.aws.endpoint: aws.region: cannot be read from '127.0.0.1'; set it")
        self.assertQuoted("aws.region: cannot be read from '127.0.0.1'; set it", "aws.md")
        [profile] = self.problems(f"links: {{links: {{aws: {{aws: {{websocket: true, region: r, profile: p,"
                                  f" credentials_file: '{good}'}}}}}}}}\n")
        self.assertEqual(profile, f"links.links.aws.endpoint: aws.credentials_file: {good}: no [p] profile")
        [parse] = self.problems(f"links: {{links: {{aws: {{aws: {{websocket: true, region: r,"
                                f" credentials_file: '{bad}'}}}}}}}}\n")
        self.assertTrue(parse.endswith(": line 1 comes before any [profile] header"), parse)
        self.assertNotIn("s3cret", parse)


class ContainerReportDocTests(SynchronousTestCase):
    """containers.md's "Reports and control": the fields a container has in ``engine_report``."""

    def test_engine_report_fields(self) -> None:
        """A container's ``engine_report`` entry has every field the page lists, ``uptime``
        in whole seconds (the snapshot's ``uptime_s``)."""
        text = prose("containers.md")
        listed = re.search(r"list containers after the hosted programs, with (.*?) and `error`", text)
        assert listed is not None
        fields = {"kind" if f == "kind: container" else f for f in re.findall(r"`([^`]+)`", listed.group(1))}
        fields -= {"uptime_s", "GET /apps"}
        snapshot = AppsSnapshot(version="0.1.0", apps=(AppSnapshot(
            "sensor", "sensor", "1.2", "RUNNING", 4242, 62, None, 0, kind="container", image="img",
            image_digest="sha256:0", error=""),))
        [entry] = engine_report(snapshot)["apps"]
        self.assertEqual((fields | {"error"}) - set(entry["sensor"]), set())
        self.assertEqual(entry["sensor"]["uptime"], 62)  # (whole seconds already: ContainerStatus.uptime)
