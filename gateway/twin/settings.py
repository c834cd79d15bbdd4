"""The ``twin:`` section: the local digital twin and its sync with AWS IoT device shadows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from gateway.mqtt.topics import valid_filter, valid_topic
from gateway.twin.ditto import own_topic_matched

#: A problem found by a ``config_problems()`` check: (relative key path, message).
Problem = tuple[tuple[str, ...], str]


def shadow_link_problem(link: str) -> str | None:
    """Why the link ``link`` (a name a link may have) cannot carry the shadow sync (``None``
    when it can): the sync's journal stream is ``shadow-<link>``, and a stream's name is at
    most 100 characters, so its link's is at most 93 (a link's own stream, ``link-<name>``,
    lets it have 95)."""
    from gateway.journal.cursors import check_name

    try:
        check_name(f"shadow-{link}")
    except ValueError:
        return (f"the link's name has {len(link)} characters: the shadow sync's journal stream"
                " shadow-<link> takes a link name of at most 93")
    return None


@dataclass(frozen=True)
class TwinSettings:
    """The local digital twin (on by default) and, with ``shadow_link``, its shadow sync.

    :ivar thing_id: the gateway's own thing (``namespace:name``); empty: ``<tenant>:<device>``.
    """

    enabled: bool = field(default=True, metadata={"doc": "serve the local twin"})
    thing_id: str = field(default="", metadata={"doc": "the gateway's thing id (empty: <tenant>:<device>)"})
    command_topics: tuple[str, ...] = field(default=("e/#", "event/#"),
                                            metadata={"doc": "local topics carrying Ditto twin commands"})
    shadow_link: str | None = field(default=None, metadata={
        "doc": "an MQTT link to AWS IoT whose device shadows mirror the twin (none: no sync)"})
    shadow_thing: str = field(default="", metadata={"doc": "the AWS thing name (empty: the link's client id)"})
    max_document_bytes: int = field(default=8192, metadata={
        "min": 64, "doc": "largest shadow request sent; bigger twin changes are refused locally"})
    max_depth: int = field(default=6, metadata={"min": 1, "doc": "deepest nesting in reported state"})
    max_inflight: int = field(default=10, metadata={"min": 1, "max": 10,
                                                    "doc": "shadow requests awaiting an answer at most"})
    request_timeout: float = field(default=30.0, metadata={"min": 0.1,
                                                           "doc": "seconds before an unanswered request is sent again"})
    max_things: int = field(default=1000, metadata={
        "min": 1, "doc": "things the twin holds at most, the gateway's own included; more are refused (403)"})
    max_thing_bytes: int = field(default=102400, metadata={
        "min": 1024, "doc": "largest thing (its JSON, in bytes); a change growing one past it is refused (413)"})

    def root_thing(self, tenant_id: str, device_id: str) -> str:
        """The gateway's own thing id: :attr:`thing_id`, else ``<tenant_id>:<device_id>``."""
        return self.thing_id or f"{tenant_id}:{device_id}"

    def config_problems(self) -> Iterable[Problem]:
        """A given thing id is ``namespace:name``, both parts non-empty, fit for topics (its
        children's are ``command//<id>:<child>/req//...``); command topics are filters that
        match none of the topics the twin answers on (it would take its answers for commands)."""
        namespace, _, name = self.thing_id.partition(":")
        if self.thing_id and (not namespace or not name or "/" in self.thing_id or not valid_topic(self.thing_id)):
            yield ("thing_id",), f"a thing id is namespace:name without '/', '+', '#' or NUL, not {self.thing_id!r}"
        for index, topic_filter in enumerate(self.command_topics):
            if not valid_filter(topic_filter):
                yield ("command_topics", str(index)), f"not a valid MQTT topic filter: {topic_filter!r}"
                continue
            own = own_topic_matched(topic_filter)
            if own is not None:
                yield ("command_topics", str(index)), (
                    f"{topic_filter!r} matches {own}, where the twin answers: its own answers would come back "
                    "to it as commands")
