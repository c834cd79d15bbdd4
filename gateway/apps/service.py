"""AppsService: the hosted-applications service in the gateway's tree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks

from gateway import __version__
from gateway.apps.hosted import AppsControl, HostedKind
from gateway.apps.launch import CgroupJoin
from gateway.apps.leftovers import GroupRecords, ProcessTable
from gateway.apps.logs import AppLogWriter
from gateway.apps.operations import AppOperations
from gateway.apps.process import ProcessLauncher
from gateway.apps.processlimit import own_program_process_limit
from gateway.apps.registry import PROCESSES_FILE
from gateway.apps.settings import AppsSettings
from gateway.apps.snapshot import AppSnapshot, AppsSnapshot
from gateway.apps.spool import SpoolWatcher
from gateway.apps.supervisor import AppSupervisor
from gateway.blocking import in_reactor_threads
from gateway.filelayer import makedirs_durably
from gateway.namewatch import inotify_maker


class AppsService(Service):
    """Supervises hosted apps, installs packages, watches the spool.

    ``startService`` loads the config's programs and the installed apps and starts
    those that should run; ``stopService`` stops the spool, then every program, then
    the log writer, and fires only when every child process has exited.

    :param settings: the ``apps`` config section.
    :param state_dir: the gateway's state directory (``apps/``, ``incoming/`` and
        ``logs/apps/`` live under it).
    :param reactor: an IReactorProcess, IReactorTime and IReactorThreads.
    :param broker_address: the local MQTT broker as apps should reach it (given to them
        as ``GATEWAY_BROKER``).
    :param kill_group: ``os.killpg`` (tests pass a recorder).
    :param blocking: runs a blocking callable off the reactor thread; default: the
        reactor's thread pool.
    :param threaded_logs: write logs on a dedicated thread (tests with a fake reactor
        pass False to write inline).
    :param process_table: reads ``/proc`` to find what a crashed gateway left running
        (tests with a fake reactor pass one over a fake ``/proc``).
    :param prepare_cgroup: called with an app's name before each of its programs starts
        (per-app byte accounting; see :class:`~gateway.apps.process.ProcessLauncher`); fires
        with the cgroup to join.
    :param oom_kills: reads the OOM kill count of a program's memory cgroup, so that an end
        by the kernel's OOM killer is told as such (:class:`~gateway.apps.oomkills.OomKillCounts`;
        None: not told).
    :param watch_spool: start watching the spool in ``startService``; the gateway's tree
        passes False and starts :attr:`spool` itself once every kind of app is loaded.
    """

    def __init__(self, settings: AppsSettings, state_dir: Path, reactor: Any,
                 broker_address: str, kill_group: Callable[[int, int], None] = os.killpg,
                 blocking: Callable[[Callable[[], Any]], Deferred[Any]] | None = None,
                 threaded_logs: bool = True,
                 process_table: ProcessTable | None = None,
                 prepare_cgroup: Callable[[str], Deferred[CgroupJoin | None]] | None = None,
                 oom_kills: Callable[[CgroupJoin | None], int | None] | None = None,
                 watch_spool: bool = True) -> None:
        self._reactor = reactor
        self._watch_spool = watch_spool
        self._kill_group = kill_group
        if blocking is None:
            blocking = in_reactor_threads(reactor)
        self._blocking = blocking
        self.writer = AppLogWriter(settings.logs_max_total_bytes,
                                   reactor if threaded_logs else None)
        self.groups = GroupRecords(state_dir / "apps" / PROCESSES_FILE,
                                   process_table or ProcessTable(), blocking)
        #: spawns every program and command in its own group and records it in ``processes.json``
        #: (the updates service runs its scripts through it too: the next start stops their leftovers).
        self.launcher = ProcessLauncher(reactor, kill_group, records=self.groups,
                                        prepare_cgroup=prepare_cgroup, oom_kills=oom_kills,
                                        max_processes=own_program_process_limit(settings.process_reserve),
                                        blocking=blocking)
        self.supervisor = AppSupervisor(self.launcher, reactor, self.writer,
                                        settings.backoff_initial, settings.backoff_max)
        self.operations = AppOperations(settings, state_dir, reactor, broker_address,
                                        self.supervisor, self.launcher, blocking)
        self.control = AppsControl(self.operations)
        # Watched with inotify where there is one (Linux) and the reactor reads descriptors
        # (a test's fake reactor does not): else looked at every spool_interval.
        self.spool = SpoolWatcher(state_dir / "incoming", self.operations.install, reactor,
                                  blocking, settings.spool_interval, inotify_maker(reactor))

    @inlineCallbacks
    def startService(self) -> Any:
        """Stop what a crashed gateway left running, load and start the apps, make the spool
        folder, then start watching it (unless ``watch_spool`` is False)."""
        Service.startService(self)
        self.writer.start()
        yield self.groups.stop_leftovers(self._reactor, self._kill_group)
        yield self.operations.load()
        # The folder is there once the service is up, watched or not yet: a package dropped as
        # soon as the gateway says it started waits there for the first look.
        spool = self.spool.directory
        yield self._blocking(lambda: makedirs_durably(str(spool)))
        if self._watch_spool:
            self.spool.start()

    @inlineCallbacks
    def stopService(self) -> Any:
        """Stop the spool and every program (waiting for each to exit), let the operation under
        way end without starting any (an install in its health window is rolled back on disk),
        then stop the log writer: a new apps service (a configuration change) then finds the
        apps as they are on disk, and no program of this one runs."""
        Service.stopService(self)
        self.operations.close()
        spool = self.spool.stop()
        yield gatherResults([self.supervisor.stop_all()], consumeErrors=True)
        yield spool
        yield self.operations.settled()
        yield self.groups.flush()
        yield self.writer.stop()

    def stop_overdue(self) -> None:
        """The gateway waited ``gateway.shutdown_timeout`` for :meth:`stopService`: kill every
        program's group now, so that none outlives the gateway, or this service when a
        configuration change replaces it (the root calls this)."""
        self.supervisor.kill_all()

    def add_kind(self, kind: HostedKind) -> None:
        """Host another kind of app (containers) under the same operations and reports."""
        self.control.kinds.append(kind)

    def snapshot(self) -> AppsSnapshot:
        """Every program's state, in name order, then every other kind's (no I/O)."""
        return AppsSnapshot(__version__, tuple(
            AppSnapshot(s.name, s.app, s.version, s.state.value, s.pid, s.uptime, s.exitstatus, s.restarts,
                        error=s.error)
            for s in self.supervisor.statuses()) + tuple(
            AppSnapshot(s.name, s.app, s.version, s.state.value, s.pid, s.uptime, s.exitstatus, s.restarts,
                        "container", s.image, s.image_digest, s.error)
            for kind in self.control.kinds for s in kind.statuses()))

