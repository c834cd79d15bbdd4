"""Broker authentication by TLS client certificate (an amqtt auth plugin)."""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session


class ClientCertificateAuthPlugin(BaseAuthPlugin):
    """Accept a client that presented a certificate the TLS layer verified; refuse others.

    Use it on listeners that verify client certificates (``cafile``/``caCertsDir``): the
    handshake has already checked the chain, so a certificate here is a trusted one. List it
    instead of ``AnonymousAuthPlugin`` (amqtt requires every auth plugin to agree).
    """

    @dataclass
    class Config:
        """No options."""

    async def authenticate(self, *, session: Session) -> bool | None:
        """True when the session's connection carries a verified client certificate."""
        ssl_object = session.ssl_object
        return bool(ssl_object is not None and ssl_object.getpeercert(binary_form=True))
