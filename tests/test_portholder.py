"""A port the gateway cannot listen on: the process holding it is named when it can be seen."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

from twisted.internet.error import CannotListenError
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from gateway.portholder import listen_refusal

#: A hosted app's program that holds a port before the gateway starts (a leftover of a
#: killed gateway, or an app started by hand): it listens, says so, and waits.
HOLDER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


def in_use(port: int) -> Failure:
    """What Twisted fails a listen on ``port`` with when the address is taken."""
    return Failure(CannotListenError("127.0.0.1", port, OSError(errno.EADDRINUSE, "Address already in use")))


class ListenRefusalTests(TestCase):
    timeout = 10

    def test_the_hosted_app_holding_the_port_is_named(self) -> None:
        """An app's process listening on the port: its pid, command line and app are named
        (the error said only 'Address already in use'), on one line: the ``-c`` script's newlines
        are escaped (they went into the log as they were, the gateway's one line cut in four)."""
        holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  env={**os.environ, "GATEWAY_APP_NAME": "sensor"})
        self.addCleanup(holder.wait)
        self.addCleanup(holder.stdin.close)  # type: ignore[union-attr]
        self.addCleanup(holder.stdout.close)  # type: ignore[union-attr]
        port = int(holder.stdout.readline())  # type: ignore[union-attr]
        message = listen_refusal(in_use(port))
        expected = (f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use; held by pid"
                    f" {holder.pid} ({sys.executable} -c \\nimport socket, sys\\ns = ")
        self.assertTrue(message.startswith(expected), message)
        self.assertNotIn("\n", message)
        self.assertTrue(message.endswith("..., hosted app sensor)."), message)

    def test_nobody_seen_leaves_the_message_as_it_was(self) -> None:
        """A port no visible process listens on, or another error, is Twisted's message as it is."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            self.assertEqual(listen_refusal(in_use(port)),
                             f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use.")
        denied = Failure(CannotListenError("127.0.0.1", 80, OSError(errno.EACCES, "Permission denied")))
        self.assertEqual(listen_refusal(denied), "Couldn't listen on 127.0.0.1:80: [Errno 13] Permission denied.")

    def test_an_ipv6_address_is_in_brackets(self) -> None:
        """An IPv6 address is written as in a URL: Twisted's message had ``::1:80`` and, for
        every IPv6 address, ``:::80``."""
        for interface, shown in (("::1", "[::1]:80"), ("::", "[::]:80")):
            denied = Failure(CannotListenError(interface, 80, OSError(errno.EACCES, "Permission denied")))
            self.assertEqual(listen_refusal(denied), f"Couldn't listen on {shown}: [Errno 13] Permission denied.")
