"""The detached installer helper: ``python -m gateway.updates.detached_run RESULT_DIR -- COMMAND...``.

It outlives the gateway (the .deb it installs restarts the gateway): it records its pid,
runs the command, and writes ``result.json`` atomically for the gateway to read when it
is back. With ``--detach`` it double-forks and calls ``setsid`` first (when there is no
systemd to run it in its own unit).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.atomic import write_atomically, write_json_atomically
from gateway.filelayer import makedirs_durably

_TAIL = 4096


def execute(command: list[str]) -> tuple[int, str]:
    """Run ``command`` to its end, without input.

    :return: its exit status (127 when it could not be started) and the tail of its output
        (stdout and stderr together).
    """
    try:
        completed = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, check=False)
    except OSError as error:
        return 127, str(error)
    return completed.returncode, completed.stdout[-_TAIL:].decode("utf-8", "replace")


def run(result_dir: Path, command: list[str]) -> int:
    """Run ``command`` and write its result to ``result_dir/result.json``.

    :param result_dir: where ``helper.pid`` and ``result.json`` go.
    :param command: the installer command.
    :return: the command's exit status.
    """
    makedirs_durably(str(result_dir))
    write_atomically(result_dir / "helper.pid", str(os.getpid()).encode())
    code, output = execute(command)
    write_json_atomically(result_dir / "result.json", {"exit_code": code, "output": output})
    return code


def detach() -> bool:
    """Double-fork into a new session; True in the grandchild, which goes on working."""
    if os.fork():
        return False
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    return True


def main(argv: list[str]) -> int:
    """Entry point: ``[--detach] RESULT_DIR -- COMMAND...``.

    :param argv: the arguments after the program name.
    """
    background = argv[:1] == ["--detach"]
    if background:
        argv = argv[1:]
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: detached_run [--detach] RESULT_DIR -- COMMAND...\n")
        return 2
    if background and not detach():
        return 0
    code = run(Path(argv[0]), argv[2:])
    if background:
        os._exit(0)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
