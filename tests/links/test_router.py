"""The router: topic filters to links, topic rewrites with placeholders, the Kanto contract."""

from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.config import ErrorList, build_dataclass
from gateway.links import router as router_module
from gateway.links.router import Destination, Router, Rule, TopicTemplate, capture
from gateway.links.settings import KANTO_ROUTES, LinksSettings
from gateway.mqtt.topics import valid_topic


def kanto(link: str = "hono") -> Router:
    return Router([Rule.compile(link, r.filter, r.topic, r.qos) for r in KANTO_ROUTES], "t1", "gw1")


class CaptureTests(SynchronousTestCase):
    """What a filter's wildcards match."""

    def test_plus_and_hash(self) -> None:
        """``+`` levels come in order; ``#`` takes the rest, empty for the parent level."""
        self.assertEqual(capture("a/+/b/+/#", "a/x/b/y/z/w"), (["x", "y"], "z/w"))
        self.assertEqual(capture("telemetry/#", "telemetry"), ([], ""))
        self.assertIsNone(capture("a/+", "b/c"))


class TemplateTests(SynchronousTestCase):
    """Templates are checked when compiled, rendered per message."""

    def test_unknown_placeholder(self) -> None:
        """A typo in a placeholder is an error naming it."""
        error = self.assertRaises(ValueError, TopicTemplate, "x/{tenat}", "a/#")
        self.assertIn("{tenat}", str(error))

    def test_placeholder_beyond_wildcards(self) -> None:
        """``{2}`` needs two ``+`` wildcards; ``{#}`` needs a ``#``."""
        self.assertRaises(ValueError, TopicTemplate, "x/{2}", "a/+/#")
        self.assertRaises(ValueError, TopicTemplate, "x/{#}", "a/+")

    def test_render(self) -> None:
        """Every placeholder is filled; an empty ``{#}`` takes its slash with it."""
        template = TopicTemplate("dt/{tenant}/{device}/{1}/{#}", "app/+/#")
        self.assertEqual(template.render("app/s1/a/b", ["s1"], "a/b", "t", "d"), "dt/t/d/s1/a/b")
        self.assertEqual(template.render("app/s1", ["s1"], "", "t", "d"), "dt/t/d/s1")
        self.assertEqual(TopicTemplate("{topic}", "#").render("a/b", [], "a/b", "t", "d"), "a/b")


class RouterTests(SynchronousTestCase):
    """The Kanto/Hono default contract and multi-link routing."""

    def test_exosite_default_routes_send_the_reports_on_gateway_engines_aliases(self) -> None:
        """An HTTP link's default routes take telemetry up under its alias and the gateway's
        reports under Gateway Engine's aliases of their names (they took telemetry only, so
        the reports telemetry.md promises every cloud never reached Exosite)."""
        from gateway.links.http_settings import EXOSITE_ROUTES

        router = Router([Rule.compile("murano", r.filter, r.topic, r.qos) for r in EXOSITE_ROUTES], "t1", "gw1")
        self.assertEqual(router.route("telemetry/temp"), (Destination("murano", "temp", 1),))
        for name in ("device_info", "usage_report", "engine_report"):
            self.assertEqual(router.route(f"edge/gateway/reports/{name}"), (Destination("murano", name, 1),))
        self.assertEqual(router.route("edge/gateway/reports/request"), ())

    def test_kanto_telemetry_and_events(self) -> None:
        """Long and short forms go up under tenant and device."""
        router = kanto()
        self.assertEqual(router.route("telemetry/temp"), (Destination("hono", "telemetry/t1/gw1/temp", 1),))
        self.assertEqual(router.route("t"), (Destination("hono", "telemetry/t1/gw1", 1),))
        self.assertEqual(router.route("e/alarm/x"), (Destination("hono", "event/t1/gw1/alarm/x", 1),))

    def test_kanto_command_replies(self) -> None:
        """Command replies go up in Hono's long form, in either local form."""
        router = kanto()
        self.assertEqual(router.route("command//dev1/res/42/200")[0].topic, "command//dev1/res/42/200")
        self.assertEqual(router.route("c//dev1/s/42/200")[0].topic, "command//dev1/res/42/200")

    def test_the_route_cache_is_bounded(self) -> None:
        """Each new topic's destinations are cached, ROUTE_CACHE_SIZE topics at most: the cache
        then starts again empty, and routes stay right (readside.md: the links' ``route_cache``)."""
        router = kanto()
        for n in range(router_module.ROUTE_CACHE_SIZE + 2):
            router.route(f"telemetry/d{n}")
        self.assertEqual(router.cached, 2)
        self.assertEqual(router.route("telemetry/d0"), (Destination("hono", "telemetry/t1/gw1/d0", 1),))

    def test_unrouted(self) -> None:
        """Commands coming down and other topics are not sent up."""
        router = kanto()
        self.assertEqual(router.route("command//dev1/req/42/on"), ())
        self.assertEqual(router.route("edge/thing/request"), ())

    def test_a_topic_too_long_for_mqtt_is_not_routed(self) -> None:
        """A template that makes a topic over MQTT's 65535 bytes routes nowhere by that rule,
        with a warning: it went on to the journal, whose record refused it, so the local
        PUBLISH was never acknowledged and its client sent it again forever."""
        router = Router([Rule.compile("l", "a/#", "up/{tenant}/{#}", 1), Rule.compile("m", "a/#", "{#}", 1)],
                        "t" * 40, "gw1")
        topic = "a/" + "é" * 32760  # 65522 bytes: a topic the broker takes; "up/ttt.../" makes it 65564
        with capturedLogs() as logs:
            self.assertEqual(router.route(topic), (Destination("m", topic[2:], 1),))
        [warning] = [e for e in logs if e["log_level"] == LogLevel.warn]
        self.assertIn("link l", formatEvent(warning))
        self.assertIn("(65564 bytes)", formatEvent(warning))
        self.assertFalse(valid_topic("x" * 65536))
        self.assertTrue(valid_topic("x" * 65535))

    def test_the_warning_is_short_and_rate_limited_per_route(self) -> None:
        """The warning shows the first 200 characters of the topic and its length, never the
        whole 64 KiB (in the line nor in the event's fields), for the first message of each
        route and then every 100th, with the count so far."""
        router = Router([Rule.compile("l", "a/#", "up/{tenant}/{#}", 1), Rule.compile("k", "a/#", "k/{tenant}/{topic}", 1)],
                        "t" * 40, "gw1")
        with capturedLogs() as logs:
            for i in range(201):
                router.route(f"a/{i:05d}" + "x" * 65500)
        warnings = [e for e in logs if e["log_level"] == LogLevel.warn]
        self.assertEqual([formatEvent(e)[:7] for e in warnings], ["link l:", "link k:"] * 3)
        self.assertEqual(formatEvent(warnings[0]),
                         "link l: a/00000" + "x" * 193 + "... (65507 bytes) matches a/# but makes no valid topic of"
                         " up/{tenant}/{#} (65549 bytes): not forwarded by that route (1 such topic so far;"
                         " logged for the first and every 100th)")
        self.assertIn("a/00200" + "x" * 193 + "... (65507 bytes)", formatEvent(warnings[-1]))
        self.assertIn("(201 such topics so far;", formatEvent(warnings[-1]))
        self.assertLess(max(len(str(v)) for e in warnings for v in e.values()), 1000)

    def test_once_per_link_first_rule_wins(self) -> None:
        """Two rules of one link: the first applies; another link gets its own copy."""
        router = Router([Rule.compile("a", "x/#", "one/{#}", 1), Rule.compile("a", "x/y", "two", 1),
                         Rule.compile("b", "x/y", "aws/{topic}", 0)], "t", "d")
        self.assertEqual(router.route("x/y"), (Destination("a", "one/y", 1), Destination("b", "aws/x/y", 0)))
        self.assertEqual(router.filters, ("x/#", "x/y"))

    def test_a_topic_is_tried_only_against_the_rules_whose_filters_match_it(self) -> None:
        """With many links, a topic not in the cache is tried against the rules whose filters
        match it, not against each rule of each link in turn (20 links of 3 routes: 60 tries of
        a topic, 71 µs, where 1 link took 2.3 µs; bench/scale.py's big gateway)."""
        rules = [Rule.compile(f"l{i}", f, "{topic}", 1)
                 for i in range(20) for f in (f"telemetry/l{i}/#", "event/#", f"t/+/l{i}/#")]
        router = Router(rules, "t1", "gw1")
        tried: list[str] = []
        self.patch(router_module, "capture", lambda f, t: tried.append(f) or capture(f, t))
        self.assertEqual(router.route("telemetry/l7/dev/temp"), (Destination("l7", "telemetry/l7/dev/temp", 1),))
        self.assertEqual(tried, ["telemetry/l7/#"])
        self.assertEqual(router.route("retained/1"), ())
        self.assertEqual(len(tried), 1)

    def test_routes_as_trying_every_rule_in_order(self) -> None:
        """Over many filters with wildcards (and ``$`` topics, which a leading wildcard does
        not match), each topic goes where trying every rule in configuration order sends it:
        a link's first matching rule, or with ``every_rule`` each distinct topic."""
        import random

        draw = random.Random(3)
        levels = ["a", "b", "$c", ""]

        def some_filter() -> str:
            parts = [draw.choice(levels + ["+"]) for _ in range(draw.randrange(1, 4))]
            return "/".join(parts + (["#"] if draw.random() < 0.4 else [])) or "#"

        topics = ["/".join(draw.choice(levels) for _ in range(draw.randrange(1, 5))) for _ in range(400)]
        for every_rule in (False, True):
            rules = [Rule.compile(f"l{draw.randrange(4)}", some_filter(), "x/{topic}", draw.randrange(2))
                     for _ in range(40)]
            router = Router(rules, "t1", "gw1", every_rule=every_rule)
            for topic in topics:
                expected: dict[str, Destination] = {}
                for rule in rules:
                    if (every_rule or rule.link not in expected) and capture(rule.filter, topic) is not None:
                        target = "x/" + topic
                        if not (every_rule and target in expected):
                            expected[target if every_rule else rule.link] = Destination(rule.link, target, rule.qos)
                self.assertEqual(router.route(topic), tuple(expected.values()), (topic, every_rule))

    def test_compile_names_every_problem(self) -> None:
        """A route with a bad filter and a template with two bad placeholders names all three."""
        error = str(self.assertRaises(ValueError, Rule.compile, "cloud", "bad/#/filter", "up/{nonsense}/{3}", 1))
        self.assertIn("link cloud", error)
        self.assertIn("invalid topic filter 'bad/#/filter'", error)
        self.assertIn("unknown placeholder {nonsense}", error)
        self.assertIn("{3} but 'bad/#/filter' has 0 '+' wildcards", error)

    def test_a_placeholder_of_other_digits_is_unknown(self) -> None:
        """{²} (a digit to str.isdigit, not to int) is an unknown placeholder, named as such;
        int() raised a ValueError that said nothing of the template."""
        error = str(self.assertRaises(ValueError, Rule.compile, "cloud", "a/+", "up/{²}", 1))
        self.assertIn("unknown placeholder {²}", error)

    def test_template_with_wildcards_outside_placeholders(self) -> None:
        """A template whose fixed text holds '+' or '#' could never give a topic: refused."""
        self.assertRaises(ValueError, TopicTemplate, "up/+/{1}", "a/+")
        self.assertRaises(ValueError, TopicTemplate, "up/#", "a/#")

    def test_invalid_filter_names_link(self) -> None:
        """A bad filter is reported with its link."""
        error = self.assertRaises(ValueError, Rule.compile, "aws", "a/#/b", "x", 1)
        self.assertIn("link aws", str(error))


class SettingsTests(SynchronousTestCase):
    """The ``links:`` section as the config loader builds it."""

    def test_defaults_and_kanto(self) -> None:
        """A link with only an endpoint gets the Kanto contract and a window of 64."""
        errors = ErrorList()
        settings = build_dataclass(LinksSettings, {"links": {"hono": {"endpoint": "tcp:host=h:port=1"}}},
                                   ("links",), errors)
        self.assertEqual(errors.lines, [])
        link = settings.links["hono"]
        self.assertEqual((link.window, link.backoff_initial, link.backoff_max), (64, 1.0, 25.0))
        self.assertEqual(link.routes, KANTO_ROUTES)

    def test_errors_have_paths(self) -> None:
        """Wrong keys and values are reported with their key paths."""
        errors = ErrorList()
        build_dataclass(LinksSettings, {"links": {"x": {"window": 0, "routes": [{"filtr": "a"}]}}},
                        ("links",), errors)
        text = "\n".join(errors.lines)
        self.assertIn("links.x.window: must be at least 1", text)
        self.assertIn("links.x.routes.0.filtr: unknown key", text)
