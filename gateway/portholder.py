"""Who holds a TCP port (or a unix socket's lock) the gateway could not listen on, named in the
error when the system says."""

from __future__ import annotations

import errno

import psutil
from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure

from gateway.shown import escaped
from gateway.unixsocket import lock_holder, lock_refused_path

#: Most characters of the holder's command line quoted.
COMMAND_CHARS = 100


def port_holder(port: int) -> str:
    """``pid 1234 (python3 run.py, hosted app sensor)``: the process listening on TCP ``port``,
    its command line and, when its environment says so, the hosted app it belongs to, their
    control characters escaped (a ``python3 -c`` script's newlines), so that the line stays one
    line; "" when none can be seen (another user's process, to a gateway not running as root). Blocking
    (reads ``/proc``): only for an error.
    """
    try:
        pids = [c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid]
    except (psutil.Error, OSError):
        return ""
    if not pids:
        return ""
    pid = pids[0]
    what = []
    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline()) or process.name()
        what.append(escaped(command) if len(command) <= COMMAND_CHARS else escaped(command[:COMMAND_CHARS]) + "...")
        app = process.environ().get("GATEWAY_APP_NAME")
        if app:
            what.append(f"hosted app {escaped(app)}")
    except (psutil.Error, OSError):
        pass
    return f"pid {pid}" + (f" ({', '.join(what)})" if what else "")


def listen_refusal(failure: Failure) -> str:
    """A failed listen's message, naming the process that holds the port when the address is in
    use and that process can be seen: ``Couldn't listen on 127.0.0.1:1883: [Errno 98] Address
    already in use; held by pid 1234 (mosquitto -c /etc/mosquitto.conf).``; and, for a unix
    socket whose lock names a live process, that pid. An IPv6 address is in brackets,
    ``[::1]:1883``."""
    message = failure.getErrorMessage()
    error = failure.value
    if isinstance(error, CannotListenError) and ":" in (error.interface or ""):
        # Twisted's own message writes an IPv6 address bare, "::1:1883", ":::1883"
        message = f"Couldn't listen on [{error.interface}]:{error.port}: {error.socketError}."
    socket = lock_refused_path(error)
    if socket is not None:  # (a unix socket whose lock names a live process: not one left behind)
        return (f"{message.rstrip('.')}: {socket}.lock names pid {lock_holder(socket)}, a live process"
                " (another gateway on this socket?): give each gateway its own socket.")
    if not isinstance(error, CannotListenError) or getattr(error.socketError, "errno", None) != errno.EADDRINUSE:
        return message
    holder = port_holder(error.port)
    return f"{message.rstrip('.')}; held by {holder}." if holder else message
