"""The ``ingest:`` section: the gmq-compatible local HTTP ingest (on by default)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Literal

from gateway.endpointstrings import server_endpoint_problem
from gateway.ingest.form import valid_cik
from gateway.ingest.identities import DEFAULT_MAX_DEVICES
from gateway.journal.record import MAX_MESSAGE
from gateway.mqtt.topics import valid_topic

#: A problem found by a ``config_problems()`` check: (relative key path, message).
Problem = tuple[tuple[str, ...], str]


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be the ingest's topic template (``None`` when it can): it needs
    ``{alias}``, may take ``{device}`` and nothing else, and must give a topic name."""
    unknown = set(re.findall(r"\{([^{}]*)\}", topic)) - {"alias", "device"}
    if "{alias}" not in topic or unknown:
        return f"{topic!r}: needs {{alias}}; the only other placeholder is {{device}}"
    if not valid_topic(topic.replace("{alias}", "a").replace("{device}", "d")):
        return f"{topic!r} is not a valid topic name"
    return None


@dataclass(frozen=True)
class IngestSettings:
    """Where the local HTTP ingest listens and how writes become journal records.

    The topic template takes ``{alias}`` (the written alias) and ``{device}`` (the serial of
    the writing device: from ``X-Exosite-VMS``, from the local activation that issued its
    CIK, else the gateway's device id).
    """

    enabled: bool = field(default=True, metadata={"doc": "serve the ingest (GWE apps expect it)"})
    endpoint: str = field(default="tcp:8090:interface=127.0.0.1", metadata={"doc": "Twisted server endpoint"})
    topic: str = field(default="telemetry/{alias}", metadata={"doc": "local topic of a written alias"})
    max_body: int = field(default=65536, metadata={"min": 1, "max": MAX_MESSAGE,
                                                   "doc": "largest request body (bytes); a value must fit one journal record"})
    max_aliases: int = field(default=256, metadata={"min": 1, "doc": "aliases in one write at most"})
    auth: Literal["any", "known"] = field(
        default="any", metadata={"doc": "any: any well-formed CIK or VMS; known: only CIKs issued or listed"})
    ciks: tuple[str, ...] = field(default=(), metadata={"doc": "CIKs accepted besides locally issued ones"})
    retry_after: int = field(default=5, metadata={"min": 1, "doc": "Retry-After (s) on 503"})
    max_poll_ms: int = field(default=300000, metadata={"min": 0, "max": 300000,
                                                        "doc": "longest Request-Timeout honoured (ms)"})
    max_devices: int = field(default=DEFAULT_MAX_DEVICES, metadata={
        "min": 1, "doc": "devices activated locally at most; a new serial past it is refused (403)"})

    def config_problems(self) -> Iterable[Problem]:
        """The endpoint parses (when the ingest is on); the topic template makes a topic of every
        alias; each listed CIK is one (a request with another is refused before it is looked up)."""
        problem = server_endpoint_problem(self.endpoint) if self.enabled else None
        if problem is not None:
            yield ("endpoint",), problem
        problem = topic_problem(self.topic)
        if problem is not None:
            yield ("topic",), problem
        for index, cik in enumerate(self.ciks):
            if not valid_cik(cik):
                yield ("ciks", str(index)), f"a CIK is 40 hexadecimal characters, not {cik!r}"
