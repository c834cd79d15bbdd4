"""The aliases an Exosite link sends the gateway's own reports on, and those its product lacks.

A link's default routes send the reports as Gateway Engine does, on the aliases
``device_info``, ``usage_report`` and ``engine_report``; a product that is not Gateway
Engine's has none of them and answers ``404``. That answer is definite about the alias, not
a sign of a broken platform, so a report refused so is counted as lost at once (the rule for
other values waits for the platform to take another request of the batch: it would hold the
link down for as long as the apps send nothing), and the alias is not written to again for
the link's run (until the gateway or a configuration change restarts the links): one
warning per alias, not one per report.
"""

from __future__ import annotations

from twisted.logger import Logger

from gateway.links.router import Router
from gateway.telemetry.settings import REPORTS, TelemetrySettings

#: Where the telemetry service publishes its reports by default (``telemetry.topic_prefix``).
DEFAULT_REPORT_PREFIX: str = TelemetrySettings.topic_prefix


def report_aliases(router: Router, link: str, prefix: str = DEFAULT_REPORT_PREFIX) -> dict[str, tuple[str, ...]]:
    """The aliases ``link``'s routes send the gateway's reports on, each with the names of the
    reports that go there.

    :param router: the links' router, which holds ``link``'s routes (a topic goes to a link
        by the first of its routes that matches, whatever the other links' routes).
    :param link: the link's name.
    :param prefix: the local topic the reports are published under (``<prefix>/<name>``).
    """
    found: dict[str, tuple[str, ...]] = {}
    for name in REPORTS:
        for destination in router.route(f"{prefix}/{name}"):
            if destination.link == link:
                found[destination.topic] = found.get(destination.topic, ()) + (name,)
    return found


class ReportAliases:
    """Which of an Exosite link's aliases carry the gateway's reports, and which of those
    the product answered it does not have (``404``).

    :param link: the link's name, for the log.
    :param aliases: the link's :func:`report_aliases`.
    """

    log = Logger()

    def __init__(self, link: str, aliases: dict[str, tuple[str, ...]]) -> None:
        self.link = link
        self.aliases = aliases
        #: report aliases the product does not have: not written to again while the link runs
        self.missing: set[str] = set()

    def carries_reports(self, alias: str) -> bool:
        """Whether the link sends the gateway's reports on ``alias``."""
        return alias in self.aliases

    def not_found(self, alias: str, why: str) -> None:
        """The product answered ``404`` to a write of reports on ``alias`` (``why``: the
        answer, for the log): remembered, and said once."""
        if alias in self.missing:
            return
        self.missing.add(alias)
        names = " and ".join(self.aliases[alias])
        self.log.warn("link {link}: the product has no alias {alias} ({why}): the gateway's {names} reports are not"
                      " sent on it, each counted as lost (refused-by-cloud), until the link restarts (a configuration"
                      " change, or the gateway's restart) (routes: give the link its own, without the reports, or"
                      " add the alias to the product)", link=self.link, alias=alias, why=why, names=names)
