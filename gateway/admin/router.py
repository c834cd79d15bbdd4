"""A small HTTP router for the admin API: routes, JSON answers, errors as JSON, bearer auth.

Each route is a method, a path pattern (``/apps/{name}/start``) and the query keys it takes
(any other is refused, as a body's unknown key is), bound to a handler
``handler(request, **params)`` that returns a JSON-ready value, a :class:`Raw` answer,
:data:`STREAMING` (it writes and finishes the request itself), or a Deferred of one of
them. Every error is answered ``{"error": "..."}`` with its status.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Collection
from urllib.parse import unquote, unquote_to_bytes

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from gateway import jsontext
from gateway.browserguard import BrowserGuard
from gateway.admin.errors import ApiError, bad_request, too_large
from gateway.readside import to_jsonable
from gateway.shown import shown, shown_repr
from gateway.admin.mapping import map_error

log = Logger()

#: A handler's answer meaning "I write and finish the request myself".
STREAMING = object()

Handler = Callable[..., Any]
#: A route as the API lists it: method, path pattern, handler, the query keys it takes.
RouteSpec = tuple[str, str, Handler, Collection[str]]
#: Why a query key a route that takes none is refused (after the key's name).
NO_QUERY_KEYS = "this route takes no query keys"
#: The ``Content-Security-Policy`` directives every answer's policy ends with (an HTML page's
#: too: :class:`Raw`): framed by no page, no ``<base>``, no form sent anywhere.
NO_FRAMES_BASE_OR_FORMS = "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
#: The headers of every answer, against a page of another site that frames or reads it: no
#: framing, no content but what its type says, no Referer (the status page's URL holds its
#: token), and a policy that loads nothing (the status page has one of its own, :class:`Raw`).
BROWSER_HEADERS = {
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"content-security-policy": f"default-src 'none'; {NO_FRAMES_BASE_OR_FORMS}".encode(),
}


@dataclass(frozen=True)
class Raw:
    """A non-JSON answer.

    :param body: the bytes to send.
    :param content_type: its media type.
    :param status: the HTTP status.
    :param policy: its ``Content-Security-Policy``, when it loads more than nothing (an HTML page).
    """

    body: bytes
    content_type: str
    status: int = 200
    policy: str | None = None


@dataclass(frozen=True)
class Route:
    """One method and path pattern, split into segments; ``{x}`` segments are parameters;
    ``query_keys`` are the query parameters it takes."""

    method: bytes
    segments: tuple[str, ...]
    handler: Handler
    query_keys: frozenset[str]

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """The parameters when ``parts`` fits this pattern, else None."""
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, part in zip(self.segments, parts):
            if pattern.startswith("{"):
                if not part:
                    return None
                params[pattern[1:-1]] = part
            elif pattern != part:
                return None
        return params


def json_bytes(value: Any) -> bytes:
    """``value`` (snapshots allowed) as compact UTF-8 JSON with a final newline."""
    return json.dumps(to_jsonable(value), sort_keys=True).encode() + b"\n"


def write_json(request: Any, status: int, value: Any) -> None:
    """Answer ``request`` with ``value`` as JSON and finish it."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.write(json_bytes(value))
    request.finish()


def read_json(request: Any, limit: int) -> Any:
    """The request's JSON body; ``{}`` when it is empty.

    :param limit: the largest JSON body accepted, in bytes.
    :raises ApiError: 413 over ``limit``, 400 when it is not JSON.
    """
    if getattr(request, "body_error", None):
        raise ApiError(500, f"could not store the request body: {request.body_error}")
    if getattr(request, "body_too_large", False) or getattr(request, "body_size", 0) > limit:
        raise too_large(f"request body over {limit} bytes")
    request.content.seek(0)
    data = request.content.read(limit + 1)
    if len(data) > limit:
        raise too_large(f"request body over {limit} bytes")
    if not data.strip():
        return {}
    try:
        value = jsontext.loads(data, strict=True)
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"body is not valid JSON: {exc}") from None
    if jsontext.nesting(value) > jsontext.MAX_NESTING:
        raise bad_request(f"body nests deeper than {jsontext.MAX_NESTING} levels")
    return value


def read_object(request: Any, limit: int, keys: Collection[str] | None) -> dict[str, Any]:
    """The request's JSON body, which must be an object.

    :param keys: the keys the object may hold (a typo must not be dropped silently); ``None``:
        any (a peer's format, such as Kanto's operations, which ignores the keys it does not know).
    :raises ApiError: 400 for a body that is not a JSON object, or holds a key not in ``keys``.
    """
    value = read_json(request, limit)
    if not isinstance(value, dict):
        raise bad_request(f"body must be a JSON object, not {jsontext.kind(value)}")
    problem = jsontext.unknown_keys(value, keys) if keys is not None else None
    if problem is not None:
        raise bad_request(problem)
    return value


def refused_query(request: Any, keys: Collection[str]) -> str | None:
    """Why the request's query is refused (``None``: it is not): a key its route does not
    take, in the words of a body's unknown keys (:func:`gateway.jsontext.unknown_keys`), or a
    key without ``=`` (twisted.web drops those from ``request.args``), so that a typo
    (``?folow=1``) or a bare ``?follow`` never quietly gives the default instead.

    :param keys: the query keys the route takes.
    """
    given: dict[str, bool] = {}
    # (split as twisted.web.http.parse_qs splits it for request.args)
    for item in re.split(b"[&;]", request.uri.partition(b"?")[2]):
        if item:
            name, equals, _ = item.partition(b"=")
            given.setdefault(unquote_to_bytes(name.replace(b"+", b" ")).decode("utf-8", "replace"), bool(equals))
    problem = jsontext.unknown_keys(given, keys, NO_QUERY_KEYS)
    bare = next((key for key, valued in given.items() if not valued), None)
    if problem is None and bare is not None:
        problem = f"query key {shown_repr(bare)} has no value (write {shown(bare)}=...)"
    return problem


def query(request: Any, name: str, default: str | None = None) -> str | None:
    """The first value of query parameter ``name`` (decoded), or ``default``."""
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else default


def bearer(header: bytes | None) -> bytes:
    """The token of an ``Authorization: Bearer <token>`` header (``b""``: none given)."""
    if header is not None and header.lower().startswith(b"bearer "):
        return header[7:].strip()
    return b""


class Router(Resource):
    """The admin API's one resource: dispatches every path to its route.

    :param routes: ``(method, pattern, handler, query keys)`` of every route.
    :param token: when set (the TCP endpoint), every request must carry
        ``Authorization: Bearer <token>``; a GET of ``/`` may give it as ``?token=``
        instead, so a browser can open the status page.
    :param guard: refuses cross-site browser requests (403), before the token is looked at.
    """

    isLeaf = True

    def __init__(self, routes: list[RouteSpec], token: bytes | None, guard: BrowserGuard) -> None:
        super().__init__()
        self.routes = [Route(m.encode(), tuple(p.strip("/").split("/")) if p != "/" else ("",), h, frozenset(q))
                       for m, p, h, q in routes]
        self.token = token
        self.guard = guard

    def render(self, request: Any) -> Any:
        """Refuse a cross-site browser request, authenticate, find the route, run it and
        answer (errors as JSON); every answer carries :data:`BROWSER_HEADERS`."""
        # Not at import: the site that renders has imported twisted.web.server already,
        # an idle gateway has not (gateway.lazysite).
        from twisted.web.server import NOT_DONE_YET

        for name, value in BROWSER_HEADERS.items():
            request.setHeader(name, value)
        try:
            refusal = self.guard.refusal(request)
            if refusal is not None:
                raise ApiError(403, refusal)
            self._authenticate(request)
            route, params = self._find(request)
            problem = refused_query(request, route.query_keys)
            if problem is not None:
                raise bad_request(problem)
        except ApiError as error:
            self._answer_error(request, error)
            return NOT_DONE_YET
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d: Deferred[Any] = maybeDeferred(route.handler, request, **params)

        def answer(result: Any) -> None:
            if not gone:  # the client went away: nothing to answer
                self._answer(request, result)

        def fail(failure: Failure) -> None:
            if not gone:
                self._fail(request, failure)

        d.addCallbacks(answer, fail)
        return NOT_DONE_YET

    def _authenticate(self, request: Any) -> None:
        if self.token is None:
            return
        given = bearer(request.getHeader(b"authorization"))
        if not given and request.method in (b"GET", b"HEAD") and request.path == b"/" and b"token" in request.args:
            given = request.args[b"token"][0]
        if not given or not hmac.compare_digest(given, self.token):
            request.setHeader(b"www-authenticate", b'Bearer realm="gateway"')
            raise ApiError(401, "a valid bearer token is needed on this endpoint")

    def _find(self, request: Any) -> tuple[Route, dict[str, str]]:
        parts = [unquote(p) for p in request.path.decode("utf-8", "replace").strip("/").split("/")]
        allowed = []
        for route in self.routes:
            params = route.match(parts)
            if params is None:
                continue
            if route.method == request.method or (route.method == b"GET" and request.method == b"HEAD"):
                return route, params
            allowed.append(route.method)
        if allowed:
            methods = set(allowed)
            if b"GET" in methods:
                methods.add(b"HEAD")  # (served as GET without the body, above)
            request.setHeader(b"allow", b", ".join(sorted(methods)))
            raise ApiError(405, f"{request.method.decode()} is not allowed on {request.path.decode()}")
        raise ApiError(404, f"no such route: {request.path.decode('utf-8', 'replace')}")

    def _answer(self, request: Any, result: Any) -> None:
        if result is STREAMING or request.finished:
            return
        if isinstance(result, Raw):
            request.setResponseCode(result.status)
            request.setHeader(b"content-type", result.content_type.encode())
            request.setHeader(b"cache-control", b"no-store")
            if result.policy is not None:
                request.setHeader(b"content-security-policy", result.policy.encode())
            request.write(result.body)
            request.finish()
            return
        write_json(request, 200, result)

    def _fail(self, request: Any, failure: Failure) -> None:
        error = map_error(failure.value)
        if error is None:
            log.failure("admin API: {method} {path} failed", failure,
                        method=request.method.decode(), path=request.path.decode("utf-8", "replace"))
            error = ApiError(500, f"internal error: {failure.getErrorMessage()}")
        self._answer_error(request, error)

    def _answer_error(self, request: Any, error: ApiError) -> None:
        if request.finished:
            return
        write_json(request, error.status, {"error": error.message, **error.extra})
