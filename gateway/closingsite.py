"""A twisted.web ``Site`` whose connections its service closes when it stops (the admin API's
and the ingest's; imported with twisted.web.server, when the first connection comes)."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Site

from gateway.httpaccesslog import AccessLine, DatedWhenLogged
from gateway.httpchannels import ClosesChannels


class ClosingSite(DatedWhenLogged, ClosesChannels, Site):
    """A ``Site`` with :meth:`~gateway.httpchannels.ClosesChannels.close_connections`: each
    open connection closes at once when idle, else once its response in progress is sent.
    Its access log lines are dated as they are written, with no timer
    (:class:`~gateway.httpaccesslog.DatedWhenLogged`).

    :param resource: the root resource.
    :param access_line: formats each access log line; ``None``: no access log.
    :param kwargs: ``Site``'s (``requestFactory``, ``timeout``, ``reactor``).
    """

    def __init__(self, resource: Any, access_line: AccessLine | None = None, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.access_line = access_line
