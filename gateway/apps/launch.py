"""Runs one hosted program or command: its own session, death with the gateway, then exec.

The gateway spawns ``python -I -S launch.py <gateway-pid> <user> <max-processes> <cgroup.procs>
<nft> <rules> <directory> <argv...>`` instead of the command itself (Twisted's ``spawnProcess``
has no pre-exec hook). This process then

0. changes to ``<directory>`` (the program's, unless it is empty): here, not in Twisted, so
   that Twisted starts this process with ``posix_spawn`` (which it does only for a child that
   stays in the gateway's directory) rather than a ``fork()`` of the whole gateway, whose cost
   grows with the gateway's memory (about 15 ms a program in a gateway of 90 MiB, on its
   event loop's thread);
1. calls ``setsid()``: the command leads its own session and process group, so the
   gateway can signal everything it starts as one group (the pid Twisted sees is the
   group id);
2. adds the nftables ``<rules>`` with ``<nft> -f -`` when they are not empty, then moves
   itself into the cgroup whose ``cgroup.procs`` file is named, unless the name is empty
   (per-app byte accounting, :mod:`gateway.telemetry.appbytes`; still as the gateway's
   user, who may do both; a failure only costs the accounting and is written to the
   program's stderr);
3. sets its ``RLIMIT_NPROC``, soft and hard, to ``<max-processes>`` unless it is empty, so that
   the program's forks fail once its user has that many processes and threads, before the
   gateway's own do (:mod:`gateway.apps.processlimit`; a failure is written to the
   program's stderr);
4. raises its ``oom_score_adj`` to :data:`OOM_SCORE_ADJ` (500) unless it is higher already, so
   that under memory pressure the kernel's OOM killer takes a hosted program before the
   gateway (any process may raise its own; a failure is written to the program's stderr);
5. switches to ``<user>`` (its groups, group and user id) unless ``<user>`` is empty: here,
   not in Twisted, so that this script still runs as the gateway's user, who can read it;
   before that, the app's state directory is given to that user if the gateway's user
   still owns it (the first program of the app to run as someone else);
6. asks Linux for ``SIGKILL`` when its parent, the gateway, dies
   (``prctl(PR_SET_PDEATHSIG)``; after step 5, which would clear it), so the command does
   not outlive a gateway killed with SIGKILL; where prctl does not exist (not Linux) this
   step is skipped;
7. checks that the gateway is still its parent (it may have died before step 6);
8. gives ``SIGPIPE`` and ``SIGXFSZ`` back their default action (:func:`restore_signals`):
   Python ignores them from its start, and an ignored signal stays ignored across ``exec``;
9. replaces itself with the command (``execvp``): same pid, no process left in between.

It is run with ``-I -S`` and imports nothing from the gateway, so it starts in a few ms.
The gateway imports :func:`launch_command` from here to build that command line.
"""

import os
import pwd
import resource
import signal
import sys
import warnings  # noqa: F401  (os.execvp imports it; the switched-to user may not be able to)
from typing import Any, NamedTuple, Sequence

PR_SET_PDEATHSIG = 1
#: This file, which the gateway runs.
LAUNCH = os.path.abspath(__file__)
#: The ``oom_score_adj`` every program (and ``install.sh``, health check, update script) runs
#: with at least. The OOM killer takes the process with the highest ``badness``: its memory in
#: pages plus ``oom_score_adj`` thousandths of the memory it may use (the machine's, or its
#: memory cgroup's limit). 500 makes a program the kernel's choice over the gateway (0, or the
#: unit's ``OOMScoreAdjust=``) unless the gateway holds half of that memory more than the
#: program: a leaking program is killed and restarted, the broker and the journal stay up; a
#: leaking gateway is still the one taken (1000 would have every program killed, again and
#: again, before it).
OOM_SCORE_ADJ = 500
#: Where Linux keeps a process's own ``oom_score_adj``.
OWN_OOM_SCORE_ADJ = "/proc/self/oom_score_adj"


class CgroupJoin(NamedTuple):
    """The cgroup a program runs in, for per-app byte accounting.

    :param procs: the cgroup's ``cgroup.procs`` file.
    :param nft: the nft command that adds ``rules`` ("" when there are none).
    :param rules: an nft script run before joining (the app's counting rules, the first time).
    """

    procs: str
    nft: str = ""
    rules: str = ""


def launch_command(argv: Sequence[str], user: str | None = None,
                   cgroup: CgroupJoin | None = None, max_processes: int | None = None,
                   directory: str = "") -> tuple[str, list[str]]:
    """The executable and argv that run ``argv`` in its own session and process group, killed
    when the gateway dies (Linux), with the same pid as the launcher. Spawn them with no
    ``path``: the launcher changes to ``directory`` itself.

    :param argv: the command.
    :param user: run it as this user (the gateway must be root); None: as the gateway's user.
    :param cgroup: the cgroup to run it in (and rules to add first); None: the gateway's own.
    :param max_processes: its ``RLIMIT_NPROC``; None: the gateway's.
    :param directory: the directory to run it in; "": the gateway's.
    """
    join = cgroup or CgroupJoin("")
    limit = "" if max_processes is None else str(max_processes)
    return sys.executable, [sys.executable, "-I", "-S", LAUNCH, str(os.getpid()), user or "", limit,
                            join.procs, join.nft, join.rules, directory, *argv]


def _prctl() -> Any:
    """libc's prctl, or None where there is none (loaded before the user switch: the new user
    may not be able to read Python's library)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


def _die_with_parent(prctl: Any) -> None:
    if prctl is None:
        return
    if prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        import ctypes

        error = ctypes.get_errno()
        sys.stderr.write(f"gateway launcher: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(error)}\n")


def _add_rules(nft: str, rules: str) -> None:
    import subprocess

    try:
        run = subprocess.run([nft, "-f", "-"], input=rules.encode(), capture_output=True, timeout=10)
        failed = run.stderr.decode(errors="replace").strip() if run.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        failed = str(exc)
    if failed:
        sys.stderr.write(f"gateway launcher: this app's bytes will not be counted: nft: {failed}\n")


def _join_cgroup(procs: str) -> None:
    try:
        with open(procs, "w") as file:
            file.write("0")
    except OSError:
        pass  # only the per-app byte count is lost; the usage report says when it cannot count


def read_oom_score_adj(path: str = OWN_OOM_SCORE_ADJ) -> int:
    """The ``oom_score_adj`` in ``path`` (the gateway's own, read by its containers' service too:
    :func:`gateway.containers.podman.container_oom_score_adj`).

    :raises OSError: when it cannot be read (``FileNotFoundError``: not Linux).
    :raises ValueError: when it holds no number.
    """
    with open(path) as file:
        return int(file.read())


def raise_oom_score_adj(path: str = OWN_OOM_SCORE_ADJ, value: int = OOM_SCORE_ADJ) -> None:
    """Raise the ``oom_score_adj`` in ``path`` to ``value`` unless it is that high already (one an
    operator set higher stays). Where there is no such file (not Linux) nothing happens; a
    failure is written to stderr, the program's log: it runs all the same."""
    try:
        if read_oom_score_adj(path) >= value:
            return
        with open(path, "w") as file:
            file.write(str(value))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"gateway launcher: cannot raise its oom_score_adj to {value}"
                         f" (the OOM killer may take the gateway before it): {exc}\n")


def limit_processes(limit: int) -> None:
    """Set this process's ``RLIMIT_NPROC``, soft and hard, to ``limit`` (lowered only: a hard
    limit below it stays). A failure is written to stderr, the program's log: it runs all the
    same, with the gateway's limit."""
    try:
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"gateway launcher: cannot set its process limit to {limit}"
                         f" (a fork bomb may starve the gateway): {exc}\n")


#: The signals Python ignores from its start (``SIGPIPE``, and ``SIGXFSZ`` where there is one), which
#: an ``exec`` keeps ignored: a program given them so would write on to a closed pipe (``yes |
#: head`` in a ``sh -c``) instead of ending as it does from a shell.
PYTHON_IGNORED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))


def restore_signals() -> None:
    """Give the signals of :data:`PYTHON_IGNORED_SIGNALS` their default action again, as a shell
    starts a command with them (and as ``subprocess``'s ``restore_signals`` does)."""
    for number in PYTHON_IGNORED_SIGNALS:
        signal.signal(number, signal.SIG_DFL)


def _give_state_dir(uid: int, gid: int) -> None:
    """Give the app's ``GATEWAY_APP_STATE_DIR`` and what it holds to the user the program runs
    as, the first time a program of the app runs as someone else than the gateway's user (who
    still owns it then); symbolic links are not followed. A failure is written to stderr: the
    program still runs, and may not be able to write there."""
    state = os.environ.get("GATEWAY_APP_STATE_DIR", "")
    try:
        if not state or os.lstat(state).st_uid != os.geteuid() or uid == os.geteuid():
            return
        for top, dirs, files in os.walk(state):
            for name in dirs + files:
                os.chown(os.path.join(top, name), uid, gid, follow_symlinks=False)
        os.chown(state, uid, gid, follow_symlinks=False)
    except OSError as exc:
        sys.stderr.write(f"gateway launcher: could not give {state} to uid {uid}: {exc}\n")


def _switch_user(name: str) -> None:
    try:
        entry = pwd.getpwnam(name)
        _give_state_dir(entry.pw_uid, entry.pw_gid)
        os.initgroups(name, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except (KeyError, OSError) as exc:
        sys.stderr.write(f"cannot run as user {name}: {exc}\n")
        os._exit(126)


def main(argv: list[str]) -> None:
    """``launch.py <gateway-pid> <user or ""> <max-processes or ""> <cgroup.procs or ""> <nft or "">
    <rules or ""> <directory or ""> <command> [args...]``: never returns."""
    if len(argv) < 9:
        sys.stderr.write("usage: launch.py <gateway-pid> <user or ''> <max-processes or ''> <cgroup.procs or ''>"
                         " <nft or ''> <rules or ''> <directory or ''> <command> [args...]\n")
        os._exit(2)
    gateway, user, limit, procs, nft, rules, directory, command = (
        int(argv[1]), argv[2], argv[3], argv[4], argv[5], argv[6], argv[7], argv[8:])
    if directory:
        try:
            os.chdir(directory)
        except OSError as exc:
            sys.stderr.write(f"cannot change to the directory {directory}: {exc.strerror or exc}\n")
            os._exit(126)
    try:
        os.setsid()
    except OSError:
        pass  # already a group leader
    if nft and rules:
        _add_rules(nft, rules)
    if procs:
        _join_cgroup(procs)
    if limit:
        limit_processes(int(limit))
    raise_oom_score_adj()
    prctl = _prctl()
    if user:
        _switch_user(user)
    _die_with_parent(prctl)
    if os.getppid() != gateway:
        os._exit(1)  # the gateway died before prctl took effect
    sys.stdout.flush()
    restore_signals()
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"cannot run {command[0]}: {exc.strerror or exc}\n")
        os._exit(127 if isinstance(exc, FileNotFoundError) else 126)


if __name__ == "__main__":
    main(sys.argv)
