"""Routing: which local topics go to which link, under which cloud topic (and back down)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from twisted.logger import Logger

from gateway.asciidigits import ascii_digits
from gateway.mqtt.topics import matches, topic_for_log, valid_filter, valid_topic
from gateway.mqtt.topictree import TopicTree

_log = Logger()

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_NAMED = {"tenant", "device", "topic", "#"}
#: Topics whose destinations a router caches at most: device topics are many, but few are hot.
ROUTE_CACHE_SIZE = 4096


def capture(topic_filter: str, topic: str) -> tuple[list[str], str] | None:
    """The levels ``topic`` gives the ``+`` wildcards of ``topic_filter``, and what ``#`` got.

    :return: ``(plus_levels, hash_rest)``, or ``None`` when the topic does not match.
    """
    if not matches(topic_filter, topic):
        return None
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    plus: list[str] = []
    for i, level in enumerate(filter_levels):
        if level == "#":
            return plus, "/".join(topic_levels[i:])
        if level == "+":
            plus.append(topic_levels[i])
    return plus, ""


def template_problems(template: str, topic_filter: str) -> list[str]:
    """Every reason ``template`` cannot render topics for messages matching ``topic_filter``.

    :return: one sentence per problem; empty when the template is usable.
    """
    if not template:
        return ["must not be empty"]
    problems = []
    wildcards = topic_filter.split("/").count("+")
    for name in _PLACEHOLDER.findall(template):
        if ascii_digits(name):
            if not 1 <= int(name) <= wildcards:
                plural = "" if wildcards == 1 else "s"
                problems.append(f"{{{name}}} but {topic_filter!r} has {wildcards} '+' wildcard{plural}")
        elif name not in _NAMED:
            problems.append(f"unknown placeholder {{{name}}} (known: tenant, device, topic, 1, 2, ... and #)")
        elif name == "#" and not topic_filter.endswith("#"):
            problems.append(f"{{#}} but {topic_filter!r} has no '#' wildcard")
    static = _PLACEHOLDER.sub("x", template)
    if "+" in static or "#" in static or "{" in static or "}" in static or "\0" in static:
        problems.append("'+' or '#' outside a placeholder, an unmatched brace or NUL: it can never be a topic")
    return problems


class TopicTemplate:
    """A topic with placeholders, checked once and rendered per message.

    :param template: e.g. ``telemetry/{tenant}/{device}/{#}``.
    :param topic_filter: the filter whose wildcards feed ``{1}``... and ``{#}``.
    :raises ValueError: naming every problem :func:`template_problems` finds.
    """

    def __init__(self, template: str, topic_filter: str) -> None:
        self.template = template
        problems = template_problems(template, topic_filter)
        if problems:
            raise ValueError(f"{template!r}: {'; '.join(problems)}")
        self._static = not _PLACEHOLDER.search(template)

    def render(self, topic: str, plus: list[str], rest: str, tenant: str, device: str) -> str:
        """The topic for one message."""
        if self._static:
            return self.template
        text = self.template
        if not rest:
            text = text.replace("/{#}", "{#}")

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if ascii_digits(name):
                return plus[int(name) - 1]
            return {"tenant": tenant, "device": device, "topic": topic, "#": rest}[name]

        return _PLACEHOLDER.sub(value, text)


@dataclass(frozen=True)
class Destination:
    """Where one local message goes: a link, a cloud topic and a QoS."""

    link: str
    topic: str
    qos: int


@dataclass(frozen=True)
class Rule:
    """One compiled route or downlink mapping.

    :ivar link: the link it belongs to.
    :ivar filter: the topic filter it matches.
    :ivar template: the topic it rewrites to.
    :ivar qos: the QoS it uses.
    """

    link: str
    filter: str
    template: TopicTemplate
    qos: int

    @classmethod
    def compile(cls, link: str, topic_filter: str, template: str, qos: int) -> "Rule":
        """Check and compile one mapping.

        :raises ValueError: naming the link and every problem of the filter and template
            (the config loader reports them one by one, with their key paths, before this).
        """
        problems = [] if valid_filter(topic_filter) else [f"invalid topic filter {topic_filter!r}"]
        try:
            compiled = TopicTemplate(template, topic_filter)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError(f"link {link}: {'; '.join(problems)}")
        return cls(link, topic_filter, compiled, qos)


class Router:
    """Matches a topic against rules and rewrites it, once per link at most.

    A topic matching several rules of one link goes up once, by the first rule in order;
    with ``every_rule``, once per distinct topic its matching rules rewrite it to (a link's
    downlink: a cloud command published locally on both of Hono's forms).

    :param rules: the rules, in configuration order.
    :param tenant: the gateway's tenant id.
    :param device: the gateway's device id.
    :param every_rule: every matching rule gives a destination, not only a link's first.
    """

    def __init__(self, rules: Iterable[Rule], tenant: str, device: str, every_rule: bool = False) -> None:
        self.rules = tuple(rules)
        self.tenant = tenant
        self.device = device
        self.every_rule = every_rule
        self._cache: dict[str, tuple[Destination, ...]] = {}
        self._invalid: dict[Rule, int] = {}  # topics each rule made no valid topic of
        # The rules by their filters, their places in order: a topic is tried against the
        # rules whose filters match it, not against every rule of every link (20 links of 3
        # routes each took 71 µs a topic not in the cache, and 1 link 2.3 µs).
        self._by_filter: TopicTree[tuple[int, ...]] = TopicTree()
        places: dict[str, list[int]] = {}
        for place, rule in enumerate(self.rules):
            places.setdefault(rule.filter, []).append(place)
        for topic_filter, indexes in places.items():
            self._by_filter.add(topic_filter, tuple(indexes))

    @property
    def cached(self) -> int:
        """Topics whose destinations are cached now (at most :data:`ROUTE_CACHE_SIZE`: then the
        cache starts again empty)."""
        return len(self._cache)

    @property
    def filters(self) -> tuple[str, ...]:
        """Every filter, without repeats, in order."""
        return tuple(dict.fromkeys(rule.filter for rule in self.rules))

    def routes(self, topic: str) -> bool:
        """Whether ``topic`` goes to any link (:meth:`route`, cached alike)."""
        cached = self._cache.get(topic)
        return bool(cached if cached is not None else self.route(topic))

    def route(self, topic: str) -> tuple[Destination, ...]:
        """Where ``topic`` goes (empty when nowhere); results are cached per topic."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        found: dict[str, Destination] = {}  # by link, or by topic with every_rule
        every_rule = self.every_rule
        rules = self.rules
        matched = self._by_filter.filters_matching(topic)
        places = matched[0] if len(matched) == 1 else sorted(place for some in matched for place in some)
        for place in places:
            rule = rules[place]
            if not every_rule and rule.link in found:
                continue
            captured = capture(rule.filter, topic)
            if captured is None:
                continue
            target = rule.template.render(topic, captured[0], captured[1], self.tenant, self.device)
            if not valid_topic(target):
                self._no_valid_topic(rule, topic, target)
                continue
            if not (every_rule and target in found):
                found[target if every_rule else rule.link] = Destination(rule.link, target, rule.qos)
        result = tuple(found.values())
        if len(self._cache) >= ROUTE_CACHE_SIZE:
            self._cache.clear()
        self._cache[topic] = result
        return result

    def _no_valid_topic(self, rule: Rule, topic: str, target: str) -> None:
        """Count a topic ``rule`` made no valid topic of; log the first, then every 100th
        (a device may send many, each up to 64 KiB). A topic routed again while the cache
        holds it is not counted again."""
        count = self._invalid[rule] = self._invalid.get(rule, 0) + 1
        if count % 100 != 1:
            return
        _log.warn("link {link}: {topic} matches {filter} but makes no valid topic of {template} ({length} bytes):"
                  " not forwarded by that route ({count} such topic{s} so far; logged for the first and every"
                  " 100th)", link=rule.link, topic=topic_for_log(topic), filter=rule.filter,
                  template=rule.template.template, length=len(target.encode("utf-8", "surrogatepass")),
                  count=count, s="" if count == 1 else "s")
