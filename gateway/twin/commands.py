"""Carrying out Ditto twin commands on a thing document (pure: no I/O, no clock)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from gateway.shown import shown, shown_repr
from gateway.twin import document
from gateway.twin.ditto import Command, DittoError
from gateway.twin.document import MISSING, PathError

#: What may sit at the top of a thing, and under a feature.
THING_KEYS = ("thingId", "policyId", "definition", "attributes", "features")
FEATURE_KEYS = ("definition", "properties", "desiredProperties")


@dataclass(frozen=True)
class Outcome:
    """What a command did.

    :ivar status: the response status (200, 201, 204).
    :ivar value: the response value (``MISSING``: none).
    :ivar changed: whether the thing changed (an event is due).
    :ivar before: the thing before (``None``: it did not exist).
    :ivar after: the thing after (``None``: it does not exist now).
    """

    status: int
    value: Any
    changed: bool
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def needs_object(levels: list[str]) -> bool:
    """Whether the model wants a JSON object at ``levels``: the thing, ``attributes``,
    ``features``, each feature and its ``properties`` and ``desiredProperties``."""
    return (len(levels) == 0 or levels in (["attributes"], ["features"])
            or (levels[:1] == ["features"] and (len(levels) == 2 or (len(levels) == 3 and levels[2] != "definition"))))


def place_problem(levels: list[str]) -> str | None:
    """What is wrong with ``levels`` as a place in a thing (a level outside Ditto's thing
    model), or None when it is one.

    :param levels: the place's levels (``["features", "f", "properties"]``).
    """
    if levels and levels[0] not in THING_KEYS:
        return f"/{shown(levels[0])} is not part of a thing (known: {', '.join(THING_KEYS)})"
    if levels[:1] in (["policyId"], ["definition"]) and len(levels) > 1:
        return f"/{levels[0]} is a string: it has no /{levels[0]}/{shown(levels[1])}"
    if levels[:1] == ["features"] and len(levels) >= 3 and levels[2] not in FEATURE_KEYS:
        return f"/features/{shown(levels[1])}/{shown(levels[2])} is not part of a feature (known: {', '.join(FEATURE_KEYS)})"
    return None


def check_value(levels: list[str], value: Any, merge: bool) -> None:
    """Refuse a value that is not an object where the model needs one (nor a string for the
    thing's ``policyId`` and ``definition``), at ``levels`` and inside it, or that holds a
    member outside the model (a whole thing or feature is held to
    the same model as its parts, which could not be reached otherwise); a merge's ``null``
    removes and is fine below the thing.

    :raises DittoError: 400 naming the first place that is wrong.
    """
    if merge and value is None and levels:
        return
    if levels in (["policyId"], ["definition"]) and not isinstance(value, str):
        raise DittoError(400, "things:value.invalid", f"the value at /{levels[0]} must be a string")
    if not needs_object(levels):
        return
    if not isinstance(value, dict):
        raise DittoError(400, "things:value.invalid", f"the value at {shown('/' + '/'.join(levels))} must be a JSON object")
    for key, child in value.items():
        problem = place_problem(levels + [key])
        if problem is not None:
            raise DittoError(400, "things:value.invalid", f"the value is refused: {problem}")
        check_value(levels + [key], child, merge)


def check_path(levels: list[str], value: Any, action: str) -> None:
    """Refuse paths and values that do not fit Ditto's thing model.

    :raises DittoError: 400 naming what is wrong.
    """
    def bad(message: str) -> DittoError:
        return DittoError(400, "things:path.invalid", message)

    problem = place_problem(levels)
    if problem is not None:
        raise bad(problem)
    if levels[:1] == ["thingId"]:
        raise bad("/thingId is not a path of its own: the thing id is the command topic's")
    if action in ("modify", "create", "merge"):
        check_value(levels, value, action == "merge")


#: Ditto's error code for a feature's part that is absent, by the part's level and whether
#: the path goes deeper.
_FEATURE_PARTS = {("properties", False): "feature.properties", ("properties", True): "feature.property",
                  ("desiredProperties", False): "feature.desiredProperties",
                  ("desiredProperties", True): "feature.desiredProperty", ("definition", False): "feature.definition",
                  ("definition", True): "feature.definition"}


def not_found(thing: dict[str, Any], thing_id: str, levels: list[str], path: str) -> DittoError:
    """The 404 for a path with nothing at it, with Ditto's error code for what is absent:
    the outermost missing part names it (``things:attribute.notfound`` for a missing attribute,
    ``things:feature.notfound`` for a property of a feature that is not there,
    ``things:feature.property.notfound`` for a missing property of one that is).

    :param thing: the thing (it exists).
    :param levels: the path's levels (at least one).
    :param path: the path as the command gave it, for the message.
    """
    code = "thing"
    head = levels[0]
    if head == "attributes":
        code = "attributes" if len(levels) == 1 or "attributes" not in thing else "attribute"
    elif head == "features":
        features = thing.get("features")
        feature = features.get(levels[1]) if isinstance(features, dict) and len(levels) > 1 else None
        if len(levels) == 1 or not isinstance(features, dict):
            code = "features"
        elif len(levels) == 2 or not isinstance(feature, dict):
            code = "feature"
        else:
            part = levels[2] if levels[2] in feature else None
            code = _FEATURE_PARTS.get((levels[2], part is not None and len(levels) > 3), "feature")
    else:  # /policyId, /definition
        code = head
    return DittoError(404, f"things:{code}.notfound", f"nothing at {shown(path)} of {shown(thing_id)}")


#: Kanto's placeholder for the thing in a command topic (``_/_/things/twin/commands/retrieve``):
#: a retrieve so addressed reads the things its value lists, ``{"thingIds": [...]}``.
PLACEHOLDER = "_"


def is_retrieve_of_things(command: Command) -> bool:
    """Whether ``command`` is Kanto's retrieve of several things (:data:`PLACEHOLDER` as the
    topic's namespace and name: a thing of its own may have either, ``acme:_``)."""
    return command.action == "retrieve" and command.namespace == command.name == PLACEHOLDER


def thing_ids(command: Command) -> list[str]:
    """The thing ids a retrieve of several things asks for (:func:`is_retrieve_of_things`).

    :raises DittoError: 400 for a path other than ``/``, a value that is not ``{"thingIds":
        [...]}`` with at least one id (``json.invalid``, as Kanto answers), or an id that is no
        namespaced id (``things:id.invalid``).
    """
    if command.path != "/":
        raise DittoError(400, "things:path.invalid",
                         f"a retrieve of several things has the path /, not {shown(command.path)}")
    ids = command.value.get("thingIds") if isinstance(command.value, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise DittoError(400, "json.invalid",
                         f'a retrieve of several things needs the value {{"thingIds": [<thing id>, ...]}}, '
                         f"not {shown_repr(command.value)}")
    for thing_id in ids:
        if ":" not in thing_id:
            raise DittoError(400, "things:id.invalid", f"the thing id {shown_repr(thing_id)} is not namespace:name")
    return ids


def apply(thing: dict[str, Any] | None, thing_id: str, command: Command) -> Outcome:
    """Carry out ``command`` on ``thing`` (not changed; the outcome holds the new one).

    :param thing: the thing as it is (``None``: absent).
    :param thing_id: its id (set as ``thingId`` in a created thing).
    :raises DittoError: 404 for what is not there, 409 for creating what is, 400 for a bad path.
    """
    try:
        levels = document.split_path(command.path)
    except PathError as exc:
        raise DittoError(400, "things:path.invalid", str(exc)) from None
    check_path(levels, command.value, command.action)
    action = command.action
    if thing is None and not (levels == [] and action in ("create", "modify", "merge")):
        raise DittoError(404, "things:thing.notfound", f"the thing {shown(thing_id)} does not exist (create it first)")
    if action == "retrieve":
        found = document.get(thing, levels)
        if found is MISSING:
            assert thing is not None  # an absent thing was refused above; "/" of one is never missing
            raise not_found(thing, thing_id, levels, command.path)
        return Outcome(200, copy.deepcopy(found), False, thing, thing)
    if action == "delete":
        if not levels:
            return Outcome(204, MISSING, True, thing, None)
        after = copy.deepcopy(thing)
        assert thing is not None and after is not None
        if not document.remove(after, levels):
            raise not_found(thing, thing_id, levels, command.path)
        return Outcome(204, MISSING, True, thing, after)
    if action == "create" and levels == [] and thing is not None:
        raise DittoError(409, "things:thing.conflict", f"the thing {shown(thing_id)} exists already")
    if levels == []:
        given = command.value.get("thingId", thing_id) if isinstance(command.value, dict) else thing_id
        if given != thing_id:
            # (it was replaced silently, and the event announced the other id as the thing's)
            raise DittoError(400, "things:id.notsettable",
                             f"the thingId in the value, {shown_repr(given)}, is not the command topic's {shown(thing_id)}")
        base = {} if action != "merge" or thing is None else thing
        new = document.merge_patch(base, command.value) if action == "merge" else copy.deepcopy(command.value)
        new["thingId"] = thing_id
        status = 201 if thing is None else 204
        return Outcome(status, new if status == 201 else MISSING, new != thing, thing, new)
    after = copy.deepcopy(thing)
    assert after is not None
    try:
        if action == "merge":
            current = document.get(after, levels)
            merged = document.merge_patch(None if current is MISSING else current, command.value)
            if command.value is None:
                document.remove(after, levels)
            else:
                document.put(after, levels, merged)
            created = False
        else:
            created = document.put(after, levels, command.value)
    except PathError as exc:
        raise DittoError(400, "things:path.invalid", f"{shown(command.path)}: {exc}") from None
    status = 201 if created else 204
    return Outcome(status, copy.deepcopy(command.value) if created else MISSING, after != thing, thing, after)
