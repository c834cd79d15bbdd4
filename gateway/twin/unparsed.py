"""The twin command a message too large to parse names: the ``topic`` member of its top-level
JSON object, read from the message's first :data:`~gateway.payloadlimits.REQUEST_BYTES` only
(docs/topics.md). A large event that carries a twin command's text deeper (a log of commands, a
batch of them) or in an array names none: it is an event."""

from __future__ import annotations

import json
import re

from gateway.payloadlimits import REQUEST_BYTES
from gateway.twin.ditto import is_command_topic

#: A ``"topic"`` member naming a twin command, where the text may hold one: only a message that has
#: one is read member by member (most large events have none: a search, and no more work).
_COMMAND_TOPIC = re.compile(r'"topic"\s*:\s*"[^"\\/]*/[^"\\/]*/things/twin/commands/')
#: A JSON string, its escapes included.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
#: The start of a JSON object (after a byte order mark and JSON's white space).
_OBJECT_START = re.compile(r"\ufeff?[ \t\n\r]*\{")
#: A member's key and the colon after it (a ``topic`` key is found as it is written, as
#: :data:`_COMMAND_TOPIC` finds it: not one spelled with escapes).
_KEY = re.compile(rf'[ \t\n\r]*({_STRING})[ \t\n\r]*:[ \t\n\r]*', re.DOTALL)
#: The comma before the next member.
_COMMA = re.compile(r"[ \t\n\r]*,")
#: A run of members whose values are strings, numbers, ``true``, ``false`` or ``null`` and whose
#: keys are not ``topic``, each with its comma: skipped in one match (an object of 80,000 such
#: members before its topic took three times as long as parsing it, read one member at a time).
_FLAT_MEMBERS = re.compile(rf'(?:[ \t\n\r]*(?!"topic"){_STRING}[ \t\n\r]*:[ \t\n\r]*'
                           rf'(?:{_STRING}|[-+.0-9eE]+|true|false|null)[ \t\n\r]*,)*', re.DOTALL)
_DECODER = json.JSONDecoder()


def command_topic(payload: bytes, within: int = REQUEST_BYTES) -> str | None:
    """The twin command topic of the ``topic`` member of ``payload``'s top-level object, when its
    first ``within`` bytes hold that member (and every member before it) whole; ``None`` when they
    do not, or when it names no twin command.

    Text that holds no twin command topic at all is only searched. Else the members are read
    up to the first ``topic`` or past the last place one may be, runs of members with plain
    values skipped by one match, any other value parsed by Python's JSON decoder: only as far as
    ``within``, whatever the message's size.

    :param payload: the message as it came (too large to parse whole).
    :param within: how many of its first bytes are read.
    """
    text = payload[:within].decode("utf-8", "replace")  # (a character cut at the end: replaced)
    last = -1  # where the last "topic" member that may name a twin command starts
    for found in _COMMAND_TOPIC.finditer(text):
        last = found.start()
    start = _OBJECT_START.match(text)
    if last < 0 or start is None:
        return None
    at = start.end()
    try:
        while True:
            flat = _FLAT_MEMBERS.match(text, at)
            member = _KEY.match(text, at if flat is None else flat.end())
            if member is None or member.start(1) > last:
                return None  # (the object's end, not JSON, or past the last possible topic)
            value, at = _DECODER.raw_decode(text, member.end())
            if member.group(1) == '"topic"':
                return value if isinstance(value, str) and is_command_topic(value) else None
            comma = _COMMA.match(text, at)
            if comma is None:
                return None
            at = comma.end()
    except (ValueError, RecursionError):  # (a member cut at ``within``, not JSON, or nested too deeply)
        return None
