"""Kanto's mapping of a thing to AWS IoT device shadows, and the shadow topics (pure).

- the gateway's thing: attributes -> the classic shadow; feature F's properties -> the
  named shadow ``F``;
- a child thing ``<root>:C``: attributes -> the named shadow ``C``; feature F's
  properties -> the named shadow ``C:F``.

Shadow names are keys of the mapping; the classic shadow's key is ``""``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.twin.document import depth

CLASSIC = ""


def shadow_sections(root: str, thing_id: str, thing: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each shadow of ``thing`` -> its reported state (empty when the thing is absent).

    :param root: the gateway's thing id.
    :param thing_id: ``root`` or ``root:child``.
    """
    if thing is None:
        return {}
    prefix = _child_prefix(root, thing_id)
    sections: dict[str, dict[str, Any]] = {prefix or CLASSIC: dict(thing.get("attributes") or {})}
    for name, feature in (thing.get("features") or {}).items():
        properties = feature.get("properties") if isinstance(feature, dict) else None
        sections[_feature_shadow(prefix, name)] = dict(properties or {})
    return sections


def shadow_names(root: str, thing_id: str, thing: dict[str, Any] | None) -> list[str]:
    """The shadows of ``thing``, the keys of :func:`shadow_sections` in its order, without
    copying their states (none when the thing is absent)."""
    if thing is None:
        return []
    prefix = _child_prefix(root, thing_id)
    names = [prefix or CLASSIC] + [_feature_shadow(prefix, name) for name in thing.get("features") or {}]
    return list(dict.fromkeys(names))


def _child_prefix(root: str, thing_id: str) -> str:
    """The prefix of the shadows of ``thing_id``: ``C`` for the child ``<root>:C``, ``""`` for ``root``."""
    return "" if thing_id == root else thing_id[len(root) + 1:]


def _feature_shadow(prefix: str, feature: str) -> str:
    """The shadow of ``feature``'s properties (``prefix``: :func:`_child_prefix`)."""
    return f"{prefix}:{feature}" if prefix else feature


#: AWS IoT's rule for a named shadow's name (GetThingShadow's ``shadowName``: 1 to 64 of these;
#: AWS also allows ``$``, but only for the names it reserves, such as ``$package``).
_SHADOW_NAME = re.compile(r"[A-Za-z0-9:_-]{1,64}")
#: The rule, for people.
SHADOW_NAME_RULE = "1 to 64 characters, each a letter (a-z, A-Z), a digit, ':', '_' or '-'"


#: AWS IoT's rule for a thing's name (the ``thingName`` of its shadows).
_THING_NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")


def thing_name_problem(thing: str) -> str | None:
    """Why AWS IoT would take no shadow request of ``thing`` (``None`` when it would)."""
    if _THING_NAME.fullmatch(thing):
        return None
    return "is no AWS IoT thing name (1 to 128 characters, each a letter (a-z, A-Z), a digit, ':', '_' or '-')"


def valid_name(shadow: str) -> bool:
    """Whether AWS IoT takes ``shadow`` as a shadow's name (the classic shadow, ``""``, has
    none): a request to a shadow of another name can never be accepted, and one holding a
    wildcard or NUL could not even be published."""
    return not shadow or _SHADOW_NAME.fullmatch(shadow) is not None


def shadow_target(root: str, shadow: str, children: set[str]) -> tuple[str, str | None]:
    """Where a shadow's desired state belongs: ``(thing id, feature or None for attributes)``.

    A named shadow ``X`` is the attributes of child ``X`` when that child exists, else the
    gateway's feature ``X``; ``C:F`` is feature F of child C.

    :param children: the ids of the child things the twin holds.
    """
    if shadow == CLASSIC:
        return root, None
    if f"{root}:{shadow}" in children:
        return f"{root}:{shadow}", None
    child, sep, feature = shadow.partition(":")
    if sep and f"{root}:{child}" in children:
        return f"{root}:{child}", feature
    return root, shadow


def shadow_topic(thing: str, shadow: str, operation: str) -> str:
    """``$aws/things/<thing>/shadow[/name/<shadow>]/<operation>`` (``update``, ``get/accepted``...)."""
    base = f"$aws/things/{thing}/shadow"
    return f"{base}/{operation}" if shadow == CLASSIC else f"{base}/name/{shadow}/{operation}"


def parse_shadow_topic(thing: str, topic: str) -> tuple[str, str] | None:
    """``(shadow, operation)`` of a shadow topic of ``thing`` (``None`` for other topics)."""
    base = f"$aws/things/{thing}/shadow/"
    if not topic.startswith(base):
        return None
    rest = topic[len(base):]
    if rest.startswith("name/"):
        shadow, sep, operation = rest[len("name/"):].partition("/")
        return (shadow, operation) if sep and shadow else None
    return CLASSIC, rest


def subscriptions(thing: str) -> list[str]:
    """The filters that take every reply and delta for ``thing``'s shadows."""
    return [f"$aws/things/{thing}/shadow/+/+", f"$aws/things/{thing}/shadow/name/+/+/+"]


#: Room kept in a request for clientToken (<= 64 bytes) and version.
_ENVELOPE_ROOM = len(json.dumps({"clientToken": "x" * 64, "version": 2 ** 63}))


def shown_shadow(shadow: str) -> str:
    """A shadow as log lines and messages name it: the named shadow's name, ``(classic)``
    for the classic shadow (whose name is empty)."""
    return shadow or "(classic)"


def size_problem(shadow: str, reported: dict[str, Any], max_bytes: int, max_depth: int) -> tuple[int, str] | None:
    """Why ``reported`` cannot go to ``shadow`` (status, message), or ``None``.

    :param max_bytes: AWS IoT's shadow document cap (8 KB for the state).
    :param max_depth: AWS IoT refuses more than 6 levels of nesting (400).
    """
    size = len(json.dumps({"state": {"reported": reported}}, separators=(",", ":"))) + _ENVELOPE_ROOM
    name = shown_shadow(shadow)
    if size > max_bytes:
        return 413, f"shadow {name} would need a {size}-byte update, over the {max_bytes}-byte limit"
    if depth(reported) > max_depth:
        return 400, f"shadow {name} would nest {depth(reported)} levels deep, over the limit of {max_depth}"
    return None
