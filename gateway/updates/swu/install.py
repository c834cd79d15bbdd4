"""Installing an SWUpdate bundle: unpack and verify it, then hand each image to the gateway's
target for its handler; or hand the whole bundle to Debian's ``swupdate`` when the gateway
lacks a handler and ``updates.swupdate_command`` is set."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from gateway.updates.errors import InstallError
from gateway.updates.operation import Operation, SoftwareModule, Target
from gateway.updates.settings import UpdatesSettings
from gateway.updates.swu.bundle import HANDLERS, UnknownHandler, read_description, unknown_handlers, unpack
from gateway.updates.swu.cpio import BundleError



class ImageInstaller(Protocol):
    """What a bundle's images are handed to (:class:`gateway.updates.targets.ModuleInstaller`)."""

    settings: UpdatesSettings
    log: Logger

    def install(self, operation: Operation, module: SoftwareModule, files: list[Path], resumed: bool) -> Any:
        """Install one module from its files; fires with a message."""

    def run(self, argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None,
            name: str | None = None) -> Any:
        """Run a child, bounded, its group recorded as ``name`` while it runs; fires with its result."""


@inlineCallbacks
def install_bundle(installer: ImageInstaller, operation: Operation, module: SoftwareModule, bundle: Path,
                   resumed: bool, run_blocking: Callable[..., Deferred[Any]]) -> Any:
    """Install ``bundle``; fire with a message for the status.

    :raises InstallError: for a broken bundle, a digest mismatch, an unknown handler (naming it),
        or a failed image install (the images before it stay installed).
    """
    command = installer.settings.swupdate_command
    try:
        description = yield run_blocking(read_description, bundle)
        unknown = unknown_handlers(description)
        if unknown and command and shutil.which(command[0]):
            message = yield _swupdate(installer, operation, bundle, command, unknown)
            return message
        directory = bundle.parent / (bundle.name + ".d")
        description, images = yield run_blocking(unpack, bundle, directory)
    except UnknownHandler as error:
        hint = ("; updates.swupdate_command names a program that is not installed" if command
                else "; set updates.swupdate_command to hand such bundles to swupdate")
        raise InstallError(f"{module.name} {module.version} refused: {error}{hint}") from error
    except BundleError as error:
        raise InstallError(f"{module.name} {module.version} refused: {error}") from error
    done = []
    for image, path in images:
        inner = SoftwareModule(image.name, image.version, cast(Target, HANDLERS[image.handler]), [])
        message = yield installer.install(operation, inner, [path], resumed)
        done.append(message)
    yield run_blocking(shutil.rmtree, bundle.parent / (bundle.name + ".d"), True)
    return f"bundle {module.name} {description.version}: " + "; ".join(done)


@inlineCallbacks
def _swupdate(installer: ImageInstaller, operation: Operation, bundle: Path, command: tuple[str, ...],
              unknown: list[str]) -> Any:
    argv = [*command, str(bundle)]
    installer.log.info("handing {bundle} to {argv} (handlers {handlers})", bundle=bundle.name, argv=argv,
                       handlers=unknown)
    result = yield installer.run(argv, bundle.parent, installer.settings.script_timeout,
                                 name=operation.process_name(Path(command[0]).name))
    output = result.output.decode("utf-8", "replace").strip()
    if result.exitstatus is None:
        raise InstallError(f"{command[0]} ran longer than {installer.settings.script_timeout:g}s on {bundle.name} "
                           f"and was killed: {output[-500:]}")
    if result.exitstatus != 0:
        raise InstallError(f"{command[0]} failed on {bundle.name} (exit {result.exitstatus}): {output[-500:]}")
    return f"{bundle.name} installed by {command[0]}"
