"""The root side of the packaged gateway's self-update: ``gateway-selfupdate.service``.

The packaged gateway runs as user ``gateway`` without privileges, so it cannot install its
own ``.deb``. With ``updates.deb_installer: unit`` it writes a request instead
(``<state_dir>/updates/deb-request.json``: the downloaded, verified package and the
directory for the result); the package's ``gateway-selfupdate.path`` sees it and starts
``gateway-selfupdate.service``, which runs this module as root::

    python3 -I -m gateway.updates.selfupdate --state-dir DIR --package NAME --keep-dir DIR \
        [--service UNIT] [--health-timeout SECONDS] REQUEST -- COMMAND...

It takes the request (renames it, so that the path unit does not start it again), checks
that the package and the result directory are inside the state directory and that the
package is the gateway's (``dpkg-deb --field``), writes ``helper.pid``, then has
:class:`gateway.updates.rollback.Rollback` run ``COMMAND`` (dpkg) with the package appended
and roll back when the new version fails, and writes the outcome to ``result.json``, where
the gateway, restarted by the package's maintainer scripts meanwhile, waits for it. A
request it refuses gets a ``result.json`` saying why (exit code 2), when its result
directory is one it may write. Before any request, it finishes the install or rollback that
a power cut or a kill cut short (:func:`finish_pending`): the path unit starts it for that
record too, at boot.

These checks catch mistakes, not an attacker: whoever can write the request as user
``gateway`` can hand root a package named ``gateway`` whose maintainer scripts do anything.
That is why the path unit is not enabled by the package (docs/install.md).
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import jsontext
from gateway.atomic import fsync_directory, write_atomically, write_json_atomically
from gateway.updates.rollback import Rollback, log

#: Largest request read (it holds two paths and an id).
MAX_REQUEST = 64 * 1024
#: Exit code written to ``result.json`` for a request refused before anything ran.
REFUSED = 2


class Refused(Exception):
    """A request this helper does not carry out; the message says why."""


def take(request: Path) -> Path | None:
    """Rename ``request`` aside, so that the path unit does not start the service again for it,
    durably: a request back after a power cut would be installed a second time at boot.

    :return: the taken file, or None when there was no request (a spurious start).
    """
    taken = request.with_name(request.name + ".taken")
    try:
        os.replace(request, taken)
    except FileNotFoundError:
        return None
    fsync_directory(request.parent)
    return taken


def read_request(taken: Path) -> dict[str, str]:
    """The request's fields, from a regular file (not followed if a link), bounded in size.

    :raises Refused: when it is not a regular file, too large, or not an object of strings.
    """
    try:
        fd = os.open(taken, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise Refused(f"cannot open the request: {error.strerror}") from error
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            raise Refused("the request is not a regular file")
        data = file.read(MAX_REQUEST + 1)
    if len(data) > MAX_REQUEST:
        raise Refused(f"the request is larger than {MAX_REQUEST} bytes")
    try:
        fields = jsontext.loads(data)
    except ValueError as error:
        raise Refused(f"the request is not JSON: {error}") from error
    if not isinstance(fields, dict) or not all(isinstance(fields.get(k), str) for k in ("deb", "result_dir")):
        raise Refused('the request is not {"deb": PATH, "result_dir": PATH}')
    return fields


def inside(state_dir: Path, path_text: str, kind: str, mode_test: Callable[[int], bool]) -> Path:
    """``path_text`` as a path inside ``state_dir`` (after resolving links), itself no link.

    :param kind: what the path is, for the refusal ("package", "result directory").
    :param mode_test: ``stat.S_ISREG`` or ``stat.S_ISDIR``, which the path must pass.
    :raises Refused: when it is relative, outside, a link or not of that kind.
    """
    path = Path(path_text)
    if not path.is_absolute():
        raise Refused(f"the {kind} {path_text!r} is not an absolute path")
    root = os.path.realpath(state_dir)
    if not os.path.realpath(path).startswith(root.rstrip("/") + "/"):
        raise Refused(f"the {kind} {path_text!r} is not inside {root}")
    try:
        mode = os.lstat(path).st_mode
    except OSError as error:
        raise Refused(f"the {kind} {path_text!r}: {error.strerror}") from error
    if not mode_test(mode):
        raise Refused(f"the {kind} {path_text!r} is a link or not the kind of file expected")
    return path


def package_name(deb: Path) -> str:
    """The ``Package`` field of ``deb``, as ``dpkg-deb`` reads it.

    :raises Refused: when dpkg-deb cannot read it.
    """
    try:
        done = subprocess.run(["dpkg-deb", "--field", str(deb), "Package"], stdin=subprocess.DEVNULL,
                              capture_output=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Refused(f"dpkg-deb could not read {deb.name}: {error}") from error
    if done.returncode != 0:
        raise Refused(f"{deb.name} is not a package dpkg-deb can read: "
                      f"{done.stderr.decode('utf-8', 'replace').strip()[-300:]}")
    return done.stdout.decode("utf-8", "replace").strip()


def package_file(state_dir: Path, package: str, path_text: str) -> Path:
    """``path_text`` as a package that may be installed: a file inside ``state_dir`` (:func:`inside`)
    that is the package named ``package``.

    :raises Refused: when it is not.
    """
    deb = inside(state_dir, path_text, "package", stat.S_ISREG)
    name = package_name(deb)
    if name != package:
        raise Refused(f"{deb.name} is package {name!r}, not {package!r}: only the gateway's own "
                      "package is installed this way")
    return deb


def finish_pending(state_dir: Path, package: str, command: list[str], rollback: Rollback) -> None:
    """Finish the install or rollback that a power cut or a kill cut short (its record, which
    :class:`Rollback` wrote before the step), and write its result, once, where the gateway waits.

    :param state_dir: the gateway's state directory: the result directory and package must still be in it.
    :param package: the only package name installed.
    :param command: the installer.
    :param rollback: the rollback, which holds the record.
    """
    step = rollback.pending()
    if step is None:
        return
    try:
        result_dir = inside(state_dir, step["result_dir"], "result directory", stat.S_ISDIR)
    except Refused as refusal:
        log(f"the {step['step']} cut short is not finished: {refusal}; `dpkg --audit` tells what dpkg left")
        rollback.clear(None)
        return
    if not (result_dir / "result.json").exists():  # (else it was written just before the stop)
        write_atomically(result_dir / "helper.pid", str(os.getpid()).encode())
        deb, gone = None, ""
        if step["step"] == "install":
            try:
                deb = package_file(state_dir, package, str(step.get("deb")))
            except Refused as refusal:
                gone = str(refusal)
        write_result(result_dir, rollback.finish(command, step, deb, gone))
    rollback.clear(result_dir)


def write_result(result_dir: Path, result: dict[str, Any]) -> None:
    """Write the outcome of an install where the gateway waits for it (and say it in the journal)."""
    outcome = result.get("message") or f"the installer exited with {result['exit_code']}"
    log(f"{outcome}; result in {result_dir / 'result.json'}")
    write_json_atomically(result_dir / "result.json", result)


def handle(state_dir: Path, package: str, request: Path, command: list[str], rollback: Rollback) -> int:
    """Take and carry out one request; the exit status of the service.

    :param state_dir: the gateway's state directory: the package and result directory must be in it.
    :param package: the only package name installed.
    :param request: the request file the path unit watches.
    :param command: the installer; the package path is appended.
    :param rollback: keeps the installed version's package, watches the new version start, and
        puts the old one back when the new one fails.
    :return: 0 when the outcome went to ``result.json`` (or there was no request), 1 when it
        could not be written anywhere the gateway reads.
    """
    finish_pending(state_dir, package, command, rollback)
    taken = take(request)
    if taken is None:
        log(f"no request at {request}: nothing to do")
        return 0
    result_dir: Path | None = None
    try:
        fields = read_request(taken)
        result_dir = inside(state_dir, fields["result_dir"], "result directory", stat.S_ISDIR)
        # At once: the gateway gives a taken request a few seconds to show a living helper.
        write_atomically(result_dir / "helper.pid", str(os.getpid()).encode())
        deb = package_file(state_dir, package, fields["deb"])
    except Refused as refusal:
        log(f"refused the request {request}: {refusal}")
        if result_dir is None:
            return 1
        write_json_atomically(result_dir / "result.json",
                              {"exit_code": REFUSED, "output": f"gateway-selfupdate refused it: {refusal}"})
        return 0
    finally:
        taken.unlink(missing_ok=True)
    log(f"installing {deb} for {fields.get('correlation_id', '?')}: {' '.join(command)} {deb}")
    write_result(result_dir, rollback.install(command, deb, result_dir))
    rollback.clear(result_dir)
    return 0


def main(argv: list[str]) -> int:
    """Entry point: ``[options] REQUEST -- COMMAND...`` (``--help`` lists the options).

    :param argv: the arguments after the program name.
    """
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        sys.stderr.write("usage: python3 -I -m gateway.updates.selfupdate [options] REQUEST -- COMMAND...\n")
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python3 -I -m gateway.updates.selfupdate",
                                     description="Installs the gateway package the gateway requested.")
    parser.add_argument("--state-dir", type=Path, required=True, help="the gateway's state directory")
    parser.add_argument("--package", required=True, help="the only package name installed")
    parser.add_argument("--service", default="gateway.service", help="the gateway's systemd unit")
    parser.add_argument("--keep-dir", type=Path, required=True,
                        help="where the installed version's package is kept, to roll back to")
    parser.add_argument("--health-timeout", type=float, default=180.0,
                        help="seconds the new version has to start and take up the operation")
    parser.add_argument("request", type=Path, help="the request file")
    try:
        options = parser.parse_args(argv[:split])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    rollback = Rollback(options.package, options.keep_dir, options.service, options.health_timeout)
    return handle(options.state_dir, options.package, options.request, argv[split + 1:], rollback)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
