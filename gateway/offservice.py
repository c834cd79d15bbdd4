"""A service the configuration turned off: in the tree only so that the status says so, and why."""

from __future__ import annotations

from twisted.application.service import Service


class OffService(Service):
    """Stands in the tree for a service that is off (the twin with ``twin.enabled: false``):
    it does nothing, imports nothing of the service it stands for (an idle gateway imports only
    what it runs), and its :attr:`off` is its state's ``off`` in the gateway's status.

    :param name: the name of the service it stands for (``twin``).
    :param off: why it is off, naming the configuration key: ``twin.enabled: false``.
    """

    def __init__(self, name: str, off: str) -> None:
        self.setName(name)
        self.off = off
