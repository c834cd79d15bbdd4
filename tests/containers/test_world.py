"""The container test world's own promises (needs podman and docker-registry; skipped without)."""

from __future__ import annotations

import os
import socket

import psutil
from twisted.trial.unittest import SynchronousTestCase

from tests.containers import world


class RegistryStartTests(SynchronousTestCase):
    def test_a_registry_that_cannot_listen_fails_clearly(self) -> None:
        """A docker-registry whose port another server holds exits; the world then fails at
        once, naming the port and quoting the registry's log, and leaves no process or
        directory behind (it went on and pushed its images to whatever held the port)."""
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(16)
        port = holder.getsockname()[1]
        self.patch(world, "free_port", lambda: port)
        made: list[str] = []
        mkdtemp = world.tempfile.mkdtemp
        self.patch(world.tempfile, "mkdtemp", lambda **kwargs: made.append(mkdtemp(**kwargs)) or made[-1])
        before = {p.pid for p in psutil.process_iter() if p.name() == "docker-registry"}
        error = self.assertRaises(RuntimeError, world.Registry)
        self.assertIn(f"docker-registry did not listen on 127.0.0.1:{port}: ", str(error))
        self.assertIn("address already in use", str(error))
        self.assertEqual({p.pid for p in psutil.process_iter() if p.name() == "docker-registry"}, before)
        self.assertEqual([path for path in made if os.path.exists(path)], [])
