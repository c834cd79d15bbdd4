"""``twistd gateway``: command-line options and the service tree.

The only module that touches the global reactor: it creates the asyncio event loop,
installs Twisted's asyncio reactor on it (amqtt needs asyncio) unless one is installed
already, and hands the loop to the services that use it directly.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from gateway import acceptlog
from gateway import config as gateway_config
from gateway import gctuning
from gateway import httpaccesslog, logbridge
from gateway import nameresolver
from gateway import stdstreams
from gateway import stopsignals
from gateway.errors import ConfigError, GatewayError, ReactorError
from gateway.exitdeadline import ExitDeadline
from gateway.pidfile import clear_stale_pidfile


class Options(usage.Options):
    """``twistd gateway [--config PATH] [--check-config]``."""

    synopsis = "[--config PATH] [--check-config]"
    optParameters = [
        ["config", "c", None, "the gateway's YAML config (default: the embedded conf/gateway.yaml)"],
    ]
    optFlags = [
        ["check-config", None, "validate the configuration, print every problem, exit 0 or 1"],
    ]

    def postOptions(self) -> None:
        """Load the configuration now, so a bad one stops twistd before anything starts."""
        try:
            self.loaded = gateway_config.load(self["config"])
        except ConfigError as exc:
            sys.stderr.write("gateway: invalid configuration:\n" + "".join(f"  {e}\n" for e in exc.errors))
            raise SystemExit(1) from None
        if self["check-config"]:
            sys.stderr.write("".join(f"gateway: warning: {line}\n" for line in self.loaded.warnings()))
            sys.stdout.write(f"gateway: configuration OK: {self.loaded.files_read()}\n")
            raise SystemExit(0)
        # twistd looks at its pid file once the options are parsed: a stale one, whose pid
        # another process has taken since, would stop every start.
        parent = getattr(self, "parent", None)
        said = clear_stale_pidfile(parent.get("pidfile") or "", self.loaded.state_dir) if parent is not None else None
        if said:
            sys.stderr.write(said)


def install_reactor() -> tuple[Any, asyncio.AbstractEventLoop]:
    """Install Twisted's asyncio reactor on a new event loop if no reactor is installed yet,
    with timers that keep their delays when the wall clock steps
    (:class:`gateway.clockstep.SteadyTimersReactor`; one that ``twistd --reactor=asyncio``
    installed has Twisted's wall-clock timers), and, on either, the process's handlers of the
    stop signals, which only hand them to its loop (:mod:`gateway.stopsignals`): a stop
    signal from now on, while the services start too, stops the gateway cleanly once it runs.

    :return: the reactor and the asyncio loop it runs on.
    :raises ReactorError: if a reactor of another kind is already installed.
    """
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet.main import installReactor

        from gateway.clockstep import SteadyTimersReactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        installReactor(SteadyTimersReactor(loop))
    else:
        # ``twistd --reactor=asyncio`` installed it before us: Twisted made the loop it
        # created this thread's current loop (AsyncioSelectorReactor's documented default).
        loop = asyncio.get_event_loop_policy().get_event_loop()
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise ReactorError(
            f"the gateway needs Twisted's asyncio reactor, but {type(reactor).__name__} is installed:"
            " run twistd without --reactor, or with --reactor=asyncio"
        )
    stopsignals.queue_stop_signals(reactor)
    stopsignals.handle_stop_signals_now(reactor)
    return reactor, loop


def makeService(options: Options) -> IService:
    """Build the gateway's service tree from the loaded configuration."""
    try:
        reactor, loop = install_reactor()
    except ReactorError as exc:
        raise SystemExit(f"gateway: {exc}") from None
    from gateway.tree import build_service

    # Host names resolve on a pool of their own, each lookup bounded (docs/links.md).
    nameresolver.install(reactor)
    loaded = options.loaded
    # (before twistd hands stdout to its log observer, --logfile=-, the Debian unit's)
    stdstreams.escape_unencodable()
    gctuning.prime_future_iterators(loop)
    gctuning.tune()

    def start_failed(_: Any) -> None:
        # The error is logged; leave with a failure status once twistd is done: after the
        # reactor has stopped it removes its pid file and returns, and the process ends.
        # twistd starts the tree before the reactor runs: a service that fails at once (the
        # state directory) must stop the reactor once it runs, not now (it would raise).
        atexit.register(_exit_failed)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    try:
        root = build_service(loaded, reactor, on_start_failure=start_failed, loop=loop,
                             exit_deadline=ExitDeadline())
    except GatewayError as exc:  # (the state directory locked or unusable, a revert impossible)
        raise SystemExit(f"gateway failed to start: {exc}") from None
    assert root.changer is not None, "build_service made it"
    # The configuration the tree runs: a change whose deadline passed while stopped is reverted.
    logbridge.install(root.changer.config.gateway.log_level)
    httpaccesslog.log_routine_reads(root.changer.config.gateway.log_level == "debug")
    # Out of descriptors, Twisted logs three lines per connection its ports close: throttled.
    root.log_observer = acceptlog.twistd_observer(options.parent, reactor)
    # Starting leaves free memory in the C heap; hand it back once everything is up.
    root.started.addCallback(_release_free_memory)
    return root


def _release_free_memory(result: Any) -> Any:
    gctuning.release_free_memory()
    return result


def _exit_failed() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)
