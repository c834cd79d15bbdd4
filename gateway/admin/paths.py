"""Where ``gatewayctl`` finds the admin socket (standard library only: no Twisted here)."""

from __future__ import annotations

import os
import sys

#: The .deb's virtualenv (debian/rules: VENV) and the socket its config names
#: (debian/etc-config sets admin.socket; systemd's RuntimeDirectory=gateway makes /run/gateway).
PACKAGED_VENV = "/opt/venvs/gateway"
PACKAGED_SOCKET = "/run/gateway/admin.sock"
#: The .deb's state directory (debian/etc-config sets gateway.state_dir).
PACKAGED_STATE_DIR = "/var/lib/gateway"
#: ``make run``'s: the embedded config keeps state in ./var.
CHECKOUT_SOCKET = "var/run/admin.sock"
ENVIRONMENT = "GATEWAY_ADMIN_SOCKET"
#: Where the admin socket is under the state directory when ``admin.socket`` is empty.
DEFAULT_SOCKET_UNDER_STATE = ("run", "admin.sock")


def default_socket(state_dir: str | None = None) -> str:
    """Where ``gatewayctl`` looks without ``--socket``: ``$GATEWAY_ADMIN_SOCKET``; else, given
    ``state_dir`` (``--state-dir``), :func:`socket_of_state_dir`; else the packaged socket when
    this is the .deb's ``gatewayctl``; else ``var/run/admin.sock`` (a checkout's ``make run``).

    :param state_dir: the state directory named on the command line, if any.
    """
    if os.environ.get(ENVIRONMENT):
        return os.environ[ENVIRONMENT]
    if state_dir:
        return socket_of_state_dir(state_dir)
    return _installation_socket()


def _installation_socket() -> str:
    """The packaged socket when this is the .deb's ``gatewayctl``, else the checkout's."""
    if os.path.realpath(sys.prefix) == PACKAGED_VENV:
        return PACKAGED_SOCKET
    return CHECKOUT_SOCKET


def state_dir_of(socket: str) -> str | None:
    """The state directory of the gateway whose admin socket is ``socket``, as far as the
    path tells: :data:`PACKAGED_STATE_DIR` for the .deb's socket, ``DIR`` for
    ``DIR/run/admin.sock`` (where an empty ``admin.socket`` puts it: ``make run``'s
    ``var/run/admin.sock`` is ``var``'s); else ``None`` (another ``admin.socket``)."""
    if socket == PACKAGED_SOCKET:
        return PACKAGED_STATE_DIR
    parent, name = os.path.split(socket)
    state_dir, folder = os.path.split(parent)
    if (folder, name) != DEFAULT_SOCKET_UNDER_STATE:
        return None
    return state_dir or "."


def socket_of_state_dir(state_dir: str) -> str:
    """The admin socket of the gateway whose state directory is ``state_dir`` (``--state-dir``
    without ``--socket`` nor ``$GATEWAY_ADMIN_SOCKET``): the installation's socket when it is
    that directory's (the .deb's ``/var/lib/gateway``: ``/run/gateway/admin.sock``), else
    ``DIR/run/admin.sock``, where an empty ``admin.socket`` puts it; for the .deb's
    ``gatewayctl``, ``/run/gateway/admin.sock`` unless there is a socket there (the .deb's
    config sets ``admin.socket`` to it whatever its ``state_dir``)."""
    default = _installation_socket()
    named = state_dir_of(default)
    if named is not None and os.path.realpath(named) == os.path.realpath(state_dir):
        return default
    under = os.path.join(state_dir, *DEFAULT_SOCKET_UNDER_STATE)
    if default == PACKAGED_SOCKET and not os.path.exists(under):
        return default
    return under
