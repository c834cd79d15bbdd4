"""What Linux's execve() takes: a command line and environment checked before they are spawned.

A command line or an environment larger than the kernel takes fails execve() with ``E2BIG``
in the forked child, after the spawn has "succeeded": Twisted writes its traceback, with
the whole argv, into the program's stderr log, and the program seems to exit with status 1
(a crash loop of a package with a megabyte environment fills its logs with tracebacks).
Checked in the gateway first, the same command fails its spawn with a clear reason instead.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Mapping, Sequence

#: Linux's ``_STK_LIM`` (8 MiB): at most three quarters of it hold the strings (fs/exec.c).
_STACK_LIMIT = 8 * 2**20
#: Bytes of one string pointer in argv and envp.
_POINTER = 8


def _page() -> int:
    return os.sysconf("SC_PAGE_SIZE")


def exec_limit() -> int:
    """The bytes execve() takes for its strings and their pointers, as Linux computes it: a
    quarter of the stack's soft limit (``ulimit -s``), at most 6 MiB, at least 32 pages."""
    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    limit = _STACK_LIMIT // 4 * 3
    if stack != resource.RLIM_INFINITY:
        limit = min(limit, stack // 4)
    return max(limit, 32 * _page())


def check_exec_size(executable: str, args: Sequence[str], env: Mapping[str, str]) -> None:
    """Raise what execve() would fail with for ``args`` and ``env``, saying which part is too
    large (never its value, which may be megabytes).

    :param executable: the file executed (its name counts too).
    :param args: the argv.
    :param env: the environment.
    :raises OSError: ``E2BIG``: one string over Linux's 32 pages, or all of them (with their
        pointers) over :func:`exec_limit`.
    """
    longest = 32 * _page()  # (MAX_ARG_STRLEN, its NUL included)
    total = len(os.fsencode(executable)) + 1
    for arg in args:
        size = len(os.fsencode(arg)) + 1
        if size > longest:
            raise OSError(errno.E2BIG, f"an argument of its command is {size - 1} bytes, more than the"
                                       f" {longest - 1} Linux takes in one")
        total += size + _POINTER
    for name, value in env.items():
        size = len(os.fsencode(name)) + len(os.fsencode(value)) + 2
        if size > longest:
            raise OSError(errno.E2BIG, f"its environment variable {name[:100]} is {size - 1} bytes, more than"
                                       f" the {longest - 1} Linux takes in one")
        total += size + _POINTER
    limit = exec_limit()
    if total > limit:
        raise OSError(errno.E2BIG, f"its command line and environment are {total} bytes, more than the {limit}"
                                   f" Linux takes (a quarter of the stack limit, ulimit -s, at most 6 MiB)")
