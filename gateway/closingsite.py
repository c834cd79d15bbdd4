"""A twisted.web ``Site`` whose connections its service closes when it stops (the admin API's
and the ingest's; imported with twisted.web.server, when the first connection comes)."""

from __future__ import annotations

from twisted.web.server import Site

from gateway.httpchannels import ClosesChannels


class ClosingSite(ClosesChannels, Site):
    """A ``Site`` with :meth:`~gateway.httpchannels.ClosesChannels.close_connections`: each
    open connection closes at once when idle, else once its response in progress is sent."""
