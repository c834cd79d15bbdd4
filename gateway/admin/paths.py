"""Where ``gatewayctl`` finds the admin socket (standard library only: no Twisted here)."""

from __future__ import annotations

import os
import sys

#: The .deb's virtualenv (debian/rules: VENV) and the socket its config names
#: (debian/etc-config sets admin.socket; systemd's RuntimeDirectory=gateway makes /run/gateway).
PACKAGED_VENV = "/opt/venvs/gateway"
PACKAGED_SOCKET = "/run/gateway/admin.sock"
#: ``make run``'s: the embedded config keeps state in ./var.
CHECKOUT_SOCKET = "var/run/admin.sock"
ENVIRONMENT = "GATEWAY_ADMIN_SOCKET"


def default_socket() -> str:
    """``$GATEWAY_ADMIN_SOCKET``; else the packaged socket when this is the .deb's
    ``gatewayctl``; else ``var/run/admin.sock`` (a checkout's ``make run``)."""
    if os.environ.get(ENVIRONMENT):
        return os.environ[ENVIRONMENT]
    if os.path.realpath(sys.prefix) == PACKAGED_VENV:
        return PACKAGED_SOCKET
    return CHECKOUT_SOCKET
