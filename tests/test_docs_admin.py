"""docs/admin.md is the admin API's contract: it names every route the API serves (method and
path), and every route it names is served. A route added in the code alone is one operators
never hear of; one the page names that the API lacks is a 404 they were promised an answer for."""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.admin.api import AdminApi

ADMIN = Path(__file__).resolve().parent.parent / "docs" / "admin.md"


def documented() -> set[tuple[str, str]]:
    """Each ``METHOD /path`` the page writes as code (``NAME`` for a route's name), with the
    path as the API's pattern writes it (``{name}``); ``GET` or `POST /p`` names both."""
    routes: set[tuple[str, str]] = set()
    text = ADMIN.read_text(encoding="utf-8")
    for either, method, path in re.findall(r"`(?:(GET)` or `)?(GET|POST|DELETE|PUT|PATCH) (/[^`?\s]*)", text):
        pattern = path.replace("NAME", "{name}")
        routes.add((method, pattern))
        if either:
            routes.add((either, pattern))
    return routes


def served() -> set[tuple[str, str]]:
    """Each ``(method, pattern)`` of the API's route table."""
    api = AdminApi.__new__(AdminApi)  # (the table only names the handlers: nothing of the API is used)
    return {(method, pattern) for method, pattern, _, _ in api.routes()}


class RoutesTests(SynchronousTestCase):
    """The page and the route table name the same routes."""

    def test_every_route_is_documented(self) -> None:
        """Each route the API serves is named on the page."""
        self.assertEqual(sorted(served() - documented()), [])

    def test_every_documented_route_is_served(self) -> None:
        """Each route the page names is in the API's table."""
        self.assertEqual(sorted(documented() - served()), [])

    def test_the_page_is_read(self) -> None:
        """The parsing finds the routes (a reformatted page fails here, not silently)."""
        self.assertLessEqual({("GET", "/status"), ("DELETE", "/journal/{name}"), ("GET", "/apps/{name}/logs"),
                              ("POST", "/apps/{name}/logs"), ("POST", "/reports/{name}")}, documented())
